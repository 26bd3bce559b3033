#!/usr/bin/env bash
# Ephemeral registrations (issue 15): a 3-node nacosd cluster on loopback, the
# naming-register-ephemeral workload (a session per client, spread over the nodes),
# then each node's ephemeral instance count (converged when equal), sync counters and
# RSS. Everything started is stopped on exit.
#
#   bench/ephemeral.sh                      # 10 s after a 2 s warm-up, 64 clients
#   BIN=target/debug DURATION=3 bench/ephemeral.sh
#
# Environment: BIN (directory of nacosd and nacosctl; default target/release, built if
# missing), DURATION, WARMUP (seconds), CLIENTS (64), CONNECTIONS (3), KEYS (100000),
# SERVICES (100), BASE_PORT (19840), TARGET (nacosd: the nacosd.v1 API; nacos: the same
# load through the Nacos 2.x front end, one Nacos connection per bench connection).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bin="${BIN:-$root/target/release}"
duration="${DURATION:-10}"
warmup="${WARMUP:-2}"
clients="${CLIENTS:-64}"
connections="${CONNECTIONS:-3}"
keys="${KEYS:-100000}"
services="${SERVICES:-100}"
# The first free block of ports from BASE_PORT: base+1..3, +11..13, +21..23.
base=$(port_base "${BASE_PORT:-19840}" 24)
target="${TARGET:-nacosd}"

if [ ! -x "$bin/nacosd" ] || [ ! -x "$bin/nacosctl" ]; then
    (cd "$root" && cargo build --release --bins)
fi
dir="$(mktemp -d)"
pids=()
trap 'stop_all; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM

members=""
for i in 1 2 3; do members="${members:+$members,}$i=127.0.0.1:$((base + 10 + i))"; done
endpoints=""
for i in 1 2 3; do
    "$bin/nacosd" --node-id "$i" --data-dir "$dir/n$i" \
        --client-addr "127.0.0.1:$((base + i))" --peer-addr "127.0.0.1:$((base + 10 + i))" \
        --http-addr "127.0.0.1:$((base + 20 + i))" --initial-members "$members" --insecure-peer \
        >"$dir/n$i.log" 2>&1 &
    pids+=("$!")
    endpoints="${endpoints:+$endpoints,}127.0.0.1:$((base + i))"
done
for i in 1 2 3; do
    wait_for "node $i to be ready (see $dir/n$i.log)" 120 \
        curl -sf "http://127.0.0.1:$((base + 20 + i))/readyz"
done
rss_mib() { echo $(($(rss_kib "$1") / 1024)); }
rss_before=()
for i in 1 2 3; do rss_before+=("$(rss_mib "${pids[$((i - 1))]}")"); done

"$bin/nacosctl" bench --workload naming-register-ephemeral --endpoints "$endpoints" \
    --clients "$clients" --connections "$connections" --duration-secs "$duration" \
    --warmup-secs "$warmup" --keys "$keys" --services "$services" --target "$target" --quiet
end=$(date +%s.%N)
# Convergence: poll until every node reports the same instance count (at most 120 s).
converged() {
    counts=()
    local i
    for i in 1 2 3; do
        counts+=("$(curl -s "127.0.0.1:$((base + 20 + i))/metrics" |
            awk '/^nacosd_distro_ephemeral_instances /{print $2}')")
    done
    [ -n "${counts[0]}" ] && [ "${counts[0]}" = "${counts[1]}" ] && [ "${counts[1]}" = "${counts[2]}" ]
}
# Polled every 0.1 s: the time it took is part of the report.
if ! WAIT_INTERVAL=0.1 wait_for "the nodes to converge" 120 converged; then
    echo "ephemeral.sh: instance counts per node: ${counts[*]}" >&2
    exit 1
fi
echo "converged: ${counts[0]} instances on every node $(echo "$(date +%s.%N) - $end" | bc) s after the run"
# Memory: each node's RSS growth over the run, for the instances it holds (its own
# sessions' and every other node's replicas), scaled to 100,000 instances.
for i in 1 2 3; do
    after=$(rss_mib "${pids[$((i - 1))]}")
    grown=$((after - rss_before[i - 1]))
    per=$(echo "scale=1; $grown * 100000 / ${counts[0]:-1}" | bc)
    echo "node $i: RSS $after MiB (${rss_before[$((i - 1))]} MiB before the run: +$grown MiB, about $per MiB per 100,000 instances);" \
        "$(curl -s "127.0.0.1:$((base + 20 + i))/metrics" |
            grep -E '^nacosd_distro_(sessions_owned|sync_calls_total|syncs_failed_total|full_syncs_sent_total|deltas_refused_total)' |
            tr '\n' ' ')"
done
