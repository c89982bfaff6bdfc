"""One owned partition: what its checkpoint holds and the bookkeeping around it.

A `Partition` is the only place that knows whether a partition has progress no
checkpoint holds yet (`unsaved_since`, `events_since_checkpoint`, `changed`), where it
stands (`next_offset`), whether it is paused because a checkpoint cannot be written
(`paused_because`) and how old its last checkpoint is (`checkpoint_age`). The worker,
the restorer, the learn log, the corrupt-batch skipper and the checkpointer ask it;
none of them writes those fields themselves.

Its checkpoint is its pickle (`stream.checkpointing`), minus `RUNTIME_ONLY`: a
partition restored from a checkpoint is not paused and counts its age from when this
worker first saw that checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import river

from shopstream import __version__
from shopstream.engine import Engine
from shopstream.model_state import restore_attributes
from shopstream.shared_learning import LogReplica

#: What a partition holds for this worker only, never written into a checkpoint.
RUNTIME_ONLY = ("paused_because", "age_origin")


@dataclass(frozen=True)
class CheckpointMarks:
    """What a checkpoint records about itself, as a partition holds it: taken when a
    checkpoint begins, so that one that fails can be undone (`Partition.undo_checkpoint`)."""

    checkpointed_at: float
    checkpointed_offset: int
    events_since_checkpoint: int
    changed: bool
    parent_checkpoint: Optional[str]
    checkpoint_id: Optional[str]
    versions: dict
    group: str
    sequence: int
    unsaved_since: Optional[float]

    @classmethod
    def of(cls, partition: "Partition") -> "CheckpointMarks":
        return cls(**{f.name: getattr(partition, f.name) for f in fields(cls)})


@dataclass
class Partition:
    """Everything a partition needs to resume (engine, next offset, lineage) and its bookkeeping."""

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
    # -- this worker's only (RUNTIME_ONLY) --
    paused_because: Optional[str] = field(default=None, init=False, compare=False)  # why its reading is paused
    # (the checkpointed_at it counts from, the monotonic time that checkpoint counts from)
    age_origin: Optional[tuple[float, float]] = field(default=None, init=False, compare=False, repr=False)

    # -- progress that no checkpoint holds yet ---------------------------------------------

    @property
    def needs_checkpoint(self) -> bool:
        return bool(self.events_since_checkpoint) or self.changed or self.origin != "checkpoint"

    def handled(self, offset: int) -> None:
        """The record at `offset` was handled (processed or dead-lettered)."""
        if not self.events_since_checkpoint and self.unsaved_since is None:
            self.unsaved_since = time.time()
        self.events_since_checkpoint += 1
        self.next_offset = offset + 1

    def skipped(self, count: int, next_offset: int) -> None:
        """`count` records the client could not parse were dead-lettered; reading goes on at `next_offset`."""
        if self.unsaved_since is None:
            self.unsaved_since = time.time()
        self.dead_lettered += count
        self.events_since_checkpoint += count
        self.next_offset = next_offset

    def mark_changed(self) -> None:
        """Its models changed other than by events (a control command, the learn log)."""
        self.changed = True
        if self.unsaved_since is None:
            self.unsaved_since = time.time()

    def note_unsaved(self) -> None:
        """Just restored or started: anything no checkpoint holds counts as unsaved from now."""
        if self.needs_checkpoint and self.unsaved_since is None:
            self.unsaved_since = time.time()

    # -- checkpoints -------------------------------------------------------------------

    def begin_checkpoint(self, group: str, sequence: int) -> CheckpointMarks:
        """Set what the checkpoint about to be written records; return the marks to put back
        (`undo_checkpoint`) if it fails."""
        before = CheckpointMarks.of(self)
        self.group = group
        self.sequence = sequence
        self.checkpointed_at = time.time()
        self.checkpointed_offset = self.next_offset
        self.events_since_checkpoint = 0
        self.changed = False
        self.unsaved_since = None
        self.parent_checkpoint = self.checkpoint_id
        self.checkpoint_id = f"{self.topic}-{self.partition}@{self.next_offset}-{self.checkpointed_at:.6f}"
        self.versions = {"shopstream": __version__, "river": river.__version__}
        return before

    def undo_checkpoint(self, before: CheckpointMarks) -> None:
        """The checkpoint begun with `before` failed: back to those marks, still counting what
        was learned or changed since it began as not checkpointed."""
        learned_since, changed_since = self.events_since_checkpoint, self.changed
        for f in fields(CheckpointMarks):
            setattr(self, f.name, getattr(before, f.name))
        self.events_since_checkpoint += learned_since
        self.changed = self.changed or changed_since

    def checkpoint_age(self, at_most: float) -> float:
        """Seconds since its last checkpoint, on this worker's monotonic clock, from when it
        first saw that checkpoint: `checkpointed_at` may come from a previous owner whose
        clock ran ahead (an hour ahead postponed every time-based checkpoint by an hour).
        A checkpoint new to this worker counts its wall-clock age, capped at `at_most`."""
        now = time.monotonic()
        if self.age_origin is None or self.age_origin[0] != self.checkpointed_at:
            age = min(max(time.time() - self.checkpointed_at, 0.0), at_most)
            self.age_origin = (self.checkpointed_at, now - age)
        return now - self.age_origin[1]

    # -- its checkpoint is its pickle, without what is this worker's only ---------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in RUNTIME_ONLY:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in RUNTIME_ONLY:
            setattr(self, name, None)
        # Not through __dict__: its attribute loads stay fast, until its first checkpoint pickles it (it is
        # not swapped for a shell as the engine is: the worker's loop, the learn log and a sync thread hold it)
        restore_attributes(self, state)
