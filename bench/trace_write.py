#!/usr/bin/env python3
"""Stages of one-client publishes from a perf recording (see bench/trace-write.sh).

    bench/trace_write.py SCRIPT_TXT THREADS LEADER

SCRIPT_TXT is `perf script` output of the system-call tracepoints trace-write.sh
records; THREADS maps each thread id to its process ("n1".."n3", "client"); LEADER
names the config leader's process. Per node it prints the median and mean time from
one stage mark to the next, and for the leader the whole request (client request
read -> reply sent). The marks are recognized by size, which holds for config-publish
with 256-byte values at one client: a log append's WAL write is 500-700 bytes, an
apply's 1,000-1,300; a one-entry append request 550-800; an acknowledgement 45; the
client's request 250-400 and the reply 75-90.

Only the Python standard library is used.
"""

import collections
import re
import sys

LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+\S+:(\w+):\s*(.*)$")
SIZE = re.compile(r"(?:count|len): (0x[0-9a-f]+)")


def events(script, threads):
    """(ms, process, thread name, event, size or None) for the processes' threads."""
    out = []
    with open(script, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            comm, tid, ts, name, args = m.groups()
            proc = threads.get(tid)
            if proc is None or name == "sched_wakeup":
                continue
            size = None
            s = SIZE.search(args)
            if s:
                size = int(s.group(1), 16)
            elif name.startswith("sys_exit") and args.startswith("0x"):
                size = int(args, 16)
            out.append((float(ts) * 1000.0, proc, comm, name, size))
    out.sort()
    return out


def between(lo, hi):
    return lambda n: n is not None and lo <= n <= hi


LOG_WRITE, APPLY_WRITE = between(500, 700), between(1000, 1300)
APPEND_IN, ACK, REQUEST, REPLY = between(550, 800), between(45, 45), between(250, 400), between(75, 90)


# The stages in the order a write passes them.
ORDER = [
    "client request read -> log write",
    "append request read -> log write",
    "log write -> fdatasync",
    "fdatasync",
    "fdatasync done -> acknowledgement sent",
    "acknowledgement read -> apply write",
    "apply write -> reply sent",
    "WHOLE: client request read -> reply sent",
]


def stages(evs, leader):
    """{stage: [ms, ...]} for one process's events."""
    got = collections.defaultdict(list)
    mark = {}

    def since(key, stage, now):
        if key in mark:
            got[stage].append(now - mark.pop(key))

    for ts, proc, comm, name, size in evs:
        client_side = comm.startswith("tokio")
        if name == "sys_exit_recvfrom":
            if proc == leader and client_side and REQUEST(size):
                mark["request"] = mark["req-whole"] = ts
            elif proc == leader and ACK(size):
                mark["ack"] = ts
            elif proc != leader and APPEND_IN(size):
                mark["append"] = ts
        elif name == "sys_enter_write":
            if LOG_WRITE(size):
                since("request", "client request read -> log write", ts)
                since("append", "append request read -> log write", ts)
                mark["log"] = ts
            elif APPLY_WRITE(size):
                since("ack", "acknowledgement read -> apply write", ts)
                mark["apply"] = ts
        elif name == "sys_enter_fdatasync":
            since("log", "log write -> fdatasync", ts)
            mark["fsync"] = ts
        elif name == "sys_exit_fdatasync":
            since("fsync", "fdatasync", ts)
            mark["synced"] = ts
        elif name == "sys_enter_sendto":
            if proc != leader and ACK(size):
                since("synced", "fdatasync done -> acknowledgement sent", ts)
            elif proc == leader and client_side and REPLY(size):
                since("apply", "apply write -> reply sent", ts)
                since("req-whole", "WHOLE: client request read -> reply sent", ts)
    return got


def main():
    script, threads_file, leader = sys.argv[1:4]
    threads = {}
    with open(threads_file, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                threads[parts[0]] = parts[1]
    evs = events(script, threads)
    by_proc = collections.defaultdict(list)
    for e in evs:
        by_proc[e[1]].append(e)
    for proc in sorted(p for p in by_proc if p != "client"):
        print("%s (%s)" % (proc, "leader" if proc == leader else "follower"))
        got = stages(by_proc[proc], leader)
        for stage in ORDER:
            xs = sorted(got.get(stage, []))
            if not xs:
                continue
            print("  %-44s n=%5d  median %7.1f us  mean %7.1f us" % (
                stage, len(xs), xs[len(xs) // 2] * 1000, sum(xs) / len(xs) * 1000))


if __name__ == "__main__":
    main()
