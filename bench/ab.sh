#!/usr/bin/env bash
# A/B a server change on one workload: variants run alternately, each on a fresh
# 3-node release cluster, several rounds, so that the machine's drift hits both alike.
#
#   bench/ab.sh "" "--state-cache-mib 0"                 # two flag sets
#   ENV_B="MALLOC_ARENA_MAX=4" bench/ab.sh "" ""          # same flags, B with env
#   BIN_B=/tmp/old/release bench/ab.sh "" ""              # two builds
#
# Odd rounds run A first, even rounds B first. Per run it prints throughput, p50/p99,
# the three servers' CPU per acknowledged operation (utime+stime over the run, warm-up
# and preload included, divided by the measured operations: steadier than throughput
# on a saturated machine), the CPU of RocksDB's flush and compaction threads, and RSS;
# at the end, the medians and B/A round by round. Throughput on a 2-core machine moves
# ±15 % from run to run: compare several rounds, not one.
#
# Environment: ROUNDS (3), WORKLOAD (config-publish), CLIENTS (256), DURATION (10),
# WARMUP (2), KEYS (10000), VALUE_SIZE (256), BIN_A/BIN_B (directory with nacosd and
# nacosctl; default target/release, built if missing), ENV_A/ENV_B (VAR=value ... for
# the servers of that variant), LEADER_ONLY (1: send everything to the config leader),
# BENCH_FLAGS (more `nacosctl bench` flags, e.g. "--level stale").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
[ $# -eq 2 ] || { echo "usage: bench/ab.sh FLAGS_A FLAGS_B" >&2; exit 2; }
rounds="${ROUNDS:-3}"
default_bin="$root/target/release"
if [ -z "${BIN_A:-}" ] || [ -z "${BIN_B:-}" ]; then
    [ -x "$default_bin/nacosd" ] || (cd "$root" && cargo build --release --bins)
fi
base=$(port_base 19900 31)
work="$(mktemp -d "${TMPDIR:-/tmp}/nacosd-ab.XXXXXX")"
pids=()
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# Clock ticks (1/100 s) of process $1, or of its threads whose name starts with $2.
ticks() {
    local total=0 f
    for f in /proc/"$1"/task/*; do
        if [ -z "${2:-}" ] || [[ "$(cat "$f/comm" 2>/dev/null)" == "$2"* ]]; then
            # A thread that ended since the listing counts nothing.
            total=$((total + $(awk '{print $14 + $15}' "$f/stat" 2>/dev/null || echo 0)))
        fi
    done
    echo "$total"
}

run() { # label bin env flags
    local label=$1 bin=$2 env=$3 flags=$4 i
    local members="1=127.0.0.1:$((base + 10)),2=127.0.0.1:$((base + 11)),3=127.0.0.1:$((base + 12))"
    local endpoints="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
    rm -rf "$work/data"
    for i in 1 2 3; do
        # shellcheck disable=SC2086 # flags and env are word lists on purpose
        env NACOSD_LOG=warn $env "$bin/nacosd" --node-id "$i" --data-dir "$work/data/n$i" \
            --client-addr "127.0.0.1:$((base + i - 1))" --peer-addr "127.0.0.1:$((base + 9 + i))" \
            --http-addr "127.0.0.1:$((base + 19 + i))" --initial-members "$members" \
            --insecure-peer $flags >"$work/n$i.log" 2>&1 &
        pids+=($!)
    done
    wait_ready "$work" $((base + 20)) $((base + 21)) $((base + 22))
    if [ -n "${LEADER_ONLY:-}" ]; then
        local leader
        leader=$(leader_of config $((base + 20)) $((base + 21)) $((base + 22)))
        if [ -n "$leader" ]; then endpoints="127.0.0.1:$((base + leader - 1))"; fi
    fi
    local before=0 pid
    for pid in "${pids[@]}"; do before=$((before + $(ticks "$pid"))); done
    local report
    report=$("$bin/nacosctl" bench --target nacosd --endpoints "$endpoints" \
        --workload "${WORKLOAD:-config-publish}" --clients "${CLIENTS:-256}" --connections 6 \
        --duration-secs "${DURATION:-10}" --warmup-secs "${WARMUP:-2}" \
        --keys "${KEYS:-10000}" --value-size "${VALUE_SIZE:-256}" ${BENCH_FLAGS:-} --json 2>/dev/null)
    local after=0 bg=0 rss="" kib
    for pid in "${pids[@]}"; do
        after=$((after + $(ticks "$pid")))
        bg=$((bg + $(ticks "$pid" rocksdb)))
        kib=$(rss_kib "$pid")
        rss="$rss $((${kib:-0} / 1024))"
    done
    stop_all
    python3 -c '
import json, sys
label, cpu_ticks, bg_ticks, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.loads(sys.stdin.read())
lat, ok = r["latency_ms"], max(1, r["ok"])
print("%s  %9.0f ops/s  p50 %6.2f  p99 %6.2f ms  cpu/op %6.1f us  rocksdb bg %d ms  errors %d  rss%s MiB" % (
    label, r["throughput"], lat["p50"], lat["p99"], cpu_ticks * 1e4 / ok, bg_ticks * 10,
    sum(r["errors"].values()), rss))
with open(sys.argv[5], "a") as out:
    out.write("%s %s %f %f %f\n" % (sys.argv[6], label, r["throughput"], lat["p99"], cpu_ticks * 1e4 / ok))
' "$label" "$((after - before))" "$bg" "$rss" "$work/results" "$round" <<<"$report"
}

# Odd rounds run A first, even rounds B first: a machine that speeds up or slows
# down during the rounds then favours neither variant.
for round in $(seq "$rounds"); do
    echo "round $round"
    if [ $((round % 2)) -eq 1 ]; then
        run A "${BIN_A:-$default_bin}" "${ENV_A:-}" "$1"
        run B "${BIN_B:-$default_bin}" "${ENV_B:-}" "$2"
    else
        run B "${BIN_B:-$default_bin}" "${ENV_B:-}" "$2"
        run A "${BIN_A:-$default_bin}" "${ENV_A:-}" "$1"
    fi
done

# The summary: medians, and B against A round by round. On a shared 2-core machine
# the same build moves ±15 % (sometimes more) between runs; a change is worth keeping
# only when B/A stays on one side of 1 in (nearly) every round.
python3 - "$work/results" <<'PY'
import statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    rnd, label, ops, p99, cpu = line.split()
    rounds.setdefault(rnd, {})[label] = (float(ops), float(p99), float(cpu))
pairs = [r for r in rounds.values() if "A" in r and "B" in r]
if not pairs:
    sys.exit(0)
med = lambda xs: statistics.median(xs)
print("summary over %d rounds (medians)" % len(pairs))
for label in ("A", "B"):
    print("%s  %9.0f ops/s  p99 %6.2f ms  cpu/op %6.1f us" % (
        label, med([p[label][0] for p in pairs]), med([p[label][1] for p in pairs]),
        med([p[label][2] for p in pairs])))
ratios = [p["B"][0] / p["A"][0] for p in pairs if p["A"][0] > 0]
if ratios:
    above = sum(r > 1 for r in ratios)
    print("B/A throughput per round: %s; median %.3f, B ahead in %d of %d" % (
        " ".join("%.2f" % r for r in ratios), med(ratios), above, len(ratios)))
PY
