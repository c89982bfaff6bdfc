"""kafka-python 3.0.12's records, read from a fetched batch in one pass.

kafka-python turns every record of a fetch into two objects: its batch reader decodes the
record into a `DefaultRecord` (seven varint calls, two copies of key and value), then the
fetcher reads that object's properties back into the `ConsumerRecord` the consumer returns.
That is about 3.5 microseconds a record here, most of the worker's poll (BENCHMARKS.md,
stop 50; `benchmarks/record_reader.py` measures it). `FastPartitionRecords` reads each record of a
v2 batch straight into its `ConsumerRecord`: about 1.2 microseconds.

What it reads is kafka-python's: each batch's CRC, transactions aborted and control batches
(read committed), record structure and its errors (`CorruptRecordError` after the records before
the bad one, with kafka-python's messages), its offsets and fetch metrics. One difference: where
kafka-python lets an error of its own code through that is not a `CorruptRecordError` (a codec
whose library is missing, an unknown codec, bytes a codec refuses under a valid CRC, a v0/v1 message
set its reader fails on: `UnsupportedCodecError`, `zlib.error`, `struct.error`, ...), this reader
raises `UnreadableBatch`, a `CorruptRecordError` that names the partition, offset and codec, with
kafka-python's error as its cause: the worker skips an unreadable batch to its dead letters
(stream/corrupt.py), and died of those. So is a gzip or zstd batch that decompresses to more than
`MAX_DECOMPRESSED_BYTES` (decompressed here, with kafka-python's own calls, that far and no further:
a batch of kilobytes could hold gigabytes). A reader that raised raises again at every later take.
A consumer with deserializers goes through kafka-python's own code.
`tests/test_record_reader.py` holds the two readers to the same records (each field's type too),
state and errors, over generated batches of every shape and over hostile and corrupted bytes.

`read_records_in_one_pass` sets the class on one consumer's fetcher (an instance attribute, nothing
global) and says whether it could; another kafka-python leaves its fetcher as it is, since the
layout read here is 3.0.12's.
"""

from __future__ import annotations

import gzip
import io
import logging
from typing import Optional

import kafka
import kafka.codec
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError, KafkaError
from kafka.record.default_records import DefaultRecordBase
from kafka.record.util import decode_varint

log = logging.getLogger(__name__)

#: The kafka-python whose batch layout and fetcher this module reads.
KAFKA_PYTHON = "3.0.12"

_APPEND_TIME = DefaultRecordBase.TIMESTAMP_TYPE_MASK
#: A v2 batch's codec, by the low three bits of its attributes.
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
#: A v2 batch that decompresses to more than this is unreadable. zstd stored 300 MiB of zeros in 13.5 kB
#: (and gzip compresses about 1,000:1), and a whole batch is decompressed in memory: one record could
#: take a worker's memory, and a worker killed for it met the same batch after every restart. A real
#: batch is at most the producer's batch size (1 MiB at most by the broker's default limit) times its
#: compression ratio. lz4 (about 255:1 at most) and snappy (about 21:1) are bounded by their formats.
MAX_DECOMPRESSED_BYTES = 64 << 20


def _gzip_decode(data, limit: int) -> bytes:
    """kafka-python's `gzip_decode`, reading at most `limit` bytes."""
    with gzip.GzipFile(fileobj=io.BytesIO(data), mode="r") as gzipper:
        return gzipper.read(limit)


def _zstd_decode(data, limit: int) -> bytes:
    """kafka-python's `zstd_decode`, reading at most `limit` bytes."""
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bytes(data)), read_across_frames=True) as reader:
        return reader.read(limit)


#: The codecs decompressed here, up to a limit (`MAX_DECOMPRESSED_BYTES`), with the calls kafka-python makes.
_BOUNDED = {1: (_gzip_decode, "has_gzip"), 4: (_zstd_decode, "has_zstd")}


def missing_codecs() -> list[str]:
    """The codecs whose library kafka-python does not find here (shopstream depends on each).

    >>> missing_codecs()
    []
    """
    return [name for name in ("gzip", "snappy", "lz4", "zstd") if not getattr(kafka.codec, f"has_{name}")()]


class UnreadableBatch(CorruptRecordError):
    """A batch kafka-python's code fails on with an error that is not a `CorruptRecordError` (its codec's,
    or its v0/v1 reader's): the batch is unreadable, like a corrupt one."""


_new_tuple = tuple.__new__   # a ConsumerRecord without its namedtuple's Python-level __new__


class FastPartitionRecords(Fetcher.PartitionRecords):
    """kafka-python's `PartitionRecords`, whose v2 records are read in one pass (module docstring)."""

    _failed: Optional[Exception] = None

    def take(self, n=None):
        """kafka-python's `take`, but an error it raised is raised again by every later take. kafka-python's
        reader ends at its error, and its fetcher, handed no records by a partition not drained, asks it
        again without end: a consumer polled again without a seek spun at 100% CPU inside poll()."""
        if self._failed is not None:
            raise self._failed
        try:
            return super().take(n)
        except Exception as exc:
            self._failed = exc
            raise

    def _unpack_records(self, tp, records, key_deserializer, value_deserializer):
        if key_deserializer is not None or value_deserializer is not None:
            yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
            return
        try:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError("Record batch for partition %s at offset %s failed crc check" % (
                        self.topic_partition, batch.base_offset))
                if batch.magic != 2:
                    yield from self._read_legacy(tp, batch)
                elif self._keeps(batch):
                    yield from self._read(tp, batch)
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                # the offset after the batch, even if compaction removed its last records (kafka-python's reason)
                self.next_fetch_offset = last_batch.next_offset
            self.drain()
        except StopIteration:   # a generator would swallow it: kafka-python raises this instead
            log.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset")  # noqa: B904 - as kafka-python raises it

    def _keeps(self, batch) -> bool:
        """kafka-python's rules for a v2 batch: False for an aborted transaction's or a control batch."""
        self.leader_epoch = batch.leader_epoch
        if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
            self._consume_aborted_transactions_up_to(batch.last_offset)
            producer_id = batch.producer_id
            if self._contains_abort_marker(batch):
                self.aborted_producer_ids.discard(producer_id)
            elif self._is_batch_aborted(batch):
                log.debug("Skipping aborted record batch from partition %s with producer_id %s and offsets %s to %s",
                          self.topic_partition, producer_id, batch.base_offset, batch.last_offset)
                self.next_fetch_offset = batch.next_offset
                return False
        if batch.is_control_batch:
            self.next_fetch_offset = batch.next_offset
            return False
        return True

    def _read(self, tp, batch):
        """The records of a v2 batch (`Record` in Kafka's protocol), as `ConsumerRecord`s."""
        codec = batch._header_data[5] & DefaultRecordBase.CODEC_MASK
        try:
            bounded = _BOUNDED.get(codec)
            if bounded is not None and getattr(kafka.codec, bounded[1])():
                records = bounded[0](memoryview(batch._buffer)[batch._pos:], MAX_DECOMPRESSED_BYTES + 1)
                if len(records) > MAX_DECOMPRESSED_BYTES:
                    raise UnreadableBatch(
                        f"record batch for partition {self.topic_partition} at offset {batch.base_offset} "
                        f"decompresses to more than {MAX_DECOMPRESSED_BYTES:,} bytes ({CODECS[codec]})")
                # bytes, not kafka-python's bytearray: the copy below is then the same object
                batch._buffer, batch._pos, batch._decompressed = records, 0, True
            iter(batch)   # decompresses the records, if they are and were not above
        except (CorruptRecordError, MemoryError):   # out of memory: the process's state, not the batch's
            raise
        except Exception as exc:   # kafka-python lets the codec's own error through: name the batch instead
            why = str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"   # (its str names it)
            raise UnreadableBatch(
                f"record batch for partition {self.topic_partition} at offset {batch.base_offset} cannot be "
                f"decompressed ({CODECS.get(codec, f'unknown codec {codec}')}): {why}") from exc
        header = batch._header_data   # base offset [0], attributes [5], first [7] and max [8] timestamp, count [12]
        buffer = bytes(batch._buffer)   # one copy, so each key and value below is one slice
        pos = batch._pos
        base_offset = header[0]
        timestamp_type = 1 if header[5] & _APPEND_TIME else 0
        # log append time: every record has the batch's max timestamp; create time: the first plus its delta
        first_timestamp = header[8] if timestamp_type else header[7]
        topic, partition, epoch = tp.topic, tp.partition, self.leader_epoch
        for _ in range(header[12]):
            # Kafka's varints are zigzag-encoded, 7 bits a byte. The one- and two-byte ones (a record's length,
            # deltas and sizes under 8 KiB) are decoded inline; a longer one by kafka-python's decode_varint.
            # Written out per field on purpose: a call per varint is most of what kafka-python's reader costs.
            try:
                b = buffer[pos]
                if b < 128:
                    length = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buffer[pos + 1] < 128:
                    b = (b & 127) | buffer[pos + 1] << 7
                    length = (b >> 1) ^ -(b & 1)
                    pos += 2
                else:
                    length, pos = decode_varint(buffer, pos)
                start = pos
                if buffer[pos] < 128:   # the record's attributes: unused, as in kafka-python
                    pos += 1
                else:
                    _, pos = decode_varint(buffer, pos)
                b = buffer[pos]
                if b < 128:
                    timestamp_delta = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buffer[pos + 1] < 128:
                    b = (b & 127) | buffer[pos + 1] << 7
                    timestamp_delta = (b >> 1) ^ -(b & 1)
                    pos += 2
                else:
                    timestamp_delta, pos = decode_varint(buffer, pos)
                b = buffer[pos]
                if b < 128:
                    offset_delta = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buffer[pos + 1] < 128:
                    b = (b & 127) | buffer[pos + 1] << 7
                    offset_delta = (b >> 1) ^ -(b & 1)
                    pos += 2
                else:
                    offset_delta, pos = decode_varint(buffer, pos)
                b = buffer[pos]
                if b < 128:
                    key_size = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    key_size, pos = decode_varint(buffer, pos)
                if key_size >= 0:
                    key = buffer[pos:pos + key_size]
                    pos += key_size
                else:
                    key = None
                b = buffer[pos]
                if b < 128:
                    value_size = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buffer[pos + 1] < 128:
                    b = (b & 127) | buffer[pos + 1] << 7
                    value_size = (b >> 1) ^ -(b & 1)
                    pos += 2
                else:
                    value_size, pos = decode_varint(buffer, pos)
                if value_size >= 0:
                    value = buffer[pos:pos + value_size]
                    pos += value_size
                else:
                    value = None
                if buffer[pos] == 0:   # no headers, the usual case
                    header_count = 0
                    pos += 1
                else:
                    header_count, pos = decode_varint(buffer, pos)
                headers = []
                headers_size = -1
                if header_count:
                    if header_count < 0:
                        raise CorruptRecordError(f"Found invalid number of record headers {header_count}")
                    headers_size = 0
                    while header_count:
                        key_length, pos = decode_varint(buffer, pos)
                        if key_length < 0:
                            raise CorruptRecordError(f"Invalid negative header key size {key_length}")
                        header_key = buffer[pos:pos + key_length].decode("utf-8")
                        pos += key_length
                        value_length, pos = decode_varint(buffer, pos)
                        if value_length >= 0:
                            header_value = buffer[pos:pos + value_length]
                            pos += value_length
                            headers_size += len(header_value)   # what is there: a cut value is shorter
                        else:
                            header_value = None
                        headers_size += len(header_key.encode("utf-8"))
                        headers.append((header_key, header_value))
                        header_count -= 1
                if pos - start != length:
                    raise CorruptRecordError("Invalid record size: expected to read {} bytes in record "
                                             "payload, but instead read {}".format(length, pos - start))
            except (ValueError, IndexError) as err:   # as kafka-python's batch reader wraps them
                if isinstance(err, IndexError):   # in kafka-python's words: it reads a bytearray
                    err = IndexError("bytearray index out of range")
                raise CorruptRecordError(f"Found invalid record structure: {err!r}")  # noqa: B904 - chained as kafka-python's
            offset = base_offset + offset_delta
            timestamp = first_timestamp if timestamp_type else first_timestamp + timestamp_delta
            self.records_read += 1
            self.bytes_read += length
            self.next_fetch_offset = offset + 1
            yield _new_tuple(ConsumerRecord, (
                topic, partition, epoch, offset, timestamp, timestamp_type, key, value, headers, None,
                -1 if key is None else key_size, -1 if value is None else value_size, headers_size))
        if pos != len(buffer):
            raise CorruptRecordError(f"{len(buffer) - pos} unconsumed bytes after all records consumed")

    def _read_legacy(self, tp, batch):
        """A v0/v1 message set's records, as kafka-python's fetcher makes them."""
        records = iter(batch)
        while True:
            try:
                record = next(records)   # a compressed message set is decompressed here
            except StopIteration:
                return
            except (CorruptRecordError, MemoryError):
                raise
            except Exception as exc:   # as in `_read`: the codec's own error, let through by kafka-python
                why = str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"
                codec = batch.compression_type
                named = f" ({CODECS.get(codec, 'unknown codec')})" if codec else ""
                raise UnreadableBatch(
                    f"message set (v{batch.magic}) for partition {self.topic_partition} at offset {batch.base_offset} "
                    f"cannot be read{named}: {why}") from exc
            if self.check_crcs and not record.validate_crc():
                raise CorruptRecordError("Record for partition %s at offset %s failed crc check" % (
                    self.topic_partition, record.offset))
            key, value, headers = record.key, record.value, record.headers
            self.records_read += 1
            self.bytes_read += record.size_in_bytes
            self.next_fetch_offset = record.offset + 1
            yield ConsumerRecord(
                tp.topic, tp.partition, self.leader_epoch, record.offset, record.timestamp, record.timestamp_type,
                key, value, headers, record.checksum, -1 if key is None else len(key),
                -1 if value is None else len(value),
                sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers) if headers else -1)


def read_records_in_one_pass(consumer) -> bool:
    """Read `consumer`'s fetched records with `FastPartitionRecords`. Returns whether it applied."""
    fetcher = getattr(consumer, "_fetcher", None)
    if kafka.__version__ != KAFKA_PYTHON or not isinstance(fetcher, Fetcher):
        log.debug("records read by kafka-python's own reader: %s, kafka-python %s",
                  type(consumer).__name__, kafka.__version__)
        return False
    fetcher.PartitionRecords = FastPartitionRecords
    return True
