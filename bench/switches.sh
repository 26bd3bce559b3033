#!/usr/bin/env bash
# Where a write's thread switches and CPU go: a fresh 3-node release cluster on
# loopback, `perf sched record -a` for WINDOW seconds while idle and again in the
# middle of a write run, then per node role (leader, followers summed, load generator)
# and thread kind: switch-ins per second, mean scheduling delay, CPU per second, and
# both per write above the idle figures (bench/switches.py). Needs perf and root (or
# perf_event_paranoid -1). Everything started is stopped on exit.
#
#   bench/switches.sh                       # config-publish, 1 client
#   CLIENTS=64 bench/switches.sh
#
# Environment: BIN (directory of nacosd and nacosctl; default target/release, built if
# missing), WORKLOAD (config-publish), GROUP (config: whose writes are counted),
# CLIENTS (1), WINDOW (3, seconds recorded), OUT (where the recordings are kept; a
# temporary directory by default), FLAGS (extra server flags, e.g. "--raft-threads 1").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bin="${BIN:-$root/target/release}"
workload="${WORKLOAD:-config-publish}"
group="${GROUP:-config}"
clients="${CLIENTS:-1}"
window="${WINDOW:-3}"
read -r -a flags <<<"${FLAGS:-}"
command -v perf >/dev/null || { echo "switches.sh: perf is not installed" >&2; exit 1; }
if [ ! -x "$bin/nacosd" ] || [ ! -x "$bin/nacosctl" ]; then
    (cd "$root" && cargo build --release --bins)
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/nacosd-switches.XXXXXX")"
out="${OUT:-$work/out}"
mkdir -p "$out/idle" "$out/load"
pids=()
trap 'stop_all; rm -rf "$work/data"; [ -n "${OUT:-}" ] || rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

base=$(port_base 19600)
endpoints="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
start_cluster "$bin" "$work" "$base" "${flags[@]}"

# record DIR: a perf sched recording of WINDOW s, every thread of the servers (by
# their process) and of the load generator, and which server process leads GROUP.
record() {
    local dir=$1 leader pid t
    leader=$(leader_of "$group" $((base + 6)) $((base + 7)) $((base + 8)))
    echo "${leader:+${pids[$((leader - 1))]}}" >"$dir/leader"
    perf sched record -a -o "$dir/perf.data" -- sleep "$window" >/dev/null 2>&1
    for pid in "${pids[@]}"; do
        for t in /proc/"$pid"/task/*; do echo "$pid ${t##*/} $(cat "$t/comm" 2>/dev/null)"; done
    done >"$dir/threads"
    for pid in $(pgrep -f "nacosctl bench --target nacosd --endpoints $endpoints" || true); do
        for t in /proc/"$pid"/task/*; do echo "client ${t##*/} $(cat "$t/comm" 2>/dev/null)"; done
    done >>"$dir/threads"
}

sleep 2
record "$out/idle"
"$bin/nacosctl" bench --target nacosd --endpoints "$endpoints" --workload "$workload" \
    --clients "$clients" --connections 6 --duration-secs $((window + 6)) --warmup-secs 1 \
    --keys 10000 --value-size 256 --json >"$out/load/bench.json" 2>/dev/null &
bench_pid=$!
sleep 4
record "$out/load"
wait "$bench_pid"
python3 "$root/bench/switches.py" "$out/load" "$out/idle" "$window"
