"""kafka-python's records read in one pass (stream/record_reader.py): the same records, state and errors
as kafka-python's own reader, over generated batches of every shape and over corrupted bytes."""

import collections
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBase, DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from stream.record_reader import FastPartitionRecords, read_records_in_one_pass

TP = TopicPartition("events", 3)
Aborted = collections.namedtuple("Aborted", "producer_id first_offset")


def v2_batch(base_offset, records, *, transactional=False, producer_id=-1, compression=0,
             append_time=False, control=False, leader_epoch=0):
    """One v2 batch: `records` are (timestamp, key, value, headers); offsets from `base_offset` up."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=int(transactional),
                                        producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
                                        base_sequence=0 if producer_id >= 0 else -1, batch_size=1 << 30)
    for delta, (timestamp, key, value, headers) in enumerate(records):
        assert builder.append(delta, timestamp=timestamp, key=key, value=value, headers=list(headers)) is not None
    buffer = builder.build()
    buffer[0:8] = struct.pack(">q", base_offset)
    buffer[12:16] = struct.pack(">i", leader_epoch)
    attributes = struct.unpack_from(">h", buffer, DefaultRecordBase.ATTRIBUTES_OFFSET)[0]
    attributes |= (DefaultRecordBase.TIMESTAMP_TYPE_MASK if append_time else 0)
    attributes |= (DefaultRecordBase.CONTROL_MASK if control else 0)
    struct.pack_into(">h", buffer, DefaultRecordBase.ATTRIBUTES_OFFSET, attributes)
    return with_crc(buffer)


def with_crc(buffer: bytearray) -> bytearray:
    """`buffer` with its batch CRC computed again, as a broker would have written it."""
    crc = calc_crc32c(memoryview(buffer)[DefaultRecordBase.ATTRIBUTES_OFFSET:])
    struct.pack_into(">I", buffer, DefaultRecordBase.CRC_OFFSET, crc)
    return buffer


def control_batch(base_offset, producer_id, abort: bool):
    marker = struct.pack(">hh", 0, 0 if abort else 1)
    return v2_batch(base_offset, [(1_000, marker, b"\x00\x00\x00\x00\x00\x00", ())], transactional=True,
                    producer_id=producer_id, control=True)


def read_all(reader_class, data: bytes, *, fetch_offset=0, check_crcs=True, aborted=(),
             isolation=IsolationLevel.READ_COMMITTED, take=7):
    """Everything a fetcher would hand out from `data`: records, the error, and the reader's state after."""
    partition = reader_class(fetch_offset, TP, MemoryRecords(bytes(data)), check_crcs=check_crcs,
                             isolation_level=isolation, aborted_transactions=list(aborted))
    records, error = [], None
    while partition:   # the fetcher takes from a partition's records until they are drained
        try:
            taken = partition.take(take)
        except Exception as exc:   # noqa: BLE001 - the error itself is compared
            error = exc
            break
        if not taken:
            break
        records.extend(taken)
    state = (partition.next_fetch_offset, partition.records_read, partition.bytes_read, partition.leader_epoch,
             sorted(partition.aborted_producer_ids), bool(partition))
    return records, error, state


def same_as_kafka_python(data, **options):
    stock = read_all(Fetcher.PartitionRecords, data, **options)
    fast = read_all(FastPartitionRecords, data, **options)
    assert fast[0] == stock[0]
    assert [type(r) for r in fast[0]] == [type(r) for r in stock[0]]
    assert fast[2] == stock[2]
    assert type(fast[1]) is type(stock[1])
    if stock[1] is not None:
        # the same message; an index past the end reads "bytearray index out of range" in kafka-python's
        assert str(fast[1]).replace("IndexError('index", "IndexError('bytearray index") == str(stock[1])
    return stock


keys = st.one_of(st.none(), st.binary(max_size=40))
values = st.one_of(st.none(), st.binary(max_size=300))
header_lists = st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=30))), max_size=3)
timestamps = st.integers(min_value=0, max_value=2**42)
record_lists = st.lists(st.tuples(timestamps, keys, values, header_lists), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.tuples(record_lists, st.booleans(), st.sampled_from([0, 1]), st.booleans()),
                        min_size=1, max_size=4),
       fetch_offset=st.integers(min_value=0, max_value=60))
def test_generated_batches_read_as_kafka_python_reads_them(batches, fetch_offset):
    data, offset = bytearray(), 0
    for records, append_time, compression, transactional in batches:
        data += v2_batch(offset, records, append_time=append_time, compression=compression,
                         transactional=transactional, producer_id=5 if transactional else -1, leader_epoch=offset % 3)
        offset += len(records) + 2   # a gap, as compaction leaves
    records, error, _ = same_as_kafka_python(data, fetch_offset=fetch_offset)
    assert error is None and all(r.offset >= fetch_offset for r in records)


def test_a_record_reads_into_the_consumer_record_kafka_python_makes():
    headers = [("trace", b"t-1"), ("empty", None), ("ключ", b"")]
    data = v2_batch(40, [(1_700_000_000_123, b"session-1", b'{"type":"click"}', headers),
                         (1_700_000_000_200, None, None, ())], leader_epoch=2)
    records, _, state = same_as_kafka_python(data)
    first, second = records
    assert (first.topic, first.partition, first.leader_epoch, first.offset, first.timestamp) == \
           ("events", 3, 2, 40, 1_700_000_000_123)
    assert (first.key, first.value, first.headers) == (b"session-1", b'{"type":"click"}', headers)
    assert (first.serialized_key_size, first.serialized_value_size, first.serialized_header_size) == \
           (9, 16, 5 + 3 + 5 + len("ключ".encode()))
    assert (second.key, second.value, second.headers, second.serialized_header_size) == (None, None, [], -1)
    assert state[0] == 42   # the next fetch starts after the batch


def test_transactions_aborted_and_control_batches_are_skipped_as_kafka_python_skips_them():
    data = (v2_batch(0, [(1, b"k", b"committed", ())] * 3, transactional=True, producer_id=7)
            + control_batch(3, 7, abort=False)
            + v2_batch(4, [(2, b"k", b"aborted", ())] * 2, transactional=True, producer_id=8)
            + control_batch(6, 8, abort=True)
            + v2_batch(7, [(3, b"k", b"plain", ())] * 2))
    records, _, state = same_as_kafka_python(data, aborted=[Aborted(8, 4)])
    assert [r.value for r in records] == [b"committed"] * 3 + [b"plain"] * 2
    assert state[0] == 9
    uncommitted, _, _ = same_as_kafka_python(data, aborted=[Aborted(8, 4)], isolation=IsolationLevel.READ_UNCOMMITTED)
    assert [r.value for r in uncommitted].count(b"aborted") == 2


def test_older_message_formats_go_through_kafka_pythons_own_records():
    for magic in (0, 1):
        builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
        for offset in range(4):
            builder.append(offset, timestamp=1_000 + offset if magic else None, key=b"k%d" % offset, value=b"v")
        records, error, _ = same_as_kafka_python(bytes(builder.build()))
        assert error is None and [r.offset for r in records] == [0, 1, 2, 3]


def test_a_batch_failing_its_crc_raises_kafka_pythons_error():
    data = v2_batch(10, [(1, b"k", b"value", ())] * 3)
    data[-2] ^= 0xFF
    _, error, _ = same_as_kafka_python(data)
    assert isinstance(error, CorruptRecordError) and "failed crc check" in str(error)


def test_corrupted_bytes_give_the_same_records_and_the_same_error_at_the_same_record():
    rng = random.Random(50)
    records = [(1_000 + i, b"key-%d" % i, bytes(rng.randrange(256) for _ in range(rng.randrange(200))),
                [("h", b"x")] if i % 3 == 0 else []) for i in range(20)]
    clean = v2_batch(0, records[:10]) + v2_batch(10, records[10:])
    errors = collections.Counter()
    for _ in range(600):
        data = bytearray(clean)
        for _ in range(rng.choice([1, 1, 2, 5])):
            position = rng.randrange(61, len(data))   # past the first batch's header: the records themselves
            data[position] = rng.randrange(256)
        _, error, _ = same_as_kafka_python(data, check_crcs=False)   # past the CRC: the records' structure
        errors[type(error).__name__] += 1
    assert errors["CorruptRecordError"] >= 50, errors   # (97 with this seed: most bytes changed are values)


def test_a_consumer_with_a_deserializer_keeps_kafka_pythons_reader_path():
    data = v2_batch(0, [(1, b"k", b"v", ())])
    partition = FastPartitionRecords(0, TP, MemoryRecords(bytes(data)), value_deserializer=_Upper())
    assert [r.value for r in partition.take()] == [b"V"]


class _Upper:
    def deserialize(self, topic, headers, data):
        return data.upper()


def test_a_kafka_python_consumer_reads_in_one_pass_and_another_client_is_left_as_it_is():
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8))
    try:
        assert read_records_in_one_pass(consumer)
        assert consumer._fetcher.PartitionRecords is FastPartitionRecords
        assert Fetcher.PartitionRecords is not FastPartitionRecords   # one consumer's fetcher, nothing global
    finally:
        consumer.close()
    assert not read_records_in_one_pass(object())


@pytest.mark.parametrize("version", ["3.0.13", "2.2.15"])
def test_another_kafka_python_keeps_its_own_reader(monkeypatch, version):
    import kafka
    monkeypatch.setattr(kafka, "__version__", version)
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8))
    try:
        assert not read_records_in_one_pass(consumer)
        assert consumer._fetcher.PartitionRecords is Fetcher.PartitionRecords
    finally:
        consumer.close()


def test_the_reader_benchmark_reads_every_record_with_both_readers():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "record_reader.py"
    done = subprocess.run([sys.executable, str(script), "--records", "2500", "--repeat", "1", "--headers"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kafka-python's reader:" in done.stdout and "stream/record_reader:" in done.stdout
