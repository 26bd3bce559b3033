#!/usr/bin/env python3
"""Where a write's time went during one benchmark run, per node.

    bench/stages.py BEFORE_DIR AFTER_DIR [GROUP]

Each directory holds one /metrics scrape per node (n1.txt, n2.txt, ...), taken just
before and just after the run (bench/compare.sh does this for its nacosd write runs).
For each node the script prints, from the difference of the histograms' sums and
counts, the mean of every stage of the write path in GROUP (default: config):

- write local / forwarded: arrival at this node to the reply (nacosd_write_seconds),
  for writes proposed here as leader and writes forwarded to the leader;
- commit: an entry's append to this node's log to its hand-off to the state machine
  (nacosd_raft_commit_seconds): on the leader, fsync + replication + quorum ack;
- apply: one applied batch (nacosd_raft_apply_seconds), and entries per batch;
- wal fsync: one fsync of the shared WAL, and appends it covered (all groups);
- forward batch: writes per ForwardWrites call sent by this node.

Only the Python standard library is used.
"""

import os
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def scrape(path):
    """{(name, labels): value} of one OpenMetrics text file."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            try:
                values[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return values


def delta(before, after, name, labels):
    return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)


def mean(before, after, base, labels):
    """(mean of the histogram `base` over the run, observations) or None."""
    count = delta(before, after, base + "_count", labels)
    if count <= 0:
        return None
    return delta(before, after, base + "_sum", labels) / count, count


def fmt_ms(m):
    return "-" if m is None else f"{m[0] * 1000:.2f} ms ({int(m[1])})"


def fmt_n(m):
    return "-" if m is None else f"{m[0]:.1f} ({int(m[1])})"


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    before_dir, after_dir = sys.argv[1], sys.argv[2]
    group = sys.argv[3] if len(sys.argv) > 3 else "config"
    g = f'{{group="{group}"}}'
    rows = []
    for name in sorted(os.listdir(after_dir)):
        b_path, a_path = os.path.join(before_dir, name), os.path.join(after_dir, name)
        if not os.path.exists(b_path):
            continue
        b, a = scrape(b_path), scrape(a_path)
        rows.append((
            name.removesuffix(".txt"),
            fmt_ms(mean(b, a, "nacosd_write_seconds", f'{{group="{group}",path="local"}}')),
            fmt_ms(mean(b, a, "nacosd_write_seconds", f'{{group="{group}",path="forwarded"}}')),
            fmt_ms(mean(b, a, "nacosd_raft_commit_seconds", g)),
            fmt_ms(mean(b, a, "nacosd_raft_apply_seconds", g)),
            fmt_n(mean(b, a, "nacosd_raft_apply_entries", g)),
            fmt_ms(mean(b, a, "nacosd_wal_sync_seconds", "")),
            fmt_n(mean(b, a, "nacosd_wal_sync_appends", "")),
            fmt_n(mean(b, a, "nacosd_forward_call_writes", "")),
        ))
    header = ("node", "write local", "write forwarded", "commit", "apply batch",
              "entries/apply", "wal fsync", "appends/fsync", "writes/forward call")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(f"stages of group {group} (mean over the run, observations in parentheses):")
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
