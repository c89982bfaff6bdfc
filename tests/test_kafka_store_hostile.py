"""The Kafka checkpoint store against a broker that does not answer and topics anyone may write to.

An in-memory stand-in for the two topics (no broker): a checkpoint whose chunks do not come back
is one that cannot be READ (held: `CheckpointUnreadable`), not one that cannot be trusted; odd
chunk specs in a manifest are refused (`CheckpointError`), never a crash, and never fail a save
after its manifest is acknowledged; keys of other groups, or too long, are never kept; a key is
never written raw into a log line; two writers of one sequence do not share chunk keys."""

from __future__ import annotations

import io
import json
import logging
import types

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from shopstream.engine import Engine
from stream.checkpointing import format as fmt
from stream.checkpointing import kafka_store
from stream.checkpointing.format import CheckpointError, bind
from stream.partition import Partition
from stream.restore import CheckpointUnreadable, PartitionRestorer

KEY = b"k" * 32


class Rec:
    def __init__(self, offset, key, value):
        self.offset, self.key, self.value = offset, key, value


class Log:
    """Topics as lists of records (None: compacted away)."""

    def __init__(self):
        self.topics: dict = {}
        self.unavailable: set = set()   # topics whose fetches return nothing (their leader away)

    def append(self, topic, partition, key, value) -> int:
        records = self.topics.setdefault((topic, partition), [])
        records.append(Rec(len(records), key, value))
        return len(records) - 1

    def compact(self, topic, partition=0) -> None:
        """What compaction leaves: each key's last record, tombstones gone too."""
        records = self.topics[(topic, partition)]
        last = {r.key: r.offset for r in records if r is not None}
        for i, r in enumerate(records):
            if r is not None and (last[r.key] != r.offset or r.value is None):
                records[i] = None


class Producer:
    def __init__(self, log):
        self.log = log

    def send(self, topic, key=None, value=None, partition=0):
        offset = self.log.append(topic, partition or 0, key, value)
        return types.SimpleNamespace(get=lambda timeout=None: types.SimpleNamespace(offset=offset))

    def close(self, timeout=None):
        pass


class Consumer:
    def __init__(self, log):
        self.log, self.pos = log, {}

    def assign(self, tps):
        for tp in tps:
            self.pos.setdefault(tp, 0)

    def seek_to_beginning(self, tp):
        self.pos[tp] = 0

    def seek(self, tp, offset):
        if not isinstance(offset, int) or offset < 0:   # as kafka-python
            raise ValueError("Offset must be int >= 0")
        self.pos[tp] = offset

    def position(self, tp):
        return self.pos[tp]

    def end_offsets(self, tps):
        return {tp: len(self.log.topics.get((tp.topic, tp.partition), [])) for tp in tps}

    def poll(self, timeout_ms=0, max_records=500):
        out = {}
        for tp, at in self.pos.items():
            if tp.topic in self.log.unavailable:
                continue
            records = [r for r in self.log.topics.get((tp.topic, tp.partition), [])[at:] if r is not None]
            if records[:max_records]:
                out[tp] = records[:max_records]
                self.pos[tp] = out[tp][-1].offset + 1
        return out

    def close(self):
        pass


@pytest.fixture
def topics(monkeypatch):
    log = Log()
    monkeypatch.setattr(kafka_store, "create_topics", lambda *a, **k: None)
    monkeypatch.setattr(kafka_store, "read_records_in_one_pass", lambda consumer: None)
    monkeypatch.setattr(kafka_store, "KafkaConsumer", lambda **kw: Consumer(log))
    monkeypatch.setattr(kafka_store, "KafkaProducer", lambda **kw: Producer(log))
    return log


def store(key=KEY, group="g") -> kafka_store.KafkaCheckpointStore:
    return kafka_store.KafkaCheckpointStore({}, topic="ckpt", max_bytes=64 * 1024, group=group,
                                            signing_key=key).open()


def state(partition=0, offset=5000) -> Partition:
    return Partition("events", partition, Engine.fresh("logreg", "raw"), next_offset=offset,
                     events_since_checkpoint=offset)


def restorer(on, force=False) -> PartitionRestorer:
    return PartitionRestorer(on, new_engine=lambda: (Engine.fresh("logreg", "raw"), "fresh"), control=None,
                             group="g", force_fresh_start=force)


# -- 1. a checkpoint that cannot be read is held, not refused ---------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_chunks_the_broker_does_not_return_hold_the_partition_and_load_once_they_come(topics, force):
    store(KEY).save(state(offset=5000))
    topics.unavailable.add("ckpt-chunks")   # the chunk partition's leader away: no record comes back
    with pytest.raises(CheckpointUnreadable, match="not returned by the broker"):
        restorer(store(KEY), force).restore(TopicPartition("events", 0))   # never a new start over it
    topics.unavailable.clear()
    assert restorer(store(KEY), force).restore(TopicPartition("events", 0)).next_offset == 5000


def test_a_manifest_topic_that_does_not_answer_holds_the_partition(topics):
    store(KEY).save(state())
    reader = store(KEY)

    def slow(tps):
        raise KafkaTimeoutError("Failed to get offsets by times in 60.0 secs.")

    reader._consumer.end_offsets = slow
    with pytest.raises(CheckpointUnreadable, match="KafkaTimeoutError"):
        restorer(reader, force=True).restore(TopicPartition("events", 0))


def test_a_chunk_a_later_record_proves_gone_is_still_refused(topics):
    store(KEY).save(state())
    topics.append("ckpt-chunks", 0, b"g/events-9/1-x/0", b"later")
    topics.topics[("ckpt-chunks", 0)][0] = None   # compacted away: the next record read is after it
    with pytest.raises(CheckpointError, match="is gone.*incomplete") as refused:
        store(KEY).load("events", 0)
    assert not isinstance(refused.value, OSError)


# -- 2. forged chunk specs: refused, never a crash -------------------------------------------------


def manifest(chunks, partition=0, sequence=9) -> bytes:
    header = json.dumps({"format": "CKPT-3", "payload": 3, "group": "g", "topic": "events", "partition": partition,
                         "sequence": sequence, "next_offset": 0, "checkpoint_id": None, "size": f"{5:020d}",
                         "sha256": "0" * 64, "pickle": 5, "chunks": chunks}, sort_keys=True).encode()
    return fmt.encode_head(header, None)


GOOD = {"topic": "ckpt-chunks", "partition": 0, "offsets": [0], "key": "g/events-0/9"}
FORGED = {
    "negative offset": {**GOOD, "offsets": [-1]},
    "offset as text": {**GOOD, "offsets": ["x"]},
    "offset as bool": {**GOOD, "offsets": [True]},
    "offsets not a list": {**GOOD, "offsets": "0"},
    "an offset twice": {**GOOD, "offsets": [0, 0]},
    "no key": {k: v for k, v in GOOD.items() if k != "key"},
    "key not text": {**GOOD, "key": 7},
    "no topic": {k: v for k, v in GOOD.items() if k != "topic"},
    "topic not text": {**GOOD, "topic": ["ckpt-chunks"]},
    "partition null": {**GOOD, "partition": None},
    "partition negative": {**GOOD, "partition": -1},
    "partition as text": {**GOOD, "partition": "0"},
    "chunks not a dict": [GOOD],
}


@pytest.mark.parametrize("chunks", FORGED.values(), ids=FORGED.keys())
def test_a_forged_chunk_spec_is_refused_and_force_fresh_start_starts_over(topics, chunks):
    topics.append("ckpt-chunks", 0, b"g/events-0/9/0", b"hello")
    topics.append("ckpt", 0, b"g/events-0", manifest(chunks))
    with pytest.raises(CheckpointError, match="checkpoint g/events-0: manifest names"):
        store(None).load("events", 0)
    assert restorer(store(None), force=True).restore(TopicPartition("events", 0)).origin == "fresh"


def test_one_forged_manifest_does_not_hide_the_other_partitions_from_the_listing(topics):
    store(None).save(state(1, offset=10))
    topics.append("ckpt", 0, b"g/events-0", manifest(FORGED["no key"]))
    refused: dict = {}
    assert list(store(None).load_all(refused)) == [("events", 1)]
    assert refused == {("events", 0): "checkpoint g/events-0: manifest names no chunk key: refusing it"}


def test_a_junk_manifest_read_while_the_partition_is_owned_does_not_fail_its_saves(topics):
    owner = store(None)
    owned = state(0, offset=10)
    owner.save(owned)
    store(None).save(state(1, offset=10))
    theirs = next(r.key for r in topics.topics[("ckpt-chunks", 0)] if r.key.startswith(b"g/events-1/"))
    junk = [manifest({**GOOD, "offsets": [1], "key": theirs.decode().rsplit("/", 1)[0]}),   # partition 1's chunks
            manifest(FORGED["no key"]), manifest(FORGED["negative offset"])]
    for value in junk:
        topics.append("ckpt", 0, b"g/events-0", value)
        owner.load("events", 3)   # another partition assigned: its catch-up reads the junk
        owned.next_offset += 5
        owned.events_since_checkpoint = 5
        sequence = owned.sequence
        owner.save(owned)   # its manifest was acknowledged: nothing after that fails it
        assert owned.sequence == sequence + 1
    owned.next_offset += 5
    owned.events_since_checkpoint = 5
    owner.save(owned)   # the replaced checkpoint is its own again: its chunks are tombstoned
    tombstoned = {r.key for r in topics.topics[("ckpt-chunks", 0)] if r.value is None}
    assert tombstoned and all(key.startswith(b"g/events-0/") for key in tombstoned)
    assert store(None).load("events", 1).next_offset == 10
    assert store(None).load("events", 0).next_offset == owned.next_offset


def test_tombstones_that_cannot_be_sent_do_not_fail_the_saved_checkpoint(topics, caplog):
    owner = store(KEY)
    owned = state(0, offset=10)
    owner.save(owned)
    producer = owner._current_producer()
    send = producer.send

    def no_tombstones(topic, key=None, value=None, partition=0):
        if value is None:
            raise RuntimeError("the producer is closed")
        return send(topic, key, value, partition)

    producer.send = no_tombstones
    owned.next_offset, owned.events_since_checkpoint = 20, 10
    with caplog.at_level(logging.WARNING, logger=kafka_store.__name__):
        owner.save(owned)
    assert owned.sequence == 2 and owner.housekeeping_failures == 1
    assert "not tombstoned" in caplog.text
    assert store(KEY).load("events", 0).next_offset == 20


# -- 3. manifest-topic keys: never kept unless this group's, never written raw into a log line -------


@pytest.mark.parametrize("signing_key", [KEY, None], ids=["signed", "unsigned"])
def test_junk_keys_of_a_megabyte_are_not_kept(topics, signing_key):
    for i in range(60):
        value = b"y" * (1 << 20) if signing_key is None else b"junk"
        topics.append("ckpt", 0, b"other/%d/" % i + b"x" * (1 << 20), value)       # another group's, or no group's
    for i in range(60):
        topics.append("ckpt", 0, b"g/events-%d" % i + b"x" * (1 << 20), b"junk")   # this group's prefix, too long
    topics.append("ckpt", 0, b"g/sub/events-0", b"junk")   # group "g/sub"'s, not "g"'s
    reader = store(signing_key)
    reader._catch_up()
    held = sum(map(len, reader._had_value)) + sum(len(k) + len(v or b"") for k, v in reader._latest.items()) \
        + sum(len(k) + len(v) for k, v in reader._refused.items())
    assert held < 4096 and reader.skipped_keys == 121
    assert reader.load_all() == {}


def test_a_refused_key_of_this_group_is_still_listed_as_unreadable(topics):
    topics.append("ckpt", 0, b"g/events-5", b"junk")
    topics.append("ckpt", 0, b"other/events-6", b"junk")
    refused: dict = {}
    assert store(KEY).load_all(refused) == {}
    assert list(refused) == [("events", 5)] and "are not ours" in refused[("events", 5)]


def test_a_key_with_a_newline_makes_one_log_line_and_a_one_line_reason(topics):
    forged = b"g/events-0\n2026-12-08 00:00:00,000 CRITICAL stream.worker: forged line"
    topics.append("ckpt", 0, forged, b"junk")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(kafka_store.__name__)
    logger.addHandler(handler)
    try:
        reader = store(KEY)
        reader._catch_up()
    finally:
        logger.removeHandler(handler)
    assert len(out.getvalue().splitlines()) == 1 and "CRITICAL stream.worker: forged line" in out.getvalue()
    [reason] = reader._refused.values()
    assert "\n" not in reason and reason.isprintable()


def test_a_header_topic_with_a_newline_is_refused_in_one_line():
    with pytest.raises(CheckpointError) as refused:
        bind({"topic": "events\n2026-12-08 INFO stream.worker: all partitions restored", "partition": 0},
             "events", 0, "g", "checkpoint events-0")
    assert "\n" not in str(refused.value) and "holds the state of events\\n2026-12-08" in str(refused.value)
    with pytest.raises(CheckpointError, match="holds the state of events-3, not of events-2"):
        bind({"topic": "events", "partition": 3}, "events", 2, "g", "checkpoint events-2")


# -- 4. two writers of one sequence do not share chunk keys -----------------------------------------


def test_a_former_owner_writing_the_same_sequence_does_not_break_the_new_owner_s_checkpoint(topics, monkeypatch):
    a = store(KEY)
    a.save(state(offset=100))
    zombie, b = a.load("events", 0), store(KEY)
    owner = b.load("events", 0)
    zombie.next_offset, zombie.events_since_checkpoint = 150, 50
    owner.next_offset, owner.events_since_checkpoint = 180, 80
    b_producer = b._current_producer()
    send = b_producer.send

    def zombie_first(topic, key=None, value=None, partition=0):   # the zombie's whole save lands in between
        if topic == "ckpt" and value is not None and not getattr(zombie_first, "done", False):
            zombie_first.done = True
            a.save(zombie)
        return send(topic, key, value, partition)

    b_producer.send = zombie_first
    b.save(owner)
    assert zombie.sequence == owner.sequence == 2
    topics.compact("ckpt-chunks")
    assert store(KEY).load("events", 0).next_offset == 180


def test_a_checkpoint_written_before_the_nonce_loads_and_its_chunks_are_tombstoned(topics, monkeypatch):
    monkeypatch.setattr(kafka_store, "chunk_prefix", lambda key, sequence: f"{key}/{sequence}")   # the old keys
    old = state(offset=100)
    store(KEY).save(old)
    monkeypatch.undo()
    monkeypatch.setattr(kafka_store, "KafkaConsumer", lambda **kw: Consumer(topics))
    monkeypatch.setattr(kafka_store, "KafkaProducer", lambda **kw: Producer(topics))
    monkeypatch.setattr(kafka_store, "create_topics", lambda *a, **k: None)
    monkeypatch.setattr(kafka_store, "read_records_in_one_pass", lambda consumer: None)
    owner = store(KEY)
    loaded = owner.load("events", 0)
    assert loaded.next_offset == 100
    loaded.next_offset, loaded.events_since_checkpoint = 120, 20
    owner.save(loaded)
    chunks = topics.topics[("ckpt-chunks", 0)]
    assert [r.key for r in chunks if r.value is None] == [b"g/events-0/1/0"]
    assert chunks[-2].key.startswith(b"g/events-0/2-") and chunks[-2].key.endswith(b"/0")
    topics.compact("ckpt-chunks")
    assert store(KEY).load("events", 0).next_offset == 120
