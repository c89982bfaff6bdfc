"""Shared learning in process: the engine's outbox, replicas applying one learn log, the
learn-record format and its refusals, settings and checkpoints (no broker: see
test_learn_log_kafka.py for the real one)."""

import hashlib
import math
import pickle
import random
from collections import namedtuple

import pytest
from kafka import TopicPartition
from kafka.errors import CorruptRecordError
from prometheus_client import CollectorRegistry

from shopstream.config import ConfigError, EngineConfig
from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.shared_learning import CatalogEvents, Example, LearnOutbox, LogReplica
from stream.partition import Partition as PartitionState
from stream.learn_log import LearnLog, RefusedRecord, decode, encode, schema_of
from stream.settings import WorkerSettings

SCHEMA = schema_of(EngineConfig(features="shop"))
Record = namedtuple("Record", "offset value timestamp")


def weights(engine: Engine) -> dict:
    return dict(engine.champion_slot.model["LogisticRegression"].weights)


def run(engine: Engine, records) -> list[Example]:
    """Process `records`; return what the engine's outbox published, in order."""
    out = []
    for record in records:
        engine.process(event_from_record(record))
        out += engine.learn_sink.drain()
    return out


def shared_engine(source: int) -> Engine:
    engine = Engine.fresh("logreg", "shop")
    engine.learn_sink = LearnOutbox(source)
    return engine


def test_every_replica_of_one_log_holds_the_same_model_learned_from_every_partition():
    records = list(generate(6000, seed=3))
    halves = [[r for r in records if hash(r["user_id"]) % 2 == p] for p in (0, 1)]
    engines = [shared_engine(0), shared_engine(1)]
    log = run(engines[0], halves[0]) + run(engines[1], halves[1])
    assert engines[0].counts["learned"] == 0 and len(log) == sum(e.counts["resolved"] for e in engines)
    replicas = [LogReplica(), LogReplica()]
    for offset, example in enumerate(log):
        for engine, replica in zip(engines, replicas):
            assert replica.apply(engine, offset, example) == "learned"
    assert weights(engines[0]) == weights(engines[1]) != {}
    assert [e.counts["learned"] for e in engines] == [len(log)] * 2
    alone = Engine.fresh("logreg", "shop")  # the per-partition mode: only its own labels
    for record in halves[0]:
        alone.process(event_from_record(record))
    assert alone.counts["learned"] == engines[0].counts["resolved"] < len(log)


def test_a_replay_from_a_checkpoint_publishes_copies_that_no_replica_learns():
    records = list(generate(4000, seed=5))
    uninterrupted = run(shared_engine(0), records)
    crashed = shared_engine(0)
    log = run(crashed, records[:1000])
    checkpoint = pickle.dumps(crashed)       # the outbox's numbering is in the checkpoint
    log += run(crashed, records[1000:2500])  # published, then kill -9
    restored = pickle.loads(checkpoint)
    log += run(restored, records[1000:])     # the replay publishes 1000..2500 again
    assert len(log) > len(uninterrupted)
    a, b = Engine.fresh("logreg", "shop"), Engine.fresh("logreg", "shop")
    ra, rb = LogReplica(), LogReplica()
    for offset, example in enumerate(uninterrupted):
        ra.apply(a, offset, example)
    for offset, example in enumerate(log):
        rb.apply(b, offset, example)
    assert rb.learned == ra.learned == len(uninterrupted)
    assert rb.duplicates == len(log) - len(uninterrupted)
    assert weights(a) == weights(b)


def test_a_resent_record_arriving_after_its_successors_is_learned_once():
    replica, engine = LogReplica(), Engine.fresh("logreg", "raw")
    examples = [Example(0, seq, {"f": float(seq)}, seq % 2 == 0, 0.0, 0.0) for seq in (1, 3, 2, 3, 2, 4)]
    outcomes = [replica.apply(engine, offset, e) for offset, e in enumerate(examples)]
    assert outcomes == ["learned", "learned", "learned", "duplicate", "duplicate", "learned"]
    assert replica.applied == {0: [4, set()]} and replica.waiting == 0


def test_a_learn_record_reads_back_to_the_same_bits():
    rng = random.Random(1)
    x = {f"f{i}": v for i, v in enumerate([0.1, 1e15, 5e-324, -0.0, math.pi, *(rng.uniform(-1e9, 1e9)
                                                                             for _ in range(50))])}
    example = Example(3, 17, x, True, 1.7e9 + 0.1, 1.7e9 + 1800.25)
    back = decode(encode(example, "g", "t", SCHEMA, "logreg@fresh"), "g", "t", SCHEMA)
    assert back == example
    x["brand"] = "acme"   # a text value: the raw features take the client's values as they are
    raw = schema_of(EngineConfig(features="raw"))
    assert decode(encode(example, "g", "t", raw, "logreg@fresh"), "g", "t", raw) == example
    assert [math.copysign(1, v) for v in back.x.values() if v == 0] == [-1.0]


def resealed(value: bytes) -> bytes:
    body = value.partition(b"\n")[2]
    return f"sha256:{hashlib.sha256(body).hexdigest()}\n".encode() + body


def refusal(value, key=None, group="g", topic="t", schema=SCHEMA) -> str:
    with pytest.raises(RefusedRecord) as caught:
        decode(value, group, topic, schema, key)
    return f"{caught.value.kind}: {caught.value}"


def test_bad_learn_records_are_refused_with_their_reason():
    example = Example(0, 1, {"a": 1.0}, True, 0.0, 1.0)
    good = encode(example, "g", "t", SCHEMA, "")
    signed = encode(example, "g", "t", SCHEMA, "", key=b"k")
    flipped = good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]
    assert refusal(b"") == "corrupt: empty record"
    assert refusal(b"\x00\x01garbage") == "corrupt: no check line"
    assert refusal(flipped) == "corrupt: sha256 does not match: corrupted"
    assert refusal(good, group="other").startswith("group: from consumer group 'g', not 'other'")
    assert refusal(good, topic="other").startswith("group: for events topic 't', not 'other'")
    assert refusal(good, schema="features=raw;window=1800").startswith(
        "schema: made under 'features=shop;window=1800'")
    assert refusal(good, key=b"k").startswith("unsigned: not signed (sha256)")
    assert refusal(signed).startswith("unsigned: signed, but this worker has no signing key")
    assert refusal(signed, key=b"other") == "forged: HMAC does not match: forged or modified"
    assert decode(signed, "g", "t", SCHEMA, b"k") == example
    # a byte past ASCII in the check line: refused, not a TypeError out of compare_digest
    check_at = signed.index(b":") + 1
    assert refusal(signed[:check_at] + b"\xff" + signed[check_at + 1:], key=b"k") == \
        "forged: HMAC does not match: forged or modified"
    assert refusal(good[:good.index(b":") + 1] + b"\xb2" + good[good.index(b":") + 2:]) == \
        "corrupt: sha256 does not match: corrupted"
    listed = resealed(good.replace(b'"a":1.0', b'"a":[1.0]'))  # a correct check on a bad body
    assert refusal(listed) == "invalid: feature 'a': [1.0] is not a finite number or a string"
    assert refusal(resealed(good.replace(b'"a":1.0', b'"a":1e999'))).startswith("corrupt: not JSON")
    assert refusal(resealed(good.replace(b'"seq":1', b'"seq":0'))).startswith("invalid: source 0 / seq 0")
    assert refusal(resealed(good.replace(b'"y":true', b'"y":1'))) == "invalid: label 1: must be true or false"
    # values that escaped as TypeError, OverflowError or RecursionError and ended every worker's loop
    # in a crash loop (the log is read again after each restart), or were out of the events' bounds
    assert refusal(resealed(good.replace(b'"a":1.0', b'"a":1' + b"0" * 400))).startswith("invalid: feature 'a'")
    assert refusal(resealed(good.replace(b'"a":1.0', b'"a":1e300'))).startswith("invalid: feature 'a'")
    assert refusal(resealed(b"x\n" + b"[" * 100_000 + b"]" * 100_000)).startswith("corrupt: not JSON: RecursionError")
    catalog = encode(CatalogEvents(1, [[0, "view", "p", None, None, 1.0, None, None]]), "g", "t", SCHEMA, "")
    assert isinstance(decode(catalog, "g", "t", SCHEMA), CatalogEvents)
    for row in (b'[0,[],"p",null,null,1.0,null,null]', b'[0,"view",true,null,null,1.0,null,null]',
                b'[0,"view","p",null,null,1' + b"0" * 400 + b',null,null]', b'[0,"view","p",null,null,-5.0,null,null]',
                b'[0,"view","p",null,"' + b"b" * 300 + b'",1.0,null,null]'):
        bad = resealed(catalog.replace(b'[0,"view","p",null,null,1.0,null,null]', row))
        assert refusal(bad).startswith("invalid: event"), row[:60]


class FakeLearnConsumer:
    def __init__(self, values):
        self.records = [Record(offset, value, 0) for offset, value in enumerate(values)]
        self.next = 0

    def assign(self, tps):
        pass

    def partitions_for_topic(self, topic):
        return {0}

    def seek(self, tp, offset):
        self.next = offset

    def poll(self, timeout_ms=0, max_records=None):
        batch, self.next = self.records[self.next:], len(self.records)
        return {TopicPartition("learn", 0): batch} if batch else {}

    def highwater(self, tp):
        return len(self.records)

    def close(self, autocommit=False):
        pass


def test_the_worker_learns_good_records_and_passes_over_bad_ones_counting_each():
    examples = [Example(1, seq, {"a": float(seq), "b": 1.0}, seq % 3 == 0, 0.0, 1.0) for seq in (1, 2, 3)]
    good = [encode(e, "g", "events", SCHEMA, "") for e in examples]
    values = [good[0], b"junk", encode(examples[1], "other-group", "events", SCHEMA, ""),
              encode(examples[1], "g", "events", "features=raw;window=60", ""), good[1], good[1], good[2]]
    learn_log = LearnLog({}, "learn", "g", "events", EngineConfig(features="shop"), outputs=None,
                         registry=CollectorRegistry(), consumer=FakeLearnConsumer(values))
    state = PartitionState("events", 0, Engine.fresh("logreg", "shop"))
    learn_log.attach(state)
    learn_log.apply({TopicPartition("events", 0): state})
    assert learn_log.refused == {"corrupt": 1, "group": 1, "schema": 1}
    replica = state.learn_log
    assert (replica.next_offset, replica.learned, replica.duplicates) == (7, 3, 1)
    expected = Engine.fresh("logreg", "shop")
    for e in examples:
        expected.champion_slot.model.learn_one(e.x, e.y)
    assert weights(state.engine) == weights(expected)
    assert state.changed and state.engine.champion_slot.model.predict_proba_one({"a": 1.0})  # still predicting


class UnreadableAt(FakeLearnConsumer):
    """The learn topic with a batch the client cannot read at offsets `bad` (raised at every poll that
    reaches it, as kafka-python raises it)."""

    def __init__(self, values, bad: range):
        super().__init__(values)
        self.bad, self.raised = bad, 0

    def poll(self, timeout_ms=0, max_records=None):
        if self.next in self.bad:
            self.raised += 1
            raise CorruptRecordError("Record batch for partition learn-0 at offset 2 failed crc check")
        batch = self.records[self.next:self.bad.start] if self.next < self.bad.start else self.records[self.next:]
        self.next += len(batch)
        return {TopicPartition("learn", 0): batch} if batch else {}


class Located:
    """Stands in for stream/corrupt.py's probe: where the unreadable batch ends."""

    def __init__(self, bad: range):
        self.bad, self.asked = bad, []

    def pass_over(self, consumer, tp, start):
        self.asked.append((tp, start))
        if start not in self.bad:
            return None
        consumer.seek(tp, self.bad.stop)
        return self.bad.stop


def test_a_learn_log_batch_no_client_can_read_is_passed_over_not_the_end_of_every_worker():
    examples = [Example(1, seq, {"a": float(seq), "b": 1.0}, seq % 2 == 0, 0.0, 1.0) for seq in range(1, 7)]
    values = [encode(e, "g", "events", SCHEMA, "") for e in examples]
    consumer, where = UnreadableAt(values, range(2, 4)), Located(range(2, 4))
    learn_log = LearnLog({}, "learn", "g", "events", EngineConfig(features="shop"), outputs=None,
                         registry=CollectorRegistry(), consumer=consumer, unreadable=where)
    state = PartitionState("events", 0, Engine.fresh("logreg", "shop"))
    learn_log.attach(state)
    owned = {TopicPartition("events", 0): state}
    for _ in range(4):   # reads 0-1, meets the batch and passes over it, reads 4-5, nothing left
        learn_log.apply(owned)
    assert consumer.raised == 1 and where.asked == [(TopicPartition("learn", 0), 2)]
    assert learn_log.refused == {"unreadable": 2}
    assert (state.learn_log.next_offset, state.learn_log.learned) == (6, 4)
    expected = Engine.fresh("logreg", "shop")
    for e in examples[:2] + examples[4:]:
        expected.champion_slot.model.learn_one(e.x, e.y)
    assert weights(state.engine) == weights(expected)


def test_settings_choose_the_mode_and_refuse_a_reset_that_would_leave_the_shared_model(monkeypatch):
    assert WorkerSettings().learning == "partition"  # the default until measured at least as good
    assert WorkerSettings.from_options(learning="shared").learning == "shared"
    with pytest.raises(ConfigError, match="shared cannot be used with --drift-reaction reset"):
        WorkerSettings.from_options(learning="shared", drift_reaction="reset")
    with pytest.raises(ConfigError, match="learning"):
        WorkerSettings.from_options(learning="global")


def test_a_checkpoint_from_before_shared_learning_loads_without_a_log_position():
    state = PartitionState("t", 0, Engine.fresh("logreg", "raw"))
    del state.__dict__["learn_log"]      # what a checkpoint pickled before the field existed holds
    restored = pickle.loads(pickle.dumps(state))
    assert restored.learn_log is None and restored.engine.learn_sink is None


def test_shop_wide_tables_fold_other_partitions_events_once_and_never_their_own():
    records = list(generate(3000, seed=9))
    mine, theirs = records[::2], records[1::2]
    engine = shared_engine(0)
    run(engine, mine)
    replica = LogReplica(own=0)
    batch = CatalogEvents.of(1, [(offset, event_from_record(r)) for offset, r in enumerate(theirs)])
    own = CatalogEvents.of(0, [(offset, event_from_record(r)) for offset, r in enumerate(mine)])
    assert [replica.apply(engine, 0, batch), replica.apply(engine, 1, own), replica.apply(engine, 2, batch)] == \
        ["folded"] * 3
    whole = Engine.fresh("logreg", "shop")   # one partition that saw every event
    for record in records:
        whole.features.learn(event_from_record(record))
    # the products, brands and category prices of the whole shop: once each, though `batch` came twice
    assert dict(engine.features.products.items()) == dict(whole.features.products.items())
    assert dict(engine.features.brands.items()) == dict(whole.features.brands.items())
    assert dict(engine.features.users.items()) != dict(whole.features.users.items())  # users stay the partition's own
    assert engine.counts["learned"] == 0  # catalog events teach the features, never the models


def test_records_deleted_before_a_partition_applied_them_are_counted():
    example = Example(1, 1, {"a": 1.0}, True, 0.0, 1.0)
    consumer = FakeLearnConsumer([encode(example, "g", "events", SCHEMA, "")] * 5)
    consumer.records = consumer.records[3:]          # retention removed offsets 0-2
    learn_log = LearnLog({}, "learn", "g", "events", EngineConfig(features="shop"), outputs=None,
                         registry=CollectorRegistry(), consumer=consumer)
    state = PartitionState("events", 0, Engine.fresh("logreg", "shop"))
    learn_log.attach(state)
    learn_log.apply({TopicPartition("events", 0): state})
    assert learn_log.refused == {"truncated": 3}
    assert (state.learn_log.next_offset, state.learn_log.learned, state.learn_log.duplicates) == (5, 1, 1)


def test_a_partition_started_over_after_its_assignment_joins_the_log_before_anything_is_handled():
    learn_log = LearnLog({}, "learn", "g", "events", EngineConfig(features="shop"), outputs=None,
                         registry=CollectorRegistry(), consumer=FakeLearnConsumer([]))
    state = PartitionState("events", 2, Engine.fresh("logreg", "shop"))   # never attached
    learn_log.apply({TopicPartition("events", 2): state})
    assert state.learn_log.own == 2 and isinstance(state.engine.learn_sink, LearnOutbox)
