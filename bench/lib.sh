# Helpers the benchmark scripts share; sourced, not run. Callers keep the PIDs they
# start in the array `pids`.

# A free loopback port base: $2 (default 9) consecutive ports from $1 that nothing
# listens on, trying $1, $1 + $2 + 1, ...
port_base() {
    local base=$1 width=${2:-9}
    while ss -Hltn "sport >= :$base and sport <= :$((base + width - 1))" | grep -q .; do
        base=$((base + width + 1))
    done
    echo "$base"
}

# wait_for WHAT DEADLINE_SECONDS COMMAND...: run COMMAND until it succeeds, every
# WAIT_INTERVAL seconds (0.2).
wait_for() {
    local what=$1 secs=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then
            echo "$(basename "$0"): timed out waiting for $what" >&2
            return 1
        fi
        sleep "${WAIT_INTERVAL:-0.2}"
    done
}

# wait_ready DIR HTTP_PORT...: wait up to 60 s for each node's /readyz (node i on the
# i-th port, its log in DIR/n<i>.log) to answer.
wait_ready() {
    local dir=$1 i=1 port
    shift
    for port in "$@"; do
        wait_for "node $i to be ready (see $dir/n$i.log)" 60 \
            curl -sf "http://127.0.0.1:$port/readyz"
        i=$((i + 1))
    done
}

# start_cluster BIN DIR BASE [FLAG...]: three nodes of BIN on loopback, node i with
# client port BASE+i-1, peer port BASE+i+2 and HTTP port BASE+i+5, data and logs
# under DIR, extra server FLAGs; their PIDs go into `pids`. Waits until all are ready.
start_cluster() {
    local bin=$1 dir=$2 base=$3 i
    shift 3
    local members="1=127.0.0.1:$((base + 3)),2=127.0.0.1:$((base + 4)),3=127.0.0.1:$((base + 5))"
    for i in 1 2 3; do
        NACOSD_LOG=warn "$bin/nacosd" --node-id "$i" --data-dir "$dir/data/n$i" \
            --client-addr "127.0.0.1:$((base + i - 1))" --peer-addr "127.0.0.1:$((base + i + 2))" \
            --http-addr "127.0.0.1:$((base + i + 5))" --initial-members "$members" \
            --insecure-peer "$@" >"$dir/n$i.log" 2>&1 &
        pids+=($!)
    done
    wait_ready "$dir" $((base + 6)) $((base + 7)) $((base + 8))
}

# start_etcd ETCD_BIN NACOSCTL_BIN DIR BASE: three etcd members on loopback, member i
# with client port BASE+i-1 and peer port BASE+i+2, data and logs under DIR; their PIDs
# go into `pids`. Waits until a put succeeds (a leader is elected).
start_etcd() {
    local etcd=$1 nacosctl=$2 dir=$3 base=$4 i
    local cluster="e1=http://127.0.0.1:$((base + 3)),e2=http://127.0.0.1:$((base + 4)),e3=http://127.0.0.1:$((base + 5))"
    for i in 1 2 3; do
        local client="http://127.0.0.1:$((base + i - 1))" peer="http://127.0.0.1:$((base + i + 2))"
        "$etcd" --name "e$i" --data-dir "$dir/etcd$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token nacosd-bench >"$dir/etcd$i.log" 2>&1 &
        pids+=($!)
    done
    wait_for "etcd to elect a leader" 60 \
        "$nacosctl" bench --target etcd \
        --endpoints "127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))" \
        --workload config-publish --ops 1 --warmup-secs 0 --clients 1 --quiet
}

# leader_of GROUP HTTP_PORT...: the number (1 for the first port, ...) of the node whose
# /metrics says it leads GROUP; nothing when none does.
leader_of() {
    local group=$1 i=1 port metrics
    shift
    for port in "$@"; do
        metrics=$(curl -sf "http://127.0.0.1:$port/metrics" || true)
        if grep -q "^nacosd_raft_is_leader{group=\"$group\"} 1" <<<"$metrics"; then
            echo "$i"
            return 0
        fi
        i=$((i + 1))
    done
}

# RSS of process $1 in KiB (empty if it is gone).
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

# Stop every process in `pids`: SIGTERM, up to 10 s each to exit, then SIGKILL.
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    pids=()
}
