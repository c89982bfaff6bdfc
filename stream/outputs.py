"""What a worker writes back to Kafka: predictions for the shop, and dead letters.

A dead letter keeps the original key, value and headers, and adds headers naming why
it failed and where it came from, so it can be inspected and replayed. Two exceptions,
both marked in headers: a header whose value was null is sent empty (kafka-python cannot
send a null header), and a copy too large to publish is cut to `DEAD_LETTER_CUT` bytes
(``shopstream.truncated`` says so, ``shopstream.original_size`` gives the size).

Every send's outcome is checked (`Outputs.confirm`): kafka-python's flush() only logs
records that expired or were rejected, so without the check a checkpoint could claim
outputs that never reached Kafka. What failed is sent again by a fresh producer
(kafka-python's producer stays broken after the broker rejects one record).

Predictions are published in one of two formats (`--prediction-format`):

- ``batch`` (the default): one record per polled batch of a source partition, keyed by
  the partition's number, with the header ``shopstream.format: predictions-batch/1`` and
  as value a JSON array of prediction objects in offset order (a record over
  `MAX_BATCH_BYTES` is cut in halves). A kafka-python record costs about 33 us to send, as much as River's
  predict and learn together: one per batch instead of one per prediction;
- ``event``: one record per prediction, keyed like its input event, the value one
  prediction object (no format header). A key over `MAX_PREDICTION_KEY_BYTES` is not
  copied: the record is keyed by its SHA-256 digest (64 hex digits) instead, with the
  headers ``shopstream.key_digest: sha256`` and ``shopstream.key_size`` (the original's
  bytes). A digest, not no key: every prediction of that key still goes to one partition
  of the predictions topic, in order, and a consumer can match it to the event's key.

An output refused as too large (by the producer's own check, `max_request_size`, or by the
broker, a topic's ``max.message.bytes``) is never sent again as is for ever: a batch record
of several predictions is cut in halves, a dead letter is cut (see above); what cannot be
made smaller is dropped, counted (``too_large``), logged (at most once a minute), and a
prediction dropped so becomes a dead letter naming its source partition and offsets and why.
The broker refuses a producer batch, not a record: a small record may be refused only with
a large one, so a record the broker refused is sent once more as is, and dropped only when
refused again.

A prediction object has the fields of `Prediction`. `decode_predictions(record)` reads
either format (and refuses a version it does not know, naming it).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Optional, Protocol, cast

import msgspec
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError

from shopstream.events import Event

log = logging.getLogger(__name__)

REASON_HEADER = "shopstream.reason"
TRUNCATED_HEADER = "shopstream.truncated"
ORIGINAL_SIZE_HEADER = "shopstream.original_size"
DROPPED_HEADERS_HEADER = "shopstream.dropped_headers"
SOURCE_HEADERS = frozenset({REASON_HEADER, "shopstream.source.topic", "shopstream.source.partition",
                            "shopstream.source.offset", "shopstream.source.last_offset"})
#: A dead letter larger than this (key, value and headers) is cut before sending: the
#: broker's default limit is 1 MiB per record batch, and the original is still in its topic.
MAX_DEAD_LETTER_BYTES = 900_000
#: What is kept of the value of a dead letter too large to publish as is.
DEAD_LETTER_CUT = 16 * 1024
_encode = msgspec.json.Encoder().encode
FORMAT_HEADER = "shopstream.format"
BATCH_FORMAT = b"predictions-batch/1"
PREDICTION_FORMATS = ("batch", "event")
#: A batch record over this many bytes is cut in halves (the broker's default limit is 1 MiB).
MAX_BATCH_BYTES = 512 * 1024
#: ... or after this many predictions: a polled batch of hundreds of events otherwise held its
#: first prediction until the last was handled (BENCHMARKS.md, "Latency: what stops the loop").
#: 64 bounds that wait to 64 events' handling and still spreads a record's cost over 64.
MAX_BATCH_PREDICTIONS = 64
#: An event's record key longer than this is not copied onto its prediction (event format):
#: a valid event keyed by nearly 1 MiB gave a prediction over the producer's limit, refused at
#: every try. User ids, the keys the shop sends, are far shorter.
MAX_PREDICTION_KEY_BYTES = 1024
KEY_DIGEST_HEADER = "shopstream.key_digest"
KEY_SIZE_HEADER = "shopstream.key_size"
#: At most one log line this often about outputs dropped as too large (each is counted).
TOO_LARGE_LOG_SECONDS = 60.0


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


_decode_one = msgspec.json.Decoder(Prediction).decode
_decode_many = msgspec.json.Decoder(list[Prediction]).decode


def decode_predictions(record) -> list[Prediction]:
    """The predictions a record of the predictions topic holds, in either format.

    >>> class R: headers, value = [(FORMAT_HEADER, BATCH_FORMAT)], b'[]'
    >>> decode_predictions(R())
    []
    """
    version = next((v for k, v in record.headers or () if k == FORMAT_HEADER), None)
    if version is None:
        return [_decode_one(record.value)]
    if version == BATCH_FORMAT:
        return _decode_many(record.value)
    raise ValueError(f"predictions record with {FORMAT_HEADER} {version!r}: this version reads only "
                     f"{BATCH_FORMAT.decode()} and records without the header (one prediction each)")


class _Message:
    """A message dict as a record, for `decode_predictions`."""

    __slots__ = ("value", "headers")

    def __init__(self, value, headers):
        self.value, self.headers = value, headers


def _as_record(message: dict) -> _Message:
    return _Message(message.get("value") or b"", message.get("headers") or [])


#: The names of our own dead-letter headers: a sender's header of one of them is kept as ``sent.<name>``.
OUR_HEADERS = SOURCE_HEADERS | {TRUNCATED_HEADER, ORIGINAL_SIZE_HEADER, DROPPED_HEADERS_HEADER,
                                "shopstream.source.last_offset"}


def dead_letter_headers(record, reason: str) -> list:
    """The record's own headers (null values sent empty) and ours: why, and from where. A sender's
    header named as one of ours is renamed ``sent.<name>`` (its value was taken for ours: a
    ``shopstream.dropped_headers`` of ``lots`` made cutting the dead letter raise, and the worker die)."""
    headers = [(f"sent.{key}" if key in OUR_HEADERS else key, b"" if value is None else value)
               for key, value in (record.headers or [])]
    headers += [
        (REASON_HEADER, reason.encode("utf-8", "replace")[:1000]),
        ("shopstream.source.topic", record.topic.encode()),
        ("shopstream.source.partition", str(record.partition).encode()),
        ("shopstream.source.offset", str(record.offset).encode()),
    ]
    return headers


def message_size(message: dict) -> int:
    return (len(message.get("key") or b"") + len(message.get("value") or b"")
            + sum(len(k) + len(v or b"") for k, v in message.get("headers") or ()))


def cut(message: dict, keep: int = DEAD_LETTER_CUT) -> dict:
    """A bounded copy of a dead letter: the value cut to `keep` bytes, the original headers
    kept while they fit in `keep` bytes too (a message can carry a megabyte of headers),
    and headers saying what was cut.

    >>> m = cut({"key": None, "value": b"x" * 100, "headers": [("a", b"1"), ("b", b"2" * 50)]}, keep=10)
    >>> len(m["value"]), m["headers"]
    (10, [('a', b'1'), ('shopstream.truncated', b'1'), ('shopstream.original_size', b'100'),
          ('shopstream.dropped_headers', b'1')])
    """
    value = message.get("value") or b""
    headers = message.get("headers") or []
    ours = {TRUNCATED_HEADER, ORIGINAL_SIZE_HEADER, DROPPED_HEADERS_HEADER}
    original = next((v for k, v in headers if k == ORIGINAL_SIZE_HEADER), None)
    dropped = next((v for k, v in headers if k == DROPPED_HEADERS_HEADER), b"0")
    dropped = int(dropped) if dropped.isdigit() and len(dropped) < 19 else 0   # ours: a count (never a sender's)
    # Our reason and source come last in the list (a sender may use the same names): keep the
    # last of each, then the sender's headers while they fit.
    last = {k: i for i, (k, _) in enumerate(headers) if k in SOURCE_HEADERS}
    kept, room = [], keep
    for i, (k, v) in enumerate(headers):
        if k in ours:
            continue
        size = len(k) + len(v or b"")
        if last.get(k) == i or (k not in last and size <= room):
            kept.append((k, v[:1000] if last.get(k) == i else v))
            room -= 0 if last.get(k) == i else size
        else:
            dropped += 1
    kept += [(TRUNCATED_HEADER, b"1"), (ORIGINAL_SIZE_HEADER, original or str(len(value)).encode())]
    if dropped:
        kept.append((DROPPED_HEADERS_HEADER, str(dropped).encode()))
    key = message.get("key")
    return {"key": key[:1000] if key else key, "value": value[:keep], "headers": kept}


CLOSE_SECONDS = 10.0   # what a stop waits for unacknowledged outputs
#: Sends to one topic that time out (each after the producer's max_block_ms) before its outputs
#: are parked as unsent: a topic whose metadata never arrives (deleted, never created, not
#: authorised) retried for ever and held the worker inside send().
SEND_TRIES = 3
#: Futures kept before the acknowledged ones are dropped from `Outputs._unacked`.
PRUNE_UNACKED = 4096


def too_large(exc: Exception) -> bool:
    """Whether a send failed because the record (or its producer batch) is over a size limit:
    kafka-python's own check and the broker's MESSAGE_TOO_LARGE (MessageSizeTooLargeError), the
    broker's RECORD_LIST_TOO_LARGE, librdkafka's local check (a KafkaError named ``_MSG_SIZE_TOO_LARGE``)."""
    return (isinstance(exc, (MessageSizeTooLargeError, RecordListTooLargeError))
            or "MSG_SIZE_TOO_LARGE" in str(exc))


def bounded_key(key: Optional[bytes]) -> tuple[Optional[bytes], list]:
    """The key a prediction is published with, and the headers saying it is a digest.

    >>> bounded_key(b"u1")
    (b'u1', [])
    >>> key, headers = bounded_key(b"k" * 2000)
    >>> len(key), headers
    (64, [('shopstream.key_digest', b'sha256'), ('shopstream.key_size', b'2000')])
    """
    if key is None or len(key) <= MAX_PREDICTION_KEY_BYTES:
        return key, []
    return (hashlib.sha256(key).hexdigest().encode(),
            [(KEY_DIGEST_HEADER, b"sha256"), (KEY_SIZE_HEADER, str(len(key)).encode())])


def _unacknowledged(futures: list) -> list:
    """The futures not known to be acknowledged. A failed one stays: kafka-python marks it done
    before its errback has queued it for `confirm`, so a check that dropped it could pass."""
    return [f for f in futures if not (f.is_done and f.exception is None)]


class Producer(Protocol):
    """What Outputs needs of a producer (kafka-python's, or a test's stand-in)."""

    def send(self, topic: str, **message): ...

    def flush(self, timeout: Optional[float] = None): ...

    def close(self, timeout: Optional[float] = None): ...


class Outputs:
    """The worker's producer: predictions and dead letters, each send's outcome checked.

    `confirm()` is the gate before a checkpoint: True only once every output sent so
    far is acknowledged by the broker. The constructor only keeps the settings: `open()`
    builds the producer (the worker calls it; the first output opens it otherwise)."""

    def __init__(self, make_producer: Callable[[], Producer], predictions_topic: Optional[str],
                 dead_letter_topic: str, prediction_format: str = "batch"):
        if prediction_format not in PREDICTION_FORMATS:
            raise ValueError(f"prediction format must be one of {PREDICTION_FORMATS}, got {prediction_format!r}")
        self.batched = prediction_format == "batch"
        self._batch: dict[int, list] = {}   # source partition -> predictions not yet sent
        self._make_producer = make_producer
        self._producer: Optional[Producer] = None
        self.predictions_topic = predictions_topic
        self.dead_letter_topic = dead_letter_topic
        self.failed: list[tuple[str, dict, Exception]] = []  # filled by the producer's IO thread
        # topic -> why its sends timed out: later sends to it are parked at once (no wait) until
        # the next confirm() tries it again, so one dead topic costs SEND_TRIES waits per confirm.
        self.stalled: dict[str, str] = {}
        self.counts = {"failed": 0, "resent": 0, "truncated": 0, "producer_rebuilds": 0, "send_timeouts": 0,
                       "too_large": 0, "keys_digested": 0}
        # Outputs the broker refused once as too large, sent again as is (id -> the message, kept alive
        # so its id is not reused): refused again, they are dropped. Emptied once all is acknowledged.
        self._refused_once: dict[int, dict] = {}
        self._too_large_logged = -1e18   # monotonic time of the last log line about a dropped output
        self._too_large_quiet = 0        # dropped since, not logged
        self.source_topic = ""           # the events topic (named in a dropped prediction's dead letter)
        # The futures of sends maybe not acknowledged yet, for `acknowledgement` (pruned as they pile up).
        self._unacked: list = []
        self._prune_at = PRUNE_UNACKED
        self._waitable = True

    def open(self) -> "Outputs":
        """Build the producer (kafka-python's connects to the broker here)."""
        if self._producer is None:
            self._producer = self._make_producer()
        return self

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self.open()
        return cast(Producer, self._producer)

    def prediction(self, record, event: Event, score: float, model: str, version: str) -> None:
        if not self.predictions_topic:
            return
        # a validated event: ids are strings, the time is epoch seconds (events.validate); typing.cast
        # would be four calls an event
        prediction = Prediction(event.event_id, event.user_id, event.user_session,  # type: ignore[arg-type]
                                event.product_id, event.event_type, event.event_time,  # type: ignore[arg-type]
                                score, model, version, record.partition, record.offset)
        if not self.batched:
            self.source_topic = record.topic
            key = record.key
            if key is not None and len(key) > MAX_PREDICTION_KEY_BYTES:   # never copied whole: see bounded_key
                key, headers = bounded_key(key)
                self.counts["keys_digested"] += 1
                self._send(self.predictions_topic, {"key": key, "value": _encode(prediction), "headers": headers})
                return
            self._send(self.predictions_topic, {"key": key, "value": _encode(prediction)})
            return
        partition = record.partition
        batch = self._batch.get(partition)
        if batch is None:
            self.source_topic = record.topic
            batch = self._batch[partition] = []
        batch.append(prediction)   # encoded with the others in one call when the record is cut
        if len(batch) >= MAX_BATCH_PREDICTIONS:
            self._send_batch(partition)

    def end_batch(self) -> None:
        """Publish the predictions buffered since the last call (the worker calls it after
        each polled batch; `confirm` does too, so a checkpoint never covers an unsent one)."""
        for partition in list(self._batch):
            self._send_batch(partition)

    def _send_batch(self, partition: int) -> None:
        predictions = self._batch.pop(partition)
        if predictions and self.predictions_topic:
            self._send_predictions(partition, predictions)

    def _send_predictions(self, partition: int, predictions: list) -> None:
        value = _encode(predictions)   # a JSON array of prediction objects
        if len(value) > MAX_BATCH_BYTES and len(predictions) > 1:   # only with very long ids and names
            half = len(predictions) // 2
            self._send_predictions(partition, predictions[:half])
            self._send_predictions(partition, predictions[half:])
            return
        self._send(cast(str, self.predictions_topic), {"key": str(partition).encode(), "value": value,
                                                       "headers": [(FORMAT_HEADER, BATCH_FORMAT)]})

    def dead_letter(self, record, reason: str) -> None:
        value = record.value
        if value is None and record.key is None:
            value = b""  # Kafka needs a key or a value; the reason header says "empty message"
        self._send(self.dead_letter_topic, {"key": record.key, "value": value,
                                            "headers": dead_letter_headers(record, reason)})

    def dead_letter_range(self, topic: str, partition: int, first: int, last: int, reason: str) -> None:
        """A dead letter for records that could not even be read (a corrupt batch)."""
        self._send(self.dead_letter_topic, {"key": None, "value": b"", "headers": [
            (REASON_HEADER, reason.encode("utf-8", "replace")[:1000]),
            ("shopstream.source.topic", topic.encode()),
            ("shopstream.source.partition", str(partition).encode()),
            ("shopstream.source.offset", str(first).encode()),
            ("shopstream.source.last_offset", str(last).encode())]})

    def send(self, topic: str, key: Optional[bytes], value: bytes, partition: Optional[int] = None) -> None:
        """Another record on the worker's producer (the learn log's): checked and resent like a
        prediction, so no checkpoint covers it before the broker acknowledged it. `partition`:
        that one, whatever the key (else the producer's partitioner picks by key)."""
        self._send(topic, {"key": key, "value": value} if partition is None else
                   {"key": key, "value": value, "partition": partition})

    def _send(self, topic: str, message: dict) -> None:
        if topic == self.dead_letter_topic and message_size(message) > MAX_DEAD_LETTER_BYTES:
            message = cut(message)
            self.counts["truncated"] += 1
        if topic in self.stalled:   # parked: unacknowledged, so no checkpoint covers it; confirm() retries
            self._failed(topic, message, KafkaTimeoutError(self.stalled[topic]))
            return
        for attempt in range(1, SEND_TRIES + 1):
            try:
                future = self.producer.send(topic, **message)
            except KafkaTimeoutError as exc:  # no metadata for the topic (or no buffer space) in time
                log.warning("cannot send to %s yet (%s); try %d of %d", topic, exc, attempt, SEND_TRIES)
                last = exc
                continue
            except Exception as exc:  # refused before sending: resent by confirm(), unless it is too large
                if too_large(exc):   # the producer's own size check: the record alone is over it
                    self._too_large(topic, message, exc, by_broker=False)
                else:
                    self._failed(topic, message, exc)
                return
            future.add_errback(self._failed, topic, message)
            if hasattr(future, "get") and hasattr(future, "is_done"):   # kafka-python's: waitable on any thread
                unacked = self._unacked
                unacked.append(future)
                if len(unacked) >= self._prune_at:   # twice what is left: linear, even in an outage
                    self._unacked = _unacknowledged(unacked)
                    self._prune_at = max(PRUNE_UNACKED, 2 * len(self._unacked))
            else:
                self._waitable = False
            return
        reason = (f"topic {topic!r}: send timed out {SEND_TRIES} times ({last}): the topic does not exist, "
                  "is not authorised or the broker is away")
        log.error("%s; its outputs are held unsent (no checkpoint covers them) and retried at each checkpoint",
                  reason)
        self.counts["send_timeouts"] += 1
        self.stalled[topic] = reason
        self._failed(topic, message, KafkaTimeoutError(reason))

    def _failed(self, topic: str, message: dict, exc: Exception) -> None:
        self.failed.append((topic, message, exc))
        self.counts["failed"] += 1

    def acknowledgement(self) -> Optional[Callable[[float], Optional[str]]]:
        """A checkpoint's gate that need not stop the loop: publish the buffered predictions and
        return a check that waits, on any thread and at most the seconds given, until every output
        sent so far is acknowledged, returning None, or why not. None (then `confirm`, in the loop)
        when outputs failed or are parked already, which only `confirm` sends again, or when the
        producer's futures cannot be waited for (the confluent client reports only failures)."""
        self.end_batch()
        if self.failed or self.stalled or not self._waitable:
            return None
        self._unacked = _unacknowledged(self._unacked)
        futures = tuple(self._unacked)   # these only: the loop goes on sending while the thread waits

        def acknowledged(timeout: float) -> Optional[str]:
            deadline = time.monotonic() + timeout
            for future in futures:
                try:
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
                except Exception as exc:  # failed (its errback queued it for `confirm`), or the time is spent
                    if isinstance(exc, KafkaTimeoutError) and not future.is_done:
                        # Said as such: the future's own "Timeout after waiting for 0.0 secs" blamed the last
                        # future waited for, when the sends before it had taken the time.
                        waiting = sum(not f.is_done for f in futures)
                        return (f"outputs not acknowledged within {timeout:g} s: {waiting} of {len(futures)} sends "
                                "still waiting (KafkaTimeoutError)")
                    text, name = str(exc), type(exc).__name__
                    return f"outputs not acknowledged: {text if name in text else f'{name}: {text}'}"
            return None

        return acknowledged

    def confirm(self, timeout: float = 30.0, rounds: int = 4) -> bool:
        """Flush, and send again what the broker refused or let expire (by a fresh
        producer; a dead letter refused as too large is cut further each time). True once
        everything sent so far is acknowledged; False if something is still unsent after
        `rounds` tries (the worker retries later, its checkpoint waiting). A topic whose
        sends timed out is tried again once per call (SEND_TRIES sends at most)."""
        self.stalled.clear()
        self.end_batch()
        for _ in range(rounds):
            try:
                self.producer.flush(timeout=timeout)
            except KafkaTimeoutError:
                return False
            if not self.failed:
                self._unacked = []   # all acknowledged (failed ones were sent again and acknowledged too)
                self._refused_once.clear()
                return True
            if all(topic in self.stalled for topic, _, _ in self.failed):
                return False   # tried once in this call already: a new producer would not help
            failed, self.failed = self.failed, []
            reasons = sorted({type(exc).__name__ for _, _, exc in failed})
            log.warning("%d output(s) not acknowledged (%s): sending them again with a new producer",
                        len(failed), ", ".join(reasons))
            self.rebuild()
            for topic, message, exc in failed:
                if too_large(exc):
                    self._too_large(topic, message, exc, by_broker=True)
                    continue
                self.counts["resent"] += 1
                self._send(topic, message)
        return False

    def _too_large(self, topic: str, message: dict, exc: Exception, by_broker: bool) -> None:
        """An output refused as too large: made smaller and sent again if it can be, else dropped
        (never resent as is for ever: its checkpoint, every partition's, would wait for good)."""
        if topic == self.dead_letter_topic:
            # The broker's limit may be lower than ours. A large letter is cut, and each refusal halves it.
            size = len(message.get("value") or b"")
            truncated = any(k == TRUNCATED_HEADER for k, _ in message.get("headers") or ())
            if size > DEAD_LETTER_CUT or (truncated and size > 0):
                self.counts["truncated"] += 1
                self.counts["resent"] += 1
                self._send(topic, cut(message, min(DEAD_LETTER_CUT, size // 2)))
                return
        elif topic == self.predictions_topic and self._is_batch(message):
            try:
                predictions = decode_predictions(_as_record(message))
            except (ValueError, msgspec.DecodeError):
                predictions = []
            if len(predictions) > 1:   # cut in halves: only what alone is too large is dropped
                half = len(predictions) // 2
                partition = int(message["key"])
                self.counts["resent"] += 1
                self._send_predictions(partition, predictions[:half])
                self._send_predictions(partition, predictions[half:])
                return
        if by_broker and self._refused_once.get(id(message)) is not message:
            # The broker refuses a producer batch: this one may have been refused only with a larger one.
            self._refused_once[id(message)] = message
            self.counts["resent"] += 1
            self._send(topic, message)
            return
        self._refused_once.pop(id(message), None)
        self._drop(topic, message, exc, "the broker" if by_broker else "the producer")

    def _is_batch(self, message: dict) -> bool:
        return any(k == FORMAT_HEADER for k, _ in message.get("headers") or ())

    def _drop(self, topic: str, message: dict, exc: Exception, by: str) -> None:
        """Give up on an output too large to publish: counted, logged once a minute, and a prediction
        becomes a dead letter naming its source partition and offsets (a few hundred bytes)."""
        self.counts["too_large"] += 1
        size = message_size(message)
        text, name = str(exc), type(exc).__name__
        why = f"refused as too large by {by} ({text if name in text else f'{name}: {text}'})"
        now = time.monotonic()
        if now - self._too_large_logged >= TOO_LARGE_LOG_SECONDS:
            more = f" ({self._too_large_quiet} more dropped since the last such line)" if self._too_large_quiet else ""
            log.error("an output to %s of %d bytes was %s: dropped, not sent again%s", topic, size, why, more)
            self._too_large_logged, self._too_large_quiet = now, 0
        else:
            self._too_large_quiet += 1
        if topic != self.predictions_topic or topic == self.dead_letter_topic:
            return
        try:
            predictions = decode_predictions(_as_record(message))
        except (ValueError, msgspec.DecodeError):
            return
        if predictions:
            first, last = predictions[0], predictions[-1]
            self.dead_letter_range(self.source_topic, first.partition, first.offset, last.offset,
                                   f"prediction not published: its record of {size} bytes was {why}")

    def rebuild(self) -> None:
        """Replace the producer: kafka-python's stays broken after one rejected record."""
        old = self._producer
        try:
            self._producer = self._make_producer()
        except Exception as exc:  # the broker is away: keep the old one, retry at the next confirm
            log.warning("could not build a new producer (%s: %s)", type(exc).__name__, exc)
            return
        self.counts["producer_rebuilds"] += 1
        if old is None:
            return
        try:
            old.close(timeout=5)
        except Exception as exc:
            log.warning("closing the old producer: %s: %s", type(exc).__name__, exc)

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Flush and close, waiting at most `timeout`: a stop during an outage otherwise waited for
        the producer's 120 s delivery timeout, past compose's 60 s grace. Outputs left unacknowledged
        are covered by no checkpoint: their events are replayed, and published, after a restart."""
        self.end_batch()
        if self._producer is not None:
            self._producer.close(timeout=timeout)
