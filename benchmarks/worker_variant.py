#!/usr/bin/env python3
"""Run the real `shopstream worker` with benchmark-local monkeypatches, to measure a
proposed change before anyone makes it in the package.

    python benchmarks/worker_variant.py [--producer KEY=JSON]... [--consumer KEY=JSON]...
        [--control-consumer KEY=JSON]... [--timing-sample N]
        [--snapshot-seconds S] [--gc-off] -m cli worker [worker flags...]

--producer/--consumer override the kafka-python settings the worker's clients get
(`stream.clients`; e.g. --producer batch_size=1048576 --consumer
max_partition_fetch_bytes=8388608), and --control-consumer those of the control channel's
consumer (`stream.control_worker`) (one record per polled batch of predictions is now the
worker's own default, `--prediction-format`); --snapshot-seconds spaces the metrics snapshots of the engines (1e9: none
after the first), --gc-off disables the cyclic garbage collector once the CLI has set it up
(an upper bound of what collections cost).

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


def main(argv: list[str]) -> int:
    producer_over, consumer_over, control_over = [], [], []
    timing_sample = None
    snapshot_seconds = None
    gc_off = False
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
        elif flag == "--gc-off":
            gc_off = True
            i += 1
        else:
            raise SystemExit(f"worker_variant: unknown option {flag}")
    if argv[i:i + 2] != ["-m", "cli"]:
        raise SystemExit("worker_variant: expected -m cli worker ...")
    cli_args = argv[i + 2:]

    import kafka

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
        import gc

        def set_threshold(*_args):  # run_worker sets its thresholds: switch the collector off instead
            gc.disable()

        worker_module.gc = type("gc_off", (), {"set_threshold": staticmethod(set_threshold)})
    print(f"worker_variant: producer {producer_kw} consumer {consumer_kw} control consumer {control_kw} "
          f"timing_sample {timing_sample} "
          f"snapshot_seconds {snapshot_seconds} gc_off {gc_off}", flush=True)

    from cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
