"""What a worker writes back to Kafka: predictions for the shop, and dead letters.

A dead letter keeps the original key, value and headers byte for byte, and adds
headers naming why it failed and where it came from, so it can be inspected and
replayed.
"""

from __future__ import annotations

import logging

import msgspec
from kafka.errors import KafkaTimeoutError

from shopstream.events import Event

log = logging.getLogger("shopstream.outputs")

REASON_HEADER = "shopstream.reason"
_encode = msgspec.json.Encoder().encode


class Prediction(msgspec.Struct, gc=False):
    event_id: object
    user_id: str
    user_session: str
    product_id: str
    event_type: str
    event_time: float
    score: float
    model: str
    version: str
    partition: int
    offset: int


def send(producer, topic: str, **message) -> None:
    """producer.send that waits out a broker outage instead of dropping or raising:
    kafka-python gives up after max_block_ms when it cannot buffer or find the topic."""
    while True:
        try:
            producer.send(topic, **message)
            return
        except KafkaTimeoutError as exc:
            log.warning("cannot send to %s yet (%s); retrying", topic, exc)


def publish_prediction(producer, topic: str, record, event: Event, score: float, model: str,
                       version: str) -> None:
    value = _encode(Prediction(event.event_id, event.user_id, event.user_session, event.product_id,
                               event.event_type, event.event_time, score, model, version,
                               record.partition, record.offset))
    send(producer, topic, key=record.key, value=value)


def publish_dead_letter(producer, topic: str, record, reason: str) -> None:
    headers = list(record.headers or [])
    headers += [
        (REASON_HEADER, reason.encode("utf-8", "replace")[:1000]),
        ("shopstream.source.topic", record.topic.encode()),
        ("shopstream.source.partition", str(record.partition).encode()),
        ("shopstream.source.offset", str(record.offset).encode()),
    ]
    value = record.value
    if value is None and record.key is None:
        value = b""  # Kafka needs a key or a value; the reason header says "empty message"
    send(producer, topic, key=record.key, value=value, headers=headers)
