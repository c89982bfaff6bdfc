"""Checkpoints kept in Kafka itself, so workers on different machines can take over
each other's partitions: a compacted topic keyed by "<events topic>-<partition>".

A write is durable when the broker acknowledges it with acks=all. The store keeps each
key's last value from what it has read, and every read first catches up from where it
stopped to the topic's current end: one full scan when a worker starts, then only what
other workers wrote since. Compaction (quick: short segments, low dirty ratio) keeps the
first scan near one message per partition. The topic's message size limit, and the
clients' request and fetch sizes, are raised to `max_bytes` so a model fits.
"""

from __future__ import annotations

from typing import Optional

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from .checkpoints import CheckpointStore
from .topics import create_topics

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class KafkaCheckpointStore(CheckpointStore):
    def __init__(self, options: dict, topic: str = "shopstream-checkpoints", max_bytes: int = DEFAULT_MAX_BYTES):
        self.topic = topic
        self.options = options
        self.max_bytes = max_bytes
        create_topics(options, {topic: 1}, configs={topic: {
            "cleanup.policy": "compact", "max.message.bytes": str(max_bytes), "min.compaction.lag.ms": "0",
            "segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": "60000"}})
        self._producer = KafkaProducer(acks="all", max_request_size=max_bytes, compression_type="gzip",
                                       **options)
        self._partition = TopicPartition(topic, 0)
        self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                       max_partition_fetch_bytes=max_bytes, fetch_max_bytes=max_bytes, **options)
        self._consumer.assign([self._partition])
        self._consumer.seek_to_beginning(self._partition)
        self._latest: dict[str, bytes] = {}

    def _write(self, key: str, data: bytes) -> None:
        try:
            self._producer.send(self.topic, key=key.encode(), value=data).get(timeout=60)
        except KafkaError as exc:  # the store did not take the write: same contract as a full disk
            raise OSError(f"checkpoint topic {self.topic}: {type(exc).__name__}: {exc}") from exc

    def _catch_up(self) -> dict[str, bytes]:
        """Read from where the last read stopped to the topic's current end."""
        consumer = self._consumer
        end = consumer.end_offsets([self._partition])[self._partition]
        while consumer.position(self._partition) < end:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    if record.key is not None:
                        self._latest[record.key.decode()] = record.value
        return self._latest

    def _read(self, key: str) -> Optional[bytes]:
        return self._catch_up().get(key)

    def _keys(self) -> list[str]:
        return list(self._catch_up())

    def close(self) -> None:
        self._producer.close()
        self._consumer.close()
