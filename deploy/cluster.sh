#!/usr/bin/env bash
# A local 3-node nacosd cluster on loopback, for trying things out and for breaking
# things on purpose (kill -9 a node, restart it, watch the leaders move).
#
#   node  client (gRPC)     peer (gRPC)       http
#   1     127.0.0.1:9848    127.0.0.1:7848    127.0.0.1:8848
#   2     127.0.0.1:9849    127.0.0.1:7849    127.0.0.1:8849
#   3     127.0.0.1:9850    127.0.0.1:7850    127.0.0.1:8850
#
# Node i keeps its data, log (nacosd.log) and pid file (nacosd.pid) in
# ${NACOSD_CLUSTER_DIR:-./nacosd-cluster}/node<i>.
#
# Binary: $NACOSD_BIN, else target/release/nacosd if built, else target/debug/nacosd;
# nacosctl is expected next to it. `start` builds both (release) when neither exists.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nodes=(1 2 3)
members="1=127.0.0.1:7848,2=127.0.0.1:7849,3=127.0.0.1:7850"
stop_wait_secs=10

usage() {
    cat >&2 <<USAGE
usage: $(basename "$0") COMMAND

  start [N]     start every node (or node N); builds nacosd and nacosctl if missing
  stop [N]      SIGTERM every node (or node N), SIGKILL after ${stop_wait_secs}s
  kill N        kill -9 node N (a crash, for testing recovery)
  restart N     stop node N (gracefully if it is running), then start it
  status        which nodes run, then 'nacosctl cluster status' from a running node
  clean         stop every node and delete the cluster's data

N is 1, 2 or 3. Environment: NACOSD_BIN (nacosd binary), NACOSD_CLUSTER_DIR
(default ./nacosd-cluster), NACOSD_LOG (log filter, e.g. debug).
USAGE
    exit 2
}

# The cluster directory as an absolute path (the nodes run in the background, and
# the pid files must be found again from wherever this script is run next).
cluster_dir() {
    local dir="${NACOSD_CLUSTER_DIR:-./nacosd-cluster}"
    case "$dir" in
        /*) echo "$dir" ;;
        *) echo "$PWD/${dir#./}" ;;
    esac
}

node_dir() { echo "$(cluster_dir)/node$1"; }
client_port() { echo $((9847 + $1)); }
peer_port() { echo $((7847 + $1)); }
http_port() { echo $((8847 + $1)); }

find_bin() {
    if [ -n "${NACOSD_BIN:-}" ]; then
        echo "$NACOSD_BIN"
    elif [ -x "$root/target/release/nacosd" ]; then
        echo "$root/target/release/nacosd"
    else
        echo "$root/target/debug/nacosd"
    fi
}

ensure_bin() {
    local bin
    bin="$(find_bin)"
    if [ ! -x "$bin" ]; then
        if [ -n "${NACOSD_BIN:-}" ]; then
            echo "cluster: NACOSD_BIN=$NACOSD_BIN is not an executable file" >&2
            exit 1
        fi
        echo "cluster: no nacosd binary yet; building (release)" >&2
        bash "$root/scripts/setup.sh" >&2
        cargo build --manifest-path "$root/Cargo.toml" --release --bin nacosd --bin nacosctl >&2
        bin="$root/target/release/nacosd"
    fi
    echo "$bin"
}

check_node() {
    case "${1:-}" in
        1 | 2 | 3) ;;
        *) usage ;;
    esac
}

# The pid of node $1 if it is running (and really is a nacosd process), else nothing.
running_pid() {
    local pidfile pid
    pidfile="$(node_dir "$1")/nacosd.pid"
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q nacosd; then
        return 0 # the pid was reused by something else
    fi
    echo "$pid"
}

start_node() {
    local i=$1 bin=$2 dir pid
    dir="$(node_dir "$i")"
    pid="$(running_pid "$i")"
    if [ -n "$pid" ]; then
        echo "node $i already running (pid $pid)"
        return 0
    fi
    mkdir -p "$dir"
    nohup "$bin" \
        --node-id "$i" \
        --data-dir "$dir" \
        --client-addr "127.0.0.1:$(client_port "$i")" \
        --peer-addr "127.0.0.1:$(peer_port "$i")" \
        --http-addr "127.0.0.1:$(http_port "$i")" \
        --initial-members "$members" --insecure-peer \
        >>"$dir/nacosd.log" 2>&1 </dev/null &
    echo $! >"$dir/nacosd.pid"
    echo "node $i started (pid $!, client 127.0.0.1:$(client_port "$i"), log $dir/nacosd.log)"
}

# After a start: report nodes that exited at once, and wait a little for readiness.
check_started() {
    local i failed=0
    sleep 1
    for i in "$@"; do
        if [ -z "$(running_pid "$i")" ]; then
            echo "node $i exited; last lines of its log:" >&2
            tail -n 20 "$(node_dir "$i")/nacosd.log" >&2 || true
            failed=1
        fi
    done
    [ "$failed" = 0 ] || exit 1
    command -v curl >/dev/null 2>&1 || return 0
    local deadline=$((SECONDS + 20)) ready
    while [ "$SECONDS" -lt "$deadline" ]; do
        ready=1
        for i in "$@"; do
            curl -fsS -o /dev/null "http://127.0.0.1:$(http_port "$i")/readyz" 2>/dev/null || ready=0
        done
        if [ "$ready" = 1 ]; then
            echo "ready: every group has a leader"
            return 0
        fi
        sleep 0.5
    done
    echo "not ready yet (some group has no leader); see '$(basename "$0") status'"
}

stop_nodes() {
    local i pid pids=() left
    for i in "$@"; do
        pid="$(running_pid "$i")"
        if [ -n "$pid" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$i:$pid")
        fi
    done
    if [ "${#pids[@]}" -eq 0 ]; then
        if [ $# -eq 1 ]; then echo "node $1 is not running"; else echo "no node running"; fi
        return 0
    fi
    local deadline=$((SECONDS + stop_wait_secs))
    while :; do
        left=()
        for entry in "${pids[@]}"; do
            kill -0 "${entry#*:}" 2>/dev/null && left+=("$entry")
        done
        [ "${#left[@]}" -gt 0 ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for entry in "${left[@]}"; do
                echo "node ${entry%%:*} did not stop within ${stop_wait_secs}s; SIGKILL"
                kill -KILL "${entry#*:}" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    for entry in "${pids[@]}"; do
        rm -f "$(node_dir "${entry%%:*}")/nacosd.pid"
        echo "node ${entry%%:*} stopped"
    done
}

status() {
    local i pid endpoint=""
    for i in "${nodes[@]}"; do
        pid="$(running_pid "$i")"
        if [ -n "$pid" ]; then
            echo "node $i: running (pid $pid), client 127.0.0.1:$(client_port "$i")"
            [ -n "$endpoint" ] || endpoint="127.0.0.1:$(client_port "$i")"
        else
            echo "node $i: not running"
        fi
    done
    [ -n "$endpoint" ] || return 0
    local ctl
    ctl="$(dirname "$(find_bin)")/nacosctl"
    if [ ! -x "$ctl" ]; then
        echo "cluster: $ctl not found; build it with: cargo build --release --bin nacosctl" >&2
        return 1
    fi
    echo
    "$ctl" --endpoint "$endpoint" cluster status
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    start)
        [ $# -le 1 ] || usage
        if [ $# -eq 1 ]; then check_node "$1"; targets=("$1"); else targets=("${nodes[@]}"); fi
        bin="$(ensure_bin)"
        for i in "${targets[@]}"; do start_node "$i" "$bin"; done
        check_started "${targets[@]}"
        ;;
    stop)
        [ $# -le 1 ] || usage
        if [ $# -eq 1 ]; then check_node "$1"; stop_nodes "$1"; else stop_nodes "${nodes[@]}"; fi
        ;;
    kill)
        [ $# -eq 1 ] || usage
        check_node "$1"
        pid="$(running_pid "$1")"
        if [ -z "$pid" ]; then
            echo "node $1 is not running"
        else
            kill -KILL "$pid"
            rm -f "$(node_dir "$1")/nacosd.pid"
            echo "node $1 killed (kill -9 $pid)"
        fi
        ;;
    restart)
        [ $# -eq 1 ] || usage
        check_node "$1"
        stop_nodes "$1"
        bin="$(ensure_bin)"
        start_node "$1" "$bin"
        check_started "$1"
        ;;
    status)
        [ $# -eq 0 ] || usage
        status
        ;;
    clean)
        [ $# -eq 0 ] || usage
        stop_nodes "${nodes[@]}"
        dir="$(cluster_dir)"
        for i in "${nodes[@]}"; do rm -rf "$dir/node$i"; done
        rmdir "$dir" 2>/dev/null || true
        echo "removed the cluster's data in $dir"
        ;;
    *)
        usage
        ;;
esac
