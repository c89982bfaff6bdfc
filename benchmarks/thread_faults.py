#!/usr/bin/env python3
"""Minor page faults and CPU ticks of every thread of a process, every 0.1 s, as JSON lines.

    python benchmarks/thread_faults.py OUT.jsonl [--match request_trace.py]

Follows the newest process whose command line contains `--match` (`pgrep -f`), so it can run
beside `benchmarks/serving.py --trace` and pick up each worker it starts. Each line:
``[unix time, pid, {tid: [thread name, minor faults, user ticks, system ticks]}]`` (cumulative,
from ``/proc/<pid>/task/<tid>/stat``). With the trace's checkpoint stops this shows whose page
faults follow a fork: the loop thread's (named after the process) or a Kafka client thread's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional


def threads_of(pid: int) -> dict:
    """{tid: [name, minor faults, user ticks, system ticks]} of `pid`'s threads ({} once it is gone)."""
    rows = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return rows
    for tid in tids:
        try:
            text = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:   # the thread ended meanwhile
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        rows[tid] = [name, int(rest[7]), int(rest[11]), int(rest[12])]   # minflt, utime, stime
    return rows


def newest(match: str) -> Optional[int]:
    """The newest process whose command line holds `match`, this sampler left out (its own holds it too)."""
    found = subprocess.run(["pgrep", "-f", match], capture_output=True, text=True).stdout.split()
    pids = [pid for pid in map(int, found) if pid != os.getpid()]
    return max(pids) if pids else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--match", default="request_trace.py")
    parser.add_argument("--every", type=float, default=0.1)
    args = parser.parse_args(argv)
    pid = None
    with open(args.out, "w") as out:
        while True:
            if pid is None or not os.path.exists(f"/proc/{pid}"):
                pid = newest(args.match)
                if pid is None:
                    time.sleep(0.5)
                    continue
            rows = threads_of(pid)
            if rows:
                out.write(json.dumps([round(time.time(), 3), pid, rows]) + "\n")
                out.flush()
            time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
