#!/usr/bin/env python3
"""How long one checkpoint of a partition takes, and how big it is, as the engine's state
grows: the worker writes one every 10,000 events (or 30 s), in its main loop.

    python benchmarks/checkpoint_cost.py [--events 200000] [--every 20000] [--saves 1]
                                         [--events-per-second 1500] [--compare-entries]

Uses the worker's own `DirectoryCheckpointStore` on a temporary directory; times the
whole `save` (pickle streamed into the temporary file while hashed, fsync, rename: the
loop waits for all of it), `begin_synced_save` (what the loop waits for when a thread does the
fsync and the rename: the pickle into the page cache) and `begin_save` (what the loop waits for
when a forked child writes the checkpoint: the fork), then the child's whole write. With `--saves N`, each row
saves N times and shows the median save (and the slowest).

`--events-per-second E` feeds `common.paced_records` (event time advancing one second per E
events, as `serving.py`'s feed: then predictions stay open by the hundred thousand) instead of
the default generator's month. `--compare-entries` adds the save with every batch of open
predictions pickled as entries (the payload before `OpenColumns`), in the same row."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages, paced_backlog  # noqa: E402


def _messages(events: int, events_per_second: float):
    if not events_per_second:
        return [value for _, value in make_messages(events)]
    import msgspec

    return [msgspec.json.encode(r) for r in paced_backlog(events, events_per_second)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=20_000)
    parser.add_argument("--saves", type=int, default=1, help="saves per row: the median is shown, then the max")
    parser.add_argument("--events-per-second", type=float, default=0.0)
    parser.add_argument("--compare-entries", action="store_true")
    args = parser.parse_args(argv)
    from shopstream.open_columns import OpenColumns
    from stream.checkpointing import format as checkpoint_format
    from shopstream.engine import Engine
    from shopstream.events import decode_event
    from stream.checkpointing.stores import DirectoryCheckpointStore
    from stream.partition import Partition

    store = DirectoryCheckpointStore(tempfile.mkdtemp(prefix="shopstream-ckpt-"))
    engine = Engine.fresh("logreg", "shop")
    state = Partition("bench", 0, engine)
    class EntriesOnly(OpenColumns):   # the payload before OpenColumns: every batch pickled as entries
        @classmethod
        def of(cls, entries):
            return None

    def timed_save(entries: bool = False) -> float:
        checkpoint_format.OpenColumns = EntriesOnly if entries else OpenColumns   # type: ignore[misc]
        try:
            t = time.perf_counter()
            store.save(state)
            return time.perf_counter() - t
        finally:
            checkpoint_format.OpenColumns = OpenColumns   # type: ignore[misc]

    print("| events | open predictions | sessions | checkpoint MiB | save s (streamed, incl. fsync) | "
          + ("save s, batches as entries | " if args.compare_entries else "")
          + "begin_synced_save ms (fsync in a thread) | begin_save (fork) ms | background write s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.compare_entries else ""))
    for i, value in enumerate(_messages(args.events, args.events_per_second), 1):
        engine.process(decode_event(value), i)
        if i % args.every == 0 or i == 10_000:
            state.next_offset = i
            entries_save = ""
            if args.compare_entries:
                as_entries = sorted(timed_save(entries=True) for _ in range(args.saves))
                entries_save = f"{as_entries[len(as_entries) // 2]:.3f}" + (
                    f" (max {as_entries[-1]:.3f})" if args.saves > 1 else "") + " | "
            times = sorted(timed_save() for _ in range(args.saves))
            save = f"{times[len(times) // 2]:.3f}" + (f" (max {times[-1]:.3f})" if args.saves > 1 else "")
            size = store.path("bench", 0).stat().st_size
            synced = []
            for _ in range(args.saves):
                t = time.perf_counter()
                pending = store.begin_synced_save(state)
                synced.append((time.perf_counter() - t) * 1e3)
                pending.finish()
            synced.sort()
            synced_ms = f"{synced[len(synced) // 2]:.1f}" + (f" (max {synced[-1]:.1f})" if args.saves > 1 else "")
            t = time.perf_counter()
            pending = store.begin_save(state)
            fork_ms = (time.perf_counter() - t) * 1e3
            pending.finish()
            background_s = time.perf_counter() - t
            print(f"| {i:,} | {engine.open_predictions:,} | {len(engine.features.sessions):,} | "
                  f"{size / 2**20:.1f} | {save} | {entries_save}{synced_ms} | {fork_ms:.1f} | {background_s:.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
