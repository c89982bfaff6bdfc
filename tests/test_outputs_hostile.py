"""Outputs too large to publish: none may be resent for ever.

One prediction refused at every try (a ~1 MiB event key copied onto it, or a topic whose
max.message.bytes is under one prediction) kept `Outputs.confirm` False, and as outputs are
shared by a worker's partitions, every partition's checkpoint waited for it, after restarts too.
Here the producer refuses the way kafka-python does (its own `max_request_size` check, raised by
send) or the broker does (the future fails with MessageSizeTooLargeError at flush)."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from types import SimpleNamespace

from kafka import TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.future import Future
from kafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client import CollectorRegistry

from shopstream.engine import Engine
from shopstream.events import Event
from stream.checkpointer import Checkpointer
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.outputs import (KEY_DIGEST_HEADER, KEY_SIZE_HEADER, MAX_PREDICTION_KEY_BYTES, REASON_HEADER, Outputs,
                            decode_predictions, too_large)
from stream.partition import Partition
from stream.settings import CheckpointSettings

LIMIT = 1_048_576   # kafka-python's max_request_size default
EVENT = Event(1.7e9, "view", "p1", "u1", "s1", event_id="e1")


def size_of(message) -> int:
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(message.get("key"), message.get("value"),
                                                            message.get("headers") or [])


class Producer:
    """kafka-python's producer, no broker: send() raises MessageSizeTooLargeError over `max_request_size`
    (its own check); flush() settles the futures, failing those over `topic_limits` as the broker does
    (its MESSAGE_TOO_LARGE: a topic's max.message.bytes)."""

    def __init__(self, max_request_size=LIMIT, topic_limits=None):
        self.max_request_size = max_request_size
        self.topic_limits = topic_limits or {}
        self.pending: list = []
        self.delivered: list = []
        self.refused_by_broker = 0
        self.closed = False

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        message = {"key": key, "value": value, "headers": headers or []}
        size = size_of(message)
        if size > self.max_request_size:   # as KafkaProducer._ensure_valid_record_size
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized which is larger than "
                                           "the maximum request size you have configured with the "
                                           "max_request_size configuration")
        future = Future()
        self.pending.append((future, topic, message))
        return future

    def flush(self, timeout=None):
        pending, self.pending = self.pending, []
        for future, topic, message in pending:
            if size_of(message) > self.topic_limits.get(topic, LIMIT):
                self.refused_by_broker += 1
                future.failure(MessageSizeTooLargeError("[Error 10] MessageSizeTooLargeError (from the broker)"))
            else:
                self.delivered.append((topic, message))
                future.success(None)

    def close(self, timeout=None):
        self.closed = True


def record(key=b"u1", offset=7, partition=0):
    return SimpleNamespace(topic="events", partition=partition, offset=offset, key=key, value=b"{}", headers=[],
                           timestamp=0)


def producers(**settings):
    made: list[Producer] = []

    def make():
        made.append(Producer(**settings))
        return made[-1]

    return made, make


def delivered(made, topic):
    return [message for p in made for t, message in p.delivered if t == topic]


def as_record(message):
    return SimpleNamespace(value=message["value"], headers=message["headers"])


def test_a_megabyte_key_is_not_copied_onto_its_prediction_and_blocks_nothing():
    made, make = producers()
    outputs = Outputs(make, "predictions", "dlq", prediction_format="event")
    value = (b'{"event_time":"2026-12-01T10:00:00Z","event_type":"view","product_id":"p1","user_id":"u1",'
             b'"user_session":"s1","price":9.5,"event_id":"e1"}')
    huge = b"k" * (LIMIT - 400)
    huge = b"k" * (len(huge) + LIMIT - 10 - size_of({"key": huge, "value": value}))
    assert size_of({"key": huge, "value": value}) == LIMIT - 10   # the event's record fits the limit
    # ... a prediction copying its key would not (its value is longer): the code before had it refused at
    # every try, and confirm() never True
    outputs.prediction(record(key=huge, offset=7), EVENT, 0.42, "logreg", "v1")
    outputs.prediction(record(key=b"u" * MAX_PREDICTION_KEY_BYTES, offset=8), EVENT, 0.5, "logreg", "v1")
    outputs.prediction(record(key=None, offset=9), EVENT, 0.5, "logreg", "v1")
    assert outputs.confirm() is True
    first, second, third = delivered(made, "predictions")
    assert first["key"] == hashlib.sha256(huge).hexdigest().encode()   # bounded, and the same for the same key
    assert dict(first["headers"]) == {KEY_DIGEST_HEADER: b"sha256", KEY_SIZE_HEADER: str(len(huge)).encode()}
    assert [p.offset for p in decode_predictions(as_record(first))] == [7]   # still reads as one prediction
    assert second["key"] == b"u" * MAX_PREDICTION_KEY_BYTES and not second["headers"]   # at the bound: whole
    assert third["key"] is None
    assert outputs.counts["keys_digested"] == 1 and outputs.counts["too_large"] == 0


def test_a_prediction_the_producer_refuses_as_too_large_is_dropped_with_a_dead_letter_and_counted(caplog):
    made, make = producers(max_request_size=4096)
    outputs = Outputs(make, "predictions", "dlq", prediction_format="event")
    long_id = Event(1.7e9, "view", "p1", "u1", "s1", event_id="e" * 8000)   # the value alone is over the limit
    with caplog.at_level(logging.ERROR, "stream.outputs"):
        outputs.prediction(record(offset=7), long_id, 0.42, "logreg", "v1")
        outputs.prediction(record(offset=8), long_id, 0.42, "logreg", "v1")
        outputs.prediction(record(offset=9), EVENT, 0.5, "logreg", "v1")   # not lost
        assert outputs.confirm() is True
    assert outputs.counts["too_large"] == 2 and outputs.counts["resent"] == 0 and not outputs.failed
    assert [p.offset for m in delivered(made, "predictions") for p in decode_predictions(as_record(m))] == [9]
    letters = [dict(m["headers"]) for m in delivered(made, "dlq")]
    assert [(h["shopstream.source.topic"], h["shopstream.source.partition"], h["shopstream.source.offset"])
            for h in letters] == [(b"events", b"0", b"7"), (b"events", b"0", b"8")]
    assert letters[0][REASON_HEADER].startswith(b"prediction not published: its record of ")
    assert b"refused as too large by the producer (" in letters[0][REASON_HEADER]
    lines = [r.getMessage() for r in caplog.records if "dropped, not sent again" in r.getMessage()]
    assert len(lines) == 1, "rate-limited: one line a minute, every drop counted"


def test_a_prediction_the_broker_refuses_as_too_large_is_final_and_the_checkpoint_proceeds():
    made, make = producers(topic_limits={"predictions": 2048})   # a topic's max.message.bytes under one prediction
    outputs = Outputs(make, "predictions", "dlq", prediction_format="event")
    tp0, tp1 = TopicPartition("events", 0), TopicPartition("events", 1)
    state = Partition("events", 0, Engine.fresh("logreg", "raw"), next_offset=8, events_since_checkpoint=8)
    other = Partition("events", 1, Engine.fresh("logreg", "raw"), next_offset=3, events_since_checkpoint=3)
    consumer = SimpleNamespace(pause=lambda *a: None, resume=lambda *a: None, commit=lambda o: None)
    with tempfile.TemporaryDirectory() as root:
        checkpointer = Checkpointer(DirectoryCheckpointStore(root, "g", signing_key=None), outputs,
                                    CheckpointSettings(), CollectorRegistry(), partitions={tp0: state, tp1: other},
                                    consumer=lambda: consumer)
        outputs.prediction(record(offset=7), Event(1.7e9, "view", "p1", "u1", "s1", event_id="e" * 4000),
                           0.42, "logreg", "v1")
        outputs.prediction(record(offset=2, partition=1), EVENT, 0.5, "logreg", "v1")
        checkpointer.save([tp0, tp1])
        assert state.paused_because is None and other.paused_because is None and not checkpointer.outputs_blocked
    assert outputs.counts["too_large"] == 1 and outputs.counts["resent"] == 1   # sent once more as is, then final
    assert sum(p.refused_by_broker for p in made) == 2, "refused twice, never a third time"
    [letter] = delivered(made, "dlq")
    headers = dict(letter["headers"])
    assert headers["shopstream.source.offset"] == b"7" and b"by the broker" in headers[REASON_HEADER]
    assert [p.offset for m in delivered(made, "predictions") for p in decode_predictions(as_record(m))] == [2]
    outputs.prediction(record(offset=8), EVENT, 0.5, "logreg", "v1")
    assert outputs.confirm() is True and outputs.counts["too_large"] == 1


def test_a_batch_the_broker_refuses_is_cut_in_halves_and_only_the_prediction_too_large_alone_is_dropped():
    made, make = producers(topic_limits={"predictions": 3000})
    outputs = Outputs(make, "predictions", "dlq")   # batch format
    for offset in range(10):
        event = Event(1.7e9, "view", "p1", "u1", "s1", event_id="e" * (4000 if offset == 6 else 1))
        outputs.prediction(record(offset=offset, partition=3), event, 0.5, "logreg", "v1")
    assert outputs.confirm(rounds=10) is True
    offsets = sorted(p.offset for m in delivered(made, "predictions") for p in decode_predictions(as_record(m)))
    assert offsets == [0, 1, 2, 3, 4, 5, 7, 8, 9] and outputs.counts["too_large"] == 1
    [letter] = delivered(made, "dlq")
    headers = dict(letter["headers"])
    assert (headers["shopstream.source.partition"], headers["shopstream.source.offset"]) == (b"3", b"6")


def test_a_small_output_refused_with_a_large_one_is_sent_again_and_delivered():
    """The broker refuses a producer batch: a small record refused with it is sent once more, as is."""
    refusals = iter([True])

    class OnceRefusing(Producer):
        def flush(self, timeout=None):
            pending, self.pending = self.pending, []
            refuse = next(refusals, False)
            for future, topic, message in pending:
                if refuse:
                    future.failure(MessageSizeTooLargeError("refused with a large record in its batch"))
                else:
                    self.delivered.append((topic, message))
                    future.success(None)

    made: list = []
    outputs = Outputs(lambda: made.append(OnceRefusing()) or made[-1], "predictions", "dlq",
                      prediction_format="event")
    outputs.prediction(record(offset=7), EVENT, 0.5, "logreg", "v1")
    assert outputs.confirm() is True and outputs.counts["too_large"] == 0
    assert len(delivered(made, "predictions")) == 1


def test_a_dead_letter_that_cannot_be_cut_further_is_dropped_not_resent_for_ever():
    made, make = producers(topic_limits={"dlq": 100})   # under our own headers: no dead letter fits
    outputs = Outputs(make, "predictions", "dlq")
    outputs.dead_letter(record(key=b"k" * 5000), "invalid event: no type")
    outputs.prediction(record(offset=8), EVENT, 0.5, "logreg", "v1")
    assert outputs.confirm(rounds=10) is True
    assert outputs.counts["too_large"] == 1 and not delivered(made, "dlq")
    assert len(delivered(made, "predictions")) == 1


def test_librdkafkas_local_size_error_counts_as_too_large():
    assert too_large(KafkaError("_MSG_SIZE_TOO_LARGE: Message size too large"))
    assert too_large(MessageSizeTooLargeError("x")) and not too_large(KafkaError("_MSG_TIMED_OUT"))
