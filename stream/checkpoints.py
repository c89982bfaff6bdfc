"""Per-partition checkpoints in a directory: the engine and the next offset, together.

A checkpoint is the only source of truth for where a partition's model stands: the
worker restores the engine and seeks to `next_offset`, so after a crash the events
since the checkpoint are replayed onto exactly the state that had not seen them.
Files are written atomically (temp file, fsync, rename). The pickle is streamed
straight into the temporary file (or, in the Kafka store, into chunk records) while it
is hashed: no copy of the whole state is ever held in memory.

Format CKPT-3, a file (the Kafka store keeps the same head in its manifest record and
the payload in chunk records):

    SHOPSTREAM-CKPT-3\\n
    sha256:<hex>\\n  or  hmac-sha256:<hex>\\n      the check of the header line
    {"format": "CKPT-3", "group": ..., "topic": ..., "partition": ..., "sequence": ...,
     "next_offset": ..., "size": ..., "sha256": <hex of the payload>, ...}\\n
    <payload: the pickle of the PartitionState>

The check covers the header, and the header holds the payload's sha256: with
SHOPSTREAM_SIGNING_KEY set the check is an HMAC, required on load, so the header (and
through its digest the payload) is authenticated before anything is unpickled. A
torn or corrupted file is detected instead of half-loaded.

A checkpoint binds to what it is for: its topic, partition and consumer group, and a
sequence number that grows with every save, are inside the checked header (readable
without unpickling). A checkpoint for another partition or group is refused; so, with a
signing key, is one older than a checkpoint this store already saw (an old file or
record put back). Checkpoints of an older format (CKPT-1, CKPT-2) are refused with a
clear error. Each checkpoint records its lineage: its id, its parent's, what the
partition started from (artifact version or fresh), the offsets, and the shopstream
and River versions.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import pickle
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import river

from shopstream import __version__
from shopstream.engine import Engine
from shopstream.files import open_locked, remove_leftovers, write_atomically
from shopstream.shared_learning import LogReplica
from shopstream.signing import SignatureError, signing_key, verify

log = logging.getLogger(__name__)
FORMAT = "CKPT-3"
MAGIC = b"SHOPSTREAM-CKPT-3\n"   # then the check line, the header line and the payload
MAGIC_PREFIX = b"SHOPSTREAM-CKPT-"
_HEADER_LIMIT = 1 << 20           # a header line longer than this is not ours
_READ = 1 << 20                   # bytes per read when hashing a payload


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be trusted."""


@dataclass
class PartitionState:
    """Everything a partition needs to resume: engine, next offset and bookkeeping."""

    topic: str
    partition: int
    engine: Engine
    next_offset: int = 0
    dead_lettered: int = 0
    origin: str = "fresh"          # "checkpoint", "artifact:<version>" or "fresh"
    checkpointed_at: float = field(default_factory=time.time)
    checkpointed_offset: int = 0
    events_since_checkpoint: int = 0
    changed: bool = False          # changed by other than events (a control command)
    started_from: str = "fresh"    # what the partition's first state came from: never changes
    checkpoint_id: Optional[str] = None
    parent_checkpoint: Optional[str] = None
    versions: dict = field(default_factory=dict)
    group: str = ""                # the consumer group it belongs to
    sequence: int = 0              # grows by one with every save
    unsaved_since: Optional[float] = None  # wall time of the oldest change no checkpoint holds yet
    # --learning shared: where the models stand in the learn log (None in a checkpoint without it)
    learn_log: Optional[LogReplica] = None

    @property
    def needs_checkpoint(self) -> bool:
        return bool(self.events_since_checkpoint) or self.changed or self.origin != "checkpoint"


# -- the format ------------------------------------------------------------------------


class HashingWriter:
    """A file-like sink for `pickle.Pickler`: hashes every byte on its way to `out`."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


_BATCH = 20_000   # open predictions per pickle of the payload's tail


def _joiner(state):
    return getattr(getattr(state, "engine", None), "joiner", None)


def dump_payload(state: PartitionState, out) -> tuple[int, str]:
    """Pickle `state` straight into `out` (anything with write); return (size, sha256 hex).

    The payload is a sequence of pickles: the state without its open predictions, then
    the open predictions in batches of `_BATCH`, then None. One pickle of everything would
    hold a memo entry (~100 bytes) for every object until its end: hundreds of MiB at a
    million open predictions. Batches keep that to one batch's worth."""
    writer = HashingWriter(out)
    protocol = pickle.HIGHEST_PROTOCOL
    joiner = _joiner(state)
    entries = joiner.detach() if joiner is not None and hasattr(joiner, "detach") else None
    try:
        pickle.Pickler(writer, protocol=protocol).dump(state)
    finally:
        if entries is not None:
            joiner.attach(entries)
    for start in range(0, len(entries or ()), _BATCH):
        pickle.Pickler(writer, protocol=protocol).dump(entries[start:start + _BATCH])
    pickle.Pickler(writer, protocol=protocol).dump(None)
    return writer.size, writer.sha.hexdigest()


def load_payload(fileobj) -> PartitionState:
    """Unpickle what `dump_payload` wrote (only after its digest was checked)."""
    state = pickle.load(fileobj)
    entries = []
    while (batch := pickle.load(fileobj)) is not None:
        entries.extend(batch)
    joiner = _joiner(state)
    if entries:
        joiner.attach(entries)
    return state


def _check_kind() -> str:
    return "hmac-sha256" if signing_key() is not None else "sha256"


def check_line(header: bytes) -> bytes:
    """The check of a header line: an HMAC with a signing key, else a sha256."""
    key = signing_key()
    if key is not None:
        return b"hmac-sha256:" + hmac.new(key, header, hashlib.sha256).hexdigest().encode()
    return b"sha256:" + hashlib.sha256(header).hexdigest().encode()


def make_header(state: PartitionState, size: int, digest: str, **extra) -> bytes:
    """The header line (no newline): what the checkpoint is for, and its payload's digest.
    `size` is zero-padded so a header's length is known before the payload is written."""
    fields = {"format": FORMAT, "group": state.group, "topic": state.topic, "partition": state.partition,
              "sequence": state.sequence, "next_offset": state.next_offset, "checkpoint_id": state.checkpoint_id,
              "size": f"{size:020d}", "sha256": digest, "pickle": pickle.HIGHEST_PROTOCOL, **extra}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def split_head(data: bytes, where: str) -> tuple[bytes, bytes, int]:
    """(check line, header line, offset of the payload) of encoded bytes; refuses what is
    not CKPT-3 with a clear error."""
    if not data.startswith(MAGIC):
        if data.startswith(MAGIC_PREFIX):
            found = data[len(MAGIC_PREFIX) - 5:].partition(b"\n")[0].decode("ascii", "replace")
            raise CheckpointError(
                f"{where}: format {found} was written by an older shopstream; this version reads only "
                f"{FORMAT} (streamed, chunked checkpoints). Start the partition over with --force-fresh-start "
                "(or finish it with the version that wrote it)")
        raise CheckpointError(f"{where}: not a shopstream checkpoint")
    start = len(MAGIC)
    end_check = data.find(b"\n", start)
    end_header = data.find(b"\n", end_check + 1) if end_check >= 0 else -1
    if end_check < 0 or end_header < 0:
        raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")
    return data[start:end_check], data[end_check + 1:end_header], end_header + 1


def verify_head(check: bytes, header: bytes, where: str) -> dict:
    """Verify the header line against its check; return it parsed. SignatureError or
    CheckpointError when it does not hold."""
    kind, _, value = check.decode("ascii", "replace").partition(":")
    key = signing_key()
    if key is not None:
        verify(header, value if kind == "hmac-sha256" else None, key, where)
    elif kind == "hmac-sha256":
        raise SignatureError(f"{where}: signed checkpoint, but SHOPSTREAM_SIGNING_KEY is not set")
    elif kind != "sha256" or hashlib.sha256(header).hexdigest() != value:
        raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")
    try:
        fields = json.loads(header)
        fields["size"] = int(fields["size"])
        if fields.get("format") != FORMAT:
            raise ValueError(fields.get("format"))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: unreadable header ({exc})") from None
    return fields


def payload_mismatch(where: str) -> Exception:
    if signing_key() is not None:  # the HMAC covers the header, and the header the payload's digest
        return SignatureError(f"{where}: HMAC does not match: forged or modified, refusing to load it")
    return CheckpointError(f"{where}: checksum mismatch (torn or modified file)")


def check_payload(pieces: Iterable, header: dict, where: str) -> None:
    """Hash the payload's pieces; raise unless they are exactly what the header says."""
    sha, size = hashlib.sha256(), 0
    for piece in pieces:
        sha.update(piece)
        size += len(piece)
    if size != header["size"] or sha.hexdigest() != header["sha256"]:
        raise payload_mismatch(where)


def encode_state(state: PartitionState) -> bytes:
    """The bytes of a checkpoint file (for tests and tools; stores stream instead)."""
    out = io.BytesIO()
    write_file(state, out)
    return out.getvalue()


def write_file(state: PartitionState, out) -> None:
    """Write a checkpoint into a seekable binary file at its current position: a
    placeholder head of the final length, the pickle streamed while hashed, then the head."""
    start = out.tell()
    placeholder = make_header(state, 0, "0" * 64)
    check_width = len(check_line(b""))
    out.write(MAGIC + b"0" * check_width + b"\n" + placeholder + b"\n")
    size, digest = dump_payload(state, out)
    end = out.tell()
    header = make_header(state, size, digest)
    assert len(header) == len(placeholder)
    out.seek(start + len(MAGIC))
    out.write(check_line(header) + b"\n" + header + b"\n")
    out.seek(end)


def _bind(header: dict, topic: str, partition: int, group: str, where: str) -> None:
    found = (header.get("topic"), header.get("partition"))
    if found != (topic, partition):
        raise CheckpointError(f"{where}: holds the state of {found[0]}-{found[1]}, not of {topic}-{partition} "
                              "(a file copied from another partition?): refusing it")
    theirs = header.get("group", "")
    if theirs and group and theirs != group:
        raise CheckpointError(f"{where}: belongs to consumer group {theirs!r}, not {group!r}: refusing it")


def _unpickle(fileobj, header: dict, where: str) -> PartitionState:
    state = load_payload(fileobj)
    if (state.topic, state.partition, state.sequence) != (header["topic"], header["partition"],
                                                          header["sequence"]):
        raise CheckpointError(f"{where}: the payload does not match its header: refusing it")
    state.origin = "checkpoint"
    return state


def decode_state(data: bytes, where: str) -> PartitionState:
    """Verify, then unpickle, checkpoint bytes written by `encode_state`."""
    check, header, start = split_head(data, where)
    fields = verify_head(check, header, where)
    view = memoryview(data)[start:]
    check_payload([view], fields, where)
    return _unpickle(io.BytesIO(view), fields, where)


def signed_sequence(data: bytes) -> Optional[int]:
    """The sequence of an encoded checkpoint head whose check holds (HMAC with a signing
    key), without unpickling or reading its payload; None when it does not hold."""
    try:
        check, header, _ = split_head(data or b"", "checkpoint")
        return int(verify_head(check, header, "checkpoint")["sequence"])
    except (CheckpointError, SignatureError, ValueError, KeyError, TypeError):
        return None


class ChunkReader(io.RawIOBase):
    """A readable file over a list of byte strings, without joining them."""

    def __init__(self, chunks: list):
        self._chunks = [memoryview(c) for c in chunks]
        self._i = 0
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._i < len(self._chunks):
            chunk = self._chunks[self._i]
            if self._at < len(chunk):
                n = min(len(buffer), len(chunk) - self._at)
                buffer[:n] = chunk[self._at:self._at + n]
                self._at += n
                return n
            self._i, self._at = self._i + 1, 0
        return 0


# -- stores ----------------------------------------------------------------------------


class CheckpointStore:
    """Where checkpoints live; subclasses say how one keyed checkpoint is written and read.
    `save` raises OSError when the store cannot take the write, leaving the state's
    bookkeeping as it was (the worker then pauses the partition)."""

    group: str = ""
    _sequences: dict  # key -> highest sequence this store saved or loaded

    def _write_state(self, key: str, state: PartitionState) -> None:
        """Write the checkpoint of `state` durably under `key` (OSError if not)."""
        raise NotImplementedError

    def _read_head(self, key: str, where: str):
        """None, or (verified header dict, handle) for `_read_payload`."""
        raise NotImplementedError

    def _read_payload(self, handle, header: dict, where: str) -> PartitionState:
        """Check the payload against the header, then unpickle it."""
        raise NotImplementedError

    def _keys(self) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def key(topic: str, partition: int) -> str:
        return f"{topic}-{partition}"

    def _stage(self, state: PartitionState) -> tuple:
        """Set the bookkeeping a new checkpoint records; return what to put back if it fails."""
        before = (state.checkpointed_at, state.checkpointed_offset, state.events_since_checkpoint,
                  state.changed, state.parent_checkpoint, state.checkpoint_id, state.versions, state.group,
                  state.sequence, state.unsaved_since)
        key = self.key(state.topic, state.partition)
        state.group = self.group
        state.sequence = max(state.sequence, self._seen().get(key, 0)) + 1
        state.checkpointed_at = time.time()
        state.checkpointed_offset = state.next_offset
        state.events_since_checkpoint = 0
        state.changed = False
        state.unsaved_since = None
        state.parent_checkpoint = state.checkpoint_id
        state.checkpoint_id = f"{state.topic}-{state.partition}@{state.next_offset}-{state.checkpointed_at:.6f}"
        state.versions = {"shopstream": __version__, "river": river.__version__}
        return before

    @staticmethod
    def _unstage(state: PartitionState, before: tuple) -> None:
        (state.checkpointed_at, state.checkpointed_offset, state.events_since_checkpoint, state.changed,
         state.parent_checkpoint, state.checkpoint_id, state.versions, state.group,
         state.sequence, state.unsaved_since) = before

    def save(self, state: PartitionState) -> None:
        before = self._stage(state)
        key = self.key(state.topic, state.partition)
        try:
            self._write_state(key, state)
        except OSError:
            self._unstage(state, before)
            raise
        self._seen()[key] = state.sequence

    def _seen(self) -> dict:
        if not hasattr(self, "_sequences"):
            self._sequences = {}
        return self._sequences

    def load(self, topic: str, partition: int) -> Optional[PartitionState]:
        """The partition's checkpoint, verified and bound to this topic, partition and
        group; None if there is none. CheckpointError (or SignatureError) if it cannot be
        trusted. Everything but the payload is checked before the payload is read."""
        key = self.key(topic, partition)
        where = f"checkpoint {key}"
        found = self._read_head(key, where)
        if found is None:
            return None
        header, handle = found
        _bind(header, topic, partition, self.group, where)
        sequence = int(header.get("sequence", 0))
        seen = self._seen().get(key, 0)
        if sequence < seen and signing_key() is not None:
            raise CheckpointError(f"{where}: sequence {sequence} is older than the {seen} this worker already "
                                  "saw (an old checkpoint put back?): refusing it")
        state = self._read_payload(handle, header, where)
        self._seen()[key] = max(seen, sequence)
        return state

    def load_all(self) -> dict[tuple[str, int], PartitionState]:
        """Every checkpoint in the store, by (topic, partition)."""
        states = {}
        for key in sorted(self._keys()):
            topic, _, partition = key.rpartition("-")
            state = self.load(topic, int(partition))
            if state is not None:
                states[(topic, int(partition))] = state
        return states


# -- checkpoints off the hot path ------------------------------------------------------


class _Snapshot:
    """What a header says about a state, fixed when its checkpoint begins."""

    def __init__(self, state: PartitionState):
        self.group, self.topic, self.partition = state.group, state.topic, state.partition
        self.sequence, self.next_offset, self.checkpoint_id = state.sequence, state.next_offset, state.checkpoint_id


class PendingSave:
    """A checkpoint being written in the background (see `CheckpointStore.begin_save`).

    The loop goes on learning while it is written: `done()` says, without waiting, whether
    it has finished; `finish()` (waits if needed) makes it count: it returns the offset the
    checkpoint holds (the one to commit), or raises OSError, in which case the state's
    bookkeeping is as if the checkpoint had never begun (events learned since are still
    counted as not checkpointed)."""

    def __init__(self, store: "CheckpointStore", state: PartitionState, before: tuple, pid: int, spool: Path):
        self.store, self.state, self.before = store, state, before
        self.key = store.key(state.topic, state.partition)
        self.snapshot = _Snapshot(state)
        self.next_offset = state.next_offset
        self.pid, self.spool = pid, spool
        self.status: Optional[int] = None
        self.error: Optional[str] = None
        self._thread = None
        self._finished = False
        self.froze_gc = False
        self.child_maxrss_kib = 0
        self.started = time.monotonic()
        self.spool_lock = None   # this process's lock on the spool (see `files.open_locked`)

    def _child_done(self, block: bool) -> bool:
        if self.status is None:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return False
            self.child_maxrss_kib = usage.ru_maxrss  # the child's peak (shared pages included)
            self.status = os.waitstatus_to_exitcode(status)
            if self.status != 0:
                error = self.spool.with_suffix(".error")
                self.error = error.read_text() if error.exists() else f"checkpoint writer exited with {self.status}"
            elif self.error is None:
                self._thread = self.store._publish_in_background(self)
        return True

    def _wait_child(self, timeout: Optional[float]) -> bool:
        """Wait for the child to exit (at most `timeout` seconds); False if it has not."""
        if timeout is None:
            return self._child_done(block=True)
        deadline = time.monotonic() + timeout
        while not self._child_done(block=False):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def done(self) -> bool:
        """True once the checkpoint is durable or has failed; never waits."""
        if not self._child_done(block=False):
            return False
        return self._thread is None or not self._thread.is_alive()

    def finish(self, timeout: Optional[float] = None) -> int:
        """Wait for the checkpoint; the offset it holds, or OSError (bookkeeping restored).
        A writer with no result within `timeout` seconds is killed: a failed checkpoint."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        if not self._wait_child(timeout):
            os.kill(self.pid, 9)   # a killed writer renames nothing later: its failure is final
            self._child_done(block=True)
            self.error = (f"checkpoint writer stalled: no result {time.monotonic() - self.started:.0f} s after it "
                          "began; killed")
        if self._thread is not None:
            self._thread.join()   # bounded by the store's own timeouts; it may still publish, so it is awaited
        if self.froze_gc:
            _thaw()
        if self.spool_lock is not None:
            self.spool_lock.close()
        for path in (self.spool, self.spool.with_suffix(".error"), self.spool.with_suffix(".meta")):
            try:
                path.unlink()
            except OSError:
                pass
        if self.error is not None:
            state, before = self.state, self.before
            learned_since = state.events_since_checkpoint
            changed_since = state.changed
            self.store._unstage(state, before)
            state.events_since_checkpoint += learned_since
            state.changed = state.changed or changed_since
            raise OSError(self.error)
        seen = self.store._seen()
        seen[self.key] = max(seen.get(self.key, 0), self.snapshot.sequence)
        return self.next_offset


#: Forks whose child may still share the parent's pages with the collector frozen.
_FROZEN_FORKS = [0]


def _thaw() -> None:
    """The last child that shared frozen pages is done: give the collector its objects back,
    so reference cycles made before the fork are reclaimed again."""
    import gc

    _FROZEN_FORKS[0] -= 1
    if _FROZEN_FORKS[0] == 0:
        gc.unfreeze()


def _die_with_parent(parent: int) -> None:
    """In a checkpoint child: ask Linux to kill it when the worker dies (a child outliving a
    kill -9 would rename its older snapshot over what a restarted worker saved since)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the check below still covers a parent gone already
        pass
    if os.getppid() != parent:
        os._exit(1)


class BackgroundCheckpoints:
    """Mixin: `begin_save(state)` forks a child that writes the checkpoint from a
    copy-on-write snapshot of the process, so the loop stops only for the fork."""

    spool_dir: Optional[Path] = None

    def begin_save(self, state: PartitionState, freeze_gc: bool = True) -> PendingSave:
        """Start a checkpoint of `state` as it is now; return at once (after a fork).

        The caller goes on processing events and must call `finish()` on the result (after
        `done()`, or when it must know) before it commits the offset it returns or begins
        another checkpoint of the same partition. OSError if the fork itself fails.

        With `freeze_gc` (the default), `gc.freeze()` runs before the fork: everything alive
        then leaves the collector's generations, as the Python docs advise before a fork.
        Otherwise the parent's next full collection writes to every object's header while
        the child still shares its pages, copying the whole heap (measured: a 1.5 s stop at
        50,000 open predictions). The last `finish()` of the children alive unfreezes them,
        so cycles made before a fork are reclaimed afterwards. The child dies with the
        worker (PR_SET_PDEATHSIG on Linux)."""
        import gc
        import tempfile

        before = self._stage(state)
        if freeze_gc:
            gc.freeze()
            _FROZEN_FORKS[0] += 1
        parent = os.getpid()
        spool_dir = Path(self.spool_dir or tempfile.gettempdir())
        if not getattr(self, "_swept", False):  # spools of a killed worker, once per store
            self._swept = True
            for spool in remove_leftovers(spool_dir, ".shopstream-ckpt-*.spool"):
                for sibling in (spool.with_suffix(".error"), spool.with_suffix(".meta")):
                    sibling.unlink(missing_ok=True)
        key = self.key(state.topic, state.partition).replace("/", "_")
        spool = spool_dir / f".shopstream-ckpt-{key}-{os.getpid()}-{secrets.token_hex(4)}-{state.sequence}.spool"
        try:
            # Locked by this process until `finish`: the child writes it, a thread may read it after.
            spool_lock = open_locked(spool)
            pid = os.fork()
        except OSError:
            self._unstage(state, before)
            if freeze_gc:
                _thaw()
            raise
        if pid == 0:  # the child: write, report, exit; never return into the caller's code
            code = 1
            try:
                gc.disable()   # a collection would touch (and so copy) every tracked object
                _die_with_parent(parent)
                self._write_in_child(self.key(state.topic, state.partition), state, spool)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                try:
                    spool.with_suffix(".error").write_text(f"{type(exc).__name__}: {exc}")
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        pending = PendingSave(self, state, before, pid, spool)
        pending.froze_gc = freeze_gc
        pending.spool_lock = spool_lock
        return pending

    def _write_in_child(self, key: str, state: PartitionState, spool: Path) -> None:
        raise NotImplementedError

    def _publish_in_background(self, pending: PendingSave):
        """After the child succeeded: a started thread finishing the write, or None."""
        return None


class DirectoryCheckpointStore(BackgroundCheckpoints, CheckpointStore):
    """One file per topic-partition under `root`, e.g. ``root/shop-events-3.ckpt``."""

    def __init__(self, root: str | Path, group: str = "", create: bool = True):
        self.root = Path(root)
        self.group = group
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.root} does not exist")
        # A writer killed mid-checkpoint (kill -9, or its worker's death) leaves a temp file as
        # large as the state: the worker that comes next removes it.
        for path in remove_leftovers(self.root, ".*.ckpt.*.tmp"):
            log.info("removed %s, left by a checkpoint writer that was killed", path)

    def path(self, topic: str, partition: int) -> Path:
        return self.root / f"{self.key(topic, partition)}.ckpt"

    def _write_state(self, key: str, state: PartitionState) -> None:
        write_atomically(self.root / f"{key}.ckpt", lambda out: write_file(state, out), buffering=_READ)

    def _read_head(self, key: str, where: str):
        path = self.root / f"{key}.ckpt"
        try:
            handle = open(path, "rb", buffering=_READ)
        except FileNotFoundError:
            return None
        try:
            head = handle.read(len(MAGIC))
            if head != MAGIC:
                split_head(head + handle.read(64), where)  # raises: which format it is, or none
            check = handle.readline(_HEADER_LIMIT)
            header = handle.readline(_HEADER_LIMIT)
            if not (check.endswith(b"\n") and header.endswith(b"\n")):
                raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")
            fields = verify_head(check[:-1], header[:-1], where)
        except BaseException:
            handle.close()
            raise
        return fields, handle

    def _read_payload(self, handle, header: dict, where: str) -> PartitionState:
        with handle:
            start = handle.tell()
            check_payload(iter(lambda: handle.read(_READ), b""), header, where)
            handle.seek(start)
            return _unpickle(handle, header, where)

    def _keys(self) -> list[str]:
        return [path.stem for path in self.root.glob("*.ckpt")]

    def _write_in_child(self, key: str, state: PartitionState, spool: Path) -> None:
        self._write_state(key, state)   # the whole atomic write happens in the child
