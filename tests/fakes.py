"""In-memory stand-ins for the Kafka clients a worker uses, for fast tests of its logic.

`FakeClients` is a `KafkaClients` whose consumer serves records from lists, whose producer
keeps what it is sent and whose checkpoint store is a real directory store that can be
told to fail. Every call that matters lands in one shared `calls` list, so a test can
assert the order of outputs, state and offsets. A record whose value is `ABORT` makes the
consumer raise `Aborted` when polled: a crash at a chosen offset (Bytewax's abort sentinel).
The real-broker tests stay the proof that the real clients behave like this.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from types import SimpleNamespace

import msgspec

from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.clients import KafkaClients
from stream.outputs import FORMAT_HEADER, decode_predictions

ABORT = b"__abort__"
Record = namedtuple("Record", "topic partition offset key value timestamp headers")


class RetriedForever(BaseException):
    """A producer was asked 50 times in a row for a topic without metadata: a loop without end."""


class Aborted(Exception):
    """The in-memory source reached an ABORT record: the worker 'crashes' here."""


class FakeConsumer:
    def __init__(self, topic: str, partitions: dict[int, list[bytes]], calls: list, max_poll: int = 100):
        self.topic = topic
        self.log = {p: list(values) for p, values in partitions.items()}
        self.calls = calls
        self.max_poll = max_poll
        self.position: dict = {}
        self.committed_offsets: dict = {}
        self.paused_tps: set = set()
        self.listener = None
        self.pending_assignment = False
        self.broker_down = False
        self.closed = False
        self.poll_errors: list = []  # raised by the next polls, one each

    def tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    def append(self, partition: int, *values: bytes) -> None:
        self.log[partition].extend(values)

    def partitions_for_topic(self, topic):
        return set(self.log)

    def subscribe(self, topics, listener=None):
        self.listener = listener
        self.pending_assignment = True

    def poll(self, timeout_ms=0):
        if self.poll_errors:
            raise self.poll_errors.pop(0)
        if self.pending_assignment:
            self.pending_assignment = False
            self.listener.on_partitions_assigned([self.tp(p) for p in sorted(self.log)])
        batches = {}
        for partition, values in self.log.items():
            tp = self.tp(partition)
            if tp in self.paused_tps or self.broker_down:
                continue
            start = self.position.get(tp, 0)
            chunk = []
            for offset in range(start, min(len(values), start + self.max_poll)):
                if values[offset] == ABORT:
                    raise Aborted(f"{tp.partition}@{offset}")
                chunk.append(Record(self.topic, partition, offset, b"k", values[offset], 0, []))
            if chunk:
                batches[tp] = chunk
                self.position[tp] = chunk[-1].offset + 1
        return batches

    def seek(self, tp, offset):
        self.position[tp] = offset

    def pause(self, *tps):
        self.paused_tps.update(tps)
        self.calls.append(("pause", sorted(tp.partition for tp in tps)))

    def resume(self, *tps):
        self.paused_tps.difference_update(tps)
        self.calls.append(("resume", sorted(tp.partition for tp in tps)))

    def paused(self):
        return set(self.paused_tps)

    def commit(self, offsets):
        self.committed_offsets.update({tp: meta.offset for tp, meta in offsets.items()})
        self.calls.append(("commit", {tp.partition: meta.offset for tp, meta in offsets.items()}))

    commit_async = commit

    def committed(self, tp):
        return self.committed_offsets.get(tp)

    def end_offsets(self, tps, timeout_ms=None):
        self.calls.append(("end_offsets", sorted(tp.partition for tp in tps)))
        if self.broker_down:
            raise KafkaTimeoutError("fake broker down")
        return {tp: len(self.log[tp.partition]) for tp in tps}

    def highwater(self, tp):
        return len(self.log[tp.partition])

    def close(self, autocommit=False, timeout_ms=None):
        self.closed = True
        self.calls.append(("close_consumer",))


class FakeFuture:
    def __init__(self):
        self.errbacks = []

    def add_errback(self, fn, *args):
        self.errbacks.append((fn, args))
        return self


class WaitableFuture(Future):
    """kafka-python's record future as far as the outputs use it: `get` waits on any thread."""

    def __init__(self):
        super().__init__()
        self.latch = threading.Event()

    # As kafka-python's: the waiter wakes once every callback and errback has run.
    def success(self, value):
        super().success(value)
        self.latch.set()
        return self

    def failure(self, e):
        super().failure(e)
        self.latch.set()
        return self

    def get(self, timeout=None):
        if not self.latch.wait(timeout):
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        if self.failed():
            raise self.exception
        return self.value


class FakeProducer:
    def __init__(self, calls: list, waitable: bool = False):
        self.calls = calls
        self.sent: list = []
        self.unflushed = 0
        self.fail_flush = False   # the broker acknowledges nothing
        self.missing_topics: set = set()   # topics whose metadata never arrives: send() times out
        # kafka-python's futures (a checkpoint's thread waits for them), settled by flush or `answer`
        self.waitable = waitable
        self.unanswered: list[WaitableFuture] = []

    def _future(self):
        if not self.waitable:
            return FakeFuture()
        future = WaitableFuture()
        self.unanswered.append(future)
        return future

    def answer(self, error=None) -> None:
        """The broker acknowledges (or, with `error`, refuses) every record sent so far."""
        unanswered, self.unanswered = self.unanswered, []
        for future in unanswered:
            future.success(None) if error is None else future.failure(error)

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        if topic in self.missing_topics:
            self.calls.append(("send_timeout", topic))
            if self.calls[-50:] == [("send_timeout", topic)] * 50:
                raise RetriedForever(topic)
            raise KafkaTimeoutError("Failed to update metadata after 10.0 secs. (fake)")
        if any(k == FORMAT_HEADER for k, _ in headers or ()):
            # A batch of predictions: counted as the predictions it holds (read with the helper).
            predictions = decode_predictions(SimpleNamespace(value=value, headers=headers))
            self.sent.extend((topic, key, msgspec.json.encode(p)) for p in predictions)
            self.unflushed += len(predictions)
            return self._future()
        self.sent.append((topic, key, value))
        self.unflushed += 1
        return self._future()

    def flush(self, timeout=None):
        self.calls.append(("flush", self.unflushed))
        if self.fail_flush:
            raise KafkaTimeoutError("fake flush timed out")
        self.unflushed = 0
        self.answer()

    def close(self, timeout=None):
        self.calls.append(("close_producer", timeout))
        self.answer(KafkaTimeoutError("fake: producer closed with this record unacknowledged"))


class FakeStore(DirectoryCheckpointStore):
    """The real directory store, logging each save, and failing while `broken` is set."""

    def __init__(self, root, group, calls: list):
        super().__init__(root, group)
        self.calls = calls
        self.broken = False
        self.stalled = False
        # A forked writer's speed is the machine's: set, each background checkpoint is over by the
        # time the loop next looks (`done()` waits for it), so how many begin is the same everywhere.
        self.writers_finish_at_once = False

    def save(self, state):
        if self.broken:
            self.calls.append(("save_failed", state.partition))
            raise OSError(28, "No space left on device (fake)")
        super().save(state)
        self.calls.append(("save", state.partition, state.next_offset))

    def begin_save(self, state, freeze_gc=True):
        self.calls.append(("begin_save", state.partition, state.next_offset))
        pending = super().begin_save(state, freeze_gc)
        if self.writers_finish_at_once:
            pending._child_done(block=True)
            if pending._thread is not None:
                pending._thread.join()
        return pending

    def begin_synced_save(self, state, acknowledged=None, acknowledge_seconds=5.0):
        if self.broken:
            self.calls.append(("save_failed", state.partition))
            raise OSError(28, "No space left on device (fake)")
        self.calls.append(("begin_synced_save", state.partition, state.next_offset))
        pending = super().begin_synced_save(state, acknowledged, acknowledge_seconds)
        if self.writers_finish_at_once:
            pending._thread.join()
        return pending

    def _write_in_child(self, key, state, spool):
        if self.broken:  # the forked writer finds the disk full
            raise OSError(28, "No space left on device (fake)")
        if self.stalled:  # the forked writer hangs (a dead NFS server, a stopped process)
            import time
            time.sleep(3600)
        super()._write_in_child(key, state, spool)


class FakeClients(KafkaClients):
    def __init__(self, settings, partitions: dict[int, list[bytes]], checkpoints):
        self.settings = settings
        self.calls: list = []
        self.partitions = partitions
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []
        self.store = FakeStore(checkpoints, settings.group, self.calls)
        self.fail_new_consumer = False
        self.missing_topics: set = set()   # shared by every producer: no metadata for these topics
        self.waitable_futures = False       # producers whose futures a checkpoint's thread can wait for

    def consumer(self):
        if self.fail_new_consumer:
            raise KafkaTimeoutError("fake: no broker to build a consumer with")
        consumer = FakeConsumer(self.settings.topic, self.partitions, self.calls)
        self.consumers.append(consumer)
        return consumer

    def producer(self):
        producer = FakeProducer(self.calls, self.waitable_futures)
        producer.missing_topics = self.missing_topics
        self.producers.append(producer)
        return producer

    def checkpoint_store(self):
        return self.store

    def broker_probe(self):
        return _NewestConsumer(self)

    def control(self):
        return None

    def corrupt_skipper(self, outputs):
        return FakeSkipper()


class _NewestConsumer:
    """The broker watch's own client, in fakes: answers as the worker's newest consumer would
    (so a test's broker_down on it holds for both)."""

    def __init__(self, clients):
        self.clients = clients
        self.closed = False

    def end_offsets(self, partitions, timeout_ms):
        return self.clients.consumers[-1].end_offsets(partitions, timeout_ms)

    def close(self):
        self.closed = True


class FakeSkipper:
    skipped_records = 0

    def close(self):
        pass
