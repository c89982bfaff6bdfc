"""kafka-python's fetched records read by its own reader and by stream/record_reader.py, side by side.

Builds one fetch response in memory (v2 batches of 1,000 records shaped like the worker's events, a key,
a JSON value of about 200 bytes; `--headers` adds one header per record), then hands it out as kafka-python's
fetcher does (`PartitionRecords.take`), best of `--repeat` passes each, alternating. No broker: it is the
parsing alone, which is most of a kafka-python poll (BENCHMARKS.md, stop 50).

    python benchmarks/record_reader.py --records 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import struct
import time

from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.structs import TopicPartition

from stream.record_reader import FastPartitionRecords

VALUE = json.dumps({"event_id": "e-000000123", "session_id": "s-00001234", "type": "click",
                    "ts": "2026-12-01T10:00:00.123Z", "price": 12.5, "product": "p-123", "category": "c-12",
                    "extra": "x" * 40}).encode()


def fetch_response(records: int, headers: bool, per_batch: int = 1_000) -> bytes:
    data, offset = bytearray(), 0
    while offset < records:
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=1, producer_id=7,
                                            producer_epoch=0, base_sequence=offset, batch_size=1 << 30)
        for delta in range(min(per_batch, records - offset)):
            builder.append(delta, timestamp=1_700_000_000_000 + offset + delta, key=b"s-00001234", value=VALUE,
                           headers=[("trace", b"abc")] if headers else [])
        batch = builder.build()
        batch[0:8] = struct.pack(">q", offset)   # the batch's base offset
        data += batch
        offset += per_batch
    return bytes(data)


def seconds_to_read(reader_class, data: bytes, records: int) -> float:
    started = time.perf_counter()
    partition = reader_class(0, TopicPartition("events", 0), MemoryRecords(data), check_crcs=True,
                             isolation_level=IsolationLevel.READ_COMMITTED)
    read = 0
    while partition:
        read += len(partition.take(1_000))
    elapsed = time.perf_counter() - started
    if read != records:
        raise SystemExit(f"{reader_class.__name__} read {read} records of {records}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--headers", action="store_true", help="one header on every record")
    args = parser.parse_args(argv)
    data = fetch_response(args.records, args.headers)
    best = {Fetcher.PartitionRecords: float("inf"), FastPartitionRecords: float("inf")}
    for _ in range(args.repeat):
        for reader_class in best:
            best[reader_class] = min(best[reader_class], seconds_to_read(reader_class, data, args.records))
    stock, fast = (best[c] / args.records * 1e6 for c in best)
    print(f"{args.records:,} records, {len(data) / args.records:.0f} bytes each, headers: {args.headers}, "
          f"best of {args.repeat}")
    print(f"kafka-python's reader: {stock:.2f} us per record")
    print(f"stream/record_reader:  {fast:.2f} us per record ({stock / fast:.2f}x, {stock - fast:.2f} us less)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
