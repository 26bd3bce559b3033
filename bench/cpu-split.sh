#!/usr/bin/env bash
# CPU per operation by process, nacosd beside etcd: where a saturated 2-core machine's
# CPU goes, the servers' share against the load generator's.
#
# For each system: a fresh 3-node cluster on loopback, one `nacosctl bench` run of
# DURATION seconds, and, in a WINDOW-second stretch in its middle, each process's
# utime + stime (/proc/<pid>/stat, exited threads included) and the machine's idle
# time (/proc/stat). CPU per operation divides the window's CPU by the window's
# length times the run's throughput (steady under a closed-loop load).
#
#   bench/cpu-split.sh                          # publish / put at 64 clients, both
#   TARGET=nacosd WORKLOAD=config-get BENCH_FLAGS="--level stale" bench/cpu-split.sh
#
# Environment: TARGET (both, nacosd or etcd), WORKLOAD (config-publish), CLIENTS (64),
# DURATION (16), WINDOW (6), KEYS (10000), VALUE_SIZE (256), BENCH_FLAGS, BIN (directory
# of nacosd and nacosctl; default target/release, built if missing), ETCD_BIN (etcd).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
target="${TARGET:-both}"
duration="${DURATION:-16}"
window="${WINDOW:-6}"
etcd_bin="${ETCD_BIN:-etcd}"
bin="${BIN:-$root/target/release}"
if [ -z "${BIN:-}" ] && [ ! -x "$bin/nacosd" ]; then
    (cd "$root" && cargo build --release --bins)
fi
[ "$window" -lt "$((duration - 4))" ] || { echo "cpu-split.sh: WINDOW must be at least 4 s shorter than DURATION" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/nacosd-cpu.XXXXXX")"
pids=()
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Idle and total clock ticks of the machine.
machine_ticks() { awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }

measure() { # system endpoints
    local system=$1 endpoints=$2
    "$bin/nacosctl" bench --target "$system" --endpoints "$endpoints" \
        --workload "${WORKLOAD:-config-publish}" --clients "${CLIENTS:-64}" --connections 6 \
        --duration-secs "$duration" --warmup-secs 2 --keys "${KEYS:-10000}" \
        --value-size "${VALUE_SIZE:-256}" ${BENCH_FLAGS:-} --json >"$work/$system.json" 2>/dev/null &
    local bench_pid=$!
    sleep $(((duration - window) / 2 + 2))
    local procs=("${pids[@]}" "$bench_pid") before=() after=() p
    for p in "${procs[@]}"; do before+=("$(proc_ticks "$p")"); done
    read -r idle0 total0 < <(machine_ticks)
    sleep "$window"
    for p in "${procs[@]}"; do after+=("$(proc_ticks "$p")"); done
    read -r idle1 total1 < <(machine_ticks)
    wait "$bench_pid" || { echo "cpu-split.sh: the $system load failed" >&2; return 1; }
    local deltas=() i
    for i in "${!procs[@]}"; do deltas+=($((after[i] - before[i]))); done
    python3 - "$system" "$work/$system.json" "$window" "$((idle1 - idle0))" "$((total1 - total0))" "${deltas[@]}" <<'EOF'
import json, sys
system, report, window = sys.argv[1], json.load(open(sys.argv[2])), float(sys.argv[3])
idle, total = int(sys.argv[4]), int(sys.argv[5])
ticks = [int(t) for t in sys.argv[6:]]
servers, client = ticks[:-1], ticks[-1]
ops = report["throughput"]
pct = lambda t: t / window  # clock ticks are 1/100 s: ticks per second = % of a core
per_op = lambda t: t * 1e4 / (window * ops)  # µs
print("%-7s %8.0f ops/s  servers %4.0f %% (%s)  %6.1f us/op  load generator %3.0f %%  %5.1f us/op  machine idle %2.0f %%" % (
    system, ops, pct(sum(servers)), " / ".join("%.0f" % pct(t) for t in servers),
    per_op(sum(servers)), pct(client), per_op(client), 100.0 * idle / max(total, 1)))
EOF
}

if [ "$target" = both ] || [ "$target" = nacosd ]; then
    base=$(port_base 21400)
    mkdir -p "$work/nacosd"
    start_cluster "$bin" "$work/nacosd" "$base"
    measure nacosd "127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
    stop_all
fi
if [ "$target" = both ] || [ "$target" = etcd ]; then
    command -v "$etcd_bin" >/dev/null || { echo "cpu-split.sh: etcd not found (apt-get install etcd-server, or ETCD_BIN)" >&2; exit 1; }
    base=$(port_base 23900)
    mkdir -p "$work/etcd"
    start_etcd "$etcd_bin" "$bin/nacosctl" "$work/etcd" "$base"
    measure etcd "127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
    stop_all
fi
