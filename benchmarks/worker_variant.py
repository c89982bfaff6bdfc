#!/usr/bin/env python3
"""Run the real `shopstream worker` with benchmark-local monkeypatches, to measure a
proposed change before anyone makes it in the package.

    python benchmarks/worker_variant.py [--producer KEY=JSON]... [--consumer KEY=JSON]...
        [--control-consumer KEY=JSON]... [--timing-sample N]
        [--snapshot-seconds S] [--gc-off] [--gc-thresholds A,B,C] [--fetch-unmended] [--trace-loop FILE]
        [--broker-check-on-consumer]
        [--batch-predictions N] [--thread-stats] -m cli worker [worker flags...]

--producer/--consumer override the kafka-python settings the worker's clients get
(`stream.clients`; e.g. --producer batch_size=1048576 --consumer
max_partition_fetch_bytes=8388608), and --control-consumer those of the control channel's
consumer (`stream.control_worker`) (one record per polled batch of predictions is now the
worker's own default, `--prediction-format`); --snapshot-seconds spaces the metrics snapshots of the engines (1e9: none
after the first), --gc-off disables the cyclic garbage collector once the CLI has set it up
(an upper bound of what collections cost; at exit it prints how many objects in reference cycles
the process left), --gc-thresholds replaces the thresholds of the collector's throughput mode
(`stream/gc_mode.py`), --fetch-unmended leaves kafka-python's fetcher as it is
(`stream/fetch_idle.py`). --broker-check-on-consumer asks the broker watch's
end offsets on the consumer's own connection (as before 2026-12-03), --batch-predictions sets
how many predictions a batch record holds at most (1e9: one record per polled batch, as before).
--trace-loop writes, at exit, where each event's
latency went (JSON): from its record's timestamp to the poll that returned it (`fetch`), from
that poll to its handling (`queued`: behind the batch's earlier records and the loop's other
work), its own handling (`handle`), and from then to the send of its predictions record
(`publish`: the rest of its batch); and the loop's other stops (`housekeeping`, each
collection's pause by generation, each "idle" answer of kafka-python's fetcher, after which its
consumer sleeps up to retry_backoff_ms).

--thread-stats prints, when the loop ends, each thread's CPU seconds and context switches (Linux).

Everything after `-m cli` is handed to shopstream's own CLI unchanged.
"""

from __future__ import annotations

import json
import sys


def _pairs(values):
    out = {}
    for text in values:
        key, _, raw = text.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def trace_loop(worker_module, consumer_class, path: str) -> None:
    """Time each event's way through the loop (see the module's docstring); written at exit."""
    import atexit
    import time

    import stream.outputs as outputs_module

    wall = time.time
    polls: list = []         # (poll returned, number of records)
    events: list = []        # [offset, fetch, queued, handle, publish, handled at]: publish filled at the send
    unsent: list = []        # events of the batch being handled, waiting for end_batch
    housekeeping: list = []
    last_poll = [0.0]
    original_poll = consumer_class.poll

    def poll(self, *args, **kwargs):
        batches = original_poll(self, *args, **kwargs)
        last_poll[0] = wall()
        if batches:
            polls.append((last_poll[0], sum(len(r) for r in batches.values())))
        return batches

    consumer_class.poll = poll
    original_handle = worker_module.Worker.handle

    def handle(self, state, record):
        start = wall()
        original_handle(self, state, record)
        end = wall()
        row = [record.offset, last_poll[0] - record.timestamp / 1000.0, start - last_poll[0], end - start, None, start]
        events.append(row)
        unsent.append((row, end))

    worker_module.Worker.handle = handle
    original_send_batch = outputs_module.Outputs._send_batch

    def send_batch(self, partition):   # at a polled batch's end, or when a batch record is full
        original_send_batch(self, partition)
        sent = wall()
        for row, end in unsent:   # the benchmark's topic has one partition
            row[4] = sent - end
        unsent.clear()

    outputs_module.Outputs._send_batch = send_batch
    original_housekeeping = worker_module.Worker._housekeeping

    def timed_housekeeping(self, now):
        start = wall()
        original_housekeeping(self, now)
        housekeeping.append((start, wall() - start))

    worker_module.Worker._housekeeping = timed_housekeeping

    # The loop's other stops, one by one (housekeeping's parts, and the per-batch checkpoint check).
    import stream.broker_watch as broker_module
    import shopstream.engine as engine_module
    import stream.checkpointer as checkpointer_module
    import stream.checkpointing.stores as stores_module

    stops: dict = {}

    from common import time_calls

    def timed(owner, name: str, label: str) -> None:
        time_calls(owner, name, stops.setdefault(label, []), wall)

    for owner, name, label in ((worker_module.Worker, "take_snapshots", "metrics snapshot"),
                               (worker_module.Worker, "_poll_control", "control poll"),
                               (worker_module.Worker, "_maybe_checkpoint", "checkpoint check (per batch)"),
                               (checkpointer_module.Checkpointer, "poll", "background checkpoints finished"),
                               (checkpointer_module.Checkpointer, "retry", "blocked checkpoints retried"),
                               (broker_module.BrokerWatch, "maybe_check", "broker check (end offsets)"),
                               # a checkpoint's parts, in their order
                               (checkpointer_module.Checkpointer, "_outputs_confirmed", "checkpoint: outputs acked"),
                               (engine_module.Engine, "mark_good", "checkpoint: models marked good"),
                               (stores_module.DirectoryCheckpointStore, "save", "checkpoint: state written"),
                               (stores_module.DirectoryCheckpointStore, "begin_synced_save",
                                "checkpoint: state pickled (fsync in a thread)"),
                               (checkpointer_module.Checkpointer, "_commit", "checkpoint: offsets committed")):
        if hasattr(owner, name):
            timed(owner, name, label)
    import os
    timed(os, "fsync", "checkpoint: each fsync (file, then directory; on a thread with auto)")
    def cpu_of(name: str, label: str) -> None:   # wall time against the thread's own CPU: waiting, or working?
        cpu_spent = stops.setdefault(label, [])
        timed_save = getattr(stores_module.DirectoryCheckpointStore, name, None)
        if timed_save is None:
            return

        def save_cpu(*args, **kwargs):
            start, cpu = wall(), time.thread_time()
            try:
                return timed_save(*args, **kwargs)
            finally:
                cpu_spent.append((start, time.thread_time() - cpu))

        setattr(stores_module.DirectoryCheckpointStore, name, save_cpu)

    # Every collection of the cyclic garbage collector, by generation: a collection stops the loop
    # wherever it starts, so its pause shows in the later events' fetch part, not under a cause above.
    import gc
    collection_started = [0.0]

    def on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            collection_started[0] = wall()
        else:
            stops.setdefault(f"gc: generation {info['generation']}", []).append(
                (collection_started[0], wall() - collection_started[0]))

    gc.callbacks.append(on_collection)

    # kafka-python 3's fetcher reports "idle" (no buffered records, no fetch in flight) and its consumer
    # then sleeps up to retry_backoff_ms (100 ms) before it fetches again. Each idle answer, timed.
    from kafka.consumer.fetcher import Fetcher

    original_fetch_records = Fetcher.fetch_records
    idle_answers = stops.setdefault("kafka-python: fetcher idle, the consumer sleeps", [])

    def fetch_records(self, *args, **kwargs):
        # what the fetcher had when a call then waited long: fetches in flight, an offset reset pending,
        # nodes with a fetch pending, partitions it could fetch
        state = (len(self._fetch_futures), self._reset_task is not None and not self._reset_task.is_done,
                 len(self._nodes_with_pending_fetch_requests), len(self._fetchable_partitions()))
        start = wall()
        records, idle = original_fetch_records(self, *args, **kwargs)
        if idle and not records:
            idle_answers.append((start, 0.0))
        if wall() - start > 0.05:
            stops.setdefault("kafka-python: fetch_records waited, with (in flight, reset, pending nodes, "
                             f"fetchable) {state}, returned {sum(map(len, records.values()))}", []).append(
                (start, wall() - start))
        return records, idle

    Fetcher.fetch_records = fetch_records

    # Each fetch request's round trip, from its send to its response handled on kafka-python's IO thread
    # (a long stop with no fetch in flight is the client's; one with a fetch in flight, the broker's).
    original_handle_response = Fetcher._handle_fetch_response
    round_trips = stops.setdefault("kafka-python: fetch sent -> response handled", [])
    wall_minus_monotonic = wall() - time.monotonic()

    def handle_fetch_response(self, node_id, fetch_offsets, send_time, response):
        round_trips.append((send_time + wall_minus_monotonic, time.monotonic() - send_time))
        return original_handle_response(self, node_id, fetch_offsets, send_time, response)

    Fetcher._handle_fetch_response = handle_fetch_response
    original_handle_error = Fetcher._handle_fetch_error

    def handle_fetch_error(self, node_id, exception):
        stops.setdefault(f"kafka-python: fetch failed ({type(exception).__name__})", []).append((wall(), 0.0))
        return original_handle_error(self, node_id, exception)

    Fetcher._handle_fetch_error = handle_fetch_error
    cpu_of("save", "checkpoint: state written, CPU of the loop's thread")
    cpu_of("begin_synced_save", "checkpoint: state pickled, CPU of the loop's thread")
    import shopstream.features as features_module
    import shopstream.recent_ids as recent_ids_module
    for owner, name, label in ((recent_ids_module.RecentIds, "__reduce__", "checkpoint: the dedupe window packed"),
                               (features_module._Capped, "__reduce__", "checkpoint: a feature table reduced")):
        if hasattr(owner, name):
            timed(owner, name, label)

    def write():   # raw: the reader keeps the measured events (latency_ab.py: offsets past the state)
        with open(path, "w") as out:
            json.dump({"events": events, "polls": polls, "housekeeping": housekeeping, "stops": stops}, out)

    atexit.register(write)


def print_thread_stats_at_close(worker_module) -> None:
    """When the loop ends (before the clients close): each thread's CPU seconds and its voluntary and
    involuntary context switches, from /proc (Linux), as one JSON line. A voluntary switch of the main
    thread is a wait: for the network, or for the GIL another thread took."""
    import os
    import threading

    original_close = worker_module.Worker.close

    def close(self):
        names = {t.native_id: t.name for t in threading.enumerate()}
        threads = []
        for tid in sorted(os.listdir("/proc/self/task"), key=int):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                cpu_ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/status") as f:
                status = dict(line.split(":\t", 1) for line in f.read().splitlines() if "ctxt_switches" in line)
            threads.append({"name": names.get(int(tid), f"native-{tid}"), "cpu_s": round(cpu_ns / 1e9, 3),
                            "voluntary": int(status["voluntary_ctxt_switches"]),
                            "involuntary": int(status["nonvoluntary_ctxt_switches"])})
        print("worker_variant: threads at close: " + json.dumps(threads), flush=True)
        return original_close(self)

    worker_module.Worker.close = close


def main(argv: list[str]) -> int:
    producer_over, consumer_over, control_over = [], [], []
    timing_sample = None
    snapshot_seconds = None
    gc_off = False
    gc_thresholds = None
    fetch_unmended = False
    trace_file = None
    save_switch_interval = None
    probe_on_consumer = False
    batch_predictions = None
    thread_stats = False
    i = 0
    while i < len(argv) and argv[i] != "-m":
        flag = argv[i]
        if flag == "--producer":
            producer_over.append(argv[i + 1])
            i += 2
        elif flag == "--consumer":
            consumer_over.append(argv[i + 1])
            i += 2
        elif flag == "--control-consumer":
            control_over.append(argv[i + 1])
            i += 2
        elif flag == "--timing-sample":
            timing_sample = int(argv[i + 1])
            i += 2
        elif flag == "--snapshot-seconds":
            snapshot_seconds = float(argv[i + 1])
            i += 2
        elif flag == "--broker-check-on-consumer":
            probe_on_consumer = True
            i += 1
        elif flag == "--batch-predictions":
            batch_predictions = int(float(argv[i + 1]))
            i += 2
        elif flag == "--trace-loop":
            trace_file = argv[i + 1]
            i += 2
        elif flag == "--thread-stats":
            thread_stats = True
            i += 1
        elif flag == "--gc-off":
            gc_off = True
            i += 1
        elif flag == "--fetch-unmended":
            fetch_unmended = True
            i += 1
        elif flag == "--gc-thresholds":
            gc_thresholds = tuple(int(x) for x in argv[i + 1].split(","))
            i += 2
        elif flag == "--save-switch-interval":
            save_switch_interval = float(argv[i + 1])
            i += 2
        else:
            raise SystemExit(f"worker_variant: unknown option {flag}")
    if argv[i:i + 2] != ["-m", "cli"]:
        raise SystemExit("worker_variant: expected -m cli worker ...")
    cli_args = argv[i + 2:]

    import kafka

    if save_switch_interval is not None:   # the interpreter's switch interval while a checkpoint is written
        import stream.checkpointing.stores as stores_module

        original_save = stores_module.DirectoryCheckpointStore.save

        def save(self, state):
            before = sys.getswitchinterval()
            sys.setswitchinterval(save_switch_interval)
            try:
                return original_save(self, state)
            finally:
                sys.setswitchinterval(before)

        stores_module.DirectoryCheckpointStore.save = save

    import stream.clients as clients_module
    import stream.worker as worker_module

    producer_kw, consumer_kw = _pairs(producer_over), _pairs(consumer_over)

    class Producer(kafka.KafkaProducer):
        def __init__(self, **config):
            config.update(producer_kw)
            super().__init__(**config)

    class Consumer(kafka.KafkaConsumer):
        def __init__(self, *topics, **config):
            config.update(consumer_kw)
            super().__init__(*topics, **config)

    control_kw = _pairs(control_over)

    class ControlConsumer(kafka.KafkaConsumer):
        def __init__(self, *topics, **config):
            config.update(control_kw)
            super().__init__(*topics, **config)

    clients_module.KafkaProducer = Producer
    clients_module.KafkaConsumer = Consumer
    if control_kw:
        import stream.control_worker as control_module

        control_module.KafkaConsumer = ControlConsumer
    if timing_sample is not None:
        worker_module.TIMING_SAMPLE = timing_sample
    if snapshot_seconds is not None:
        worker_module.SNAPSHOT_SECONDS = snapshot_seconds
    if gc_off:
        import atexit
        import gc

        import stream.gc_mode as gc_mode_module

        class GcOff:   # GcControl.start sets the worker's thresholds: switch the collector off instead
            def __getattr__(self, name):
                return getattr(gc, name)

            def set_threshold(self, *_args):
                gc.disable()

        gc_mode_module.gc = GcOff()
        # What the collector would have had to find: the reference cycles made while it was off (the
        # clients' and the process's; the engine makes none, tests/test_gc_mode.py), an upper bound of
        # what promotion (gc_mode.py) leaves to a full collection.
        atexit.register(lambda: print(f"worker_variant: cyclic garbage at exit: {gc.collect()} objects "
                                      f"unreachable", flush=True))
    if fetch_unmended:   # kafka-python's fetcher as it is (stream/fetch_idle.py: before 2026-12-07)
        clients_module.mend_idle_fetch = lambda consumer: True
    if gc_thresholds is not None:   # the throughput mode's thresholds (stream/gc_mode.py)
        import stream.gc_mode as gc_mode_module

        gc_mode_module.GC_THRESHOLDS = gc_thresholds
    if trace_file:
        trace_loop(worker_module, Consumer, trace_file)
    if probe_on_consumer:
        clients_module.KafkaClients.broker_probe = None   # BrokerWatch(probe=None): ask on the consumer
    if thread_stats:
        print_thread_stats_at_close(worker_module)
    if batch_predictions is not None:
        import stream.outputs as outputs_module

        outputs_module.MAX_BATCH_PREDICTIONS = batch_predictions
    print(f"worker_variant: producer {producer_kw} consumer {consumer_kw} control consumer {control_kw} "
          f"timing_sample {timing_sample} "
          f"snapshot_seconds {snapshot_seconds} gc_off {gc_off} gc_thresholds {gc_thresholds} "
          f"probe_on_consumer {probe_on_consumer} "
          f"batch_predictions {batch_predictions}", flush=True)

    from cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
