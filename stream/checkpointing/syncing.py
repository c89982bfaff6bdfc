"""Checkpoints pickled in the loop and made durable by a thread.

`DirectoryCheckpointStore.begin_synced_save` pickles the partition into a temp file in the
loop (the state as it is at that moment; the kernel's page cache takes the bytes), then a
thread fsyncs the file, renames it over the last checkpoint and fsyncs the directory while
the loop goes on. The loop pays the pickle's CPU and no disk wait: measured in the worker
under load, the two fsyncs took up to 11 ms, and a network volume can take far longer.

The outputs the checkpoint covers (predictions, dead letters, learn-log records sent before it)
must be acknowledged by the broker before it is published: the loop used to wait for that
(`Outputs.confirm`, a flush: p99 38 ms under load); with kafka-python's producer the thread
waits for their futures instead (`Outputs.acknowledgement`), and a failure makes the checkpoint
fail, so the partition pauses and the loop's `confirm` sends the outputs again.

`SyncingSave` is the loop's handle, with the same `done` / `finish` / `started` as a forked
`background.PendingSave`: the checkpointer commits its offset only once `finish` says the file
is durable, and the partition takes no other checkpoint until then. A sync that outlives the
checkpoint timeout is abandoned: its file is never renamed into place afterwards (a late rename
could put an older checkpoint over a newer one), and the checkpoint counts as failed; while its
thread still lives, the store writes no other checkpoint of that partition (a dead volume).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Optional, Protocol

from shopstream.files import finish_atomic_write

#: Waits, at most the seconds given, until the outputs a checkpoint covers are acknowledged:
#: None, or why not (`stream.outputs.Outputs.acknowledgement`).
Acknowledged = Callable[[float], Optional[str]]

if TYPE_CHECKING:
    from stream.partition import CheckpointMarks, Partition


class SyncedStore(Protocol):
    """What a `SyncingSave` asks of the store it writes for (the directory store)."""

    def key(self, topic: str, partition: int) -> str: ...

    def saw_sequence(self, key: str, sequence: int) -> None: ...


class SyncingSave:
    """A checkpoint written to its temp file, being fsynced and renamed by a thread."""

    def __init__(self, store: SyncedStore, state: "Partition", before: "CheckpointMarks",
                 out: BinaryIO, tmp: Path, path: Path, acknowledged: Optional[Acknowledged] = None,
                 acknowledge_seconds: float = 5.0):
        self.store = store
        self.state: Optional["Partition"] = state
        self.before: Optional["CheckpointMarks"] = before
        self._acknowledged, self._acknowledge_seconds = acknowledged, acknowledge_seconds
        self.key = store.key(state.topic, state.partition)
        self.sequence = state.sequence
        self.next_offset = state.next_offset
        self.started = time.monotonic()
        self.error: Optional[str] = None
        self._out, self._tmp, self._path = out, tmp, path
        self._lock = threading.Lock()   # the rename decision: published, or abandoned, never both
        self._publishing = False
        self._abandoned = False
        self._finished = False
        self.outputs_refused = False    # failed because an output it covers was not acknowledged
        self.acknowledged = acknowledged is not None   # published only once its outputs were
        self._thread = threading.Thread(target=self._sync, name=f"checkpoint-sync-{self.key}", daemon=True)
        self._thread.start()   # RuntimeError if no thread can be started: the store cleans up

    @property
    def stuck(self) -> bool:
        """Its thread still runs after `finish` gave up on it: no other write of its file may begin."""
        return self._finished and self._thread.is_alive()

    def _may_publish(self) -> bool:
        if self._acknowledged is not None:   # the outputs the checkpoint covers must exist first
            why = self._acknowledged(self._acknowledge_seconds)
            if why is not None:
                self.error, self.outputs_refused = why, True
                return False
        with self._lock:
            self._publishing = not self._abandoned
            return self._publishing

    def _sync(self) -> None:
        try:
            finish_atomic_write(self._out, self._tmp, self._path, self._may_publish)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = self.error or f"{type(exc).__name__}: {exc}"

    def done(self) -> bool:
        """True once the checkpoint is durable or has failed; never waits."""
        return not self._thread.is_alive()

    def finish(self, timeout: Optional[float] = None) -> int:
        """Wait for the sync (at most `timeout` seconds); the offset the checkpoint holds, or
        OSError with the partition's bookkeeping as if the checkpoint had never begun."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Given up on: the store writes no other checkpoint of this file while the thread lives
            # (`stuck`), so a late rename can never put this one over a newer one.
            with self._lock:
                self._abandoned = not self._publishing
            waited = f"{time.monotonic() - self.started:.0f} s"
            self.error = (f"checkpoint fsync stalled: no result {waited} after it began; abandoned (its file is "
                          "never published)" if self._abandoned else
                          f"checkpoint publishing stalled: rename or directory fsync not returned {waited} after it "
                          "began (the file may appear; it is not counted)")
        # Let go of the partition: the store keeps this handle (its `stuck`) after the partition may be gone.
        state, before, self.state, self.before = self.state, self.before, None, None
        assert state is not None and before is not None   # finish runs once
        if self.error is not None:
            state.undo_checkpoint(before)
            raise OSError(self.error)
        self.store.saw_sequence(self.key, self.sequence)
        return self.next_offset
