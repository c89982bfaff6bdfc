"""Data plane, fast: what the worst message, timestamp or value does, without a broker.

Each test breaks one thing the way a real shop's traffic would and checks the answer
is "a clear reason, counted, and nothing else lost"."""

import math
import pickle
import threading

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from fakes import WaitableFuture

from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.events import Event, InvalidEvent, check_future_skew, decode_event, event_from_record
from shopstream.exporter import EngineCollector, EngineSnapshot
from shopstream.features import FeatureCaps, ShopFeatures
from shopstream.generator import generate
from shopstream.models import build_model
from stream.outputs import DEAD_LETTER_CUT, ORIGINAL_SIZE_HEADER, TRUNCATED_HEADER, Outputs


# -- outputs: every send's outcome checked ------------------------------------------------


class FakeProducer:
    """A producer whose broker refuses what `refuse(topic, message)` says, after flush."""

    def __init__(self, refuse=lambda topic, message: None, flush_times_out=False, future=Future):
        self.refuse = refuse
        self.future = future
        self.flush_times_out = flush_times_out
        self.pending: list = []
        self.delivered: list = []
        self.closed = False

    def send(self, topic, key=None, value=None, headers=None):
        if headers:
            sum(len(k) + len(v) for k, v in headers)  # kafka-python's size estimate: TypeError on a None value
        future = self.future()
        self.pending.append((future, topic, {"key": key, "value": value, "headers": headers}))
        return future

    def flush(self, timeout=None):
        if self.flush_times_out:
            raise KafkaTimeoutError("flush timed out")
        pending, self.pending = self.pending, []
        for future, topic, message in pending:
            error = self.refuse(topic, message)
            if error is None:
                self.delivered.append((topic, message))
                future.success(None)
            else:
                future.failure(error)

    def close(self, timeout=None):
        self.closed = True


class Record:
    def __init__(self, value, headers=None, key=b"k", offset=7):
        self.topic, self.partition, self.offset = "events", 3, offset
        self.key, self.value, self.headers = key, value, headers or []
        self.timestamp = 0


def test_a_checkpoint_thread_waits_for_the_outputs_it_covers_and_a_refused_one_fails_it():
    producer = FakeProducer(lambda topic, m: MessageSizeTooLargeError("too large") if topic == "dlq" else None,
                            future=WaitableFuture)
    outputs = Outputs(lambda: producer, "predictions", "dlq")
    event = Event(1.7e9, "view", "p", "u", "s")
    outputs.prediction(Record(b"{}", offset=8), event, 0.25, "logreg", "v1")
    acknowledged = outputs.acknowledgement()   # publishes the buffered batch first
    assert acknowledged is not None and len(producer.pending) == 1
    assert acknowledged(0.05) == "outputs not acknowledged within 0.05 s: 1 of 1 sends still waiting " \
                                 "(KafkaTimeoutError)", "not acknowledged yet: the checkpoint may not count"
    threading.Timer(0.05, producer.flush).start()   # the broker answers while the thread waits
    assert acknowledged(5.0) is None

    outputs.prediction(Record(b"{}", offset=9), event, 0.5, "logreg", "v1")
    acknowledged = outputs.acknowledgement()
    producer.flush()
    outputs.prediction(Record(b"{}", offset=10), event, 0.5, "logreg", "v1")
    outputs.end_batch()   # sent after the checkpoint began: the check must not wait for it
    assert acknowledged(0.05) is None and len(producer.pending) == 1
    producer.flush()
    assert outputs.acknowledgement()(0.0) is None, "nothing unacknowledged: nothing to wait for"

    outputs.dead_letter(Record(b"{}"), "invalid event: no type")
    acknowledged = outputs.acknowledgement()
    producer.flush()
    assert acknowledged(1.0) == "outputs not acknowledged: [Error 10] MessageSizeTooLargeError: too large"
    assert outputs.acknowledgement() is None, "a refused output: only confirm() sends it again, in the loop"

    # kafka-python marks a failed future done before its errback queues it for confirm(): in between,
    # the check must still see it failed (dropping done futures let such a checkpoint through).
    producer.refuse = lambda topic, m: None
    outputs = Outputs(lambda: producer, "predictions", "dlq")
    outputs.prediction(Record(b"{}", offset=11), event, 0.5, "logreg", "v1")
    outputs.end_batch()
    [(failing, _, _)] = producer.pending
    failing.is_done, failing.exception = True, KafkaTimeoutError("batch expired")   # errback not run yet
    failing.latch.set()
    assert not outputs.failed and outputs.acknowledgement()(0.1) == "outputs not acknowledged: KafkaTimeoutError: " \
                                                                   "batch expired"

    confluent_like = Outputs(lambda: FakeProducer(), "predictions", "dlq")   # futures that cannot be waited for
    confluent_like.prediction(Record(b"{}", offset=8), event, 0.25, "logreg", "v1")
    confluent_like.end_batch()
    assert confluent_like.acknowledgement() is None


def test_a_refused_dead_letter_is_resent_cut_by_a_new_producer_and_nothing_else_is_lost():
    producers = []

    def make():  # the broker takes at most 5,000 bytes per dead letter
        producers.append(FakeProducer(lambda topic, m: MessageSizeTooLargeError("too large")
                                      if topic == "dlq" and len(m["value"]) > 5000 else None))
        return producers[-1]

    outputs = Outputs(make, "predictions", "dlq")
    huge = b"{" + b"x" * 100_000
    outputs.dead_letter(Record(huge, headers=[("trace", None)]), "invalid event: too large")
    event = Event(1.7e9, "view", "p", "u", "s")
    outputs.prediction(Record(b"{}", offset=8), event, 0.25, "logreg", "v1")
    assert outputs.confirm() is True
    assert len(producers) == 4 and producers[0].closed  # rebuilt after each refusal (16 KiB, then 8 KiB, then 4 KiB)
    [(topic, letter)] = [d for p in producers for d in p.delivered if d[0] == "dlq"]
    headers = dict(letter["headers"])
    assert len(letter["value"]) <= 5000 and huge.startswith(letter["value"])
    assert headers[TRUNCATED_HEADER] == b"1" and headers[ORIGINAL_SIZE_HEADER] == b"100001"
    assert headers["trace"] == b"" and headers["shopstream.reason"] == b"invalid event: too large"
    assert [t for p in producers for t, _ in p.delivered].count("predictions") == 1
    assert outputs.counts["failed"] == 3 and outputs.counts["resent"] == 3


class RetriedForever(BaseException):
    """Raised by the stand-in producer past 50 sends to a missing topic: the old loop never ended."""


def test_a_topic_whose_metadata_never_arrives_is_tried_a_bounded_number_of_times_and_nothing_is_lost():
    missing = {"dlq"}
    tries: list = []

    class NoMetadata(FakeProducer):
        def send(self, topic, **message):
            if topic in missing:
                tries.append(topic)
                if len(tries) > 50:
                    raise RetriedForever(topic)
                raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")
            return super().send(topic, **message)

    producers: list = []
    outputs = Outputs(lambda: producers.append(NoMetadata()) or producers[-1], "predictions", "dlq",
                      prediction_format="event")
    event = Event(1.7e9, "view", "p", "u", "s")
    outputs.dead_letter(Record(b"{"), "invalid event: not JSON")
    outputs.prediction(Record(b"{}", offset=8), event, 0.25, "logreg", "v1")
    outputs.dead_letter(Record(b"}", offset=9), "invalid event: not JSON")   # parked: no wait
    assert len(tries) == 3 and outputs.counts["send_timeouts"] == 1
    assert "'dlq'" in outputs.stalled["dlq"] and "metadata" in outputs.stalled["dlq"]
    assert outputs.confirm() is False           # a checkpoint may not cover the two letters
    assert len(tries) == 6                      # tried again once per confirm, not per round
    assert [t for p in producers for t, _ in p.delivered] == ["predictions"]   # the other output went out
    missing.clear()                              # the topic is created
    assert outputs.confirm() is True
    letters = [m["value"] for p in producers for t, m in p.delivered if t == "dlq"]
    assert letters == [b"{", b"}"]


def test_a_dead_letter_over_the_limit_is_cut_before_sending():
    producer = FakeProducer()
    outputs = Outputs(lambda: producer, "predictions", "dlq")
    outputs.dead_letter(Record(b"x" * 1_048_400), "invalid event: too large")
    assert outputs.confirm()
    [(_, letter)] = producer.delivered
    assert len(letter["value"]) == DEAD_LETTER_CUT and outputs.counts["truncated"] == 1


def test_confirm_is_false_while_outputs_are_unacknowledged():
    refusing = True
    outputs = Outputs(lambda: FakeProducer(lambda t, m: KafkaTimeoutError("expired") if refusing else None),
                      "predictions", "dlq")
    outputs.prediction(Record(b"{}"), Event(1.7e9, "view", "p", "u", "s"), 0.5, "m", "v")
    assert outputs.confirm() is False          # refused, resent, refused again
    refusing = False
    assert outputs.confirm() is True           # the retry gets it through
    assert [t for t, _ in outputs.producer.delivered] == ["predictions"]
    assert Outputs(lambda: FakeProducer(flush_times_out=True), "p", "d").confirm() is False


# -- event time: a fast client clock cannot drag the watermark ---------------------------------


def test_an_event_from_the_future_is_refused_with_how_far_ahead():
    with pytest.raises(InvalidEvent, match=r"2099-12-31T00:00:00Z is \d+ years ahead of the record time"):
        check_future_skew(Event(4102358400.0, "view", "p", "u", "s"), received_at=1.79e9)
    with pytest.raises(InvalidEvent, match="60 minutes ahead"):
        check_future_skew(Event(1.79e9 + 3600, "view", "p", "u", "s"), received_at=1.79e9)
    check_future_skew(Event(1.79e9 + 300, "view", "p", "u", "s"), received_at=1.79e9)  # within the skew
    check_future_skew(Event(1.5e9, "view", "p", "u", "s"), received_at=1.79e9)  # replayed history is fine


# -- numbers: nothing a model sees is inf or NaN -----------------------------------------------


def test_out_of_range_prices_and_raw_features_are_refused():
    for price in (1.7e308, 1e10, -1.0):
        with pytest.raises(InvalidEvent, match="price: must be a finite number in 0..1e"):
            event_from_record({"event_time": 1.7e9, "event_type": "view", "product_id": 1, "user_id": 1,
                               "user_session": "s", "price": price})
    with pytest.raises(InvalidEvent, match=r"features.a: must be a finite number in \+-1e\+09"):
        decode_event(b'{"event_time":1.7e9,"event_type":"view","product_id":1,"user_id":1,"user_session":"s",'
                     b'"features":{"a":1e308}}')


@pytest.mark.parametrize("features, refused", [
    ('{"a":1.0,"b":-1e9,"c":1e9}', None),
    ('{"a":"red","b":2.0}', None),                     # a string feature: every value checked one by one
    ('{}', None),
    ('{"a":1.0,"b":1e308,"c":-1e308}', "features.b"),  # in range alone, the sum would hide nothing
    ('{"a":1.0,"b":-2e9}', "features.b"),
    ('{"a":"red","b":1e10}', "features.b"),
    ('{"a":1.0,"b":1.0e9,"c":1.0000001e9}', "features.c"),
])
def test_every_raw_feature_value_is_checked_whatever_its_neighbours(features, refused):
    """The check runs in C over all values first (sum, min, max); the message still names the first bad one."""
    data = (b'{"event_time":1.7e9,"event_type":"view","product_id":1,"user_id":1,"user_session":"s",'
            b'"features":' + features.encode() + b'}')
    if refused is None:
        assert decode_event(data).features is not None
        return
    with pytest.raises(InvalidEvent, match=rf"^{refused}: must be a finite number"):
        decode_event(data)


def test_ids_become_strings_and_long_ones_are_refused():
    event = decode_event(b'{"event_time":1.7e9,"event_type":"view","product_id":1,"user_id":2,"user_session":3,'
                         b'"event_id":4}')
    assert (event.product_id, event.user_id, event.user_session, event.event_id) == ("1", "2", "3", "4")
    with pytest.raises(InvalidEvent, match="^user_session: must be 1..256 characters"):
        decode_event(b'{"event_time":1.7e9,"event_type":"view","product_id":1,"user_id":2,"user_session":"'
                     + b"s" * 257 + b'"}')


@pytest.mark.slow
def test_tiny_and_huge_prices_in_a_new_category_keep_every_score_finite_and_auc_unchanged():
    """Two valid-looking prices (5e-324, then 1.7e308) once turned every weight to NaN. Now the
    second is refused at decoding, and a ratio over a tiny category mean is capped."""
    import msgspec

    records = list(generate(20_000, seed=5))
    t = 1.77e9
    poison = [{**records[5000], "event_id": f"poison{i}", "product_id": "px", "price": price,
               "category_code": "new.cat"} for i, price in enumerate((5e-324, 1.7e308, 1e9))]
    engines = {}
    for name, stream in (("clean", records), ("poisoned", records[:5000] + poison + records[5000:])):
        engine = engines[name] = Engine.fresh("logreg", "shop")
        for record in stream:
            try:
                event = decode_event(msgspec.json.encode(record))
            except InvalidEvent as exc:
                assert name == "poisoned" and str(exc).startswith("price: must be a finite number in 0..1e+09")
                continue
            x = engine.features.transform(event)
            assert all(math.isfinite(v) for v in x.values()), x
            score = engine.process(event)
            assert score is None or math.isfinite(score)
    assert engines["poisoned"].counts["consumed"] == engines["clean"].counts["consumed"] + 2
    shop = ShopFeatures()  # the moment that gave inf: a huge price against a tiny category mean
    shop.learn(Event(t, "view", "p1", "u", "s", price=5e-324, category_code="new.cat"))
    assert shop.transform(Event(t, "view", "p2", "u", "s", price=1e9, category_code="new.cat"))[
        "price_vs_category"] == 1e4
    clean, poisoned = (engines[n].champion_slot.scores.cumulative.values()["roc_auc"] for n in ("clean", "poisoned"))
    print(f"\nROC AUC clean {clean:.4f}, with the poison prices {poisoned:.4f}")
    assert abs(clean - poisoned) <= 0.01


def test_a_model_gone_non_finite_goes_back_to_its_last_good_state_and_is_counted():
    engine = Engine.fresh("logreg", "shop")
    events = [event_from_record(r) for r in generate(2000, seed=6)]
    for event in events[:1000]:
        engine.process(event)
    engine.mark_good()  # what a checkpoint does
    probes = [engine.features.transform(event) for event in events[1000:1050]]
    good = [engine.champion_slot.model.predict_proba_one(x) for x in probes]
    lr = engine.champion_slot.model["LogisticRegression"]
    for name in list(lr._weights):
        lr._weights[name] = math.nan
    engine.mark_good()  # the next checkpoint refuses the NaN model
    assert [engine.champion_slot.model.predict_proba_one(x) for x in probes] == good
    assert engine.slots[0].resets == {"non_finite_weights": 1}
    engine.champion_slot.model["LogisticRegression"].intercept = math.nan  # poisoned between checkpoints
    scores = [engine.process(event) for event in events[1000:]]
    assert all(s is None or math.isfinite(s) for s in scores)
    assert engine.slots[0].resets == {"non_finite_weights": 1, "non_finite_prediction": 1}
    text = b"".join(_exposition(engine)).decode()
    assert 'shopstream_model_resets_total{model="logreg",partition="0",reason="non_finite_prediction",' \
           'role="champion"} 1.0' in text


def _exposition(engine):
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(EngineCollector(lambda: [({"partition": "0"}, engine, {})]))
    yield generate_latest(registry)


# -- one event's failure stays with that event --------------------------------------------------


class FailsToLearn:
    """A model whose learn_one fails on feature "bad": a prediction stored earlier then fails."""

    def __init__(self):
        self.learned = 0

    def predict_proba_one(self, x):
        return {True: 0.3, False: 0.7}

    def learn_one(self, x, y):
        if "bad" in x:
            raise TypeError("cannot learn from 'bad'")
        self.learned += 1


def test_a_prediction_that_cannot_be_learned_does_not_fail_the_event_that_resolves_it():
    from shopstream.features import RawFeatures

    model = FailsToLearn()
    engine = Engine(model, RawFeatures(), EngineConfig(features="raw", window=60.0))
    t = 1.7e9
    engine.process(Event(t, "view", "p1", "u", "s1", features={"bad": 1.0}))
    engine.process(Event(t + 1, "view", "p2", "u", "s2", features={"good": 1.0}))
    engine.process(Event(t + 2, "view", "p3", "u", "s3", features={"good": 2.0}))
    # This event expires all three: the first fails to learn, the two others are learned,
    # and the event itself is predicted as usual.
    assert engine.process(Event(t + 100, "view", "p4", "u", "s4", features={"good": 3.0})) == 0.3
    model = engine.champion_slot.model  # the slot runs its own copy of the model handed to it
    assert engine.counts["learn_errors"] == 1 and model.learned == 2 == engine.counts["learned"]
    assert engine.counts["resolved"] == 3 and engine.open_predictions == 1


class FailsToPredict(FailsToLearn):
    def predict_proba_one(self, x):
        if "bad" in x:
            raise TypeError("cannot predict from 'bad'")
        return super().predict_proba_one(x)


def test_a_failed_event_is_not_remembered_as_seen():
    from shopstream.features import RawFeatures

    engine = Engine(FailsToPredict(), RawFeatures())
    bad = Event(1.7e9, "view", "p", "u", "s", event_id="e1", features={"bad": 1.0}, label=True)
    with pytest.raises(TypeError):  # the worker dead-letters it
        engine.process(bad)
    fixed = Event(1.7e9, "view", "p", "u", "s", event_id="e1", features={"good": 1.0}, label=True)
    assert engine.process(fixed) == 0.3  # sent again once fixed: not dropped as a duplicate
    assert engine.counts["duplicate"] == 0


# -- state: endless new keys -------------------------------------------------------------------


def test_endless_new_keys_stay_within_every_cap_and_evictions_are_counted():
    caps = FeatureCaps(sessions=500, users=500, products=500, brands=50, categories=20, session_products=10,
                       session_ttl=3600.0)
    shop = ShopFeatures(caps)
    t = 1.7e9
    for i in range(20_000):
        # one session that never ends and views ever-new products, and ever-new everything else
        shop.learn(Event(t + i, "view", f"p{i}", "u0", "s-endless", price=1.0, brand=f"b{i}",
                         category_code=f"c{i}.x"))
        shop.learn(Event(t + i, "cart", f"p{i}", f"u{i}", f"s{i}", price=1.0))
    assert len(shop.sessions) <= 500 and len(shop.users) <= 500 and len(shop.products) <= 500
    assert len(shop.brands) <= 50 and len(shop.category_price) <= 20
    endless = shop.sessions["s-endless"]
    assert len(endless[4]) == 10 and len(endless[3]) == 0
    evicted = shop.evicted
    assert evicted["session_products"] == 20_000 - 10
    assert evicted["brands"] == 20_000 - 50 and evicted["categories"] == 20_000 - 20
    # Quiet sessions expire by event time: an hour later only the newest remain.
    shop.learn(Event(t + 20_000 + 3600, "view", "p", "u", "s-late"))
    assert "s-late" in shop.sessions and all(row[5] >= t + 20_000 for _, row in shop.sessions.items())
    assert shop.evicted["sessions_expired"] > 0


def test_raw_feature_names_are_capped():
    engine = Engine(build_model("logreg"), __import__("shopstream.features", fromlist=["x"]).RawFeatures(
        FeatureCaps(raw_features=100)), EngineConfig(features="raw", window=60.0))
    for i in range(1000):
        engine.process(Event(1.7e9 + i, "view", "p", "u", "s", features={f"f{i}": 1.0}, label=i % 2 == 0))
    assert len(engine.champion_slot.model["LogisticRegression"]._weights) <= 100
    assert engine.features.evicted["raw_features"] == 900


# -- scrapes read snapshots ----------------------------------------------------------------------


def test_scraping_all_the_time_changes_nothing_in_the_engine():
    events = [event_from_record(r) for r in generate(6000, seed=8)]
    quiet, scraped = Engine.fresh("logreg", "shop"), Engine.fresh("logreg", "shop")
    stop = threading.Event()
    collector = EngineCollector(lambda: [({"partition": "0"}, scraped, {})])

    def scrape_forever():
        while not stop.is_set():
            for _ in collector.collect():
                pass

    scraper = threading.Thread(target=scrape_forever)
    scraper.start()
    try:
        for i, event in enumerate(events):
            quiet.process(event)
            scraped.process(event)
            if i % 50 == 0:
                EngineSnapshot.of(scraped)
    finally:
        stop.set()
        scraper.join()
    assert scraped.counts == quiet.counts and scraped.joiner.counts == quiet.joiner.counts
    assert len(scraped.joiner) == len(quiet.joiner)
    assert pickle.dumps(scraped.joiner._deadlines) == pickle.dumps(quiet.joiner._deadlines)
    assert scraped.champion_slot.scores.cumulative.values() == quiet.champion_slot.scores.cumulative.values()


def test_a_megabyte_of_headers_cannot_block_the_dead_letter_topic():
    """A message under the broker's limit whose headers alone fill it: its dead letter must
    still fit, or the partition would wait for it forever."""
    producers = []

    def make():  # a dead-letter topic that takes at most 20,000 bytes per record
        producers.append(FakeProducer(lambda topic, m: MessageSizeTooLargeError("too large")
                                      if topic == "dlq" and _size(m) > 20_000 else None))
        return producers[-1]

    outputs = Outputs(make, "predictions", "dlq")
    spoofed = [("shopstream.reason", b"x" * 5000), ("shopstream.note", b"y" * 1500)] * 300
    outputs.dead_letter(Record(b"{", headers=spoofed), "invalid event: payload")
    assert outputs.confirm() is True
    [(_, letter)] = [d for p in producers for d in p.delivered]
    headers = dict(letter["headers"])
    assert headers["shopstream.reason"] == b"invalid event: payload"  # ours, not the sender's copy
    assert int(headers["shopstream.dropped_headers"]) > 500 and _size(letter) <= 20_000


def _size(message):
    from stream.outputs import message_size

    return message_size(message)


@pytest.mark.parametrize("name, value", [("shopstream.dropped_headers", b"lots"), ("shopstream.dropped_headers", b"-"),
                                         ("shopstream.original_size", b"1"), ("shopstream.truncated", b"no")])
def test_a_sender_header_named_as_ours_is_kept_renamed_and_cannot_break_the_dead_letter(name, value):
    """A record over the dead-letter limit carrying its own ``shopstream.dropped_headers: lots``:
    cutting its dead letter read that as our count, int() raised, and the worker died on it, then
    again after every restart. The sender's header is kept as ``sent.<name>``; ours say the truth."""
    producers = []

    def make():
        producers.append(FakeProducer())
        return producers[-1]

    outputs = Outputs(make, "predictions", "dlq")
    outputs.dead_letter(Record(b"x" * 950_000, headers=[(name, value), ("note", b"kept")]), "invalid event: payload")
    assert outputs.confirm() is True
    [(_, letter)] = [d for p in producers for d in p.delivered]
    headers = dict(letter["headers"])
    assert headers[f"sent.{name}"] == value and headers["note"] == b"kept"
    assert headers["shopstream.original_size"] == b"950000" and headers["shopstream.truncated"] == b"1"
    assert headers.get("shopstream.dropped_headers", b"0") == b"0"
