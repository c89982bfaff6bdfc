#!/usr/bin/env python3
"""A topic whose every partition starts from a large checkpoint: for rebalances with big states.

    python benchmarks/large_checkpoints.py TOPIC --partitions 8 --checkpoints DIR [--events 300000]
                                           [--more 20000] [--bootstrap-servers 127.0.0.1:9092]

Builds one engine (the worker's default line-up, shop features) on `--events` paced events (event
time advancing one second per 1,500 events, `common.paced_backlog`: the predictions of the last 30
minutes stay open, 237,331 of them at 300,000 events), saves it with the worker's own
`DirectoryCheckpointStore` as the checkpoint of every partition of TOPIC for group ``g-TOPIC``
(next offset 0), prints each save's time and size, then creates TOPIC with that many partitions and
sends it the next `--more` events of the same stream, keyed by user. A worker of group ``g-TOPIC``
on DIR restores every partition from its checkpoint (2.8 s each at 300,000 events, on 2026-12-06's
machine) and, once it has read some events, saves each one again when it is revoked. RELIABILITY.md,
"Rebalance callbacks off the IO loop", has the runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import paced_backlog  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("topic")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--checkpoints", required=True)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--more", type=int, default=20_000)
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    args = parser.parse_args(argv)
    import msgspec
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    from shopstream.events import decode_event
    from stream.checkpointing.stores import DirectoryCheckpointStore
    from stream.partition import Partition
    from stream.settings import WorkerSettings
    from stream.worker import new_engine

    records = paced_backlog(args.events + args.more, 1500)
    engine, origin = new_engine(WorkerSettings.from_options(topic=args.topic))
    started = time.perf_counter()
    for offset, record in enumerate(records[:args.events]):
        engine.process(decode_event(msgspec.json.encode(record)), offset)
    print(f"state: {args.events:,} events in {time.perf_counter() - started:.1f} s, "
          f"{engine.open_predictions:,} open predictions, {engine.state_size():,} entries of state", flush=True)
    store = DirectoryCheckpointStore(args.checkpoints, f"g-{args.topic}", signing_key=None)
    for partition in range(args.partitions):
        started = time.perf_counter()
        store.save(Partition(args.topic, partition, engine, next_offset=0, origin=origin, started_from=origin))
        print(f"partition {partition}: saved in {time.perf_counter() - started:.2f} s, "
              f"{store.path(args.topic, partition).stat().st_size / 2**20:.0f} MiB", flush=True)
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap_servers)
    admin.create_topics([NewTopic(args.topic, args.partitions, 1, topic_configs={"retention.ms": "-1"})])
    admin.close()
    time.sleep(2)   # the partitions' leaders
    producer = KafkaProducer(bootstrap_servers=args.bootstrap_servers, acks="all", linger_ms=5)
    for record in records[args.events:]:
        producer.send(args.topic, key=str(record["user_id"]).encode(), value=msgspec.json.encode(record))
    producer.flush()
    producer.close()
    print(f"sent {args.more:,} events to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
