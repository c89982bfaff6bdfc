#!/usr/bin/env python3
"""Where a recorded score's time goes: the real `shopstream worker`, with stamps on each
`POST /score` request's way through it, written as JSON at exit.

    python benchmarks/request_trace.py TRACE.json -m cli worker [worker flags...]

benchmarks/serving.py runs its workers through this with `--trace FILE`. Per recorded
request (keyed by its event id), wall-clock seconds:

- ``in``: the front handed it over (body read and parsed); ``acked``: the broker acknowledged
  its event (the API's producer callback); ``sent``: the event record's CreateTime, stamped by
  the producer when it took the send;
- ``poll_start`` / ``poll_end``: the loop's poll that returned the record; ``at``: its index in
  that poll's records and ``of`` how many there were;
- ``handle``: the loop began to handle the record; ``done``: the desk answered it; ``out``:
  the answer was written to the client's socket by the thread that gave it (the code before
  2026-12-03 18:00: the front had the answer, its asyncio loop woke).

And the loop's stops, as `worker_variant.py --trace-loop` names them (checkpoints, snapshots,
the broker check), every garbage collection by generation, every one event whose handling took
over 5 ms, and every poll (start, end, records). Patches by name only: the code before a change
runs through it as well, as long as the names exist.

Experiments, by environment: BENCH_SWITCH_INTERVAL (seconds) replaces the worker's own choice;
BENCH_CHILD_SLEEP (seconds) makes a forked checkpoint's child wait that long before it writes.
The collector is the worker's `--gc` (stream/gc_mode.py); the experiment switches it grew from
(BENCH_GC_THRESHOLDS, BENCH_GC_PROMOTE) are in commits a36679a to 814bc72.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time


def install(path: str) -> None:
    import stream.checkpointer as checkpointer_module
    import stream.clients as clients_module
    import stream.serving as serving
    import stream.worker as worker_module

    wall = time.time
    requests: dict = {}   # event id -> stamps
    polls: list = []      # [start, end, records]
    stops: dict = {}
    current = {"poll": None, "index": 0, "handle": 0.0}

    original_consumer = clients_module.KafkaClients.consumer

    def consumer(self):
        made = original_consumer(self)
        original_poll = made.poll

        def poll(*args, **kwargs):
            start = wall()
            batches = original_poll(*args, **kwargs)
            n = sum(len(r) for r in batches.values()) if batches else 0
            row = [start, wall(), n]
            polls.append(row)
            current["poll"], current["index"] = row, 0
            return batches

        made.poll = poll
        return made

    clients_module.KafkaClients.consumer = consumer

    original_handle = worker_module.Worker.handle

    slow_events = stops.setdefault("one event over 5 ms (collections left out)", [])
    collected = [0.0]   # seconds of garbage collection so far (`on_gc` below)

    def handle(self, state, record):
        started = current["handle"] = wall()
        collected_before = collected[0]
        original_handle(self, state, record)
        current["index"] += 1
        # one event's own handling that stopped the loop (and the GIL's other threads); a collection
        # it triggered is counted under its own name, not here
        spent = wall() - started - (collected[0] - collected_before)
        if spent > 0.005:
            slow_events.append((started, spent))

    worker_module.Worker.handle = handle

    original_processed = serving.ScoreDesk.processed

    def processed(self, state, record, event, score):
        stamps = requests.get(event.event_id)
        original_processed(self, state, record, event, score)
        if stamps is not None:
            row = current["poll"] or [None, None, 0]
            stamps.update(done=wall(), handle=current["handle"], sent=record.timestamp / 1000.0,
                          poll_start=row[0], poll_end=row[1], at=current["index"], of=row[2])

    serving.ScoreDesk.processed = processed

    original_hand_over = serving.ScoreServer._hand_over

    async def hand_over(self, event, partition, whatif):
        if whatif:
            return await original_hand_over(self, event, partition, whatif)
        stamps = requests[event.event_id] = {"in": wall()}
        try:
            return await original_hand_over(self, event, partition, whatif)
        finally:
            stamps["out"] = wall()

    serving.ScoreServer._hand_over = hand_over

    # Answers written by the thread that gives them (stream/serving.py's DirectAnswer, since
    # 2026-12-03 18:00): handed over without waiting; ``out`` is when the answering thread wrote it
    # (or gave it to the front: a 5xx, a partial write).
    if hasattr(serving.ScoreServer, "_hand_over_direct"):
        original_direct = serving.ScoreServer._hand_over_direct

        def hand_over_direct(self, event, partition, mode, client, started):
            if mode != "whatif":
                requests[event.event_id] = {"in": wall()}
            return original_direct(self, event, partition, mode, client, started)

        serving.ScoreServer._hand_over_direct = hand_over_direct
        original_settle = serving.DirectAnswer.settle

        def settle(self, status, body, reason=None):
            original_settle(self, status, body, reason)
            stamps = requests.get(self.event_id) if self.mode != "whatif" else None
            if stamps is not None and "out" not in stamps:
                stamps["out"] = wall()

        serving.DirectAnswer.settle = settle

    original_write = serving.ScoreServer._write_event

    def write_event(self, event, partition, *rest):  # (answered, loop) before 2026-12-03 18:00; (settle) since
        send = self.producer.send
        stamps = requests.get(event.event_id)

        def timed_send(*args, **kwargs):
            future = send(*args, **kwargs)
            if stamps is not None:
                future.add_callback(lambda _meta: stamps.__setitem__("acked", wall()))
            return future

        self.producer.send = timed_send
        try:
            original_write(self, event, partition, *rest)
        finally:
            del self.producer.send   # back to the class's method

    serving.ScoreServer._write_event = write_event

    from common import time_calls

    def timed(owner, name: str, label: str) -> None:
        time_calls(owner, name, stops.setdefault(label, []), wall)

    for owner, name, label in ((worker_module.Worker, "take_snapshots", "metrics snapshot"),
                               (worker_module.Worker, "_maybe_checkpoint", "checkpoint check (per batch)"),
                               (checkpointer_module.Checkpointer, "poll", "background checkpoints finished"),
                               (worker_module.Worker, "_housekeeping", "housekeeping")):
        if hasattr(owner, name):
            timed(owner, name, label)

    # Collections stop the loop too (the worker's thresholds: `shopstream.engine.GC_THRESHOLDS`).
    import gc

    collecting = [0.0]

    # BENCH_GC_TYPES=N: what the first N young collections found, by type. Counting them stops the loop
    # (outside the collections' own times): runs with it are for the types, not for latency.
    young_types: list = []
    sample = int(os.environ.get("BENCH_GC_TYPES", "0") or 0)

    def on_gc(phase, info) -> None:
        if phase == "start":
            if info["generation"] == 0 and len(young_types) < sample:
                from collections import Counter
                counts = Counter(type(o).__qualname__ for o in gc.get_objects(0))
                young_types.append([wall(), counts.most_common(12)])
            collecting[0] = wall()
        else:
            now = wall()
            collected[0] += now - collecting[0]
            stops.setdefault(f"gc generation {info['generation']}", []).append([collecting[0], now - collecting[0]])

    gc.callbacks.append(on_gc)

    def write() -> None:
        with open(path, "w") as out:
            json.dump({"requests": requests, "polls": polls, "stops": stops, "young_types": young_types}, out)

    atexit.register(write)


def summarise(trace: dict, start: float, end: float) -> dict:
    """p50/p90/p99/max in ms of each part of the recorded requests handed over in [start, end)."""
    rows = [r for r in trace["requests"].values() if start <= r["in"] < end and "done" in r and "out" in r]
    parts = {
        "total (in -> out)": [r["out"] - r["in"] for r in rows],
        "produce (in -> acked)": [r["acked"] - r["in"] for r in rows if "acked" in r],
        "to poll end (sent -> poll returned)": [r["poll_end"] - r["sent"] for r in rows if r["poll_end"]],
        "of which the poll's own wait": [r["poll_end"] - max(r["poll_start"], r["sent"]) for r in rows
                                         if r["poll_end"]],
        "queued in the batch (poll end -> handle)": [r["handle"] - r["poll_end"] for r in rows if r["poll_end"]],
        "handle (handle -> answered)": [r["done"] - r["handle"] for r in rows],
        # <= 0 when the answering thread writes the answer itself (inside the desk's answer): shown as 0
        "answer out (answered -> written, or front woke)": [max(0.0, r["out"] - r["done"]) for r in rows],
        "records before it in its poll": [r["at"] * 1e-3 for r in rows],
        "records in its poll": [r["of"] * 1e-3 for r in rows],
    }
    polls = [p for p in trace["polls"] if start <= p[0] < end]
    parts["poll wait (every poll)"] = [p[1] - p[0] for p in polls]
    parts["records per poll (every poll)"] = [p[2] * 1e-3 for p in polls]
    # from a poll's end to the next poll's start: handling its records, and whatever else stopped the loop
    parts["between polls (every poll)"] = [b[0] - a[1] for a, b in zip(polls, polls[1:])]
    for label, spent in trace["stops"].items():
        parts[f"stop: {label}"] = [s for at, s in spent if start <= at < end]
    return {name: _percentiles(values) for name, values in parts.items() if values}


def _percentiles(values: list) -> dict:
    values = sorted(values)
    n = len(values)

    def at(q: float) -> float:
        return round(values[min(n - 1, int(q * n))] * 1e3, 2)

    return {"n": n, "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(values[-1] * 1e3, 2)}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1:3] != ["-m", "cli"]:
        raise SystemExit("request_trace: expected TRACE.json -m cli worker ...")
    install(argv[0])
    switch = os.environ.get("BENCH_SWITCH_INTERVAL")
    if switch:  # an experiment: the interpreter's switch interval instead of the worker's own choice
        import stream.worker as worker_module

        class Sys:
            def __getattr__(self, name):
                return getattr(sys, name)

            def setswitchinterval(self, _seconds):
                sys.setswitchinterval(float(switch))

        worker_module.sys = Sys()  # type: ignore[assignment]
        print(f"request_trace: switch interval {switch} s", flush=True)
    child_sleep = float(os.environ.get("BENCH_CHILD_SLEEP", "0") or 0)
    if child_sleep > 0:  # an experiment: a forked checkpoint's child waits before it writes
        from stream.checkpointing.stores import DirectoryCheckpointStore

        write = DirectoryCheckpointStore._write_in_child

        def sleepy(self, *args):
            time.sleep(child_sleep)
            return write(self, *args)

        DirectoryCheckpointStore._write_in_child = sleepy  # type: ignore[method-assign]
        print(f"request_trace: a checkpoint child sleeps {child_sleep} s before it writes", flush=True)
    from cli import main as cli_main

    return cli_main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
