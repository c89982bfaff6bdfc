"""kafka-python's records read in one pass (stream/record_reader.py): the same records, state and errors
as kafka-python's own reader, over generated batches of every shape and over corrupted bytes."""

import collections
import random
import struct
import zlib

import kafka.codec

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBase, DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBase, LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c, encode_varint
from kafka.structs import TopicPartition

from stream.record_reader import (CODECS, FastPartitionRecords, UnreadableBatch, missing_codecs,
                                  read_records_in_one_pass)

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
    """Everything a fetcher would hand out from `data`: records, errors (and what a take after one gives),
    and the reader's state after."""
    partition = reader_class(fetch_offset, TP, MemoryRecords(bytes(data)), check_crcs=check_crcs,
                             isolation_level=isolation, aborted_transactions=list(aborted))
    records, errors, again = [], [], False
    for _ in range(1_000):
        if not partition:   # the fetcher takes from a partition's records until they are drained
            break
        try:
            taken = partition.take(take)
        except Exception as exc:   # noqa: BLE001 - the error itself is compared
            if errors and exc is errors[-1]:   # raised again (ours): the reader stays at its error
                again = True
                break
            errors.append(exc)
            continue   # and the fetcher may take again: what it gets then is compared too
        if not taken:
            break
        records.extend(taken)
    state = (partition.next_fetch_offset, partition.records_read, partition.bytes_read, partition.leader_epoch,
             sorted(partition.aborted_producer_ids), bool(partition))
    return records, errors, state, again


def described(error: Exception) -> tuple:
    return (type(error), str(error), type(error.__cause__), type(error.__context__), error.__suppress_context__)


def same_error(fast: Exception, stock: Exception) -> bool:
    """The same error, or (the one difference, stream/record_reader.py) kafka-python's error that is not a
    CorruptRecordError, raised as the cause of ours, an `UnreadableBatch` (the worker skips such a batch)."""
    if isinstance(fast, UnreadableBatch) and not isinstance(stock, CorruptRecordError):
        return (type(fast.__cause__), str(fast.__cause__)) == (type(stock), str(stock))
    return described(fast) == described(stock)


def same_as_kafka_python(data, **options):
    stock = read_all(Fetcher.PartitionRecords, data, **options)
    fast = read_all(FastPartitionRecords, data, **options)
    assert fast[0] == stock[0]
    assert [tuple(map(type, r)) for r in fast[0]] == [tuple(map(type, r)) for r in stock[0]]   # bytes, not bytearray
    assert fast[2] == stock[2]
    assert len(fast[1]) == len(stock[1]) and all(map(same_error, fast[1], stock[1])), (fast[1], stock[1])
    # the one other difference: kafka-python's reader hands out nothing after its error (and its fetcher asks
    # again without end); ours raises the error again
    assert (fast[3], stock[3]) == (bool(fast[1]), False)
    return stock[0], stock[1][0] if stock[1] else None, stock[2]


keys = st.one_of(st.none(), st.binary(max_size=40))
values = st.one_of(st.none(), st.binary(max_size=300))
header_lists = st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=30))), max_size=3)
timestamps = st.integers(min_value=0, max_value=2**42)
record_lists = st.lists(st.tuples(timestamps, keys, values, header_lists), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.tuples(record_lists, st.booleans(), st.sampled_from(sorted(CODECS)), st.booleans()),
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


def test_every_codec_a_producer_may_choose_has_its_library_here():
    """gzip is Python's own; the others are shopstream's dependencies (pyproject.toml): without them
    kafka-python cannot read a batch a producer compressed with them."""
    assert kafka.codec.has_gzip() and kafka.codec.has_snappy() and kafka.codec.has_lz4() and kafka.codec.has_zstd()
    assert missing_codecs() == []


def relabelled(batch: bytearray, codec: int) -> bytearray:
    """`batch` (uncompressed) claiming `codec`, under a valid CRC: bytes the codec refuses."""
    attributes = struct.unpack_from(">h", batch, DefaultRecordBase.ATTRIBUTES_OFFSET)[0]
    struct.pack_into(">h", batch, DefaultRecordBase.ATTRIBUTES_OFFSET, (attributes & ~7) | codec)
    return with_crc(batch)


@pytest.mark.parametrize("codec", [1, 2, 3, 4, 5, 7])
def test_a_batch_that_cannot_be_decompressed_is_unreadable_with_its_codec_named(codec):
    """kafka-python lets the codec's own error through (zlib's, lz4's, ... or UnsupportedCodecError), which
    the worker would die of; ours is a CorruptRecordError naming the batch and the codec, and the cause."""
    good = v2_batch(0, [(1, b"k", b"before", ())] * 3)
    bad = relabelled(v2_batch(3, [(2, b"k", b"x" * 50, ())] * 4), codec)
    stock = read_all(Fetcher.PartitionRecords, good + bad)
    fast = read_all(FastPartitionRecords, good + bad)
    assert fast[0] == stock[0] and [r.value for r in fast[0]] == [b"before"] * 3   # what precedes it is read
    [stock_error], [error] = stock[1][:1], fast[1][:1]
    assert not isinstance(stock_error, CorruptRecordError)
    assert isinstance(error, UnreadableBatch) and isinstance(error, CorruptRecordError)
    assert type(error.__cause__) is type(stock_error) and str(error.__cause__) == str(stock_error)
    name = CODECS.get(codec, f"unknown codec {codec}")
    why = str(stock_error) if codec > 4 else f"{type(stock_error).__name__}: {stock_error}"   # a KafkaError: named
    assert error.args[0] == f"record batch for partition {TP} at offset 3 cannot be decompressed ({name}): {why}"


@pytest.mark.parametrize("magic", [0, 1])
def test_a_v0_v1_message_set_that_cannot_be_decompressed_is_unreadable_too(magic):
    """kafka-python's v0/v1 reader decompresses a wrapper message as it is iterated and lets the codec's error
    through as well."""
    inner = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
    for offset in range(3):
        inner.append(offset, timestamp=1_000 if magic else None, key=b"k", value=b"v" * 40)
    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
    builder._buffer = bytearray(builder.size_in_bytes(0, timestamp=0, key=None, value=bytes(inner.build())))
    builder._encode_msg(start_pos=0, offset=2, timestamp=0, key=None, value=bytes(inner.build()),
                        attributes=3)   # uncompressed messages in a wrapper that says lz4
    wrapper = builder._buffer
    struct.pack_into(">I", wrapper, LegacyRecordBase.CRC_OFFSET,
                     zlib.crc32(memoryview(wrapper)[LegacyRecordBase.MAGIC_OFFSET:]) & 0xffffffff)
    stock = read_all(Fetcher.PartitionRecords, wrapper)
    fast = read_all(FastPartitionRecords, wrapper)
    assert fast[0] == stock[0] == [] and len(fast[1]) == len(stock[1]) >= 1
    [error, *_], [stock_error, *_] = fast[1], stock[1]
    assert isinstance(error, UnreadableBatch) and not isinstance(stock_error, CorruptRecordError)
    assert error.args[0] == (f"message set (v{magic}) for partition {TP} at offset 2 cannot be read (lz4): "
                             f"{type(stock_error).__name__}: {stock_error}")


def test_running_out_of_memory_is_not_a_batch_to_skip(monkeypatch):
    """A MemoryError while decompressing says nothing about the batch: it is raised as it is."""
    import kafka.record.default_records as default_records

    def exhausted(data):
        raise MemoryError()

    data = v2_batch(0, [(1, b"k", b"v" * 100, ())] * 3, compression=3)
    monkeypatch.setattr(default_records, "lz4_decode", exhausted)
    _, [error, *_], _, _ = read_all(FastPartitionRecords, data)
    assert type(error) is MemoryError


@pytest.mark.parametrize("codec", [1, 4])
def test_a_batch_that_decompresses_past_the_limit_is_unreadable_without_being_held(codec, monkeypatch):
    """gzip and zstd are read at most MAX_DECOMPRESSED_BYTES + 1 far (zstd keeps 300 MiB of zeros in 13.5 kB)."""
    import stream.record_reader as record_reader

    monkeypatch.setattr(record_reader, "MAX_DECOMPRESSED_BYTES", 50_000)
    fits = v2_batch(0, [(1, b"k", b"\0" * 9_000, ())] * 5, compression=codec)      # 45 kB and some
    bomb = v2_batch(5, [(1, b"k", b"\0" * 30_000, ())] * 2, compression=codec)     # 60 kB
    assert len(bomb) < 1_000   # what the broker stores
    records, [error, *_], _, again = read_all(FastPartitionRecords, fits + bomb)
    assert [len(r.value) for r in records] == [9_000] * 5 and again
    assert isinstance(error, UnreadableBatch) and error.args[0] == (
        f"record batch for partition {TP} at offset 5 decompresses to more than 50,000 bytes ({CODECS[codec]})")


def test_a_codec_without_its_library_is_told_at_start_and_named_at_its_batch(monkeypatch):
    data = v2_batch(0, [(1, b"k", b"v" * 100, ())] * 5, compression=3)
    monkeypatch.setattr(kafka.codec, "has_lz4", lambda: False)   # as installed without shopstream's dependencies
    _, [error, *_], _, again = read_all(FastPartitionRecords, data)
    assert again   # every take after it raises it again
    assert str(error).endswith("cannot be decompressed (lz4): UnsupportedCodecError: Libraries for lz4 compression "
                               "codec not found")
    assert missing_codecs() == ["lz4"]   # the worker's consumer warns of it when it starts (stream/clients.py)


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


def test_long_batches_and_large_records_take_the_longer_varints_as_kafka_python_does():
    # offset and timestamp deltas past 63 (two bytes), records past 8 KiB (three-byte lengths),
    # a key past 8 KiB (a three-byte key size): the paths past the inline ones
    small = [(1_000 + i * 997, b"k%d" % i, b"v" * (i % 90), [("h", b"x" * 70)] if i % 7 == 0 else ())
             for i in range(300)]
    large = [(5, b"K" * 9_000, b"V" * 70_000, [("big", b"H" * 9_000)]), (6, None, b"v" * 20_000, ())]
    data = v2_batch(0, small) + v2_batch(300, large, append_time=True) + v2_batch(302, small, compression=1)
    records, error, _ = same_as_kafka_python(data, take=100)
    assert error is None and len(records) == 602 and records[300].serialized_key_size == 9_000


def raw_v2_batch(records: bytes, count: int, *, base_offset=0, attributes=0, producer_id=-1) -> bytearray:
    """A v2 batch around `records` as they are, whatever they say: hostile bytes with a valid header and CRC."""
    body = struct.pack(">ibIhiqqqhii", 0, 2, 0, attributes, max(count - 1, 0), 1_000, 2_000, producer_id, 0, 0,
                       count) + records
    return with_crc(bytearray(struct.pack(">qi", base_offset, len(body)) + body))


def varint(value: int, padding: int = 0) -> bytes:
    """Kafka's zigzag varint of `value`, with `padding` redundant continuation bytes (still valid to a reader)."""
    out = bytearray()
    encode_varint(value, out.append)
    if padding:
        out[-1] |= 0x80
        out += b"\x80" * (padding - 1) + b"\x00"
    return bytes(out)


def test_a_header_value_cut_short_counts_the_bytes_there_as_kafka_python_does():
    record = varint(0) + varint(0) + varint(0) + varint(1) + b"k" + varint(1) + b"v" + varint(1) \
        + varint(1) + b"h" + varint(10) + b"abc"   # the header value says 10 bytes, 3 are there
    data = raw_v2_batch(varint(len(record) + 7) + record, 1)
    records, error, _ = same_as_kafka_python(data)
    assert records[0].serialized_header_size == 1 + 3 and "unconsumed bytes" in str(error)


def test_an_empty_control_batch_raises_kafka_pythons_runtime_error():
    data = raw_v2_batch(b"", 0, attributes=DefaultRecordBase.CONTROL_MASK | DefaultRecordBase.TRANSACTIONAL_MASK,
                        producer_id=9)
    _, error, _ = same_as_kafka_python(data)
    assert isinstance(error, RuntimeError) and "StopIteration" in str(error)


def test_hostile_bytes_read_as_kafka_python_reads_them():
    """Records written by hand, as an attacker would: padded and over-long varints, negative and huge sizes
    and counts, lengths that lie, headers with keys that are not UTF-8, cut and spliced batches."""
    rng = random.Random(5020)

    def number():
        return rng.choice([rng.randrange(-3, 20), rng.randrange(-5_000, 5_000), rng.randrange(-2**40, 2**40),
                           2**63 - 1, -2**63, 2**31, 64, -65, 8_191, 8_192])

    def field(value):
        return varint(value, rng.choice([0] * 6 + [1, 3, 9]))

    def sized(size, byte=None):
        return field(size) + (bytes(byte if byte is not None else rng.randrange(256) for _ in range(max(size, 0))))

    def record():
        body = field(rng.choice([0, 0, number()])) + field(number()) + field(rng.choice([rng.randrange(10), number()]))
        body += sized(rng.choice([-1, 0, rng.randrange(70)])) + sized(rng.choice([-1, 0, rng.randrange(300)]))
        count = rng.choice([0, 0, 1, 2, -1])
        body += field(count)
        for _ in range(max(count, 0)):
            body += sized(rng.choice([0, 1, 5, -1]), byte=rng.choice([ord("a"), 0xFF])) + sized(rng.choice([-1, 0, 9]))
        return field(len(body) + rng.choice([0] * 20 + [-1, 1, rng.randrange(-5, 5)])) + body

    outcomes = collections.Counter()
    for _case in range(1_500):
        data = bytearray()
        for _ in range(rng.randrange(1, 4)):
            records = b"".join(record() for _ in range(rng.randrange(6)))
            count = len(records) and rng.choice([1, 2, 3, 5, 2**31 - 1, -1, 0])
            data += raw_v2_batch(records, count, base_offset=rng.randrange(30),
                                 attributes=rng.choice([0, 0, 8, 16, 32]), producer_id=rng.choice([-1, 5]))
        if rng.random() < 0.15:   # cut anywhere, or a byte taken out
            cut = rng.randrange(len(data))
            data = data[:cut] if rng.random() < 0.5 else data[:cut] + data[cut + 1:]
        _, error, _ = same_as_kafka_python(data, fetch_offset=rng.randrange(20), check_crcs=rng.random() < 0.5,
                                           take=rng.choice([1, 2, 7, 100]),
                                           aborted=[Aborted(5, rng.randrange(20))] if rng.random() < 0.5 else [])
        outcomes[type(error).__name__] += 1
    assert outcomes["CorruptRecordError"] > 300 and outcomes["NoneType"] > 100, outcomes


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
