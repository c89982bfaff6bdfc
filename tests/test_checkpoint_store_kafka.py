"""The Kafka checkpoint store on the real broker (a fresh pair of topics per test):
chunked payloads hold a state larger than a record may be, keys are scoped by consumer
group, a worker keeps only manifests of partitions it does not own, and a save that did
not finish leaves the previous checkpoint whole."""

import logging
import threading
import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import MessageSizeTooLargeError

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.signing import KEY_ENV
from helpers import NotUtf8, send_unreadable
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
    assert all(len(r.value) <= writer.max_bytes and r.key.startswith(b"g/events-0/1-") for r in chunks)
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
    assert len(fetched) == 1 and fetched[0].startswith("g1/events-2/1-")   # "<key>/<sequence>-<nonce>"
    assert all(len(v) < 4096 for v in owner._latest.values())   # manifests only, of this group's keys only
    assert set(owner._latest) == {"g1/events-0", "g1/events-1", "g1/events-2"} and owner.skipped_keys == 1
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


def test_signed_manifest_and_chunks_are_verified(kafka, ckpt_topic, monkeypatch, caplog):
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
    # Listing (`models list`): the refused key is named with its reason, not left out, and the
    # others load; a key that names no partition is passed over with a warning.
    producer.send(ckpt_topic, key=b"g/notes", value=b"junk")
    producer.flush()
    refused: dict = {}
    with caplog.at_level(logging.WARNING, logger="stream.checkpointing.stores"):
        listed = KafkaCheckpointStore(options, ckpt_topic, group="g").load_all(refused)
    assert list(listed) == [("events", 0)] and same(listed[("events", 0)], state)
    assert list(refused) == [("events", 5)] and "are not ours" in refused[("events", 5)]
    assert "'notes' is not a checkpoint's name" in caplog.text
    producer.send(ckpt_topic, key=b"g/events-0", value=None)
    producer.flush()
    with pytest.raises(CheckpointError, match="a tombstone replaced it"):
        KafkaCheckpointStore(options, ckpt_topic, group="g").load("events", 0)
    refused = {}
    assert KafkaCheckpointStore(options, ckpt_topic, group="g").load_all(refused) == {}
    assert sorted(refused) == [("events", 0), ("events", 5)] and "a tombstone" in refused[("events", 0)]
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


def loads_within(store, partition: int, seconds: float = 60.0):
    """store.load("events", partition) on a thread: what it returned or raised, and no hang."""
    outcome = []

    def load():
        try:
            outcome.append(store.load("events", partition))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)
    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(seconds)
    assert outcome, f"load of partition {partition} still running after {seconds:.0f} s"
    return outcome[0]


def test_an_unreadable_manifest_batch_is_passed_over_and_the_keys_it_may_hold_are_in_doubt(kafka, ckpt_topic):
    """Every worker reads the manifest topic: one batch the client could not read failed the first load
    (a CorruptRecordError, which --force-fresh-start could not pass) and hung the next one in poll.
    Now it is passed over; a key with no readable manifest after it loads as the topic says, in doubt
    (the worker holds it against the committed offset: tests/test_worker_parts.py, test_worker_kafka.py)."""
    options = {"bootstrap_servers": [kafka]}
    writer = KafkaCheckpointStore(options, ckpt_topic, group="g")
    first, second = busy_state(300, 0), busy_state(300, 1)
    writer.save(first)
    hidden = send_unreadable(kafka, ckpt_topic, key=b"g/events-0")   # maybe partition 0's newest
    writer.save(second)
    reader = KafkaCheckpointStore(options, ckpt_topic, group="g")
    started = time.monotonic()
    assert same(loads_within(reader, 0), first)   # its last readable checkpoint
    assert same(loads_within(reader, 1), second)
    assert loads_within(reader, 2) is None        # never checkpointed
    assert time.monotonic() - started < 30        # no load waits on the batch (each took under a second here)
    unread = f"offsets {hidden}..{hidden} of {ckpt_topic} cannot be read"
    assert unread in reader.doubt("events", 0) and "checkpoint g/events-0 is readable after them" in \
        reader.doubt("events", 0)
    assert unread in reader.doubt("events", 2)
    assert reader.doubt("events", 1) is None      # its newest manifest comes after the batch
    writer.save(busy_state(400, 0))               # partition 0 checkpoints again: readable after the batch
    assert loads_within(reader, 0).next_offset == 400 and reader.doubt("events", 0) is None
    fresh = KafkaCheckpointStore(options, ckpt_topic, group="g")
    assert loads_within(fresh, 0).next_offset == 400 and fresh.doubt("events", 0) is None
    assert unread in fresh.doubt("events", 2)
    for store in (writer, reader, fresh):
        store.close()


def test_a_chunk_that_cannot_be_read_refuses_its_checkpoint(kafka, ckpt_topic, monkeypatch):
    options = {"bootstrap_servers": [kafka]}
    writer = KafkaCheckpointStore(options, ckpt_topic, group="g")
    new_producer = writer._new_producer

    def producer_of_unreadable_chunks():
        producer = new_producer()
        send = producer.send

        def send_unreadably(topic, **message):
            if topic == writer.chunk_topic and message.get("value") is not None:
                message["headers"] = [(NotUtf8("k"), b"v")]   # the record then cannot be read back
            return send(topic, **message)
        producer.send = send_unreadably
        return producer
    monkeypatch.setattr(writer, "_new_producer", producer_of_unreadable_chunks)
    writer.save(busy_state(300, 0))
    reader = KafkaCheckpointStore(options, ckpt_topic, group="g")
    refused = loads_within(reader, 0)
    assert isinstance(refused, CheckpointError), refused
    assert f"chunk 0 (offset 0 of {ckpt_topic}-chunks) cannot be read" in str(refused)
    writer.close()
    reader.close()
