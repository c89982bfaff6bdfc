"""Per-partition checkpoints in a directory: the engine and the next offset, together.

A checkpoint is the only source of truth for where a partition's model stands: the
worker restores the engine and seeks to `next_offset`, so after a crash the events
since the checkpoint are replayed onto exactly the state that had not seen them.
Files are written atomically (temp file, fsync, rename) and carry a sha256 of their
body, so a torn or corrupted file is detected instead of half-loaded.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from shopstream.artifacts import atomic_write
from shopstream.engine import Engine

MAGIC = b"SHOPSTREAM-CKPT-1\n"


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

    @property
    def needs_checkpoint(self) -> bool:
        return bool(self.events_since_checkpoint) or self.changed or self.origin != "checkpoint"


class DirectoryCheckpointStore:
    """One file per topic-partition under `root`, e.g. ``root/shop-events-3.ckpt``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, topic: str, partition: int) -> Path:
        return self.root / f"{topic}-{partition}.ckpt"

    def save(self, state: PartitionState) -> Path:
        state.checkpointed_at = time.time()
        state.checkpointed_offset = state.next_offset
        state.events_since_checkpoint = 0
        state.changed = False
        body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        path = self.path(state.topic, state.partition)
        atomic_write(path, MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        return path

    def load_all(self) -> dict[tuple[str, int], PartitionState]:
        """Every checkpoint in the directory, by (topic, partition)."""
        states = {}
        for path in sorted(self.root.glob("*.ckpt")):
            topic, _, partition = path.stem.rpartition("-")
            states[(topic, int(partition))] = self.load(topic, int(partition))
        return states

    def load(self, topic: str, partition: int) -> Optional[PartitionState]:
        path = self.path(topic, partition)
        if not path.exists():
            return None
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise CheckpointError(f"{path}: not a shopstream checkpoint")
        digest, _, body = data[len(MAGIC):].partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            raise CheckpointError(f"{path}: checksum mismatch (torn or modified file)")
        state = pickle.loads(body)
        state.origin = "checkpoint"
        return state
