"""Checkpoints kept in Kafka itself, so workers on different machines can take over
each other's partitions: a compacted topic keyed by "<consumer group>/<events topic>-<partition>"
(two deployments sharing the topic do not overwrite each other).

Anyone who can write to the topic can put records in it. A record whose key is not
UTF-8 is skipped with a warning. With a signing key, a tombstone (null value) that
replaced a checkpoint, or a record older (by sequence) than one already read for the
same key, is refused with a clear error instead of silently restarting the partition.

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
import logging

from kafka.errors import KafkaError

from shopstream.signing import signing_key

from .checkpoints import CheckpointError, CheckpointStore, signed_sequence
from .topics import create_topics

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
log = logging.getLogger(__name__)


class KafkaCheckpointStore(CheckpointStore):
    def __init__(self, options: dict, topic: str = "shopstream-checkpoints", max_bytes: int = DEFAULT_MAX_BYTES,
                 group: str = ""):
        self.topic = topic
        self.group = group
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
        self._latest: dict[str, Optional[bytes]] = {}
        self._best: dict[str, int] = {}   # key -> highest verified sequence read
        self._had_value: set[str] = set()

    def key(self, topic: str, partition: int) -> str:
        return f"{self.group}/{topic}-{partition}" if self.group else f"{topic}-{partition}"

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
                    if record.key is None:
                        continue
                    try:
                        key = record.key.decode()
                    except UnicodeDecodeError:
                        log.warning("checkpoint topic %s: record at offset %d has a key that is not UTF-8: skipped",
                                    self.topic, record.offset)
                        continue
                    self._latest[key] = record.value
                    if record.value is not None:
                        self._had_value.add(key)
                        sequence = signed_sequence(record.value)
                        if sequence is not None:
                            self._best[key] = max(self._best.get(key, 0), sequence)
        return self._latest

    def _read(self, key: str) -> Optional[bytes]:
        value = self._catch_up().get(key)
        if signing_key() is None:
            return value
        if value is None and key in self._had_value:
            raise CheckpointError(f"checkpoint {key}: a tombstone replaced it in {self.topic}; refusing to start "
                                  "the partition over from offset 0 (--force-fresh-start does that on purpose)")
        best = self._best.get(key, 0)
        sequence = signed_sequence(value) if value is not None else None
        if sequence is not None and sequence < best:
            raise CheckpointError(f"checkpoint {key}: sequence {sequence} is older than the {best} already in "
                                  f"{self.topic} (an old record put back?): refusing it")
        return value

    def _keys(self) -> list[str]:
        prefix = f"{self.group}/" if self.group else ""
        return [key[len(prefix):] for key, value in self._catch_up().items()
                if value is not None and key.startswith(prefix) and (prefix or "/" not in key)]

    def close(self) -> None:
        self._producer.close()
        self._consumer.close()
