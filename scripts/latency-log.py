#!/usr/bin/env python3
"""Reads a BENCH_LATENCY_LOG file (one line per acknowledged request, written by the bench's load
generator) and says what the slow acknowledgements share, per load run:

- p50 / p90 / p99 and the share of requests slower than 1.5 times the median;
- that share per connection (a connection that is slower than the others);
- for lags 1-10, how often the request `lag` places later on the same connection is slow too,
  given that this one is: a lag well above the others is a period (something that happens every
  `lag` requests of a connection, such as a batch handed to the exporter every 500 spans);
- the moments where slow requests crowd (three or more connections within 50 ms: a stall of the
  host or of one process, not of one request).

Usage: BENCH_LATENCY_LOG=/tmp/lat.txt cargo bench --bench bench -- --only 4
       scripts/latency-log.py /tmp/lat.txt
"""

import collections
import sys


def percentile(sorted_values, p):
    return sorted_values[round((len(sorted_values) - 1) * p)]


def main(path):
    runs = collections.defaultdict(list)
    unreadable = 0
    with open(path) as f:
        for line in f:
            try:
                protocol, target, start_ms, connection, sent_us, latency_us = line.split()
                row = (int(sent_us), int(connection), int(latency_us))
                runs[(int(start_ms), protocol, target)].append(row)
            except ValueError:
                unreadable += 1
    if unreadable:
        print(f"({unreadable} lines not in the log's format were skipped)")
    for (start_ms, protocol, target), rows in sorted(runs.items()):
        rows.sort()
        latencies = sorted(r[2] for r in rows)
        median = percentile(latencies, 0.5)
        slow_line = 1.5 * median
        print(
            f"{protocol} {target} (run started {start_ms}): {len(rows)} requests, "
            f"p50 {median / 1e3:.2f} ms, p90 {percentile(latencies, 0.9) / 1e3:.2f} ms, "
            f"p99 {percentile(latencies, 0.99) / 1e3:.2f} ms; "
            f"slow (>= {slow_line / 1e3:.2f} ms): "
            f"{sum(l >= slow_line for l in latencies) / len(latencies):.3f}"
        )
        per_connection = collections.defaultdict(list)
        for _, connection, latency in rows:
            per_connection[connection].append(latency >= slow_line)
        shares = {c: sum(f) / len(f) for c, f in sorted(per_connection.items())}
        print("  slow share by connection:", {c: round(s, 3) for c, s in shares.items()})
        lags = []
        for lag in range(1, 11):
            slow_then = slow_again = 0
            for flags in per_connection.values():
                for i in range(len(flags) - lag):
                    if flags[i]:
                        slow_then += 1
                        slow_again += flags[i + lag]
            lags.append(f"{lag}: {slow_again / slow_then:.2f}" if slow_then else f"{lag}: -")
        print("  slow again `lag` requests later on the same connection:", ", ".join(lags))
        slow = [(sent, connection) for sent, connection, latency in rows if latency >= slow_line]
        crowds = []
        i = 0
        while i < len(slow):
            j = i
            while j + 1 < len(slow) and slow[j + 1][0] - slow[i][0] <= 50_000:
                j += 1
            connections = {c for _, c in slow[i : j + 1]}
            if len(connections) >= 3:
                crowds.append(f"{slow[i][0] / 1e6:.2f} s ({j - i + 1})")
            i = j + 1
        print("  slow requests crowding (3+ connections within 50 ms):", ", ".join(crowds) or "none")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
