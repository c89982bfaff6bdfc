"""The Kafka checkpoint store on the real broker (a fresh pair of topics per test):
chunked payloads hold a state larger than a record may be, keys are scoped by consumer
group, a worker keeps only manifests of partitions it does not own, and a save that did
not finish leaves the previous checkpoint whole."""

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import MessageSizeTooLargeError

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.signing import KEY_ENV
from stream.checkpointing.format import CheckpointError, encode_state
from stream.partition import Partition as PartitionState
from stream.checkpointing.kafka_store import KafkaCheckpointStore

pytestmark = pytest.mark.kafka


def busy_state(n, partition=0, topic="events"):
    engine = Engine.fresh("logreg", "shop", window=1e9)   # nothing expires: open predictions pile up
    for offset, record in enumerate(generate(n, seed=12 + partition)):
        engine.process(event_from_record(record), offset)
    return PartitionState(topic, partition, engine, next_offset=n, events_since_checkpoint=n)


def probes(state):
    return [state.engine.features.transform(event_from_record(r)) for r in generate(30, seed=99)]


def same(a, b):
    xs = probes(a)
    return ([a.engine.champion_slot.model.predict_proba_one(x) for x in xs]
            == [b.engine.champion_slot.model.predict_proba_one(x) for x in xs]
            and a.engine.open_predictions == b.engine.open_predictions and a.next_offset == b.next_offset)


@pytest.fixture
def ckpt_topic(kafka):
    return f"ckpt-{uuid.uuid4().hex[:10]}"


def records(kafka, topic):
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, max_partition_fetch_bytes=8 << 20)
    consumer.assign([TopicPartition(topic, 0)])
    found = list(consumer)
    consumer.close()
    return found


def test_a_state_larger_than_a_record_is_chunked_and_taken_over(kafka, ckpt_topic):
    options = {"bootstrap_servers": [kafka]}
    writer = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g")
    state = busy_state(4000)
    writer.save(state)
    chunks = [r for r in records(kafka, f"{ckpt_topic}-chunks") if r.value is not None]
    assert len(chunks) > 3 and sum(len(r.value) for r in chunks) > writer.max_bytes
    assert all(len(r.value) <= writer.max_bytes and r.key.startswith(b"g/events-0/1/") for r in chunks)
    with pytest.raises(MessageSizeTooLargeError):  # the whole payload would not fit in one record
        KafkaProducer(bootstrap_servers=kafka, max_request_size=64 * 1024).send(
            ckpt_topic, key=b"x", value=encode_state(state)).get(timeout=30)
    [manifest] = records(kafka, ckpt_topic)
    assert manifest.key == b"g/events-0" and len(manifest.value) < 4096

    state.events_since_checkpoint, state.next_offset = 1, 4001
    writer.save(state)   # a second save: the first one's chunks are tombstoned
    writer._producer.flush()
    tombstones = [r for r in records(kafka, f"{ckpt_topic}-chunks") if r.value is None]
    assert sorted(r.key for r in tombstones) == sorted(r.key for r in chunks)

    taker = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g")  # another worker
    loaded = taker.load("events", 0)
    assert loaded.sequence == 2 and loaded.origin == "checkpoint" and same(loaded, state)
    writer.close()
    taker.close()


def test_default_limit_chunks_hold_a_state_of_several_mib(kafka, ckpt_topic):
    options = {"bootstrap_servers": [kafka]}
    store = KafkaCheckpointStore(options, ckpt_topic, group="g")
    state = busy_state(40_000)
    store.save(state)
    assert len(encode_state(state)) > 2 * store.max_bytes
    loaded = KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 0)
    assert same(loaded, state)
    store.close()


def test_keys_scoped_by_group_and_only_owned_payloads_read(kafka, ckpt_topic):
    options = {"bootstrap_servers": [kafka]}
    g1 = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g1")
    g2 = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g2")
    states = {p: busy_state(1500 + 500 * p, partition=p) for p in range(3)}
    for state in states.values():
        g1.save(state)
    other = busy_state(800, partition=1)
    g2.save(other)
    assert KafkaCheckpointStore(options, ckpt_topic, group="g2").load("events", 0) is None
    assert same(KafkaCheckpointStore(options, ckpt_topic, group="g2").load("events", 1), other)

    owner = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g1")
    fetched = []
    original = owner._fetch_chunks
    owner._fetch_chunks = lambda spec, where: fetched.append(spec["key"]) or original(spec, where)
    assert same(owner.load("events", 2), states[2])
    assert fetched == ["g1/events-2/1"]
    assert all(len(v) < 4096 for v in owner._latest.values())   # manifests only, of every key
    assert set(owner._latest) == {"g1/events-0", "g1/events-1", "g1/events-2", "g2/events-1"}
    assert sorted(owner.load_all()) == [("events", 0), ("events", 1), ("events", 2)]
    for store in (g1, g2, owner):
        store.close()


def test_an_unfinished_save_leaves_the_previous_checkpoint(kafka, ckpt_topic):
    options = {"bootstrap_servers": [kafka]}
    store = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g")
    state = busy_state(1500)
    store.save(state)
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
    for i in range(3):   # chunks of sequence 2, then the writer died before its manifest
        producer.send(f"{ckpt_topic}-chunks", key=f"g/events-0/2/{i}".encode(), value=b"x" * 1000)
    producer.flush()
    loaded = KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 0)
    assert loaded.sequence == 1 and same(loaded, state)

    # A manifest of the old format (CKPT-2, one whole record) is refused with a clear error.
    producer.send(ckpt_topic, key=b"g/events-0", value=b"SHOPSTREAM-CKPT-2\nsha256:00\n1\n...")
    producer.flush()
    with pytest.raises(CheckpointError, match="format CKPT-2 was written by an older shopstream"):
        KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 0)
    producer.close()
    store.close()


def test_signed_manifest_and_chunks_are_verified(kafka, ckpt_topic, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k3y")
    options = {"bootstrap_servers": [kafka]}
    store = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g")
    state = busy_state(1500)
    store.save(state)
    [manifest] = records(kafka, ckpt_topic)
    assert b"hmac-sha256:" in manifest.value
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
    # A chunk replaced at a new offset is never read (the signed manifest names offsets); a
    # manifest pointing at forged chunks fails its HMAC, junk is no manifest, and a signed one
    # copied from another partition holds that one's state: each is skipped, and the last
    # verified checkpoint stays the partition's (these replaced it before, and the worker stopped).
    forged = manifest.value.replace(b'"offsets":[0', b'"offsets":[1')
    other = KafkaCheckpointStore(options, f"{ckpt_topic}-other", max_bytes=64 * 1024, group="g")
    other.save(busy_state(200, partition=1))
    [copied] = records(kafka, f"{ckpt_topic}-other")
    other.close()
    for value in (forged, b"junk", copied.value):
        producer.send(ckpt_topic, key=b"g/events-0", value=value)
    producer.flush()
    assert same(KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 0), state)
    # Nothing verified for a key: refused, with the reason, never started over from offset 0.
    producer.send(ckpt_topic, key=b"g/events-5", value=forged)
    producer.flush()
    with pytest.raises(CheckpointError, match="are not ours .checkpoint g/events-5: HMAC does not match"):
        KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 5)
    producer.send(ckpt_topic, key=b"g/events-0", value=None)
    producer.flush()
    with pytest.raises(CheckpointError, match="a tombstone replaced it"):
        KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 0)
    producer.close()
    store.close()


def test_a_background_checkpoint_is_sent_by_a_thread_while_the_loop_goes_on(kafka, ckpt_topic, tmp_path):
    options = {"bootstrap_servers": [kafka]}
    store = KafkaCheckpointStore(options, ckpt_topic, max_bytes=64 * 1024, group="g")
    store.spool_dir = tmp_path
    state = busy_state(3000)
    opened = state.engine.open_predictions
    pending = store.begin_save(state)
    for record in generate(300, seed=5):   # learned while the child pickles and the thread sends
        state.engine.process(event_from_record(record), state.next_offset)
        state.next_offset += 1
        state.events_since_checkpoint += 1
    assert pending.finish() == 3000 and pending.done()
    assert not list(tmp_path.iterdir())     # the spool is gone
    loaded = KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 0)
    assert loaded.next_offset == 3000 and loaded.sequence == 1 and loaded.engine.open_predictions == opened
    assert state.events_since_checkpoint == 300
    store.close()
