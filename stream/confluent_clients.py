"""The worker's data path on librdkafka (confluent-kafka), behind kafka-python's API.

`--kafka-client confluent` (`WorkerSettings.kafka_client`) swaps two clients of the worker:
the group consumer that reads the events topic and the producer of predictions and dead
letters. `ConfluentConsumer` and `ConfluentProducer` give the worker the part of
kafka-python's `KafkaConsumer` / `KafkaProducer` API it uses, with kafka-python's
`TopicPartition` as the key type, so the worker, its membership, checkpointer, outputs,
restorer and telemetry run unchanged. Why: kafka-python costs 11-30 us per consumed and
about 33 us per produced record on the loop's thread; librdkafka fetches and sends on its
own threads, in C (BENCHMARKS.md, "An optional librdkafka client").

Everything else stays on kafka-python: the control channel, the checkpoint store, the
learn log, the broker watch's probe and the corrupt-batch skipper's probe. kafka-python stays
the default and the fully tested client.

What differs from kafka-python, and how it is bridged:

- librdkafka runs the rebalance callbacks inside `consume()` on the calling thread, and
  its partitions start at the offsets given to `assign()`: the seeks the worker makes in
  `on_partitions_assigned` are gathered and become those offsets.
- A record the client cannot read (librdkafka reports a corrupt message, or its header
  key is not UTF-8) raises `UnreadableRecord`, a kafka-python `CorruptRecordError` naming
  the partition and offset: `ConfluentCorruptSkipper` dead-letters exactly that offset and
  reading goes on after it. Records consumed after it wait for the next poll.
- A paused partition's records already fetched are held back, and it resumes where the
  worker stopped reading (kafka-python returns nothing of a paused partition either).
- A delivery failure is reported to the send's errback as the kafka-python error the
  outputs know (`MessageSizeTooLargeError`, `KafkaTimeoutError`, else `KafkaError`).
- No Python partition assignor: librdkafka's `range`. So the scoring API's owners map cannot
  ride on the assignment (stream/owners.py): the worker joins with its API address in its
  client id and reads the group from the broker after each rebalance (stream/group_owners.py).
  The API writes its requests' events with a librdkafka producer too (`score_producer_config`),
  whose delivery reports a thread of its own serves (`ConfluentProducer(serve_reports=True)`).
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError as ConfluentError, KafkaException, Producer
from confluent_kafka import TopicPartition as ConfluentTopicPartition
from kafka import TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from shopstream.options import ConfigError

from .corrupt import CorruptBatchSkipper
from .membership import PARTITION_DISCOVERY_MS

log = logging.getLogger(__name__)
# librdkafka's own log lines go to the "kafka" logger's child: the worker quietens "kafka" below DEBUG.
LIBRDKAFKA_LOG = logging.getLogger("kafka.librdkafka")
#: librdkafka errors that mean "this message cannot be read"; every other error is the client's
#: (a broker away, a timeout) and librdkafka retries it by itself.
UNREADABLE = frozenset({ConfluentError._BAD_MSG, ConfluentError._BAD_COMPRESSION, ConfluentError.INVALID_MSG})
#: Message.headers() called through PyObject_Call, which checks the result: on a header key that is not
#: UTF-8 the binding returns a broken list with the UnicodeDecodeError left set, and Python 3.11's
#: specialised method call does not check (the error surfaced later, in an unrelated call).
_headers_of = operator.methodcaller("headers")
#: Orders a failure's report against an errback being added (taken on failures and errbacks only).
_REPORTS_LOCK = threading.Lock()
SEND_WAIT_SECONDS = 10.0   # kafka-python's max_block_ms: how long a send may wait for room in the queue
_CLIENT_ERROR_LOG_SECONDS = 10.0
PARTITIONS_KEPT_SECONDS = 30.0


# -- settings ---------------------------------------------------------------------------------------

#: kafka-python connection options (stream/connection.py's `kafka_options`) -> librdkafka names.
_NAMES = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanisms",
          "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
          "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
          "ssl_keyfile": "ssl.key.location", "reconnect_backoff_max_ms": "reconnect.backoff.max.ms"}


def librdkafka_options(options: dict) -> dict:
    """librdkafka's configuration for kafka-python connection `options`; an option without an
    equivalent here is refused (a ConfigError naming it), never dropped.

    >>> librdkafka_options({"bootstrap_servers": ["a:1", "b:2"], "security_protocol": "SASL_SSL",
    ...                     "sasl_mechanism": "PLAIN", "ssl_cafile": "ca.pem"})
    {'bootstrap.servers': 'a:1,b:2', 'security.protocol': 'SASL_SSL', 'sasl.mechanisms': 'PLAIN', \
'ssl.ca.location': 'ca.pem'}
    >>> librdkafka_options({"ssl_password": "x"})
    Traceback (most recent call last):
    ...
    shopstream.options.ConfigError: kafka_client 'confluent' cannot take the connection option ssl_password \
(no librdkafka equivalent here): use --kafka-client kafka-python
    """
    config: dict = {}
    for name, value in options.items():
        if name == "bootstrap_servers":
            config["bootstrap.servers"] = ",".join(value) if isinstance(value, (list, tuple)) else value
        elif name in _NAMES:
            config[_NAMES[name]] = value
        else:
            raise ConfigError("kafka_client", "confluent", f"cannot take the connection option {name} (no "
                              "librdkafka equivalent here): use --kafka-client kafka-python")
    return config


def consumer_config(settings, options: dict) -> dict:
    """The worker's group consumer, as `KafkaClients.consumer` configures kafka-python's."""
    return {**librdkafka_options(options), "group.id": settings.group, "client.id": settings.name,
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
            "partition.assignment.strategy": "range",   # eager, like kafka-python's (range) assignor
            "check.crcs": True,                          # kafka-python checks them too
            "isolation.level": "read_uncommitted",       # kafka-python's default (librdkafka's: read_committed)
            "topic.metadata.refresh.interval.ms": PARTITION_DISCOVERY_MS,   # partitions added: found in 30 s
            "logger": LIBRDKAFKA_LOG}


def producer_config(settings, options: dict) -> dict:
    """The outputs' producer, as `KafkaClients.producer` configures kafka-python's: every replica
    acknowledges, a 5 ms linger, idempotent (kafka-python 3's default), 1 MiB requests, deliveries
    given up after 120 s (kafka-python's delivery_timeout_ms)."""
    return {**librdkafka_options(options), "client.id": settings.name, "acks": "all", "linger.ms": 5,
            "enable.idempotence": True, "message.max.bytes": 1_048_576, "message.timeout.ms": 120_000,
            "delivery.report.only.error": True,   # a success costs no Python call; a failure reaches its errback
            "logger": LIBRDKAFKA_LOG}


def score_producer_config(settings, options: dict) -> dict:
    """The scoring API's producer: each request waits on its own send, so no linger; successes are
    reported too (a score answered when written is answered by its acknowledgement)."""
    return {**producer_config(settings, options), "client.id": f"{settings.name}-api", "linger.ms": 0,
            "delivery.report.only.error": False}


# -- the consumer -------------------------------------------------------------------------------------

class ConsumedRecord:
    """A consumed record with the attributes of kafka-python's ConsumerRecord the worker reads."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "key", "value", "headers")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, key, value, headers):
        self.topic, self.partition, self.offset, self.timestamp = topic, partition, offset, timestamp
        self.key, self.value, self.headers = key, value, headers

    def __repr__(self) -> str:
        return f"ConsumedRecord({self.topic!r}, {self.partition}, {self.offset})"


class UnreadableRecord(CorruptRecordError):
    """A record librdkafka or its Python binding could not read: which partition and offset, and why."""

    def __init__(self, tp: TopicPartition, offset: int, reason: str):
        super().__init__(f"{tp.topic}-{tp.partition}@{offset}: {reason}")
        self.tp, self.offset, self.reason = tp, offset, reason


class ConfluentConsumer:
    """kafka-python's KafkaConsumer API, as far as the worker uses it, on a librdkafka consumer."""

    def __init__(self, config: dict, max_poll_records: int = 500, owners_watch: Any = None):
        self.max_poll_records = max_poll_records
        self.owners_watch = owners_watch   # serving the API: told of each rebalance (group_owners.py)
        self._last_client_error: dict = {}
        self._consumer = Consumer({**config, "error_cb": self._client_error, "on_commit": self._committed})
        self._tps: dict = {}               # (topic, partition) -> kafka TopicPartition, made once
        self.listener: Any = None
        self._assigning: Optional[dict] = None   # inside on_partitions_assigned: tp -> offset sought
        self._held: list = []              # consumed, not yet returned (after an unreadable record)
        self._unread: Optional[UnreadableRecord] = None   # raised by the next poll
        self._paused: set = set()
        self._resume_at: dict = {}         # paused tp -> first offset held back from the worker
        self._seek_later: dict = {}        # tp -> offset librdkafka could not seek to yet
        self._closing = False

    # -- group membership

    def partitions_for_topic(self, topic: str) -> Optional[set]:
        metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        return set(metadata.partitions)

    def subscribe(self, topics, listener=None) -> None:
        self.listener = listener
        self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer, partitions) -> None:
        tps = [self._tp(p.topic, p.partition) for p in partitions]
        self._assigning = {}
        try:
            if self.listener is not None:
                self.listener.on_partitions_assigned(tps)
        except Exception:  # kafka-python logs a listener's failure and goes on: so do we
            log.exception("on_partitions_assigned failed")
        finally:
            sought, self._assigning = self._assigning, None
        consumer.assign([ConfluentTopicPartition(tp.topic, tp.partition, sought.get(tp, OFFSET_STORED))
                         for tp in tps])
        if self.owners_watch is not None:
            self.owners_watch.refresh()

    def _on_revoke(self, consumer, partitions) -> None:
        tps = [self._tp(p.topic, p.partition) for p in partitions]
        try:
            # Closing: the worker checkpointed and released everything first (Worker.close, a rebuild).
            if self.listener is not None and not self._closing:
                self.listener.on_partitions_revoked(tps)
        except Exception:
            log.exception("on_partitions_revoked failed")
        revoked = set(tps)
        self._held = [m for m in self._held if self._tp(m.topic(), m.partition()) not in revoked]
        self._paused -= revoked
        for tp in tps:
            self._resume_at.pop(tp, None)
            self._seek_later.pop(tp, None)
        consumer.unassign()

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        key = (topic, partition)
        tp = self._tps.get(key)
        if tp is None:
            tp = self._tps[key] = TopicPartition(topic, partition)
        return tp

    # -- reading

    def poll(self, timeout_ms: int = 0, max_records: Optional[int] = None) -> dict:
        """{TopicPartition: [records]}, at most `max_records`; returns as soon as any record is there."""
        if self._seek_later:
            self._retry_seeks()
        if self._unread is not None:
            error, self._unread = self._unread, None
            raise error
        limit = max_records or self.max_poll_records
        if self._held:
            messages, self._held = self._held, []
        else:
            consumer = self._consumer
            messages = consumer.consume(limit, 0)  # what is fetched already, without waiting
            if not messages:
                first = consumer.poll(timeout_ms / 1000.0)  # waits for the first record only
                if first is None:
                    return {}
                messages = [first] + (consumer.consume(limit - 1, 0) if limit > 1 else [])
        batches: dict = {}
        tps = self._tps
        skip = self._paused or self._seek_later
        for index, message in enumerate(messages):
            error = message.error()
            topic, partition = message.topic(), message.partition()
            tp = tps.get((topic, partition))
            if error is not None:
                if error.code() in UNREADABLE and topic is not None and partition is not None and partition >= 0:
                    self._unreadable(batches, messages, index, self._tp(topic, partition), message.offset(),
                                     error.str())
                    break
                if error.code() != ConfluentError._PARTITION_EOF:
                    self._client_error(error)
                continue
            if tp is None:
                tp = self._tp(topic, partition)
            offset = message.offset()
            if skip and self._hold_back(tp, offset):
                continue
            try:
                headers = _headers_of(message) or []
            except Exception as exc:  # e.g. a header key that is not UTF-8 (SystemError from the binding)
                cause = exc.__cause__ or exc.__context__ or exc
                self._unreadable(batches, messages, index, tp, offset,
                                 f"headers cannot be decoded: {type(cause).__name__}: {cause}")
                break
            records = batches.get(tp)
            if records is None:
                records = batches[tp] = []
            records.append(ConsumedRecord(topic, partition, offset, message.timestamp()[1], message.key(),
                                          message.value(), headers))
        return batches

    def _unreadable(self, batches: dict, messages: list, index: int, tp: TopicPartition, offset: int,
                    reason: str) -> None:
        """Return what came before the unreadable record now, and raise for it at the next poll (or now).
        The message itself is never read again: the binding's second headers() call returns a broken list."""
        self._held = [m for m in messages[index + 1:] if m.error() is None]
        error = UnreadableRecord(tp, offset, reason)
        if not batches:
            raise error
        self._unread = error

    def _hold_back(self, tp: TopicPartition, offset: int) -> bool:
        if tp in self._seek_later:
            return True   # from before a seek librdkafka has not made yet
        if tp in self._paused:
            self._resume_at.setdefault(tp, offset)
            return True
        return False

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._assigning is not None:   # inside on_partitions_assigned: becomes the assigned offset
            self._assigning[tp] = offset
            return
        self._held = [m for m in self._held if (m.topic(), m.partition()) != (tp.topic, tp.partition)]
        self._resume_at.pop(tp, None)
        self._seek_later[tp] = offset
        self._retry_seeks()

    def _retry_seeks(self) -> None:
        for tp, offset in list(self._seek_later.items()):
            try:
                self._consumer.seek(ConfluentTopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:  # just assigned, not fetching yet: at the next poll
                log.debug("seek %s to %d: %s; again at the next poll", tp, offset, exc)
                continue
            del self._seek_later[tp]

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)
        self._consumer.pause([ConfluentTopicPartition(tp.topic, tp.partition) for tp in partitions])

    def resume(self, *partitions: TopicPartition) -> None:
        self._consumer.resume([ConfluentTopicPartition(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            self._paused.discard(tp)
            held_from = self._resume_at.pop(tp, None)
            if held_from is not None:   # records fetched while paused were dropped: read them again
                self.seek(tp, held_from)

    # -- offsets

    def commit(self, offsets: Optional[dict] = None) -> None:
        if offsets is None:
            self._consumer.commit(asynchronous=False)
            return
        for result in self._consumer.commit(offsets=self._offsets(offsets), asynchronous=False) or ():
            if result.error is not None:
                raise KafkaException(result.error)

    def commit_async(self, offsets: Optional[dict] = None, callback: Optional[Callable] = None) -> None:
        if offsets is None:
            self._consumer.commit(asynchronous=True)
        else:
            self._consumer.commit(offsets=self._offsets(offsets), asynchronous=True)

    @staticmethod
    def _offsets(offsets: dict) -> list:
        return [ConfluentTopicPartition(tp.topic, tp.partition, meta.offset, meta.metadata or "")
                for tp, meta in offsets.items()]

    def _committed(self, error, partitions) -> None:
        if error is not None:  # committed offsets serve monitoring and the restore witness only
            log.warning("offset commit failed (checkpoints are safe): %s", error)

    def committed(self, tp: TopicPartition) -> Optional[int]:
        [result] = self._consumer.committed([ConfluentTopicPartition(tp.topic, tp.partition)], timeout=10)
        return result.offset if result.offset >= 0 else None

    def highwater(self, tp: TopicPartition) -> Optional[int]:
        """The partition's end as of the last fetch (no broker call), or None if none is known yet."""
        try:
            _, high = self._consumer.get_watermark_offsets(ConfluentTopicPartition(tp.topic, tp.partition),
                                                           cached=True)
        except (KafkaException, TypeError):
            return None
        return high if high is not None and high >= 0 else None

    def end_offsets(self, partitions, timeout_ms: int = 3000) -> dict:
        return {tp: self._consumer.get_watermark_offsets(ConfluentTopicPartition(tp.topic, tp.partition),
                                                         timeout=timeout_ms / 1000.0)[1]
                for tp in partitions}

    def _client_error(self, error) -> None:
        """An error of the client, not of a record (a broker away, a timeout): librdkafka retries;
        say so once in a while."""
        now = time.monotonic()
        if now - self._last_client_error.get(error.code(), -1e9) >= _CLIENT_ERROR_LOG_SECONDS:
            self._last_client_error[error.code()] = now
            log.warning("Kafka client: %s", error.str())

    def close(self, autocommit: bool = True, timeout_ms: Optional[int] = None) -> None:
        """Leave the group. Offsets are committed only by the checkpointer (no auto-commit)."""
        self._closing = True
        if self.owners_watch is not None:
            self.owners_watch.close()
        self._consumer.close()


# -- the producer -------------------------------------------------------------------------------------

def _as_kafka_error(error) -> Exception:
    """A delivery error as the kafka-python error the outputs know how to handle."""
    code = error.code()
    text = f"{error.name()}: {error.str()}"
    if code == ConfluentError.MSG_SIZE_TOO_LARGE:
        return MessageSizeTooLargeError(text)
    if code in (ConfluentError._MSG_TIMED_OUT, ConfluentError._TIMED_OUT, ConfluentError.REQUEST_TIMED_OUT):
        return KafkaTimeoutError(text)
    return KafkaError(text)


class Delivered(NamedTuple):
    """Where an acknowledged record landed (what kafka-python's RecordMetadata says of it)."""

    topic: str
    partition: int
    offset: int


def _where(message) -> Delivered:
    return Delivered(message.topic(), message.partition(), message.offset())


class DeliveryFuture:
    """What a send returns: errbacks are called with the failure; callbacks with a `Delivered` once
    acknowledged, on the thread that serves delivery reports (or at once, if added after that), or
    with None at `get` if still pending then."""

    __slots__ = ("_producer", "_errbacks", "_callbacks", "exception", "_message")

    def __init__(self, producer: "ConfluentProducer"):
        self._producer = producer
        self._errbacks: list = []
        self._callbacks: list = []
        self.exception: Optional[Exception] = None
        self._message = None   # the acknowledged message (read only for a callback)

    def add_errback(self, fn: Callable, *args, **kwargs) -> "DeliveryFuture":
        """As kafka-python's: an errback added after the send failed is called at once (a thread
        serving delivery reports may report the failure before the sender adds its errback)."""
        with _REPORTS_LOCK:
            failed = self.exception
            if failed is None:
                self._errbacks.append((fn, args, kwargs))
        if failed is not None:
            fn(*args, failed, **kwargs)
        return self

    def add_callback(self, fn: Callable, *args, **kwargs) -> "DeliveryFuture":
        with _REPORTS_LOCK:
            message = self._message
            if message is None:
                self._callbacks.append((fn, args, kwargs))
        if message is not None:   # acknowledged before the callback was added
            fn(*args, _where(message), **kwargs)
        return self

    def _delivered(self, error, message) -> None:
        if error is None:
            with _REPORTS_LOCK:
                self._message = message
                callbacks, self._callbacks = self._callbacks, []
            for fn, args, kwargs in callbacks:
                fn(*args, _where(message), **kwargs)
            return
        with _REPORTS_LOCK:
            self.exception = failed = _as_kafka_error(error)
            errbacks, self._errbacks = self._errbacks, []
        for fn, args, kwargs in errbacks:
            fn(*args, failed, **kwargs)

    def get(self, timeout: Optional[float] = None):
        """Wait until this record is acknowledged (every record sent so far, in fact); raise its failure."""
        self._producer.flush(timeout)
        if self.exception is not None:
            raise self.exception
        with _REPORTS_LOCK:
            callbacks, self._callbacks = self._callbacks, []   # (none left once its report was served)
        for fn, args, kwargs in callbacks:
            fn(*args, None, **kwargs)


class ConfluentProducer:
    """kafka-python's KafkaProducer API, as far as the outputs use it, on a librdkafka producer."""

    def __init__(self, config: dict, serve_reports: bool = False):
        self._producer = Producer(config)
        self._sends = 0
        self._partitions: dict = {}   # topic -> (when read, its partitions)
        self._closed = threading.Event()
        if serve_reports:   # failures reach their errbacks at once, not at the next send or flush
            threading.Thread(target=self._serve_reports, name="producer-reports", daemon=True).start()

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)   # waits in C, without the interpreter

    def partitions_for(self, topic: str) -> Optional[set]:
        """The topic's partition numbers (None: unknown to the broker, or the broker away). Known
        counts are kept for `PARTITIONS_KEPT_SECONDS`: the API's front asks per request until the group's
        owners map is known, and must not wait on the broker each time (kafka-python's answer is cached
        metadata too)."""
        now = time.monotonic()
        kept = self._partitions.get(topic)
        if kept is not None and now - kept[0] < PARTITIONS_KEPT_SECONDS:
            return kept[1]
        try:
            metadata = self._producer.list_topics(topic, timeout=5).topics.get(topic)
        except KafkaException:
            return None
        if metadata is None or metadata.error is not None:
            return None
        found = set(metadata.partitions)
        self._partitions[topic] = (now, found)
        return found

    def send(self, topic: str, value=None, key=None, headers=None, partition=None,
             timestamp_ms=None) -> DeliveryFuture:
        future = DeliveryFuture(self)
        extra: dict = {}
        if partition is not None:
            extra["partition"] = partition
        if timestamp_ms is not None:
            extra["timestamp"] = timestamp_ms
        deadline = None
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers or None, on_delivery=future._delivered,
                                       **extra)
                break
            except BufferError:  # the queue is full: wait for deliveries, as kafka-python's max_block_ms does
                deadline = deadline or time.monotonic() + SEND_WAIT_SECONDS
                if time.monotonic() >= deadline:
                    raise KafkaTimeoutError(f"no room in the producer's queue after {SEND_WAIT_SECONDS:.0f} s") \
                        from None
                self._producer.poll(0.05)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                raise _as_kafka_error(error) if isinstance(error, ConfluentError) else KafkaError(str(exc)) from None
        self._sends += 1
        if self._sends % 64 == 0:
            self._producer.poll(0)   # serve delivery reports now and then, not only at flush
        return future

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until every record sent is acknowledged or failed (its errback called)."""
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"{left} record(s) not acknowledged after {timeout} s")

    def close(self, timeout: Optional[float] = None) -> None:
        try:
            self.flush(timeout)
        except KafkaTimeoutError as exc:  # as kafka-python's close: what is left is dropped
            log.warning("producer closed with outputs unacknowledged: %s", exc)
        finally:
            self._closed.set()


# -- unreadable records -------------------------------------------------------------------------------

class ConfluentCorruptSkipper(CorruptBatchSkipper):
    """`UnreadableRecord` names its partition and offset: dead-letter exactly that record (the
    original stays in its topic) and read on after it. Anything else goes to kafka-python's search."""

    def skip(self, consumer, partitions: dict, exc: Exception) -> None:
        if not isinstance(exc, UnreadableRecord):
            super().skip(consumer, partitions, exc)
            return
        tp, offset = exc.tp, exc.offset
        state = partitions.get(tp)
        if state is None or offset < state.next_offset:
            return   # no longer ours, or behind where the worker reads: nothing to skip
        log.error("partition %d: offset %d cannot be parsed (%s): skipped, one dead letter", tp.partition, offset,
                  exc.reason)
        self.outputs.dead_letter_range(tp.topic, tp.partition, offset, offset, f"unreadable record: {exc.reason}")
        state.skipped(1, offset + 1)
        consumer.seek(tp, offset + 1)
        self.skipped_batches += 1
        self.skipped_records += 1
