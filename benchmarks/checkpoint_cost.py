#!/usr/bin/env python3
"""How long one checkpoint of a partition takes, and how big it is, as the engine's state
grows: the worker writes one every 10,000 events (or 30 s), in its main loop.

    python benchmarks/checkpoint_cost.py [--events 200000] [--every 20000] [--saves 1]

Uses the worker's own `DirectoryCheckpointStore` on a temporary directory; times the
whole `save` (pickle streamed into the temporary file while hashed, fsync, rename: the
loop waits for all of it), `begin_synced_save` (what the loop waits for when a thread does the
fsync and the rename: the pickle into the page cache) and `begin_save` (what the loop waits for
when a forked child writes the checkpoint: the fork), then the child's whole write. With `--saves N`, each row
saves N times and shows the median save (and the slowest)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=20_000)
    parser.add_argument("--saves", type=int, default=1, help="saves per row: the median is shown, then the max")
    args = parser.parse_args(argv)
    from shopstream.engine import Engine
    from shopstream.events import decode_event
    from stream.checkpointing.stores import DirectoryCheckpointStore
    from stream.partition import Partition

    store = DirectoryCheckpointStore(tempfile.mkdtemp(prefix="shopstream-ckpt-"))
    engine = Engine.fresh("logreg", "shop")
    state = Partition("bench", 0, engine)
    print("| events | open predictions | sessions | checkpoint MiB | save s (streamed, incl. fsync) | "
          "begin_synced_save ms (fsync in a thread) | begin_save (fork) ms | background write s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (_, value) in enumerate(make_messages(args.events), 1):
        engine.process(decode_event(value), i)
        if i % args.every == 0 or i == 10_000:
            state.next_offset = i
            times = []
            for _ in range(args.saves):
                t = time.perf_counter()
                store.save(state)
                times.append(time.perf_counter() - t)
            times.sort()
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
                  f"{size / 2**20:.1f} | {save} | {synced_ms} | {fork_ms:.1f} | {background_s:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
