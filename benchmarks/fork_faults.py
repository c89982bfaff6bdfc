#!/usr/bin/env python3
"""What a forked checkpoint costs the engine that goes on learning, in process: page faults and time per event.

    python benchmarks/fork_faults.py [--state 1000000] [--chunk 10000] [--chunks 12] [--threads 0]
                                     [--events-per-second 1500]

Builds an engine (shop features, logreg) on `--state` generated events, times `--chunk` events at a
time (CPU-clock microseconds and minor page faults per event, `getrusage`), forks a child that
only sleeps (as a checkpoint child would, minus its work: `gc.freeze()` first, the collector off in it),
times `--chunks` chunks while the child shares the heap, then the child's exit and three more. The
faults after the fork are the parent's copy-on-write of the pages it writes; the events are decoded
before the build, so their own pages count too (about one fault per event). `--threads N` adds N
threads that wake every millisecond, as the worker's client threads do. `--events-per-second E`
generates events whose time advances one second per E events, as `serving.py`'s feed does (1,500):
then every prediction of the last 1,800 s of event time is still open (up to the engine's cap of 1M),
where the default generator spreads a month over the events and few stay open.

Against the live worker (`benchmarks/serving.py --trace` and a sampler of
``/proc/<worker>/task/*/stat``), this separates the engine's own share of a fork's aftermath.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages, paced_records  # noqa: E402


def chunk_cost(engine, events) -> tuple[float, float]:
    """(CPU microseconds, minor faults) per event of processing `events` with `engine`."""
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    for event in events:
        engine.process(event)
    spent, after = time.process_time() - started, resource.getrusage(resource.RUSAGE_SELF)
    return spent / len(events) * 1e6, (after.ru_minflt - before.ru_minflt) / len(events)


def measure(state: int, chunk: int, chunks: int, threads: int = 0, events_per_second: float = 0.0) -> dict:
    from shopstream.engine import Engine
    from shopstream.events import decode_event
    total = state + chunk * (chunks + 6)
    if events_per_second:
        import msgspec

        events = [decode_event(msgspec.json.encode(r)) for r in paced_records(total, events_per_second)]
    else:
        events = [decode_event(value) for _, value in make_messages(total)]
    engine = Engine.fresh("logreg", "shop")
    for event in events[:state]:
        engine.process(event)
    open_predictions = engine.open_predictions
    gc.collect()
    stop = threading.Event()

    def wake_often() -> None:
        while not stop.is_set():
            time.sleep(0.001)

    for _ in range(threads):
        threading.Thread(target=wake_often, daemon=True).start()
    position = state

    def next_chunk():
        nonlocal position
        position += chunk
        return chunk_cost(engine, events[position - chunk:position])

    rows: dict = {"before": [next_chunk() for _ in range(3)]}
    gc.freeze()
    child = os.fork()
    if child == 0:   # as a checkpoint child, without its writes: the parent's faults alone
        gc.disable()
        time.sleep(3600)
        os._exit(0)
    try:
        rows["sharing"] = [next_chunk() for _ in range(chunks)]
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        gc.unfreeze()
    rows["after"] = [next_chunk() for _ in range(3)]
    stop.set()
    rows["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows["open_predictions"] = open_predictions   # when the state was built
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--events-per-second", type=float, default=0.0)
    args = parser.parse_args(argv)
    rows = measure(args.state, args.chunk, args.chunks, args.threads, args.events_per_second)
    print(f"state {args.state:,} events ({rows['open_predictions']:,} predictions open), peak RSS "
          f"{rows['rss_mib']:,.0f} MiB; per event, {args.chunk:,} at a time:")
    for phase in ("before", "sharing", "after"):
        for i, (us, faults) in enumerate(rows[phase]):
            print(f"  {phase:>7} {i:2d}: {us:6.1f} us CPU, {faults:5.2f} minor faults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
