#!/usr/bin/env python3
"""Do the disk's slow fdatasyncs stall one file or the whole device?

A spool that writes to two segment files at once ("lanes") could acknowledge a request on the
free lane while the other waits out a slow sync, but only if a sync on one file can finish
while a sync on another is stalled. Each lane overwrites a pre-zeroed file with a record and
fdatasyncs it every PERIOD ms, as the spool's group commit does into its zero-filled room.

For every stall (a sync over STALL_MS) it counts the other lanes' syncs that started and
finished inside it, at least ESCAPE_MS before it ended, against how many they would have
finished in that time at their own pace were the stall the file's alone; and, of the other
lanes' syncs that started inside a stall, how many escaped it that way.

Usage: sync_lanes.py [LANES=2] [SECONDS=60] [PERIOD_MS=10] [RECORD_BYTES=40000] [DIR=.]
Run it on the disk the spool uses, with nothing else running.
"""

import os
import statistics
import sys
import tempfile
import threading
import time

STALL_MS = 2.0
ESCAPE_MS = 1.0
# A sync that starts this close to a stall's start or end is at its edge, not inside it.
EDGE_MS = 0.5
FILE_BYTES = 64 << 20


def lane(path, seconds, period, record, log, start_together):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"\0" * FILE_BYTES)
        os.fdatasync(fd)
        # Every file filled and synced before any lane measures.
        start_together.wait()
        pos = 0
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < end:
            os.pwrite(fd, record, pos)
            pos = (pos + len(record)) % (FILE_BYTES - len(record))
            start = time.monotonic()
            os.fdatasync(fd)
            log.append((start, time.monotonic()))
            next_at += period
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()
    finally:
        os.close(fd)


def percentile(sorted_values, p):
    # The rounded-index rule of scripts/latency-log.py and the bench's LoadReport::percentile_ms
    # (Python rounds a tie to even, Rust away from zero).
    return sorted_values[round((len(sorted_values) - 1) * p)]


def main():
    args = sys.argv[1:]
    lanes = int(args[0]) if len(args) > 0 else 2
    seconds = float(args[1]) if len(args) > 1 else 60.0
    period = (float(args[2]) if len(args) > 2 else 10.0) / 1000
    record = b"x" * (int(args[3]) if len(args) > 3 else 40000)
    where = args[4] if len(args) > 4 else "."

    logs = [[] for _ in range(lanes)]
    start_together = threading.Barrier(lanes)
    with tempfile.TemporaryDirectory(dir=where, prefix="sync-lanes-") as tmp:
        threads = [
            threading.Thread(
                target=lane,
                args=(
                    os.path.join(tmp, f"lane{i}.seg"),
                    seconds,
                    period,
                    record,
                    logs[i],
                    start_together,
                ),
            )
            for i in range(lanes)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    print(f"{lanes} lane(s), {seconds:.0f} s, a {len(record)} B record and fdatasync every "
          f"{period * 1000:.0f} ms per lane")
    for i, log in enumerate(logs):
        ms = sorted((e - s) * 1000 for s, e in log)
        print(f"lane {i}: syncs {len(ms)}, p50 {percentile(ms, 0.5):.2f} ms, "
              f"p99 {percentile(ms, 0.99):.2f} ms, max {ms[-1]:.2f} ms, "
              f"over {STALL_MS:g} ms {sum(x > STALL_MS for x in ms)}")
    if lanes < 2:
        return

    stalls = finished_inside = started_inside = escaped = 0
    expected_inside = 0.0
    lag_after_stall = []
    for a, log in enumerate(logs):
        for s, e in log:
            if (e - s) * 1000 <= STALL_MS:
                continue
            stalls += 1
            for b, other in enumerate(logs):
                if b == a:
                    continue
                expected_inside += max(0.0, (e - s) * 1000 - ESCAPE_MS) / (period * 1000)
                for other_start, other_end in other:
                    ends_early = (e - other_end) * 1000 >= ESCAPE_MS
                    finished_inside += s <= other_start and ends_early
                    if s + EDGE_MS / 1000 < other_start < e - EDGE_MS / 1000:
                        started_inside += 1
                        escaped += ends_early
                        lag_after_stall.append((other_end - e) * 1000)
    print(f"stalls over {STALL_MS:g} ms: {stalls}; the other lanes' syncs done inside them "
          f"(>= {ESCAPE_MS:g} ms before the stall ended): {finished_inside}, against "
          f"{expected_inside:.0f} at their own pace were each stall its file's alone")
    print(f"the other lanes' syncs that started inside a stall: {started_inside}; escaped it: "
          f"{escaped}")
    if lag_after_stall:
        print(f"their end minus the stall's end: median {statistics.median(lag_after_stall):.2f} "
              f"ms, range {min(lag_after_stall):.2f} to {max(lag_after_stall):.2f} ms")


if __name__ == "__main__":
    main()
