"""Predictions on Kafka: one record per polled batch (the default, versioned by a header)
or one per prediction; `decode_predictions` reads both and refuses versions it does not know."""

from types import SimpleNamespace

import pytest

from shopstream.events import Event
from stream import outputs as outputs_module
from stream.outputs import BATCH_FORMAT, FORMAT_HEADER, Outputs, decode_predictions
from test_data_plane import FakeProducer


def record(partition, offset, key=b"u1"):
    return SimpleNamespace(topic="events", partition=partition, offset=offset, key=key, value=b"{}", headers=[],
                           timestamp=0)


def as_record(message):
    return SimpleNamespace(value=message["value"], headers=message["headers"] or [])


EVENT = Event(1.7e9, "view", "p1", "u1", "s1", event_id="e1")


def test_a_polled_batch_is_one_record_per_source_partition_in_offset_order():
    producer = FakeProducer()
    outputs = Outputs(lambda: producer, "predictions", "dlq")   # batch is the default
    for partition, offset in [(3, 10), (3, 11), (5, 2), (3, 12)]:
        outputs.prediction(record(partition, offset), EVENT, offset / 100, "logreg", "v1")
    assert outputs.confirm()   # a checkpoint's gate publishes what is buffered first
    sent = [message for topic, message in producer.delivered if topic == "predictions"]
    assert [m["key"] for m in sent] == [b"3", b"5"]
    assert all(m["headers"] == [(FORMAT_HEADER, BATCH_FORMAT)] for m in sent)
    first = decode_predictions(as_record(sent[0]))
    assert [(p.partition, p.offset, p.score) for p in first] == [(3, 10, 0.1), (3, 11, 0.11), (3, 12, 0.12)]
    assert first[0].event_id == "e1" and first[0].model == "logreg" and first[0].user_session == "s1"
    outputs.end_batch()
    assert outputs.confirm() and len(producer.delivered) == 2   # nothing left to send


def test_the_per_event_format_is_kept_as_an_option():
    producer = FakeProducer()
    outputs = Outputs(lambda: producer, "predictions", "dlq", prediction_format="event")
    for offset in (1, 2):
        outputs.prediction(record(0, offset, key=b"u9"), EVENT, 0.5, "logreg", "v1")
    assert outputs.confirm()
    sent = [message for _, message in producer.delivered]
    assert [m["key"] for m in sent] == [b"u9", b"u9"] and all(not m["headers"] for m in sent)
    assert [p.offset for m in sent for p in decode_predictions(as_record(m))] == [1, 2]
    with pytest.raises(ValueError, match="prediction format must be one of"):
        Outputs(lambda: producer, "predictions", "dlq", prediction_format="csv")


def test_a_large_batch_is_cut_into_records_under_the_limit(monkeypatch):
    monkeypatch.setattr(outputs_module, "MAX_BATCH_BYTES", 1000)
    producer = FakeProducer()
    outputs = Outputs(lambda: producer, "predictions", "dlq")
    for offset in range(30):
        outputs.prediction(record(0, offset), EVENT, 0.5, "logreg", "v1")
    outputs.end_batch()
    assert outputs.confirm()
    sent = [m for _, m in producer.delivered]
    assert len(sent) > 3 and all(len(m["value"]) < 1000 + 300 for m in sent)
    assert [p.offset for m in sent for p in decode_predictions(as_record(m))] == list(range(30))


def test_a_batch_is_cut_every_max_batch_predictions_so_the_first_waits_for_no_more():
    producer = FakeProducer()
    outputs = Outputs(lambda: producer, "predictions", "dlq")
    n = outputs_module.MAX_BATCH_PREDICTIONS
    for offset in range(2 * n + 1):   # one polled batch
        outputs.prediction(record(0, offset), EVENT, 0.5, "logreg", "v1")
    assert [len(decode_predictions(as_record(m))) for _, _, m in producer.pending] == [n, n], \
        "sent as soon as full, before the polled batch ends"
    outputs.end_batch()
    assert outputs.confirm()
    assert [p.offset for _, m in producer.delivered for p in decode_predictions(as_record(m))] == list(range(2 * n + 1))


def test_an_unknown_format_version_is_refused_by_name():
    future = SimpleNamespace(value=b"[]", headers=[(FORMAT_HEADER, b"predictions-batch/2")])
    with pytest.raises(ValueError, match=r"shopstream.format b'predictions-batch/2'.*reads only predictions-batch/1"):
        decode_predictions(future)
