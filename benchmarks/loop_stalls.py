#!/usr/bin/env python3
"""What stops the worker's loop, and for how long: the in-process causes of tail latency.

At 2,000 events/s an event arrives every 0.5 ms; anything that holds the loop for 50 ms
delays the next 100 events, so p99 latency is set by the loop's longest stops, not by the
mean cost per event. This measures each candidate on the worker's own engine (default
line-up, shop features, the worker's GC thresholds) after N events of state:

- every event's decode + `engine.process`, one by one (p50, p99, max, how many took > 1 / 10 / 50 ms);
- every automatic garbage collection during those events, by generation (`gc.callbacks`);
- the per-second metrics snapshot (`EngineSnapshot.of`), and the worker's other periodic calls.

CPU-bound and in one process, so a loaded machine stretches every figure alike: compare rows
of one run, not runs.

    python benchmarks/loop_stalls.py [--state 100000] [--events 20000] [--features shop]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages, say  # noqa: E402


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "p50": at(0.50), "p99": at(0.99), "max": ordered[-1], "sum": sum(ordered)}


class GcTimer:
    """The duration of every automatic collection, by generation."""

    def __init__(self):
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=int, default=100_000, help="events processed before measuring")
    parser.add_argument("--events", type=int, default=20_000, help="events measured one by one")
    parser.add_argument("--features", default="shop", help="feature set (shop or raw)")
    parser.add_argument("--snapshots", type=int, default=30, help="metrics snapshots timed")
    args = parser.parse_args(argv)

    from dataclasses import replace

    from shopstream.engine import GC_THRESHOLDS
    from shopstream.events import decode_event
    from shopstream.exporter import EngineSnapshot
    from stream.settings import WorkerSettings
    from stream.worker import new_engine

    settings = WorkerSettings()
    settings = replace(settings, engine=replace(settings.engine, features=args.features))
    engine, _origin = new_engine(settings)
    gc.set_threshold(*GC_THRESHOLDS)   # the worker's own (stream/worker.py run_worker)
    say(f"generating {args.state + args.events:,} events")
    messages = make_messages(args.state + args.events)
    started = time.perf_counter()
    for offset, (_key, value) in enumerate(messages[:args.state]):
        engine.process(decode_event(value), offset)
    say(f"{args.state:,} events of state in {time.perf_counter() - started:.1f} s; "
        f"{engine.open_predictions:,} open predictions, {len(gc.get_objects()):,} objects tracked by the GC")

    timer = GcTimer()
    gc.callbacks.append(timer)
    per_event = []
    clock = time.perf_counter
    for offset, (_key, value) in enumerate(messages[args.state:], start=args.state):
        t0 = clock()
        engine.process(decode_event(value), offset)
        per_event.append(clock() - t0)
    gc.callbacks.remove(timer)

    snapshot = []
    for _ in range(args.snapshots):
        t0 = clock()
        EngineSnapshot.of(engine)
        snapshot.append(clock() - t0)
    full = []
    for _ in range(3):
        t0 = clock()
        gc.collect()
        full.append(clock() - t0)

    ms = 1000.0
    events = percentiles(per_event)
    rows = [("decode + engine.process, per event", events)]
    for generation, pauses in timer.pauses.items():
        if pauses:
            rows.append((f"automatic GC, generation {generation}", percentiles(pauses)))
    rows.append(("metrics snapshot (EngineSnapshot.of), once a second", percentiles(snapshot)))
    rows.append(("gc.collect() of everything (a full pass)", percentiles(full)))
    load = os.getloadavg()[0]
    print(f"\nLoop stops after {args.state:,} events of state, {args.features} features, load average {load:.1f}\n")
    print("| what | count | p50 ms | p99 ms | max ms | total ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows:
        print(f"| {name} | {row['n']:,} | {row['p50'] * ms:.3f} | {row['p99'] * ms:.3f} | {row['max'] * ms:.1f} "
              f"| {row['sum'] * ms:,.0f} |")
    slow = {limit: sum(1 for t in per_event if t > limit / ms) for limit in (1, 10, 50)}
    print(f"\nevents over 1 / 10 / 50 ms: {slow[1]} / {slow[10]} / {slow[50]} of {len(per_event):,}; "
          f"mean {statistics.fmean(per_event) * 1e6:.0f} us per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
