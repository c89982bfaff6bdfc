#!/usr/bin/env python3
"""What a forked checkpoint costs the engine that goes on learning, in process: page faults and time per event.

    python benchmarks/fork_faults.py [--state 1000000] [--chunk 10000] [--chunks 12] [--threads 0]
                                     [--events-per-second 1500] [--parts] [--child sleep|pickle]

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

`--child pickle`: the child writes the checkpoint payload (`dump_payload` of the engine's partition, into
/dev/null) and exits, as a forked checkpoint's copy does minus the store; the child's own CPU, system
time and minor faults are printed (reading an object writes its reference count, so the child copies
the pages it reads).

`--parts` then splits a fork's cost by the part of the engine that writes: for each part, a
fresh child (so every page is shared again) and the next `--chunk` events through that part
alone: the whole engine, the features (`transform` then `learn`), the label joiner (`advance`,
`purchase`, `open` with one fixed feature dict), the model (predict and learn one fixed dict),
and within the features the session table's reads, its recency order (`SessionTable.touch`), the user
and the product tables' reads.

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
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages, paced_backlog  # noqa: E402


def chunk_cost(run, events) -> tuple[float, float]:
    """(CPU microseconds, minor faults) per event of `run(events)`."""
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    run(events)
    spent, after = time.process_time() - started, resource.getrusage(resource.RUSAGE_SELF)
    return spent / len(events) * 1e6, (after.ru_minflt - before.ru_minflt) / len(events)


@contextmanager
def forked_child(work=None):
    """A forked child that shares the heap (`gc.freeze()` first, the collector off in it, as a
    checkpoint child) and only sleeps (killed at the block's end), or runs `work()` and exits (waited
    for at the block's end). Yields a dict that then holds the child's `cpu_s`, `system_s`,
    `minor_faults` and `work_s` (how long `work()` took; None for a sleeping child)."""
    gc.freeze()
    took_read, took_write = os.pipe()
    child = os.fork()
    if child == 0:
        try:   # the child never returns into the caller's code, whatever `work` does
            gc.disable()
            os.close(took_read)
            if work is None:
                time.sleep(3600)
            else:
                started = time.monotonic()
                work()
                os.write(took_write, f"{time.monotonic() - started:.3f}".encode())
        finally:
            os._exit(0)
    os.close(took_write)
    report: dict = {}
    try:
        yield report
    finally:
        if work is None:   # a sleeping child is killed; one that works is waited for (its figures are whole)
            os.kill(child, 9)
        _, _, usage = os.wait4(child, 0)
        took = os.read(took_read, 64) if work is not None else b""
        os.close(took_read)
        report.update(cpu_s=usage.ru_utime + usage.ru_stime, system_s=usage.ru_stime,
                      minor_faults=usage.ru_minflt, work_s=float(took) if took else None)
        gc.unfreeze()


def checkpoint_payload(engine):
    """The work of a checkpoint's forked copy, minus the store: `dump_payload` of a partition
    holding `engine`, into /dev/null."""
    from stream.checkpointing.format import dump_payload
    from stream.partition import Partition

    def work():
        with open(os.devnull, "wb") as out:
            dump_payload(Partition("fork-faults", 0, engine), out)
    return work


def measure(state: int, chunk: int, chunks: int, threads: int = 0, events_per_second: float = 0.0,
            parts: bool = False, child: str = "sleep") -> dict:
    from shopstream.engine import Engine
    from shopstream.events import decode_event
    total = state + chunk * (chunks + 6 + (8 if parts else 0))
    if events_per_second:
        import msgspec

        events = [decode_event(msgspec.json.encode(r)) for r in paced_backlog(total, events_per_second)]
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
    process = _parts(engine)["engine"]

    def next_chunk():
        nonlocal position
        position += chunk
        return chunk_cost(process, events[position - chunk:position])

    rows: dict = {"before": [next_chunk() for _ in range(3)]}
    with forked_child(checkpoint_payload(engine) if child == "pickle" else None) as report:
        rows["sharing"] = [next_chunk() for _ in range(chunks)]
    rows["after"] = [next_chunk() for _ in range(3)]
    rows["child"] = dict(report, work=child)
    if parts:
        rows["parts"] = part_costs(engine, events[position:], chunk)
    stop.set()
    rows["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows["open_predictions"] = open_predictions   # when the state was built
    return rows


def _parts(engine) -> dict:
    """name -> a function of a list of events that runs them through that part of `engine` only."""
    from shopstream.labels import PREDICTION_POINT, PURCHASE, OpenPrediction, label_role, prediction_key

    features, joiner, model = engine.features, engine.joiner, engine.slots[0].model
    fixed: dict = {}

    def whole(events):
        for event in events:
            engine.process(event)

    def feature_tables(events):
        for event in events:
            features.transform(event)
            features.learn(event)

    def label_joiner(events):
        for event in events:
            joiner.advance(event.event_time, event.user_id)
            role = label_role(event)
            if role == PURCHASE:
                joiner.purchase(prediction_key(event), event.event_time)
            elif role == PREDICTION_POINT:
                joiner.open(OpenPrediction(prediction_key(event), event.event_time, dict(fixed), [(0.25, False)]),
                            True)

    def learner(events):
        for _ in events:
            model.predict_proba_one(fixed)
            model.learn_one(fixed, False)

    def session_reads(events):
        sessions = features.sessions
        for event in events:
            slot = sessions.index.get(event.user_session)
            if slot is not None:
                carted, viewed = sessions.carted[slot], sessions.viewed[slot]
                sessions.views[slot], carted is not None and event.product_id in carted, \
                    viewed is not None and viewed.get(event.product_id)

    def session_order(events):
        sessions = features.sessions
        for event in events:
            slot = sessions.index.get(event.user_session)
            if slot is not None:
                sessions.touch(slot)

    def user_reads(events):
        for event in events:
            features.users.index.get(event.user_id)

    def product_reads(events):
        for event in events:
            features.products.index.get(event.product_id)

    def prepare(events):
        fixed.update(features.transform(events[0]))

    return {"prepare": prepare, "engine": whole, "features": feature_tables, "label joiner": label_joiner,
            "model": learner, "sessions: read": session_reads, "sessions: recency": session_order,
            "users: read": user_reads, "products: read": product_reads}


def part_costs(engine, events, chunk: int) -> dict:
    """part -> (CPU microseconds, minor faults) per event over `chunk` events, each part right after
    a fork of its own (a child that only sleeps); `events` holds `chunk` per part."""
    parts = _parts(engine)
    parts.pop("prepare")(events)
    costs = {}
    for i, (name, run) in enumerate(parts.items()):
        with forked_child():
            costs[name] = chunk_cost(run, events[i * chunk:(i + 1) * chunk])
    return costs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--events-per-second", type=float, default=0.0)
    parser.add_argument("--parts", action="store_true", help="then each part's faults after a fork of its own")
    parser.add_argument("--child", choices=("sleep", "pickle"), default="sleep",
                        help="the child sleeps, or writes the checkpoint payload (dump_payload) and exits")
    args = parser.parse_args(argv)
    rows = measure(args.state, args.chunk, args.chunks, args.threads, args.events_per_second, args.parts,
                   args.child)
    print(f"state {args.state:,} events ({rows['open_predictions']:,} predictions open), peak RSS "
          f"{rows['rss_mib']:,.0f} MiB; per event, {args.chunk:,} at a time:")
    for phase in ("before", "sharing", "after"):
        for i, (us, faults) in enumerate(rows[phase]):
            print(f"  {phase:>7} {i:2d}: {us:6.1f} us CPU, {faults:5.2f} minor faults")
    child = rows["child"]
    took = f", its work {child['work_s']:.2f} s" if child["work_s"] else ""
    print(f"  the child ({child['work']}): {child['cpu_s']:.2f} s CPU ({child['system_s']:.2f} s system), "
          f"{child['minor_faults']:,} minor faults{took}")
    for name, (us, faults) in rows.get("parts", {}).items():
        print(f"  after a fork of its own, {name:>22}: {us:6.1f} us CPU, {faults:5.2f} minor faults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
