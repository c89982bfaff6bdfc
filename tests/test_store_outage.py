"""The Kafka checkpoint store while the broker does not acknowledge: memory stays bounded.

kafka-python keeps every unacknowledged record until its delivery timeout, with no memory
bound; a save that queued every chunk and waited only afterwards added a whole copy of the
state at each retry (48 MiB of state: +51, +100, +149 MB after three attempts). Here the
producer is an in-memory stand-in that never acknowledges, and counts what it holds."""

from __future__ import annotations

import threading

import pytest
from kafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from shopstream.engine import Engine
from stream.checkpointer import Checkpointer
from stream.partition import Partition as PartitionState
from stream.checkpointing.kafka_store import KafkaCheckpointStore
from stream.settings import CheckpointSettings


class Outage:
    """Producers that queue what they are sent and acknowledge nothing."""

    def __init__(self):
        self.producers: list[OutageProducer] = []

    def new(self):
        self.producers.append(OutageProducer())
        return self.producers[-1]

    @property
    def held(self) -> int:
        return sum(p.queued for p in self.producers)


class NeverAcknowledged:
    def get(self, timeout=None):
        raise KafkaTimeoutError("fake outage: no acknowledgement")


class OutageProducer:
    def __init__(self):
        self.queued = 0
        self.peak = 0
        self.closed = False

    def send(self, topic, key=None, value=None, partition=None):
        self.queued += len(value or b"")
        self.peak = max(self.peak, self.queued)
        return NeverAcknowledged()

    def close(self, timeout=None):
        self.queued = 0   # kafka-python's close(0) aborts the incomplete batches
        self.closed = True


def store_without_broker(outage: Outage, chunk: int = 64 * 1024) -> KafkaCheckpointStore:
    store = KafkaCheckpointStore.__new__(KafkaCheckpointStore)
    store.topic, store.chunk_topic, store.chunk_partition, store.group = "ckpt", "ckpt-chunks", 0, "g"
    store.max_bytes, store.chunk_bytes, store.timeout, store.window = chunk, chunk, 0.01, 8
    store.unacked_bytes = store.abandoned_writes = 0
    store._producer_lock, store._producer = threading.Lock(), None
    store._latest, store._best, store._had_value, store._live_chunks = {}, {}, set(), {}
    store._new_producer = outage.new
    return store


def big_state() -> PartitionState:
    engine = Engine.fresh("logreg", "raw")
    engine.padding = b"x" * (4 << 20)   # 4 MiB of state: 64 chunks of 64 KiB
    return PartitionState("events", 0, engine, next_offset=10, events_since_checkpoint=10)


def test_saves_during_an_outage_hold_one_window_of_chunks_not_a_copy_per_attempt():
    outage = Outage()
    store = store_without_broker(outage)
    state = big_state()
    for _ in range(3):
        with pytest.raises(OSError, match="not acknowledged|KafkaTimeoutError"):
            store.save(state)
    window = store.window * store.chunk_bytes
    assert max(p.peak for p in outage.producers) <= window, "an attempt stops after one window"
    assert outage.held == 0 and all(p.closed for p in outage.producers), "a failed attempt's records are dropped"
    assert len(outage.producers) == 3 and store.abandoned_writes == 3 and store.unacked_bytes == 0
    assert state.events_since_checkpoint == 10, "nothing counted as saved"


def test_the_store_s_unacknowledged_bytes_and_abandoned_writes_are_metrics():
    outage = Outage()
    store = store_without_broker(outage)
    registry = CollectorRegistry()
    Checkpointer(store, outputs=None, settings=CheckpointSettings(), registry=registry)
    with pytest.raises(OSError):
        store.save(big_state())
    assert registry.get_sample_value("shopstream_checkpoint_store_abandoned_writes_total") == 1
    assert registry.get_sample_value("shopstream_checkpoint_store_unacked_bytes") == 0
