#!/usr/bin/env bash
# nacosd beside etcd, on this machine, in one run.
#
# Starts a 3-node nacosd cluster on loopback, reads each node's RSS once every group
# has a leader (idle), runs the workloads below against it, reads each node's RSS
# again right after the last run and once more SETTLE seconds later (an idle nacosd
# flushes its write buffers and returns freed memory within about a second,
# src/idle.rs), and stops it; then does the same with a 3-node etcd cluster
# (Debian's etcd-server); then prints the side-by-side table with nacosd/etcd ratios.
# One system runs at a time, so neither steals the other's CPU. Everything started is
# stopped on exit, also on failure or Ctrl-C.
#
#   bench/compare.sh                 # 10 s per run after a 2 s warm-up
#   DURATION=3 WARMUP=1 bench/compare.sh
#
# Environment: DURATION, WARMUP, SETTLE (2) (seconds), KEYS (10000), VALUE_SIZE (256),
# CONNECTIONS (per run, spread over the 3 endpoints; 6), CLIENTS ("1 64": the client
# counts of the put/get runs), OUT (results directory; target/bench/<time>),
# NACOSD_BIN/NACOSCTL_BIN (default: target/release, built if missing), ETCD_BIN.
# nacosd's write runs also print where the time went, per node (bench/stages.py, which
# needs python3), and keep it in $OUT/stages/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
duration="${DURATION:-10}"
warmup="${WARMUP:-2}"
settle="${SETTLE:-2}"
keys="${KEYS:-10000}"
value_size="${VALUE_SIZE:-256}"
connections="${CONNECTIONS:-6}"
clients="${CLIENTS:-1 64}"
out="${OUT:-$root/target/bench/$(date +%Y%m%d-%H%M%S)}"
etcd_bin="${ETCD_BIN:-etcd}"

if ! command -v "$etcd_bin" >/dev/null; then
    echo "compare.sh: etcd not found; install Debian's etcd-server (apt-get install etcd-server) or set ETCD_BIN" >&2
    exit 1
fi
if [ -z "${NACOSD_BIN:-}" ]; then
    (cd "$root" && cargo build --release --bins)
fi
nacosd_bin="${NACOSD_BIN:-$root/target/release/nacosd}"
nacosctl_bin="${NACOSCTL_BIN:-$(dirname "$nacosd_bin")/nacosctl}"

mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/nacosd-bench.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

results="$out/results.jsonl"
: >"$results"
rss_file="$out/rss.txt"
: >"$rss_file"

# bench TARGET ENDPOINTS WORKLOAD CLIENTS [extra flags...]
bench() {
    local target=$1 endpoints=$2 workload=$3 n=$4
    shift 4
    echo "== $target $workload clients=$n $*" >&2
    "$nacosctl_bin" bench --target "$target" --endpoints "$endpoints" \
        --workload "$workload" --clients "$n" --connections "$connections" \
        --duration-secs "$duration" --warmup-secs "$warmup" \
        --keys "$keys" --value-size "$value_size" --json "$@" >>"$results"
}

# Every nacosd node's /metrics into directory $1 (n1.txt, n2.txt, n3.txt).
scrape_nacosd() {
    mkdir -p "$1"
    for i in 1 2 3; do
        curl -sf "http://127.0.0.1:$((base + i + 5))/metrics" >"$1/n$i.txt" || true
    done
}

# write_run TARGET ENDPOINTS WORKLOAD CLIENTS GROUP [flags...]: a write run; for nacosd
# with the per-stage breakdown of the group's writes (bench/stages.py) from /metrics
# scraped before and after, in $out/stages/.
write_run() {
    local target=$1 endpoints=$2 workload=$3 n=$4 group=$5
    shift 5
    if [ "$target" != nacosd ]; then
        bench "$target" "$endpoints" "$workload" "$n" "$@"
        return
    fi
    local dir="$out/stages/$workload-$n"
    scrape_nacosd "$dir/before"
    bench "$target" "$endpoints" "$workload" "$n" "$@"
    scrape_nacosd "$dir/after"
    python3 "$root/bench/stages.py" "$dir/before" "$dir/after" "$group" \
        | tee "$dir/stages.txt" >&2 || true
}

# The put/get workloads both systems run.
common_runs() {
    local target=$1 endpoints=$2
    for n in $clients; do
        write_run "$target" "$endpoints" config-publish "$n" config
        bench "$target" "$endpoints" config-get "$n" --level linearizable
    done
    bench "$target" "$endpoints" config-get 64 --level stale
    bench "$target" "$endpoints" mixed 64 --level linearizable
}

record_rss() { # label pids...
    local label=$1
    shift
    local i=1
    for pid in "$@"; do
        local kib
        kib=$(rss_kib "$pid")
        if [ -n "$kib" ]; then
            echo "$label node $i: $((kib / 1024)) MiB" | tee -a "$rss_file" >&2
        else
            echo "$label node $i: not running (see $work/*.log)" | tee -a "$rss_file" >&2
        fi
        i=$((i + 1))
    done
}

# ---- nacosd -------------------------------------------------------------------
base=$(port_base 19840)
members="1=127.0.0.1:$((base + 3)),2=127.0.0.1:$((base + 4)),3=127.0.0.1:$((base + 5))"
endpoints="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
for i in 1 2 3; do
    NACOSD_LOG="${NACOSD_LOG:-warn}" "$nacosd_bin" --node-id "$i" --data-dir "$work/nacosd$i" \
        --client-addr "127.0.0.1:$((base + i - 1))" \
        --peer-addr "127.0.0.1:$((base + i + 2))" \
        --http-addr "127.0.0.1:$((base + i + 5))" \
        --initial-members "$members" --insecure-peer >"$work/nacosd$i.log" 2>&1 &
    pids+=($!)
done
nacosd_pids=("${pids[@]}")
for i in 1 2 3; do
    wait_for "nacosd node $i to know every group's leader" 60 \
        curl -sf "http://127.0.0.1:$((base + i + 5))/readyz"
done
record_rss "nacosd (idle)" "${nacosd_pids[@]}"
common_runs nacosd "$endpoints"
bench nacosd "$endpoints" config-get 64 --level lease
write_run nacosd "$endpoints" naming-register 64 naming_persistent
write_run nacosd "$endpoints" db-insert 64 embedded_db
record_rss nacosd "${nacosd_pids[@]}"
sleep "$settle"
record_rss "nacosd ($settle s later)" "${nacosd_pids[@]}"
stop_all

# ---- etcd ---------------------------------------------------------------------
base=$(port_base 23790)
endpoints="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
start_etcd "$etcd_bin" "$nacosctl_bin" "$work" "$base"
etcd_pids=("${pids[@]}")
record_rss "etcd (idle)" "${etcd_pids[@]}"
common_runs etcd "$endpoints"
record_rss etcd "${etcd_pids[@]}"
sleep "$settle"
record_rss "etcd ($settle s later)" "${etcd_pids[@]}"
stop_all

echo
echo "Side by side (results: $results):"
"$nacosctl_bin" bench-compare "$results" | tee "$out/compare.txt"
echo
cat "$rss_file"
