#!/usr/bin/env bash
# One write's path, stage by stage, from the kernel's view: a fresh 3-node release
# cluster on loopback, one client publishing to the config leader, and `perf record`
# of the system calls that mark the stages (the WAL write, its fdatasync, the peer
# messages, the client's request and reply) and of the scheduler's wake-ups, for
# WINDOW seconds. bench/trace_write.py then prints, per node, the median time between
# consecutive stages (leader: request in -> log write -> fdatasync; follower's
# acknowledgement in -> apply write -> reply out; follower: append in -> log write ->
# fdatasync -> acknowledgement out) and the whole request on the leader. Close to
# free at one client, unlike `perf trace` or strace, which tripled a write's time.
# Needs perf and root (or perf_event_paranoid -1). Everything started is stopped.
#
#   bench/trace-write.sh
#   BIN=/tmp/other/release WARM=8 bench/trace-write.sh
#
# Environment: BIN (directory of nacosd and nacosctl; default target/release, built
# if missing), WINDOW (2, seconds recorded), WARM (0: seconds of a 64-client publish
# load first, so the RocksDB files are past their first flushes), OUT (where the
# recording is kept; a temporary directory by default).
# The stage boundaries are recognized by message sizes that hold for the default
# config-publish workload (256-byte values, one entry per append at one client).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bin="${BIN:-$root/target/release}"
window="${WINDOW:-2}"
command -v perf >/dev/null || { echo "trace-write.sh: perf is not installed" >&2; exit 1; }
if [ ! -x "$bin/nacosd" ] || [ ! -x "$bin/nacosctl" ]; then
    (cd "$root" && cargo build --release --bins)
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/nacosd-trace.XXXXXX")"
out="${OUT:-$work/out}"
mkdir -p "$out"
pids=()
trap 'stop_all; rm -rf "$work/data"; [ -n "${OUT:-}" ] || rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

base=$(port_base 19700)
endpoints="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
start_cluster "$bin" "$work" "$base"

bench() { # clients seconds endpoints
    "$bin/nacosctl" bench --target nacosd --endpoints "$3" --workload config-publish \
        --clients "$1" --connections 1 --duration-secs "$2" --warmup-secs 1 \
        --keys 1000 --value-size 256 --json 2>/dev/null
}
if [ "${WARM:-0}" -gt 0 ]; then bench 64 "$WARM" "$endpoints" >/dev/null; fi
leader=$(leader_of config $((base + 6)) $((base + 7)) $((base + 8)))
[ -n "$leader" ] || { echo "trace-write.sh: no config leader" >&2; exit 1; }
bench 1 $((window + 4)) "127.0.0.1:$((base + leader - 1))" >"$out/bench.json" &
bench_pid=$!
sleep 2
{
    for i in 1 2 3; do
        for t in /proc/"${pids[$((i - 1))]}"/task/*; do echo "${t##*/} n$i"; done
    done
    for pid in $(pgrep -f "nacosctl bench --target nacosd" || true); do
        for t in /proc/"$pid"/task/*; do echo "${t##*/} client"; done
    done
} >"$out/threads"
perf record -q -a -o "$out/perf.data" \
    -e syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync,syscalls:sys_enter_write \
    -e syscalls:sys_enter_sendto,syscalls:sys_exit_recvfrom,sched:sched_wakeup \
    -- sleep "$window" >/dev/null 2>&1
wait "$bench_pid"
perf script -i "$out/perf.data" >"$out/script.txt" 2>/dev/null
python3 - "$out/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("one client to the leader: %.0f publishes/s, p50 %.3f ms, p99 %.3f ms" % (
    r["throughput"], r["latency_ms"]["p50"], r["latency_ms"]["p99"]))
PY
python3 "$root/bench/trace_write.py" "$out/script.txt" "$out/threads" "n$leader"
