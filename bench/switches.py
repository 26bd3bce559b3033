#!/usr/bin/env python3
"""Thread switches and CPU per write, from bench/switches.sh's recordings.

    bench/switches.py LOAD_DIR IDLE_DIR WINDOW_SECONDS

Each directory holds `perf.data` (perf sched record -a), `threads` (owner, tid and
thread name of every thread of the servers and the load generator; the owner is a
server's process id, or `client`) and `leader` (the process id of the group's
leader, empty if none was found); LOAD_DIR also holds the
load generator's JSON report (`bench.json`), whose throughput gives the writes in
the window. For each role (leader, followers summed, client) and thread kind (the
thread name without its trailing digits), it prints switch-ins per second, the mean
scheduling delay (woken to running), CPU per second, and switch-ins and CPU per
write above the idle recording's.

Only the Python standard library and `perf sched timehist` are used.
"""

import collections
import json
import re
import subprocess
import sys

LINE = re.compile(
    r"^\s*[\d.]+\s+\[\d+\]\s+.+?\[(\d+)(?:/\d+)?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")


def load(directory):
    """{(role, kind): [switch-ins, delay ms, run ms]} over the recording."""
    threads = {}
    with open(f"{directory}/threads", encoding="utf-8") as f:
        for line in f:
            parts = line.split(maxsplit=2)
            if len(parts) == 3:
                threads[int(parts[1])] = (parts[0], parts[2].strip())
    with open(f"{directory}/leader", encoding="utf-8") as f:
        leader = f.read().strip()
    timehist = subprocess.run(
        ["perf", "sched", "timehist", "-i", f"{directory}/perf.data"],
        capture_output=True, text=True, check=True).stdout
    totals = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for line in timehist.splitlines():
        m = LINE.match(line)
        if not m or int(m.group(1)) not in threads:
            continue
        owner, name = threads[int(m.group(1))]
        role = "client" if owner == "client" else ("leader" if owner == leader else "follower")
        t = totals[(role, re.sub(r"\d+$", "", name))]
        t[0] += 1
        t[1] += float(m.group(3))
        t[2] += float(m.group(4))
    return totals


def main():
    load_dir, idle_dir, window = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with open(f"{load_dir}/bench.json", encoding="utf-8") as f:
        rate = json.load(f)["throughput"]
    busy, idle = load(load_dir), load(idle_dir)
    print(f"{rate:.0f} writes/s; per write = (loaded - idle) / writes; followers summed")
    print(f"{'role':<9}{'threads':<17}{'switch-ins/s':>13}{'idle':>7}{'delay us':>9}"
          f"{'CPU ms/s':>9}{'idle':>7}{'switch-ins/write':>17}{'CPU us/write':>13}")
    all_switches = all_cpu = 0.0
    for key in sorted(busy):
        n, delay, run = busy[key]
        i = idle.get(key, [0, 0.0, 0.0])
        per_write = (n - i[0]) / window / rate if rate else 0.0
        cpu_per_write = 1000 * (run - i[2]) / window / rate if rate else 0.0
        all_switches += per_write
        all_cpu += cpu_per_write
        print(f"{key[0]:<9}{key[1]:<17}{n / window:13.0f}{i[0] / window:7.0f}"
              f"{1000 * delay / max(n, 1):9.1f}{run / window:9.1f}{i[2] / window:7.1f}"
              f"{per_write:17.2f}{cpu_per_write:13.1f}")
    print(f"all: {all_switches:.1f} switch-ins and {all_cpu:.0f} us of CPU per write")


if __name__ == "__main__":
    main()
