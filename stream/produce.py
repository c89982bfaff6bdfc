"""`shopstream produce`: feed events from a file or the generator into a topic.

Messages are keyed by user_id, so a session's views, carts and purchases land on one
partition, in order: the label joiner of that partition sees all of them.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

import msgspec
from kafka import KafkaProducer

from shopstream.events import InvalidEvent, encode_event, event_from_record

from .connection import kafka_options
from .settings import ProduceSettings

_encode = msgspec.json.Encoder().encode


def messages_from_file(path: str, validate: bool, rejected: list,
                       max_bad_rows: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs; invalid rows are skipped and counted when `validate`, else sent as they are."""
    from shopstream.readers import read_events

    if path.endswith((".jsonl", ".ndjson", ".json")) and not validate:
        with open(path, "rb") as lines:  # raw bytes through: the worker's validation decides
            for line in lines:
                line = line.strip()
                if line:
                    yield _key_of(line), line
        return
    for where, parsed in read_events(path, max_bad_rows=max_bad_rows):
        if isinstance(parsed, InvalidEvent):
            rejected.append(f"{where}: {parsed}")
            continue
        yield str(parsed.user_id).encode(), encode_event(parsed)


def _key_of(line: bytes) -> bytes:
    try:
        user = msgspec.json.decode(line).get("user_id")
    except Exception:  # not JSON or not an object: no key, the worker will dead-letter it
        return b""
    return str(user).encode() if user is not None else b""


def messages_from_generator(records: Iterable[dict], validate: bool, rejected: list):
    for record in records:
        if validate:
            try:
                event_from_record(record)
            except InvalidEvent as exc:
                rejected.append(str(exc))
                continue
        yield str(record["user_id"]).encode(), _encode(record)


def send_all(producer, topic: str, messages, rate: float = 0.0, progress: bool = False,
             total: int | None = None) -> int:
    """Send (key, value) pairs, paced to `rate` events/s if given; return how many."""
    from tqdm import tqdm

    sent = 0
    started = time.monotonic()
    with tqdm(total=total, unit="ev", desc="produce", disable=not progress, file=sys.stderr) as bar:
        for key, value in messages:
            producer.send(topic, key=key or None, value=value)
            sent += 1
            if rate > 0:
                _wait_until(started + sent / rate)
            if sent % 1000 == 0:
                bar.update(1000)
        bar.update(sent % 1000)
    producer.flush()
    return sent


#: The longest single sleep of a paced send: a slow rate waits in steps (time.sleep(1e10) overflows).
MAX_SLEEP = 3600.0


def _wait_until(deadline: float) -> None:
    """Sleep until `time.monotonic()` reaches `deadline` (possibly infinite: a rate of 1e-310), in
    steps of at most `MAX_SLEEP` seconds."""
    while True:
        ahead = deadline - time.monotonic()
        if ahead <= 0:
            return
        time.sleep(min(ahead, MAX_SLEEP))


def produce(settings: ProduceSettings) -> int:
    rejected: list[str] = []
    if settings.file:
        messages = messages_from_file(settings.file, settings.validate, rejected, settings.max_bad_rows)
        total = None
    else:
        messages = messages_from_generator(settings.generator.generate(), settings.validate, rejected)
        total = settings.generator.events
    producer = KafkaProducer(linger_ms=20, batch_size=256 * 1024, acks="all", **kafka_options(settings.kafka))
    try:
        sent = send_all(producer, settings.topic, messages, settings.rate, settings.progress, total)
    finally:
        producer.close()
    print(f"sent {sent} events to {settings.topic}; rejected {len(rejected)}")
    for line in rejected[:10]:
        print(f"  rejected {line}", file=sys.stderr)
    return 0
