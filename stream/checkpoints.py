"""Per-partition checkpoints in a directory: the engine and the next offset, together.

A checkpoint is the only source of truth for where a partition's model stands: the
worker restores the engine and seeks to `next_offset`, so after a crash the events
since the checkpoint are replayed onto exactly the state that had not seen them.
Files are written atomically (temp file, fsync, rename) and carry a sha256 of their
body, so a torn or corrupted file is detected instead of half-loaded; with
SHOPSTREAM_SIGNING_KEY set they carry an HMAC instead, required on load.

A checkpoint binds to what it is for: its topic, partition and consumer group, and a
sequence number that grows with every save, are inside the checked body. A checkpoint
for another partition or group is refused; so, with a signing key, is one older than a
checkpoint this store already saw (an old file or record put back). Each
checkpoint records its lineage: its id, its parent's, what the partition started from
(artifact version or fresh), the offsets, and the shopstream and River versions.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import river

from shopstream import __version__
from shopstream.artifacts import atomic_write
from shopstream.engine import Engine
from shopstream.signing import SignatureError, sign, signing_key, verify

MAGIC = b"SHOPSTREAM-CKPT-2\n"   # then the check line, then "<sequence>\n" and the pickle
OLD_MAGIC = b"SHOPSTREAM-CKPT-1\n"


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

    @property
    def needs_checkpoint(self) -> bool:
        return bool(self.events_since_checkpoint) or self.changed or self.origin != "checkpoint"


class CheckpointStore:
    """Where checkpoints live; subclasses say how one keyed blob is written and read.
    `save` raises OSError when the store cannot take the write, leaving the state's
    bookkeeping as it was (the worker then pauses the partition)."""

    group: str = ""
    _sequences: dict  # key -> highest sequence this store saved or loaded

    def _write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def _read(self, key: str) -> Optional[bytes]:
        raise NotImplementedError

    def _keys(self) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def key(topic: str, partition: int) -> str:
        return f"{topic}-{partition}"

    def save(self, state: PartitionState) -> None:
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
        try:
            self._write(key, encode_state(state))
        except OSError:
            (state.checkpointed_at, state.checkpointed_offset, state.events_since_checkpoint, state.changed,
             state.parent_checkpoint, state.checkpoint_id, state.versions, state.group,
             state.sequence, state.unsaved_since) = before
            raise
        self._seen()[key] = state.sequence

    def _seen(self) -> dict:
        if not hasattr(self, "_sequences"):
            self._sequences = {}
        return self._sequences

    def load(self, topic: str, partition: int) -> Optional[PartitionState]:
        """The partition's checkpoint, verified and bound to this topic, partition and
        group; None if there is none. CheckpointError (or SignatureError) if it cannot be
        trusted."""
        key = self.key(topic, partition)
        data = self._read(key)
        if data is None:
            return None
        where = f"checkpoint {key}"
        state = decode_state(data, where)
        found = (getattr(state, "topic", None), getattr(state, "partition", None))
        if found != (topic, partition):
            raise CheckpointError(f"{where}: holds the state of {found[0]}-{found[1]}, not of {topic}-{partition} "
                                  "(a file copied from another partition?): refusing it")
        group = getattr(state, "group", "")
        if group and self.group and group != self.group:
            raise CheckpointError(f"{where}: belongs to consumer group {group!r}, not {self.group!r}: refusing it")
        sequence = getattr(state, "sequence", 0)
        seen = self._seen().get(key, 0)
        if sequence < seen and signing_key() is not None:
            raise CheckpointError(f"{where}: sequence {sequence} is older than the {seen} this worker already "
                                  "saw (an old checkpoint put back?): refusing it")
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


class DirectoryCheckpointStore(CheckpointStore):
    """One file per topic-partition under `root`, e.g. ``root/shop-events-3.ckpt``."""

    def __init__(self, root: str | Path, group: str = "", create: bool = True):
        self.root = Path(root)
        self.group = group
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.root} does not exist")

    def path(self, topic: str, partition: int) -> Path:
        return self.root / f"{self.key(topic, partition)}.ckpt"

    def _write(self, key: str, data: bytes) -> None:
        atomic_write(self.root / f"{key}.ckpt", data)

    def _read(self, key: str) -> Optional[bytes]:
        path = self.root / f"{key}.ckpt"
        return path.read_bytes() if path.exists() else None

    def _keys(self) -> list[str]:
        return [path.stem for path in self.root.glob("*.ckpt")]


def encode_state(state: PartitionState) -> bytes:
    """MAGIC, then "sha256:<hex>" or "hmac-sha256:<hex>" and a newline, then the checked
    body: the sequence, a newline, the pickle (the sequence is readable without unpickling)."""
    body = b"%d\n" % state.sequence + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    key = signing_key()
    check = f"hmac-sha256:{sign(body, key)}" if key else f"sha256:{hashlib.sha256(body).hexdigest()}"
    return MAGIC + check.encode() + b"\n" + body


def decode_state(data: bytes, where: str) -> PartitionState:
    """Verify, then unpickle, a checkpoint written by `encode_state`."""
    if data.startswith(OLD_MAGIC):  # before sequences: the same, without the sequence line
        data = MAGIC + data[len(OLD_MAGIC):]
        legacy = True
    elif data.startswith(MAGIC):
        legacy = False
    else:
        raise CheckpointError(f"{where}: not a shopstream checkpoint")
    check, _, body = data[len(MAGIC):].partition(b"\n")
    kind, _, value = check.decode("ascii", "replace").partition(":")
    key = signing_key()
    if key is not None:
        verify(body, value if kind == "hmac-sha256" else None, key, where)
    elif kind == "hmac-sha256":
        raise SignatureError(f"{where}: signed checkpoint, but SHOPSTREAM_SIGNING_KEY is not set")
    elif kind != "sha256" or hashlib.sha256(body).hexdigest() != value:
        raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")
    state = pickle.loads(body if legacy else body.partition(b"\n")[2])
    state.origin = "checkpoint"
    return state


def signed_sequence(data: bytes) -> Optional[int]:
    """The sequence of an encoded checkpoint whose check holds (HMAC with a signing key),
    without unpickling it; None when it does not hold or there is none."""
    if not data or not data.startswith(MAGIC):
        return None
    check, _, body = data[len(MAGIC):].partition(b"\n")
    kind, _, value = check.decode("ascii", "replace").partition(":")
    key = signing_key()
    try:
        if key is not None:
            verify(body, value if kind == "hmac-sha256" else None, key, "checkpoint")
        elif kind != "sha256" or hashlib.sha256(body).hexdigest() != value:
            return None
        return int(body.partition(b"\n")[0])
    except (SignatureError, ValueError):
        return None
