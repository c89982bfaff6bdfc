#!/usr/bin/env python3
"""A session table after a fork: page faults and CPU per event of the same reads and updates, with
rows as Python objects (the feature state's layout) or as columns of numbers.

    python benchmarks/table_layouts.py [--rows 200000] [--events 20000]

An experiment for a checkpoint that forks a large heap (BENCHMARKS.md, "The API on librdkafka",
13-14): after `fork()` every page is shared with the child, and the first write to each costs the
parent a copy-on-write fault. Reading a Python object writes its reference count, so a row that
is a list of objects costs a page for each object it reads; a row that is a slot in a few arrays
costs a page per array, and neighbouring rows share pages. Both tables hold `--rows` sessions
with the same numbers; each event picks a session at random (uniformly: a worst case, a live
shop's sessions are mostly recent) and does what `ShopFeatures` does with the numbers of one:

- objects: an `OrderedDict` of [start, views, carts, carted set, viewed dict, last seen], as
  `shopstream/features.py` kept them until stop 39 (now `shopstream/session_table.py`, columns
  with the recency as a linked list of slots): read views and carts, views += 1, last seen = t,
  `move_to_end` (recency order);
- columns: a dict session -> slot, and one `array` per number (start, views, carts, last seen,
  last touched): the same reads and writes, recency as a counter written to the slot.

The carted products and viewed counts (a set and a dict per session) are not in the columns'
version: how to keep them compactly is part of the design this informs, not of this measure.
Each layout: one chunk of `--events` before the fork, then two while a child that only sleeps
shares the heap (`fork_faults.forked_child`).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
from array import array
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fork_faults import chunk_cost, forked_child  # noqa: E402


def objects_table(keys: list) -> OrderedDict:
    """The feature state's layout: session -> [start, views, carts, carted set, viewed dict, last seen]."""
    return OrderedDict((key, [1.7e9 + i, i % 300, i % 7, {f"p{i % 50}"}, {f"p{i % 90}": i % 400}, 1.7e9 + i])
                       for i, key in enumerate(keys))


def columns_table(keys: list) -> tuple[dict, dict]:
    """The same numbers as columns: session -> slot, and an array per number (and the last touch)."""
    n = len(keys)
    return {key: i for i, key in enumerate(keys)}, {
        "start": array("d", (1.7e9 + i for i in range(n))), "views": array("q", (i % 300 for i in range(n))),
        "carts": array("q", (i % 7 for i in range(n))), "last": array("d", (1.7e9 + i for i in range(n))),
        "touched": array("q", range(n))}


def as_objects(objects: OrderedDict):
    """One event's work per session key: read views and carts, count a view, date it, move it last."""
    def run(chunk):
        t = 1.8e9
        for key in chunk:
            row = objects.get(key)
            row[1] + 0.0, row[2] + 0.0
            row[1] += 1
            if t > row[5]:
                row[5] = t
            objects.move_to_end(key)
    return run


def as_columns(table: tuple[dict, dict]):
    """The same work on the columns; recency is the slot's last-touched counter."""
    index, columns = table
    views, carts, last, touched = columns["views"], columns["carts"], columns["last"], columns["touched"]

    def run(chunk):
        t, n = 1.8e9, len(touched)
        for key in chunk:
            slot = index.get(key)
            views[slot] + 0.0, carts[slot] + 0.0
            views[slot] += 1
            if t > last[slot]:
                last[slot] = t
            n += 1
            touched[slot] = n
    return run


def measure(rows: int, events: int) -> dict:
    """layout -> {"before": (us, faults) per event, "sharing": [(us, faults), (us, faults)]}. Each layout
    is built afresh, after the other's child is gone (an earlier fork leaves every page write-protected)."""
    rng = random.Random(7)
    keys = [f"{rng.randrange(10 ** 9)}-{i}" for i in range(rows)]
    picks = [keys[rng.randrange(rows)] for _ in range(events * 3)]
    out = {}
    for name, build, runner in (("objects", objects_table, as_objects), ("columns", columns_table, as_columns)):
        table = build(keys)
        run = runner(table)
        gc.collect()
        before = chunk_cost(run, picks[:events])
        with forked_child():
            sharing = [chunk_cost(run, picks[events:2 * events]), chunk_cost(run, picks[2 * events:])]
        out[name] = {"before": before, "sharing": sharing}
        del table, run
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    print(f"{args.rows:,} sessions, {args.events:,} events a chunk; per event, CPU us / minor faults:")
    for name, row in measure(args.rows, args.events).items():
        (us, faults), sharing = row["before"], row["sharing"]
        print(f"  {name:>8}: before the fork {us:5.2f} / {faults:4.2f}; sharing the heap: "
              + ", then ".join(f"{u:5.2f} / {f:4.2f}" for u, f in sharing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
