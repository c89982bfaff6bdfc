"""Checkpoints kept in Kafka itself, so workers on different machines can take over
each other's partitions.

Two compacted topics. The manifest topic (`topic`, one partition) holds one small record
per checkpoint, keyed by "<consumer group>/<events topic>-<partition>" (two deployments
sharing the topic do not overwrite each other): the checkpoint's verified head (format
CKPT-3, see `format`), whose header lists where its payload is. The chunk topic
(`<topic>-chunks`) holds the payload, the pickle streamed in records of at most
`max_bytes`, keyed "<manifest key>/<sequence>-<nonce>/<index>" (`chunk_prefix`; before the nonce,
"<manifest key>/<sequence>/<index>": the manifest names the prefix): a checkpoint of any size fits.
A save sends the chunks, waits for them to be acknowledged (acks=all), then sends the
manifest with their offsets and waits for it: the manifest is the commit point, so a
crash mid-save leaves the previous checkpoint whole. The chunks of the checkpoint it
replaces are then tombstoned, and compaction removes them.

Reading: the store keeps, per key, only the last manifest (a few hundred bytes); every
read first catches up on the manifest topic from where it stopped to its current end.
A partition's payload is fetched by offset from the chunk topic only when that partition
is loaded: a worker reads the payloads of the partitions it owns and no other.

Anyone who can write to the topics can put records in them. Only this group's keys
("<group>/<name>", at most 1 KiB) are kept; the others are counted (`skipped_keys`) and
dropped. A record whose key is not UTF-8 is skipped with a warning. A manifest whose chunk
list is not one this store could have written is refused (CheckpointError); chunks the broker
returns nothing for are an OSError (`ChunksUnavailable`), as is any KafkaError of a load: the
checkpoint cannot be read now, and the worker holds the partition.

With a signing key, a manifest record that is not signed
with it for its very key (junk, a forgery, another partition's copied) is skipped with a
warning and never replaces the last verified one (a key with no verified record is refused
with the reason); a tombstone (null value) that replaced a manifest, or a manifest older (by
sequence) than one already read for the same key, is refused with a clear error instead of
silently restarting the partition; the payload is checked against the digest in the signed
header before it is unpickled. (Compaction still keeps only a key's last record: a skipped
one outlives the good one in the topic, and a restart then refuses the key.)

A batch of either topic that the client cannot read (a failed CRC, a codec, a header key
that is not UTF-8: stream/corrupt.py) is read as the worker reads its events
(`record_reader`). In the manifest topic it is passed over (every worker reads that topic:
before, the first load failed and the next one hung in poll for ever). Any key's newest
checkpoint may have been in it: a key with no readable manifest after it is loaded as the
topic now says (its last readable checkpoint, or none), and `doubt` names the offsets, for
the worker to hold that start against the group's committed offset (`restore.witness`). A
chunk that cannot be read refuses its checkpoint, naming it.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
from collections import deque
from typing import Any, Optional

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CorruptRecordError, KafkaError

from stream.corrupt import CorruptBatchSkipper
from stream.partition import Partition
from stream.record_reader import read_records_in_one_pass
from stream.topics import create_topics

from .background import BackgroundCheckpoints, PendingSave
from .format import (FROM_ENVIRONMENT, CheckpointError, ChunkReader, SignatureError, HeaderFields, Key, check_payload,
                     decode_head, dump_payload, encode_head, make_header, shown, signed_sequence, unpickle_state)
from .stores import CheckpointStore

DEFAULT_MAX_BYTES = 1024 * 1024     # the broker's default record limit: chunks fit any broker
DEFAULT_WINDOW = 8                  # chunks unacknowledged at once per write (8 MiB with 1 MiB chunks)
_RECORD_OVERHEAD = 4096             # key, headers and batch framing within max_bytes
KEY_LIMIT = 1024                    # longer manifest-topic keys are no checkpoint's: skipped, never kept...
_NAME_LIMIT = 249 + 1 + 10          # ...unless the group's name is long: "<topic>-<partition>" after "<group>/"
log = logging.getLogger(__name__)


class _ChunksGone(CheckpointError):
    """A chunk the manifest names is no longer in the chunk topic (a newer checkpoint's
    tombstones were compacted in between): a record after its offset came back instead."""


class ChunksUnavailable(OSError):
    """No record of the chunk topic came back for a chunk the manifest names (its partition's
    leader away, a slow broker): the checkpoint cannot be read now, which says nothing against it
    (`restore` holds the partition; `CheckpointUnreadable`)."""


def _chunk_spec(chunks) -> Optional[str]:
    """Why a manifest's `chunks` is not a chunk list this store could have written (None if it is)."""
    if not isinstance(chunks, dict):
        return "names no chunks"
    topic, partition, offsets, key = (chunks.get(name) for name in ("topic", "partition", "offsets", "key"))
    if not isinstance(topic, str) or not topic:
        return "names no chunk topic"
    if type(partition) is not int or partition < 0:
        return "names no chunk partition"
    if not isinstance(offsets, list) or not all(type(o) is int and o >= 0 for o in offsets):
        return "names chunk offsets that are not offsets"
    if len(set(offsets)) != len(offsets):
        return "names a chunk offset twice"
    if not isinstance(key, str):
        return "names no chunk key"
    return None


class _ChunkSender:
    """A file-like sink for the pickle: cuts it into chunk records and sends them, with at
    most `store.window` of them unacknowledged: during an outage an attempt fails after one
    window instead of queueing a whole copy of the state in the producer."""

    def __init__(self, store: "KafkaCheckpointStore", producer, prefix: str, timeout: float):
        self.store, self.producer, self.prefix, self.timeout = store, producer, prefix, timeout
        self.buffer = bytearray()
        self.sent = 0
        self.unacked: deque = deque()   # (future, size) in the order sent
        self.offsets: list[int] = []

    def write(self, data) -> int:
        view, size = memoryview(data), self.store.chunk_bytes
        while len(view):
            room = size - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            if len(self.buffer) >= size:
                self._send()
        return len(data)

    def _send(self) -> None:
        while len(self.unacked) >= self.store.window:
            self._wait_oldest()
        key = f"{self.prefix}/{self.sent}".encode()
        future = self.producer.send(self.store.chunk_topic, key=key, value=bytes(self.buffer),
                                    partition=self.store.chunk_partition)
        self.unacked.append((future, len(self.buffer)))
        self.store.unacked_bytes += len(self.buffer)
        self.sent += 1
        self.buffer = bytearray()

    def _wait_oldest(self) -> None:
        future, size = self.unacked[0]
        offset = future.get(timeout=self.timeout).offset   # raises (KafkaError) if not acknowledged
        self.unacked.popleft()
        self.store.unacked_bytes -= size
        self.offsets.append(offset)

    def finish(self) -> list[int]:
        """Send what is left; wait for every chunk; return their offsets in order."""
        if self.buffer or not self.sent:
            self._send()
        while self.unacked:
            self._wait_oldest()
        return self.offsets

    def abandon(self) -> None:
        """The attempt failed: what it left in the producer is dropped with it."""
        self.store.unacked_bytes -= sum(size for _, size in self.unacked)
        self.unacked.clear()


def manifest_key(group: str, topic, partition) -> str:
    """The manifest topic's key of a consumer group's checkpoint of a topic's partition."""
    return f"{group}/{topic}-{partition}" if group else f"{topic}-{partition}"


def chunk_prefix(key: str, sequence: int) -> str:
    """The chunk keys' prefix of one write: "<manifest key>/<sequence>-<nonce>". The nonce tells two
    writers of one sequence apart (a former owner not yet told it lost the partition, and the new
    one): compaction keeps the last record per key, and with shared keys it could keep the other
    writer's chunk under the newest manifest's. Readers take the prefix from the manifest
    (`chunks.key`): manifests written before the nonce ("<key>/<sequence>") still load."""
    return f"{key}/{sequence}-{secrets.token_hex(8)}"


class KafkaCheckpointStore(BackgroundCheckpoints, CheckpointStore):
    def __init__(self, options: dict, topic: str = "shopstream-checkpoints", max_bytes: int = DEFAULT_MAX_BYTES,
                 group: str = "", chunk_topic: Optional[str] = None, timeout: float = 60.0,
                 signing_key: Key = FROM_ENVIRONMENT):
        CheckpointStore.__init__(self, group, signing_key)
        BackgroundCheckpoints.__init__(self)
        self.topic = topic
        self.chunk_topic = chunk_topic or f"{topic}-chunks"
        self.chunk_partition = 0
        self.options = options
        self.max_bytes = max_bytes
        self.chunk_bytes = max(1024, max_bytes - _RECORD_OVERHEAD)
        self.timeout = timeout
        self.window = DEFAULT_WINDOW
        self.unacked_bytes = 0          # chunk bytes sent and not yet acknowledged (a metric)
        self.abandoned_writes = 0       # attempts whose unacknowledged records were dropped (a metric)
        self._producer_lock = threading.Lock()
        self._producer: Optional[KafkaProducer] = None
        self._partition = TopicPartition(topic, 0)
        self._consumer: Optional[KafkaConsumer] = None   # the manifest topic's reader, from open()
        self._chunks_consumer: Optional[KafkaConsumer] = None
        self._latest: dict[str, Optional[bytes]] = {}   # key -> last manifest (small) or None
        self._best: dict[str, int] = {}   # key -> highest verified sequence read
        self._had_value: set[str] = set()
        self._refused: dict[str, str] = {}   # key -> why its last record was skipped (signing key set)
        self._live_chunks: dict[str, list[bytes]] = {}  # key -> chunk keys of its last checkpoint
        self._unreadable = CorruptBatchSkipper(options, outputs=None)   # connects only when a batch cannot be read
        self._hidden: Optional[str] = None   # the manifest offsets passed over unread, and why
        self._read_since_hidden: set[str] = set()   # keys with a readable manifest after them
        self.skipped_keys = 0   # manifest-topic records not kept: another group's key, or one over KEY_LIMIT
        self.housekeeping_failures = 0   # saves whose old chunks could not be tombstoned (the save stands)

    def open(self) -> "KafkaCheckpointStore":
        """Create the two compacted topics if missing and start reading the manifests (the
        broker is first asked here, never when the store is built); called again, nothing."""
        if self._consumer is None:
            compacted = {"cleanup.policy": "compact", "max.message.bytes": str(self.max_bytes),
                         "min.compaction.lag.ms": "0", "segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1",
                         "delete.retention.ms": "60000"}
            create_topics(self.options, {self.topic: 1, self.chunk_topic: 1},
                          configs={self.topic: compacted, self.chunk_topic: compacted})
            consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                     **self.options)
            read_records_in_one_pass(consumer)   # what cannot be read is what the skipper's probe cannot read
            consumer.assign([self._partition])
            consumer.seek_to_beginning(self._partition)
            self._consumer = consumer
        return self

    def key(self, topic: str, partition: int) -> str:
        return manifest_key(self.group, topic, partition)

    # -- writing -------------------------------------------------------------------------

    def _new_producer(self):
        self.open()   # the topics exist before the first write
        return KafkaProducer(acks="all", max_request_size=self.max_bytes, linger_ms=5, **self.options)

    def _current_producer(self):
        with self._producer_lock:
            if self._producer is None:
                self._producer = self._new_producer()
            return self._producer

    def _abandon(self, producer) -> None:
        """Drop a failed attempt's records: kafka-python keeps unacknowledged records until
        their delivery timeout without a memory bound, so each retry during an outage would add
        another copy. Closing the producer at once aborts them; the next attempt gets a new one."""
        with self._producer_lock:
            if self._producer is producer:
                self._producer = None
        self.abandoned_writes += 1
        try:
            producer.close(timeout=0)
        except Exception as exc:  # noqa: BLE001 - it is being thrown away
            log.debug("closing an abandoned checkpoint producer: %s", exc)

    def _write_state(self, key: str, state: Partition) -> None:
        sender = _ChunkSender(self, self._current_producer(), chunk_prefix(key, state.sequence), self.timeout)
        self._send(key, state, sender, lambda: dump_payload(state, sender))

    def _write_in_child(self, key: str, state: Partition, spool) -> None:
        # The child has no Kafka client (its threads stayed in the parent): it pickles into a
        # spool file; a thread of the parent sends that file's chunks (`publish_spool`).
        with open(spool, "wb", buffering=1 << 20) as out:
            size, digest = dump_payload(state, out)
        spool.with_suffix(".meta").write_text(f"{size} {digest}")

    def publish_spool(self, pending: PendingSave) -> Optional[threading.Thread]:
        def publish():
            try:
                size, digest = pending.spool.with_suffix(".meta").read_text().split()
                sender = _ChunkSender(self, self._current_producer(),
                                      chunk_prefix(pending.key, pending.snapshot.sequence), self.timeout)

                def stream():
                    with open(pending.spool, "rb") as spool:
                        for piece in iter(lambda: spool.read(self.chunk_bytes), b""):
                            sender.write(piece)
                    return int(size), digest

                self._send(pending.key, pending.snapshot, sender, stream)
            except BaseException as exc:  # noqa: BLE001 - reported by finish()
                pending.error = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=publish, name=f"checkpoint-{pending.key}", daemon=True)
        thread.start()
        return thread

    def _send(self, key: str, state: Partition | HeaderFields, sender: "_ChunkSender", write_payload) -> None:
        """Send the payload's chunks (`write_payload()` feeds `sender`, returns (size, sha256)),
        wait for them, then the manifest; then tombstone the replaced checkpoint's chunks."""
        prefix, producer = sender.prefix, sender.producer
        try:
            size, digest = write_payload()
            offsets = sender.finish()
            header = make_header(state, size, digest, chunks={
                "topic": self.chunk_topic, "partition": self.chunk_partition, "offsets": offsets, "key": prefix})
            manifest = encode_head(header, self.signing_key)
            producer.send(self.topic, key=key.encode(), value=manifest, partition=0).get(timeout=self.timeout)
        except KafkaError as exc:  # the store did not take the write: same contract as a full disk
            sender.abandon()
            self._abandon(producer)
            raise OSError(f"checkpoint topic {self.topic}: {type(exc).__name__}: {exc} (its unacknowledged "
                          "records dropped)") from exc
        # The manifest is acknowledged: the checkpoint is saved, and nothing below may fail the save.
        try:
            old = self._live_chunks.get(key) or self._chunk_keys(key, self._latest.get(key))
        except Exception as exc:  # noqa: BLE001 - housekeeping only: what the last manifest said
            old = []
            self.housekeeping_failures += 1
            log.warning("checkpoint %s: chunks of the checkpoint it replaces unknown (%s: %s): not tombstoned", key,
                        type(exc).__name__, shown(str(exc)))
        self._latest[key] = manifest
        self._had_value.add(key)
        self._best[key] = max(self._best.get(key, 0), state.sequence)
        new = self._live_chunks[key] = [f"{prefix}/{i}".encode() for i in range(len(offsets))]
        try:  # the replaced checkpoint's chunks: compaction removes them (best effort)
            for chunk_key in old:
                if chunk_key not in new:
                    producer.send(self.chunk_topic, key=chunk_key, value=None, partition=self.chunk_partition)
        except Exception as exc:  # noqa: BLE001 - the save stands; the old chunks stay until the next one
            self.housekeeping_failures += 1
            log.warning("checkpoint topic %s: old chunks of %s not tombstoned: %s: %s", self.chunk_topic, key,
                        type(exc).__name__, shown(str(exc)))

    def _chunk_keys(self, key: str, manifest: Optional[bytes]) -> list[bytes]:
        """The chunk keys of the checkpoint `manifest` (under `key`) names; none unless it is one this
        store could have written under that key (a junk manifest names no keys to tombstone)."""
        header = self._header(manifest)
        if header is None:
            return []
        chunks = header.get("chunks")
        if not isinstance(chunks, dict) or _chunk_spec(chunks) is not None or not chunks["key"].startswith(f"{key}/"):
            return []
        return [f"{chunks['key']}/{i}".encode() for i in range(len(chunks["offsets"]))]

    def _header(self, manifest: Optional[bytes]) -> Optional[dict]:
        try:
            return decode_head(manifest or b"", "checkpoint", self.signing_key)
        except Exception:  # only for housekeeping: a bad manifest is refused where it is loaded
            return None

    # -- reading -------------------------------------------------------------------------

    def _catch_up(self) -> dict[str, Optional[bytes]]:
        """Read the manifest topic from where the last read stopped to its current end."""
        consumer = self.open()._consumer
        assert consumer is not None
        end = consumer.end_offsets([self._partition])[self._partition]
        prefix = f"{self.group}/".encode() if self.group else b""
        limit = max(KEY_LIMIT, len(prefix) + _NAME_LIMIT)
        while consumer.position(self._partition) < end:
            try:
                batches = consumer.poll(timeout_ms=1000)
            except CorruptRecordError as exc:   # raised again at every poll until a seek
                self._pass_over_unreadable(consumer, exc)
                continue
            for records in batches.values():
                for record in records:
                    if record.key is None:
                        continue
                    # Every worker of every group reads this whole topic: only this group's keys are kept
                    # (anyone who may write the topic could fill the others' memory with junk keys)
                    if (len(record.key) > limit or not record.key.startswith(prefix)
                            or b"/" in record.key[len(prefix):]):
                        self.skipped_keys += 1
                        continue
                    try:
                        key = record.key.decode()
                    except UnicodeDecodeError:
                        log.warning("checkpoint topic %s: record at offset %d has a key that is not UTF-8: skipped",
                                    self.topic, record.offset)
                        continue
                    if record.value is not None and self.signing_key is not None:
                        refused = self._not_ours(key, record.value)
                        if refused is not None:   # junk or a forgery never replaces the last verified one
                            log.warning("checkpoint topic %s: record at offset %d for %r skipped: %s", self.topic,
                                        record.offset, key[:100], refused)
                            self._refused[key] = refused
                            self._had_value.add(key)
                            continue
                    self._refused.pop(key, None)
                    self._read_since_hidden.add(key)
                    self._latest[key] = record.value
                    self._live_chunks.pop(key, None)
                    if record.value is not None:
                        self._had_value.add(key)
                        sequence = signed_sequence(record.value, self.signing_key)
                        if sequence is not None:
                            self._best[key] = max(self._best.get(key, 0), sequence)
        return self._latest

    def _pass_over_unreadable(self, consumer: KafkaConsumer, exc: Exception) -> None:
        """The manifests at the reader's position cannot be read: seek past them (the module docstring
        says what follows for the keys they may have held)."""
        start = consumer.position(self._partition)
        end = self._unreadable.pass_over(consumer, self._partition, start)
        if end is None:   # the probe read it, or did not answer in time: nowhere to seek to
            raise CheckpointError(f"checkpoint topic {self.topic}: the batch at offset {start} cannot be read "
                                  f"({exc}), and where it ends could not be found") from exc
        self._hidden = f"offsets {start}..{end - 1} of {self.topic} cannot be read ({exc})"
        self._read_since_hidden = set()
        log.error("checkpoint topic %s: offsets %d..%d cannot be read (%s): passed over; a partition whose newest "
                  "checkpoint may be among them is held against its group's committed offset", self.topic, start,
                  end - 1, exc)

    def _not_ours(self, key: str, value: bytes) -> Optional[str]:
        """Why a manifest record under `key` is not a checkpoint signed with this key for that
        very key (None if it is one)."""
        try:
            header = decode_head(value, f"checkpoint {shown(key)}", self.signing_key)
        except (CheckpointError, SignatureError) as exc:
            return shown(str(exc))
        named = manifest_key(header.get("group") or "", header.get("topic"), header.get("partition"))
        return None if named == key else f"it holds the checkpoint of {shown(named)}, not of {shown(key)}"


    def doubt(self, topic: str, partition: int) -> Optional[str]:
        """Why the partition's newest checkpoint may be one this store could not read (None: it read every
        manifest record since the partition's last one), as of the last read (`load` reads to the end)."""
        key = self.key(topic, partition)
        if self._hidden is None or key in self._read_since_hidden:
            return None
        return f"{self._hidden}, and no record of checkpoint {key} is readable after them"

    def _manifest(self, key: str) -> Optional[bytes]:
        value = self._catch_up().get(key)
        if self.signing_key is None:
            return value
        if value is None and key in self._refused:   # nothing verified was ever read for it
            raise CheckpointError(f"checkpoint {key}: the only records for it in {self.topic} are not ours "
                                  f"({self._refused[key]}): refusing to start the partition over from offset 0")
        if value is None and key in self._had_value:
            raise CheckpointError(f"checkpoint {key}: a tombstone replaced it in {self.topic}; refusing to start "
                                  "the partition over from offset 0 (--force-fresh-start does that on purpose)")
        best = self._best.get(key, 0)
        sequence = signed_sequence(value, self.signing_key) if value is not None else None
        if sequence is not None and sequence < best:
            raise CheckpointError(f"checkpoint {key}: sequence {sequence} is older than the {best} already in "
                                  f"{self.topic} (an old record put back?): refusing it")
        return value

    def _read_head(self, key: str, where: str) -> Optional[tuple[dict, Any]]:
        manifest = self._manifest(key)
        if manifest is None:
            return None
        fields = decode_head(manifest, where, self.signing_key)
        wrong = _chunk_spec(fields.get("chunks"))
        if wrong is not None:   # (anyone may write the topic where no key is set): refused, never a crash
            raise CheckpointError(f"{where}: manifest {wrong}: refusing it")
        return fields, fields

    def _read_payload(self, handle, header: dict, where: str) -> Partition:
        chunks = self._fetch_chunks(header["chunks"], where)
        check_payload(chunks, header, where, self.signing_key)
        return unpickle_state(io.BufferedReader(ChunkReader(chunks), buffer_size=1 << 20), header, where)

    def _fetch_chunks(self, spec: dict, where: str) -> list[bytes]:
        """The chunk records the manifest names, read by offset (nothing else is kept)."""
        offsets = list(spec["offsets"])   # (checked by `_read_head`: distinct offsets, ints >= 0)
        tp = TopicPartition(spec["topic"], spec["partition"])
        if self._chunks_consumer is None:
            self._chunks_consumer = KafkaConsumer(
                group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                max_partition_fetch_bytes=max(self.max_bytes, 1 << 20) * 4,
                fetch_max_bytes=max(self.max_bytes, 1 << 20) * 8, **self.options)
            read_records_in_one_pass(self._chunks_consumer)
        consumer = self._chunks_consumer
        consumer.assign([tp])
        wanted = {offset: index for index, offset in enumerate(offsets)}
        found: list[Optional[bytes]] = [None] * len(offsets)
        missing = len(offsets)
        position = 0
        while missing:
            while found[position] is not None:
                position += 1
            target = offsets[position]
            if consumer.position(tp) != target:
                consumer.seek(tp, target)
            got_target = False
            for _ in range(30):
                try:
                    batch = consumer.poll(timeout_ms=1000, max_records=500).get(tp, [])
                except CorruptRecordError as exc:   # (read from the wanted chunk on: its batch is the one)
                    raise CheckpointError(f"{where}: chunk {position} (offset {target} of {spec['topic']}) "
                                          f"cannot be read ({exc}): refusing it") from exc
                if not batch:
                    continue
                for record in batch:
                    index = wanted.get(record.offset)
                    if index is None or found[index] is not None:
                        continue
                    expected = f"{spec['key']}/{index}".encode()
                    if record.key != expected or record.value is None:
                        raise CheckpointError(f"{where}: chunk {index} at offset {record.offset} of "
                                              f"{spec['topic']} is not the one the manifest names: refusing it")
                    found[index] = record.value
                    missing -= 1
                got_target = found[position] is not None
                if not got_target:   # records came back, and not the chunk's: it is not in the topic
                    raise _ChunksGone(f"{where}: chunk {position} (offset {target} of {shown(spec['topic'])}) "
                                      f"is gone (the first record read is at offset {batch[0].offset})")
                break
            if not got_target:   # nothing came back: it cannot be read now, which is not a reason to refuse it
                raise ChunksUnavailable(f"{where}: chunk {position} (offset {target} of {shown(spec['topic'])}"
                                        f"[{spec['partition']}]) not returned by the broker in 30 polls")
        return found  # type: ignore[return-value]

    def load(self, topic: str, partition: int) -> Optional[Partition]:
        """As `CheckpointStore.load`; what the broker does not answer (a timeout, no leader, no
        record back) is an OSError: the checkpoint cannot be read now, and the partition is held."""
        key = self.key(topic, partition)
        try:
            try:
                return super().load(topic, partition)
            except _ChunksGone as exc:
                before = self._latest.get(key)
                if self._catch_up().get(key) == before:  # not replaced by a newer checkpoint: it is broken
                    raise CheckpointError(f"{exc}: the checkpoint is incomplete, refusing it") from None
                return super().load(topic, partition)   # a newer checkpoint was written meanwhile: take it
        except KafkaError as exc:
            raise OSError(f"checkpoint {key}: the checkpoint topics {self.topic}, {self.chunk_topic} did not "
                          f"answer: {type(exc).__name__}: {shown(str(exc))}") from exc

    def _keys(self) -> list[str]:
        """The group's keys with a checkpoint, and, with a signing key, those `load` refuses instead of
        starting over (nothing verified ever read for it, or a tombstone after one): listed with why."""
        prefix = f"{self.group}/" if self.group else ""
        latest = self._catch_up()
        keys = {key for key, value in latest.items() if value is not None}
        if self.signing_key is not None:
            keys |= self._had_value   # (a refused record's key may have nothing in `latest`)
        return [key[len(prefix):] for key in keys if key.startswith(prefix) and (prefix or "/" not in key)]

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        if self._consumer is not None:
            self._consumer.close()
        if self._chunks_consumer is not None:
            self._chunks_consumer.close()
        self._unreadable.close()
