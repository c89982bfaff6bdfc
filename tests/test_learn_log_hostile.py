"""The learn log against what an attack review found (no broker): records too large for Kafka made of
valid events, records past the events' limits, a text value for a floats-only feature set, and a source
whose offsets go backwards."""

import hashlib
import logging
import pickle
from types import SimpleNamespace

from kafka import TopicPartition
from kafka.errors import MessageSizeTooLargeError
from kafka.producer.kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.events import MAX_FEATURES, MAX_NAME_CHARS, Event, decode_event, event_from_record
from shopstream.generator import generate
from shopstream.shared_learning import CatalogEvents, Example, LearnOutbox, LogReplica
from stream.learn_log import LearnLog, RefusedRecord, decode, encode, schema_of
from stream.outputs import MAX_BATCH_BYTES, Outputs
from stream.partition import Partition as PartitionState
from test_shared_learning import FakeLearnConsumer

SHOP = schema_of(EngineConfig(features="shop"))
RAW = schema_of(EngineConfig(features="raw"))


class SizeCheckingProducer:
    """kafka-python's own record size check (1 MiB, the broker's default too), no broker."""

    config = {"max_request_size": 1_048_576}

    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, partition=None, headers=None):
        KafkaProducer._ensure_valid_record_size(self, len(value) + (len(key) if key else 0))
        self.sent.append((topic, key, value, partition))
        return SimpleNamespace(add_errback=lambda *a: None, add_callback=lambda *a: None)

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


def learn_log_of(values=(), features="shop", outputs=None) -> LearnLog:
    return LearnLog({}, "learn", "g", "events", EngineConfig(features=features), outputs=outputs,
                    registry=CollectorRegistry(), consumer=FakeLearnConsumer(list(values)), signing_key=None)


def shared(partition: int, features="shop") -> PartitionState:
    state = PartitionState("events", partition, Engine.fresh("logreg", features))
    state.engine.learn_sink = LearnOutbox(source=partition)
    return state


def long_event(i: int) -> Event:
    """A valid event whose names are as long as the events allow."""
    def name(c):
        return c * (MAX_NAME_CHARS - 6) + f"{i:06d}"
    raw = (b'{"event_time": 1.7e9, "event_type": "view", "product_id": "%s", "user_id": "u%d", "user_session": '
           b'"s%d", "category_code": "%s", "brand": "%s", "price": 9.5, "platform": "%s", "channel": "%s"}'
           % (name("p").encode(), i, i, name("c").encode(), name("b").encode(), name("w").encode(),
              name("h").encode()))
    return decode_event(raw)


def weights(engine: Engine) -> dict:
    return dict(engine.champion_slot.model["LogisticRegression"].weights)


# -- 1. records too large for Kafka ------------------------------------------------------


def test_a_polled_batch_of_valid_events_with_long_names_is_published_in_records_kafka_takes():
    producer = SizeCheckingProducer()
    outputs = Outputs(lambda: producer, "predictions", "dead-letters")
    learn_log = learn_log_of(outputs=outputs)
    source = shared(0)
    events = [long_event(i) for i in range(1000)]
    for offset, event in enumerate(events):
        learn_log.observe(source, offset, event)
    learn_log.publish(source)
    assert outputs.failed == [] and outputs.confirm(timeout=0.1)   # 1.3 MB in one record was refused for good
    values = [value for _, _, value, _ in producer.sent]
    assert len(values) > 1 and max(map(len, values)) <= MAX_BATCH_BYTES
    pieces = [decode(value, "g", "events", SHOP) for value in values]
    assert [row[0] for piece in pieces for row in piece.events] == list(range(1000))   # in order, each once
    replica, engine = LogReplica(own=1), Engine.fresh("logreg", "shop")
    for offset, piece in enumerate(pieces):
        assert replica.apply(engine, offset, piece) == "folded"
    assert len(engine.features.products) == 1000 and replica.rewound == 0
    whole = Engine.fresh("logreg", "shop")   # the same events folded as one record: the same tables
    LogReplica(own=1).apply(whole, 0, CatalogEvents.of(0, list(enumerate(events))))
    assert dict(engine.features.products.items()) == dict(whole.features.products.items())
    assert dict(engine.features.brands.items()) == dict(whole.features.brands.items())
    assert engine.features.vocabulary == whole.features.vocabulary


def test_the_largest_example_records_stay_far_below_the_cap():
    # raw: the events' most features, with their longest names and the longest floats
    x = {f"{i:03d}" + "n" * (MAX_NAME_CHARS - 3): -1.2345678901234567e-300 for i in range(MAX_FEATURES)}
    value = encode(Example(7, 10**12, x, True, 4.1e9, 4.1e9), "g" * 255, "t" * 249, RAW, "logreg@" + "v" * 200)
    assert len(value) < MAX_BATCH_BYTES / 4
    assert decode(value, "g" * 255, "t" * 249, RAW).x == x
    # shop: genuine examples of events with the longest platform, channel and category pass the limits
    source = shared(0)
    records = list(generate(3000, seed=5))
    for r in records:
        r.update(platform="w" * MAX_NAME_CHARS, channel="h" * MAX_NAME_CHARS, category_code="c" * MAX_NAME_CHARS)
    learn_log = learn_log_of(outputs=SimpleNamespace(send=lambda *a, **k: None))
    for offset, r in enumerate(records):
        source.engine.process(event_from_record(r), offset)
    examples = source.engine.learn_sink.drain()
    assert examples and max(len(e.x) for e in examples) > 3 and max(map(len, examples[-1].x)) > MAX_NAME_CHARS
    for example in examples:
        value = encode(example, "g", "events", SHOP, "")
        assert len(value) < MAX_BATCH_BYTES / 16 and decode(value, "g", "events", SHOP) == example
    assert learn_log.refused == {}


# -- 2. and 3. records past the events' limits, text for floats --------------------------


def refused(values, features="shop"):
    """What a partition makes of `values` as the learn topic: the log, its replica, its engine."""
    learn_log = learn_log_of(values, features)
    state = PartitionState("events", 0, Engine.fresh("logreg", features))
    learn_log.attach(state)
    learn_log.apply({TopicPartition("events", 0): state})
    return learn_log, state


def test_a_learn_record_past_the_events_limits_is_refused_and_nothing_of_it_learned():
    many = {f"f{i}": 1.0 for i in range(MAX_FEATURES + 1)}
    long_name = {"n" * (MAX_NAME_CHARS + 1): 1.0, "a": 1.0}
    long_column = {"platform=" + "w" * (MAX_NAME_CHARS + 1): 1.0}
    values = [encode(Example(3, seq, x, True, 1.7e9, 1.7e9), "g", "events", SHOP, "")
              for seq, x in enumerate((many, long_name, long_column), 1)]
    learn_log, state = refused(values)
    assert learn_log.refused == {"invalid": 3}
    assert (state.learn_log.next_offset, state.learn_log.learned) == (3, 0)
    assert weights(state.engine) == weights(Engine.fresh("logreg", "shop")) and state.engine.counts["learned"] == 0
    for value, why in zip(values, ("257 features: more than the events' 256", "of 257 characters",
                                   "of 266 characters")):
        try:
            decode(value, "g", "events", SHOP)
        except RefusedRecord as exc:
            assert exc.kind == "invalid" and why in str(exc)
        else:
            raise AssertionError("not refused")
    # at the limits: learned (a one-hot column's name is longer by its "field=")
    at_limits = {f"{i:03d}" + "n" * (MAX_NAME_CHARS - 3): 1.0 for i in range(MAX_FEATURES - 3)}
    at_limits.update({f"{field}=" + "v" * MAX_NAME_CHARS: 1.0 for field in ("platform", "channel", "category")})
    assert len(at_limits) == MAX_FEATURES
    learn_log, state = refused([encode(Example(3, 1, at_limits, True, 1.7e9, 1.7e9), "g", "events", SHOP, "")])
    assert learn_log.refused == {} and state.learn_log.learned == 1


def test_a_text_value_is_refused_where_the_feature_set_gives_floats_only():
    good = {"log_price": 3.0, "session_views": 1.0}
    text = {"log_price": "x" * 200, "session_views": 1.0}
    values = [encode(Example(1, seq, good, seq % 2 == 0, 1.7e9, 1.7e9), "g", "events", SHOP, "") for seq in (1, 2)]
    values.append(encode(Example(1, 3, text, True, 1.7e9, 1.7e9), "g", "events", SHOP, ""))
    values.append(encode(Example(1, 4, {"log_price": 3, "session_views": 1.0}, True, 1.7e9, 1.7e9),
                         "g", "events", SHOP, ""))   # an integer: the shop features give floats
    learn_log, state = refused(values)
    scaler = state.engine.champion_slot.model["StandardScaler"]
    assert learn_log.refused == {"invalid": 2}
    assert dict(scaler.counts) == {"log_price": 2, "session_views": 2}   # was 3: counted, then River raised
    assert (state.learn_log.learned, state.engine.counts["learn_errors"]) == (2, 0)
    # the raw features take the client's values as they are: a text value is the models' to take or not
    raw_text = encode(Example(1, 1, {"colour": "red"}, True, 1.7e9, 1.7e9), "g", "events", RAW, "")
    assert decode(raw_text, "g", "events", RAW).x == {"colour": "red"}


# -- 4. a source whose offsets go backwards ---------------------------------------------


def catalog_event(product: str) -> Event:
    return Event(1.7e9, "view", product, "u", "s", category_code="a.b", brand="b", price=5.0, platform="web")


def publish(learn_log: LearnLog, state, sent: list) -> None:
    learn_log.outputs = SimpleNamespace(send=lambda topic, key, value, partition=None: sent.append(value))
    learn_log.publish(state)


def test_a_recreated_events_topic_starts_a_new_epoch_and_its_events_are_folded(caplog):
    source = shared(2)
    writer, sent = learn_log_of(), []
    for offset in range(1000):
        writer.observe(source, offset, catalog_event(f"old{offset}"))
    publish(writer, source, sent)
    checkpoint = pickle.dumps(source.engine.learn_sink)   # the outbox as its checkpoint holds it
    # the events topic deleted and created again: the worker goes on at offset 0 with the same engine
    for offset in range(500):
        writer.observe(source, offset, catalog_event(f"new{offset}"))
    publish(writer, source, sent)
    # a kill -9 before the next checkpoint: the restored outbox meets the same events, in the same epoch
    replayed = shared(2)
    replayed.engine.learn_sink = pickle.loads(checkpoint)
    for offset in range(500):
        writer.observe(replayed, offset, catalog_event(f"new{offset}"))
    publish(writer, replayed, sent)
    reader = learn_log_of(sent)
    state = PartitionState("events", 0, Engine.fresh("logreg", "shop"))
    reader.attach(state)
    with caplog.at_level(logging.WARNING, "stream.learn_log"):
        reader.apply({TopicPartition("events", 0): state})
    assert len(state.engine.features.products) == 1500   # was 1000: the new topic's events were all skipped
    assert [decode(v, "g", "events", SHOP).epoch for v in sent] == [0, 1, 1]
    assert (state.learn_log.folded, state.learn_log.epochs) == ({2: 499}, {2: 1})
    # the replay's copies: counted and logged (they were folded once), never silent
    assert reader.refused == {"rewound": 500} and state.learn_log.rewound == 500
    assert "500 of 500 catalog event(s) of partition 2 (offsets 0..499, epoch 1)" in caplog.text


def test_catalog_events_of_an_earlier_epoch_or_not_above_the_last_folded_are_counted_not_folded():
    old = encode(CatalogEvents(2, [[10, "view", "old", None, None, 1.0, None, None]]), "g", "events", SHOP, "")
    new = encode(CatalogEvents(2, [[0, "view", "new", None, None, 1.0, None, None]], epoch=1),
                 "g", "events", SHOP, "")
    forged = encode(CatalogEvents(5, [[10**18, "view", "forged", None, None, 1.0, None, None]]),
                    "g", "events", SHOP, "")
    genuine = encode(CatalogEvents.of(5, [(o, catalog_event(f"g{o}")) for o in range(100)]), "g", "events", SHOP, "")
    learn_log, state = refused([old, new, old, forged, genuine])
    assert reader_products(state) == {"old", "new", "forged"}
    assert learn_log.refused == {"rewound": 101} and state.learn_log.rewound == 101


def sealed(body: bytes) -> bytes:
    return f"sha256:{hashlib.sha256(body).hexdigest()}\n".encode() + body


def reader_products(state) -> set:
    return {key for key, _ in state.engine.features.products.items()}


def test_catalog_records_without_an_epoch_and_bad_offsets():
    value = encode(CatalogEvents(1, [[0, "view", "p", None, None, 1.0, None, None]]), "g", "t", SHOP, "")
    body = value.partition(b"\n")[2]
    assert b'"epoch":0,' in body
    assert decode(sealed(body.replace(b'"epoch":0,', b"")), "g", "t", SHOP).epoch == 0   # written before epochs
    for bad in (b'"epoch":-1,', b'"epoch":"1",', b'"epoch":1.5,'):
        try:
            decode(sealed(body.replace(b'"epoch":0,', bad)), "g", "t", SHOP)
        except RefusedRecord as exc:
            assert exc.kind == "invalid" and "epoch" in str(exc)
        else:
            raise AssertionError(bad)
    row = b'[0,"view","p",null,null,1.0,null,null]'
    for rows in (b'[-1,"view","p",null,null,1.0,null,null]', b'[%d,"view","p",null,null,1.0,null,null]' % 2**63,
                 b'[5,"view","p",null,null,1.0,null,null],[5,"view","q",null,null,1.0,null,null]',
                 b'[5,"view","p",null,null,1.0,null,null],[4,"view","q",null,null,1.0,null,null]'):
        try:
            decode(sealed(body.replace(row, rows)), "g", "t", SHOP)
        except RefusedRecord as exc:
            assert exc.kind == "invalid" and "offsets increasing" in str(exc)
        else:
            raise AssertionError(rows)


def test_an_outbox_and_a_replica_pickled_before_epochs_still_work():
    box, replica = LearnOutbox(source=1), LogReplica(own=0)
    for name in ("epoch", "last_observed", "sealed"):
        assert name not in box.__dict__   # class defaults: what an older checkpoint's outbox holds
    assert "rewound" not in replica.__dict__ and "epochs" not in replica.__dict__
    box, replica = pickle.loads(pickle.dumps(box)), pickle.loads(pickle.dumps(replica))
    box.observe(3, catalog_event("p"))
    (batch,) = box.drain_catalog()
    engine = Engine.fresh("logreg", "shop")
    assert replica.apply(engine, 0, batch) == "folded" and reader_products(SimpleNamespace(engine=engine)) == {"p"}


def test_size_check_of_the_producer_stand_in_is_kafkas():
    try:
        SizeCheckingProducer().send("t", value=b"x" * 1_100_000)
    except MessageSizeTooLargeError:
        pass
    else:
        raise AssertionError("no size check")
