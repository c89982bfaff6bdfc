"""Checkpoints written off the hot path: a forked child writes a copy-on-write snapshot.

`BackgroundCheckpoints.begin_save(partition)` forks; the child writes the checkpoint
(the directory store: the whole atomic file; the Kafka store: a spool file whose chunks a
thread of the parent then sends) and exits; the loop goes on learning. `PendingSave` is
the loop's handle on it. What a store must offer for this is `BackgroundStore`.

The worker lowers the child's priority right after the fork (`CHILD_NICENESS`): the copy should
run on what the loop leaves of a core, not take half of it while it pickles. It gets the worker's priority back
(`PendingSave.hurry`) once the worker waits for it, or once it has used half its timeout.

Around the fork: `gc.freeze()` before it (`_FROZEN_FORKS` counts the children that may still
share frozen pages; the last one done unfreezes), PR_SET_PDEATHSIG in the child (it dies
with the worker), and spool files named per process, locked by it, and swept once per
store when a killed worker left them.
"""

from __future__ import annotations

import gc
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from shopstream.files import open_locked, remove_leftovers

from .format import HeaderFields

if TYPE_CHECKING:
    from stream.partition import CheckpointMarks, Partition


class BackgroundStore(Protocol):
    """What `PendingSave` and `BackgroundCheckpoints` ask of the store they write for."""

    spool_dir: Optional[Path]
    _swept: bool

    def key(self, topic: str, partition: int) -> str: ...

    def stage(self, state: "Partition") -> "CheckpointMarks": ...

    def saw_sequence(self, key: str, sequence: int) -> None: ...

    def publish_spool(self, pending: "PendingSave") -> Optional[threading.Thread]: ...

    def _write_in_child(self, key: str, state: "Partition", spool: Path) -> None: ...


#: Added to a checkpoint child's nice value. On a core it shares with the loop, the scheduler then
#: gives the loop about nine tenths while both want it (weights 1024 against 110), so a copy does not
#: push a live worker behind its stream. A copy the worker must wait for is hurried (`hurry`).
CHILD_NICENESS = 10

#: Forks whose child may still share the parent's pages with the collector frozen; gc.freeze
#: is process-wide, so this count is too.
_FROZEN_FORKS = [0]


def _freeze() -> None:
    gc.freeze()
    _FROZEN_FORKS[0] += 1


def _thaw() -> None:
    """The last child that shared frozen pages is done: give the collector its objects back,
    so reference cycles made before the fork are reclaimed again."""
    _FROZEN_FORKS[0] -= 1
    if _FROZEN_FORKS[0] == 0:
        gc.unfreeze()


def heap_frozen() -> bool:
    """Whether a checkpoint child may still share the frozen heap (nothing may unfreeze it meanwhile)."""
    return _FROZEN_FORKS[0] > 0


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


def _lower_priority(child: int) -> None:
    """A checkpoint child just forked yields the core to the loop while both want it (`CHILD_NICENESS`)."""
    try:
        os.setpriority(os.PRIO_PROCESS, child, min(19, os.getpriority(os.PRIO_PROCESS, 0) + CHILD_NICENESS))
    except OSError:   # a platform or sandbox that refuses it: the copy runs at the worker's priority
        pass


def spool_siblings(spool: Path) -> tuple[Path, Path]:
    """The files a child leaves beside its spool: (its error, its payload's size and digest)."""
    return spool.with_suffix(".error"), spool.with_suffix(".meta")


def _remove_spools_left(spool_dir: Path) -> None:
    """What the children of a killed worker left (a spool is locked by its live writer)."""
    for spool in remove_leftovers(spool_dir, ".shopstream-ckpt-*.spool"):
        for sibling in spool_siblings(spool):
            sibling.unlink(missing_ok=True)


class PendingSave:
    """A checkpoint being written in the background (see `BackgroundCheckpoints.begin_save`).

    The loop goes on learning while it is written: `done()` says, without waiting, whether
    it has finished; `finish()` (waits if needed) makes it count: it returns the offset the
    checkpoint holds (the one to commit), or raises OSError, in which case the partition's
    bookkeeping is as if the checkpoint had never begun (events learned since are still
    counted as not checkpointed)."""

    def __init__(self, store: BackgroundStore, state: "Partition", before: "CheckpointMarks", pid: int,
                 spool: Path, froze_gc: bool, spool_lock=None):
        self.store, self.state, self.before = store, state, before
        self.key = store.key(state.topic, state.partition)
        self.snapshot = HeaderFields(state)   # what the header says, as it was when the checkpoint began
        self.next_offset = state.next_offset
        self.pid, self.spool = pid, spool
        self.status: Optional[int] = None
        self.error: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._finished = False
        self.froze_gc = froze_gc
        self.child_maxrss_kib = 0
        self.child_cpu_s = 0.0       # the child's CPU seconds (user + system), known once it exited
        self.hurried = False
        self.started = time.monotonic()
        self.spool_lock = spool_lock   # this process's lock on the spool (see `files.open_locked`)

    def _child_done(self, block: bool) -> bool:
        if self.status is None:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return False
            self.child_maxrss_kib = usage.ru_maxrss  # the child's peak (shared pages included)
            self.child_cpu_s = usage.ru_utime + usage.ru_stime
            self.status = os.waitstatus_to_exitcode(status)
            if self.status != 0:
                error = spool_siblings(self.spool)[0]
                self.error = error.read_text() if error.exists() else f"checkpoint writer exited with {self.status}"
            elif self.error is None:
                self._thread = self.store.publish_spool(self)
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

    def hurry(self) -> None:
        """Give the child the worker's priority back (`CHILD_NICENESS`): the worker is about to wait
        for it, or it has run long. Without CAP_SYS_NICE (or an RLIMIT_NICE that allows it) Linux
        refuses; the copy then finishes at its lower priority."""
        if self.hurried or self.status is not None:
            return
        self.hurried = True
        try:
            os.setpriority(os.PRIO_PROCESS, self.pid, os.getpriority(os.PRIO_PROCESS, 0))
        except OSError:   # not permitted, or the child has just exited
            pass

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
        if timeout is None or timeout > 0:
            self.hurry()   # the worker waits for it now (a no-op if it is done)
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
        for path in (self.spool, *spool_siblings(self.spool)):
            path.unlink(missing_ok=True)
        if self.error is not None:
            self.state.undo_checkpoint(self.before)
            raise OSError(self.error)
        self.store.saw_sequence(self.key, self.snapshot.sequence)
        return self.next_offset


class BackgroundCheckpoints:
    """Mixin for a `CheckpointStore` (see `BackgroundStore`): `begin_save(state)` forks a child
    that writes the checkpoint from a copy-on-write snapshot of the process, so the loop
    stops only for the fork. A store calls `__init__` here from its own."""

    def __init__(self, spool_dir: Optional[Path] = None):
        self.spool_dir = spool_dir   # where the Kafka store's children spool (default: the temp dir)
        self._swept = False          # the spools a killed worker left were removed

    def begin_save(self: BackgroundStore, state: "Partition", freeze_gc: bool = True) -> PendingSave:
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
        before = self.stage(state)
        if freeze_gc:
            _freeze()
        parent = os.getpid()
        spool_dir = Path(self.spool_dir or tempfile.gettempdir())
        if not self._swept:  # spools of a killed worker, once per store
            self._swept = True
            _remove_spools_left(spool_dir)
        key = self.key(state.topic, state.partition)
        spool = spool_dir / (f".shopstream-ckpt-{key.replace('/', '_')}-{os.getpid()}-{secrets.token_hex(4)}-"
                             f"{state.sequence}.spool")
        try:
            # Locked by this process until `finish`: the child writes it, a thread may read it after.
            spool_lock = open_locked(spool)
            pid = os.fork()
        except OSError:
            state.undo_checkpoint(before)
            if freeze_gc:
                _thaw()
            raise
        if pid == 0:  # the child: write, report, exit; never return into the caller's code
            code = 1
            try:
                gc.disable()   # a collection would touch (and so copy) every tracked object
                _die_with_parent(parent)
                self._write_in_child(key, state, spool)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                try:
                    spool_siblings(spool)[0].write_text(f"{type(exc).__name__}: {exc}")
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        _lower_priority(pid)   # here, not in the child: a `hurry` always comes after it
        return PendingSave(self, state, before, pid, spool, froze_gc=freeze_gc, spool_lock=spool_lock)

    def _write_in_child(self, key: str, state: "Partition", spool: Path) -> None:
        """In the forked child: write the checkpoint of `state` (or its spool)."""
        raise NotImplementedError

    def publish_spool(self, pending: PendingSave) -> Optional[threading.Thread]:
        """After the child succeeded: a started thread finishing the write, or None."""
        return None
