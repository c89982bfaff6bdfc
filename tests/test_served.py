"""Recorded scores answered when written (``--serve-recorded written``), without Kafka: the
header that carries a served prediction reads back bit for bit and refuses what does not fit;
the engine records exactly what it served, learns from the features it served on, and refuses
(changing nothing) a served prediction that does not fit it; the desk answers with the number
it writes, once the write is acknowledged, as written (not recorded: the loop may still find the
event late), and a repeat of the event id gets that number again, or once the loop handled it, what
was recorded."""

from __future__ import annotations

import contextlib
import http.client
import json
import pickle
import threading
from types import SimpleNamespace

import msgspec
import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from shopstream.engine import Engine
from shopstream.events import Event, InvalidEvent, decode_event, event_from_record
from shopstream.generator import generate
from stream.served import SERVED_HEADER, decode_served, encode_served, served_header
from stream.serving import ScoreDesk, ScoreServer
from stream.settings import ServeSettings, WorkerSettings

TOPIC = "events"


def history_engine(n: int = 3000, seed: int = 5) -> tuple[Engine, list]:
    engine = Engine.fresh("logreg", "shop")
    records = list(generate(n, seed=seed))
    for record in records:
        engine.process(event_from_record(record))
    return engine, records


def view_of(record: dict, **changes) -> Event:
    return Event(event_from_record(record).event_time + 1.0, "view", "p-served", str(record["user_id"]),
                 str(record["user_session"]), event_id=changes.pop("event_id", "served-1"), price=20.0,
                 category_code="electronics.phone", **changes)


# -- the header ---------------------------------------------------------------------------------

def test_a_served_prediction_reads_back_bit_for_bit():
    x = {"tiny": 5e-324, "neg_zero": -0.0, "third": 1 / 3, "big": 123456789.98765433, "name": "raw-string"}
    outputs = ((0.1 + 0.2, True), (0.0, None), (1.0, False))
    back = decode_served(encode_served((x, outputs, 2)))
    assert back == (x, outputs, 2)
    assert [v.hex() if isinstance(v, float) else v for v in back[0].values()] == \
        [v.hex() if isinstance(v, float) else v for v in x.values()]   # -0.0 stays -0.0, every bit kept
    assert list(back[0]) == list(x)   # the features' order too


@pytest.mark.parametrize("value, why", [
    (b'{"v":1,"x":{},"outputs":[[0.5,true]],"champion":0,"extra":1}', "unknown field"),
    (b'{"v":2,"x":{},"outputs":[[0.5,true]],"champion":0}', "v"),
    (b'{"v":1,"x":{},"outputs":[],"champion":0}', "outputs"),
    (b'{"v":1,"x":{},"outputs":[[-0.1,true]],"champion":0}', ">= 0.0"),
    (b'{"v":1,"x":{},"outputs":[[0.5,"yes"]],"champion":0}', "outputs"),
    (b'{"v":1,"x":{"a":1e300},"outputs":[[0.5,true]],"champion":0}', "x"),
    (b'{"v":1,"x":{"a":null},"outputs":[[0.5,true]],"champion":0}', "x"),
    (b'{"v":1,"x":{},"outputs":[[0.5,true]],"champion":-1}', "champion"),
    (b'{"v":1,"x":{},"outputs":[[0.5,true]]', "not JSON"),
    (b'\xff', "not JSON"),
])
def test_a_served_header_that_does_not_fit_is_refused_with_where_and_why(value, why):
    with pytest.raises(InvalidEvent) as refused:
        decode_served(value)
    assert refused.value.field == "served" and why in str(refused.value), str(refused.value)


def test_too_many_features_or_models_in_a_served_header_are_refused():
    many = {f"f{i}": 1.0 for i in range(1025)}
    with pytest.raises(InvalidEvent, match="served"):
        decode_served(encode_served((many, ((0.5, True),), 0)))
    with pytest.raises(InvalidEvent, match="served"):
        decode_served(encode_served(({}, ((0.5, True),) * 65, 0)))
    with pytest.raises(InvalidEvent, match="is 257 characters, more than 256"):
        decode_served(encode_served(({"a": 1.0, "n" * 257: 1.0}, ((0.5, True),), 0)))
    x, _, _ = decode_served(encode_served(({"n" * 256: 1.0}, ((0.5, True),), 0)))
    assert list(x) == ["n" * 256]


def test_the_served_header_is_found_once_or_refused():
    assert served_header([("a", b"1")]) is None
    assert served_header([("a", b"1"), (SERVED_HEADER, b"{}")]) == b"{}"
    with pytest.raises(InvalidEvent, match="more than once"):
        served_header([(SERVED_HEADER, b"{}"), (SERVED_HEADER, b"{}")])
    with pytest.raises(InvalidEvent, match="empty"):
        served_header([(SERVED_HEADER, None)])


# -- the engine ---------------------------------------------------------------------------------

def test_served_then_processed_at_once_is_the_engines_own_prediction():
    """Nothing between the score and the event: the served prediction is the one the engine would
    have made, and the two engines go on identical."""
    own, records = history_engine()
    served_engine, _ = history_engine()
    view = view_of(records[-1])
    served = served_engine.serve(view)
    assert pickle.dumps(served_engine) == pickle.dumps(own)   # serving changed nothing
    assert served_engine.process(view, 99, served=served) == own.process(view, 99)
    for record in generate(2000, seed=6):   # later events, purchases resolving some of them
        event = event_from_record(record)
        assert served_engine.process(event) == own.process(event)
    assert served_engine.champion_slot.scores.cumulative.values() == own.champion_slot.scores.cumulative.values()
    assert served_engine.counts == own.counts and served_engine.counts["resolved"] > 0
    assert pickle.dumps(served_engine.champion_slot.model) == pickle.dumps(own.champion_slot.model)


def test_a_served_prediction_is_recorded_as_served_and_learned_from_the_features_served():
    engine, records = history_engine()
    view = view_of(records[-1])
    served = engine.serve(view)
    for record in generate(300, seed=8):   # the stream moves on before the loop reaches the event
        engine.process(event_from_record(record))
    assert engine.serve(view) != served   # the state moved: recomputed now, it would differ
    p = engine.process(view, 7, served=served)
    x, outputs, champion = served
    assert p == outputs[champion][0]
    assert engine.recorded("served-1", view.user_id) == (True, p)
    [opened] = [o for o in engine.joiner.open_predictions() if o.ref == 7]
    assert opened.x == x and tuple(opened.outputs) == outputs   # what the label join scores and learns
    learned = []
    engine.champion_slot.model.learn_one = lambda x, y: learned.append((x, y))   # the learn call, observed
    purchase = Event(view.event_time + 60.0, "purchase", view.product_id, view.user_id, view.user_session)
    engine.process(purchase)
    assert learned == [(x, True)]


@pytest.mark.parametrize("served, event_type, why", [
    (({}, ((0.5, True), (0.5, True)), 0), "view", "2 served model outputs: 1 models run"),
    (({}, ((0.5, True),), 1), "view", "served champion 1"),
    (({}, ((0.5, True),), 0), "purchase", "a served prediction on a purchase event"),
])
def test_a_served_prediction_that_does_not_fit_the_engine_changes_nothing(served, event_type, why):
    engine, records = history_engine(1000)
    before = pickle.dumps(engine)
    event = view_of(records[-1])
    event.event_type = event_type
    with pytest.raises(ValueError, match=why):
        engine.process(event, served=served)
    assert pickle.dumps(engine) == before


@pytest.mark.parametrize("change, why", [
    # open predictions pack shop features as doubles: a text one failed every later checkpoint
    (lambda x: {**x, "log_price": "3.1"}, "feature 'log_price' is str, not a number"),
    # a name transform never sets would add a weight to every model, per forged name
    (lambda x: {**x, "forged-0": 1.0}, "feature 'forged-0' is not one the shop features give here"),
    (lambda x: {**x, "platform=never-seen": 1.0}, "feature 'platform=never-seen' is not one"),
])
def test_served_features_the_shop_features_could_not_give_are_refused_and_change_nothing(change, why):
    engine, records = history_engine(1000)
    view = view_of(records[-1])
    x, outputs, champion = engine.serve(view)
    before = pickle.dumps(engine)
    with pytest.raises(ValueError, match=f"served features do not fit the shop features: {why}"):
        engine.process(view, served=(change(x), outputs, champion))
    assert pickle.dumps(engine) == before


def test_every_prediction_the_engine_serves_fits_it():
    """What `serve` gives is never refused as unfit (the names `unfit` knows are every name
    `transform` sets), for shop and raw features alike; a raw name no event brought is."""
    engine, _ = history_engine(500)
    served = 0
    for record in generate(3000, seed=6):
        event = event_from_record(record)
        if event.event_type in ("view", "cart"):
            assert engine.features.unfit(engine.serve(event)[0]) is None
            served += 1
        engine.process(event)
    assert served > 1000
    raw = Engine.fresh("logreg", "raw")
    raw.process(Event(1e9, "view", "p", "u", "s", features={"a": 1.0, "b": "text"}))
    view = Event(1e9 + 1, "view", "p", "u", "s", features={"a": 2.0, "b": "more", "c": 3.0})
    x, outputs, champion = raw.serve(view)
    assert x == {"a": 2.0, "b": "more"} and raw.features.unfit(x) is None
    with pytest.raises(ValueError, match="feature 'c' is not one this partition's events brought"):
        raw.process(view, served=({**x, "c": 3.0}, outputs, champion))


def test_a_slot_added_after_the_score_skips_that_prediction():
    engine, records = history_engine(1000)
    view = view_of(records[-1])
    served = engine.serve(view)
    engine.add_slot("late", engine.champion_slot.model.clone())
    engine.process(view, 3, served=served)
    [opened] = [o for o in engine.joiner.open_predictions() if o.ref == 3]
    assert len(opened.outputs) == 1   # as a prediction made before the slot came


# -- the desk and the front -----------------------------------------------------------------------

class AckedFuture:
    def __init__(self):
        self.callbacks, self.errbacks = [], []

    def add_callback(self, fn):
        self.callbacks.append(fn)

    def add_errback(self, fn):
        self.errbacks.append(fn)


class AckingProducer:
    """Every user on partition 0; each send is kept and acknowledged at offset 1000 + its index."""

    def __init__(self):
        self.sent = []

    def partitions_for(self, topic):
        return {0}

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        future = AckedFuture()
        self.sent.append(SimpleNamespace(topic=topic, key=key, value=value, headers=headers, partition=partition))
        offset = 1000 + len(self.sent) - 1
        threading.Timer(0.01, lambda: [fn(SimpleNamespace(offset=offset)) for fn in future.callbacks]).start()
        return future

    def close(self, timeout=None):
        pass


class Loop:
    def __init__(self, desk, partitions):
        self.desk, self.partitions = desk, partitions
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            with self.desk.gate.lock:
                self.desk.drain(self.partitions)
            self.stop.wait(0.002)


def post(port, payload):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/score", body=json.dumps(payload).encode(),
                       headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    body = json.loads(answer.read())
    connection.close()
    return answer.status, body


def test_the_serve_recorded_setting_is_read_and_checked():
    assert WorkerSettings.from_options(topic="t").serve.recorded == "processed"
    assert WorkerSettings.from_options(topic="t", serve_recorded="written").serve.recorded == "written"


@contextlib.contextmanager
def written_api(engine, producer, registry=None, signing_key=None):
    """The scoring API answering when written (`--serve-recorded written`) for `engine` as partition 0,
    its loop running: (server, desk); stopped after."""
    server = ScoreServer(ServeSettings(port=0, timeout=2.0, recorded="written"))
    desk = ScoreDesk(TOPIC, server.address, "w", recorded="written", signing_key=signing_key)
    loop = Loop(desk, {TopicPartition(TOPIC, 0): SimpleNamespace(engine=engine)})
    loop.thread.start()
    server.start(desk, producer, registry if registry is not None else CollectorRegistry())
    try:
        yield server, desk
    finally:
        loop.stop.set()
        loop.thread.join()
        server.stop()


def test_a_recorded_score_answered_when_written_is_the_number_the_loop_records():
    engine, records = history_engine()
    producer = AckingProducer()
    registry = CollectorRegistry()
    last = records[-1]
    request = {"user_id": str(last["user_id"]), "user_session": str(last["user_session"]), "product_id": "p-w",
               "event_type": "cart", "price": 12.5, "event_id": "written-1"}
    with written_api(engine, producer, registry) as (server, desk):
        before = pickle.dumps(engine)
        status, answer = post(server.port, request)
        assert status == 200, answer
        # written, not yet recorded: the loop may still find it late (test below)
        assert answer["recorded"] is False and answer["written"] is True
        assert answer["duplicate"] is False and answer["offset"] == 1000
        assert answer["model"] == "logreg" and 0 < answer["score"] < 1
        with desk.gate.lock:
            assert pickle.dumps(engine) == before   # answered: nothing recorded or learned yet
        status, again = post(server.port, request)   # a retry before the loop reached the event
        assert status == 200 and again["duplicate"] is True and again["score"] == answer["score"], again
        assert again["written"] is True and again["recorded"] is False
        assert len(producer.sent) == 1   # one event written, not two
        status, other_user = post(server.port, {**request, "user_id": "someone-else"})
        assert status == 200 and other_user["duplicate"] is False   # an id is one event per user only

    [sent, _] = producer.sent
    assert sent.partition == 0 and sent.key == request["user_id"].encode()
    headers = dict(sent.headers)
    assert headers["shopstream.origin"] == b"score-api"
    served = decode_served(headers[SERVED_HEADER])
    assert served[1][served[2]][0] == answer["score"]
    event = decode_event(sent.value)
    assert engine.process(event, 1000, served) == answer["score"]   # the loop reaches the event
    assert engine.recorded("written-1", event.user_id) == (True, answer["score"])
    assert registry.get_sample_value("shopstream_score_requests_total", {"mode": "record", "code": "200"}) == 3


def test_an_event_id_already_handled_is_answered_with_its_recorded_score_and_not_written():
    engine, records = history_engine()
    handled = view_of(records[-1], event_id="seen-1")
    p = engine.process(handled)
    producer = AckingProducer()
    with written_api(engine, producer) as (server, desk):
        status, answer = post(server.port, {"user_id": handled.user_id, "user_session": handled.user_session,
                                            "product_id": handled.product_id, "event_type": "view",
                                            "event_id": "seen-1"})
        assert status == 200 and answer["duplicate"] is True and answer["score"] == p, answer
        status, late = post(server.port, {"user_id": handled.user_id, "user_session": handled.user_session,
                                          "product_id": "p-late", "event_type": "view", "event_id": "late-1",
                                          "event_time": handled.event_time - 10 * 86400})
        assert status == 409 and late["reason"] == "late_event", late
    assert producer.sent == []


@pytest.mark.parametrize("case", ["on time", "at the lateness edge", "behind a backlog"])
def test_an_answer_when_written_claims_only_the_write_and_a_repeat_tells_what_was_recorded(case):
    """The lateness check at answer time reads the watermark as processed so far: events ahead of
    the record in the partition can still move it past the event (a client's event time near the
    edge; a backlog over the attribution window of event time), and the loop then refuses it as
    late. So the answer says "written", never "recorded"; a repeat of the event id once the loop
    has reached its record says what was recorded: its score, or 409 late_event."""
    engine, records = history_engine()
    producer = AckingProducer()
    last, clock = records[-1], engine.joiner.max_time
    request = {"user_id": str(last["user_id"]), "user_session": str(last["user_session"]), "product_id": "p-edge",
               "event_type": "view", "price": 12.5, "event_id": "edge-1"}
    if case == "at the lateness edge":   # on time by one second when answered
        request["event_time"] = clock - engine.config.window - engine.config.lateness + 1.0
    # Events already in the partition ahead of the request's record, not processed when it is answered.
    backlog = {"on time": [], "at the lateness edge": [clock + 2.0],
               "behind a backlog": [clock + 60.0 * k for k in range(1, 33)]}[case]
    handle, _, published = handling_worker(engine)
    with written_api(engine, producer) as (server, desk):
        status, answer = post(server.port, request)
        assert status == 200 and answer["offset"] == 1000 and answer["duplicate"] is False, answer
        [sent] = producer.sent
        with desk.gate.lock:   # the loop: the backlog, then the request's record
            for k, t in enumerate(backlog):
                engine.process(Event(t, "view", "p-b", f"u-b{k}", f"s-b{k}"), 900 + k)
            handle(SimpleNamespace(topic=TOPIC, partition=0, offset=1000, key=sent.key, value=sent.value,
                                   timestamp=0, headers=sent.headers))
        if answer["recorded"]:   # what the answer claimed must hold
            recorded = engine.recorded("edge-1", request["user_id"])
            assert recorded == (True, answer["score"]), "answered 'recorded', never recorded"
        assert answer["recorded"] is False and answer["written"] is True, answer   # not known yet: said so
        status, again = post(server.port, request)   # the same event id, after the loop reached its record
        if case == "on time":
            assert published == [answer["score"]]
            assert engine.recorded("edge-1", request["user_id"]) == (True, answer["score"])
            assert status == 200 and again["recorded"] is True and again["duplicate"] is True, again
            assert again["score"] == answer["score"] and "written" not in again
        else:
            assert published == [] and engine.recorded("edge-1", request["user_id"]) == (True, None)   # refused as late
            assert status == 409 and again["reason"] == "late_event", again
        assert len(producer.sent) == 1   # a repeat is never written again


def test_a_request_naming_another_users_handled_event_id_gets_its_own_score_not_that_events():
    """Keyed by the id alone, the dedupe window answered anyone naming a handled event's id with that
    event's recorded score (and that user's own event, later, was dropped as its duplicate)."""
    engine, records = history_engine()
    handled = view_of(records[-1], event_id="seen-2")
    p = engine.process(handled)
    producer = AckingProducer()
    with written_api(engine, producer) as (server, desk):
        status, answer = post(server.port, {"user_id": "someone-else", "user_session": "their-session",
                                            "product_id": "p-theirs", "event_type": "view", "event_id": "seen-2"})
    assert status == 200 and answer["duplicate"] is False and answer["written"] is True, answer
    assert answer["score"] != p and len(producer.sent) == 1   # scored as its own event, and written
    assert engine.recorded("seen-2", "someone-else") == (False, None)
    assert engine.recorded("seen-2", handled.user_id) == (True, p)


class FailingFirstProducer(AckingProducer):
    """The first write fails (the broker away), later ones are acknowledged."""

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        if self.sent:
            return super().send(topic, key, value, headers, partition)
        future = AckedFuture()
        self.sent.append(SimpleNamespace(topic=topic, key=key, value=value, headers=headers, partition=partition))
        threading.Timer(0.01, lambda: [fn(ConnectionError("broker away")) for fn in future.errbacks]).start()
        return future


def test_a_repeat_of_a_request_whose_write_failed_is_written_again_not_answered_written_from_a_copy():
    """The copy kept for repeats was kept before the write was acknowledged: after a failed write
    (503), a repeat was answered 200 "written" from it, although nothing was ever written."""
    engine, records = history_engine()
    producer = FailingFirstProducer()
    last = records[-1]
    request = {"user_id": str(last["user_id"]), "user_session": str(last["user_session"]), "product_id": "p-fail",
               "event_type": "view", "event_id": "fail-1"}
    with written_api(engine, producer) as (server, desk):
        status, first = post(server.port, request)
        assert status == 503 and first["reason"] == "kafka_unavailable", first
        status, again = post(server.port, request)
    assert status == 200 and again["duplicate"] is False and again["offset"] == 1001, again
    assert len(producer.sent) == 2   # written again: the first never was


def handling_worker(engine, signing_key=None):
    """`Worker.handle` on one partition, its dead letters and published scores kept in lists."""
    from stream.worker import Worker

    letters, published = [], []
    state = SimpleNamespace(engine=engine, handled=lambda offset: None, dead_lettered=0)
    worker = SimpleNamespace(settings=SimpleNamespace(max_future_skew=1e12, signing_key=signing_key), handled=0,
                             desk=None, awaited=False, learn_log=None, decode_seconds=None, process_seconds=None,
                             outputs=SimpleNamespace(dead_letter=lambda record, reason: letters.append(reason),
                                                     prediction=lambda *args: published.append(args[2])))
    worker._dead_letter = lambda state, record, reason: Worker._dead_letter(worker, state, record, reason)
    return (lambda record: Worker.handle(worker, state, record)), letters, published


def record_of(event: Event, headers: list, offset: int = 5) -> SimpleNamespace:
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=b"u", value=msgspec.json.encode(event),
                           timestamp=0, headers=headers)


def test_a_worker_records_a_served_header_and_dead_letters_one_that_does_not_fit():
    """The worker's record path: the header is read and honoured; a bad one is a dead letter with
    the reason, and the partition's engine is left as it was."""
    engine, records = history_engine(1000)
    view = view_of(records[-1])
    served = engine.serve(view)
    handle, letters, published = handling_worker(engine)
    handle(record_of(view, [(SERVED_HEADER, encode_served(served))]))
    assert published == [served[1][0][0]] and engine.recorded(view.event_id, view.user_id) == (True, published[0])
    before = pickle.dumps(engine)
    handle(record_of(view_of(records[-1], event_id="bad-1"),
                     [(SERVED_HEADER, b'{"v":1,"x":{},"outputs":[[0.5,true],[0.5,true]],"champion":0}')], 6))
    assert pickle.dumps(engine) == before
    assert len(letters) == 1 and "2 served model outputs" in letters[0], letters
    # A number given as text: a dead letter too, and the engine still checkpoints (it failed every
    # later pickle, the worker stopped, and the record came back at each restart).
    text = encode_served(({**served[0], "log_price": "3.1"}, served[1], served[2]))
    handle(record_of(view_of(records[-1], event_id="bad-2"), [(SERVED_HEADER, text)], 7))
    assert pickle.dumps(engine) == before
    assert len(letters) == 2 and "feature 'log_price' is str, not a number" in letters[1], letters


def test_with_a_signing_key_a_served_prediction_must_be_signed_with_its_own_event():
    from stream.served import served_headers

    key = b"shop-key"
    engine, records = history_engine(1000)
    handle, letters, published = handling_worker(engine, signing_key=key)
    views = [view_of(records[-1], event_id=f"signed-{i}") for i in range(5)]
    served = [encode_served(engine.serve(view)) for view in views]
    before = pickle.dumps(engine)
    handle(record_of(views[0], [(SERVED_HEADER, served[0])], 1))                                # unsigned
    handle(record_of(views[1], served_headers(msgspec.json.encode(views[1]), served[1], b"other-key"), 2))
    moved = served_headers(msgspec.json.encode(views[3]), served[2], key)   # signed for another event
    handle(record_of(views[2], moved, 3))
    forged = served_headers(msgspec.json.encode(views[3]), served[3], key)
    forged[0] = (SERVED_HEADER, served[3].replace(b'"champion":0', b'"champion":0 '))   # changed after signing
    handle(record_of(views[3], forged, 4))
    assert pickle.dumps(engine) == before and published == []
    assert [letter.split(": ", 2)[-1] for letter in letters] == [
        "unsigned, but a signing key is set (SHOPSTREAM_SIGNING_KEY or --signing-key-file)",
        "HMAC does not match: forged, or moved onto another event",
        "HMAC does not match: forged, or moved onto another event",
        "HMAC does not match: forged, or moved onto another event"], letters
    handle(record_of(views[4], served_headers(msgspec.json.encode(views[4]), served[4], key), 5))
    assert len(published) == 1 and engine.recorded("signed-4", views[4].user_id) == (True, published[0])


def test_the_desk_signs_what_it_writes_when_it_has_a_key():
    from stream.served import SERVED_HMAC_HEADER, check_signed

    engine, records = history_engine(1000)
    producer = AckingProducer()
    last = records[-1]
    with written_api(engine, producer, signing_key=b"shop-key") as (server, desk):
        status, answer = post(server.port, {"user_id": str(last["user_id"]), "user_session": str(last["user_session"]),
                                            "product_id": "p-s", "event_type": "view", "event_id": "sig-1"})
        assert status == 200, answer
    [sent] = producer.sent
    assert SERVED_HMAC_HEADER in dict(sent.headers)
    check_signed(sent.value, dict(sent.headers)[SERVED_HEADER], sent.headers, b"shop-key")
