"""Files that are whole or absent: the one atomic write of artifacts and checkpoints."""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: Path, write: Callable[[BinaryIO], object], buffering: int = -1) -> None:
    """Call `write(file)` on a temp file beside `path`, fsync, rename over `path`, fsync
    the directory: readers never see half a file; on any error nothing is left behind
    and `path` is untouched.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.bin"
    >>> write_atomically(target, lambda out: out.write(b"whole"))
    >>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
    (b'whole', ['a.bin'])
    """
    out, tmp = begin_atomic_write(path, write, buffering)
    finish_atomic_write(out, tmp, path)


def begin_atomic_write(path: Path, write: Callable[[BinaryIO], object],
                       buffering: int = -1) -> tuple[BinaryIO, Path]:
    """The first half of `write_atomically`: `write(file)` on a new temp file beside `path`,
    flushed to the kernel, not yet durable. Returns the file (open: its lock marks a live
    writer) and its path, for `finish_atomic_write` (any thread). On error nothing is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and a random part: process ids repeat across containers sharing a volume
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    out = open_locked(tmp, buffering)
    try:
        write(out)
        out.flush()
    except BaseException:
        discard(out, tmp)
        raise
    return out, tmp


def finish_atomic_write(out: BinaryIO, tmp: Path, path: Path,
                        may_publish: Callable[[], bool] = lambda: True) -> None:
    """The second half: fsync the temp file, rename it over `path` unless `may_publish()` says
    no by then (OSError; it is called once, just before the rename), fsync the directory.
    On error before the rename, the temp file is removed and `path` is untouched."""
    try:
        with out:
            os.fsync(out.fileno())
            if not may_publish():
                raise OSError(f"{tmp.name}: not published: its writer was abandoned")
            os.replace(tmp, path)   # still locked: a sweeper never takes it for a leftover
    except BaseException:
        discard(out, tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def discard(out: BinaryIO, tmp: Path) -> None:
    """A failed write leaves nothing behind (a full disk, say)."""
    try:
        out.close()   # closes the file even when flushing its buffer fails (the disk is still full)
    except OSError:
        pass
    try:
        os.unlink(tmp)
    except OSError:
        pass


def open_locked(path: Path, buffering: int = -1) -> BinaryIO:
    """Create `path` for writing, holding an exclusive lock on it for as long as it is open:
    the mark of a live writer that `remove_leftovers` respects (the kernel drops the lock when
    its process dies, kill -9 included, in whichever container it ran)."""
    while True:
        out = open(path, "wb", buffering=buffering)
        fcntl.flock(out.fileno(), fcntl.LOCK_EX)
        if os.fstat(out.fileno()).st_nlink:
            return out
        out.close()   # a sweeper removed it between our create and our lock: create it again


def remove_leftovers(directory: Path, pattern: str) -> list[Path]:
    """Delete the files of `directory` matching `pattern` that no live writer holds (see
    `open_locked`): the half-written temp files of a killed process. Decided by the lock,
    not by a process id: ids are not unique across containers that share a volume.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".a.ckpt.1-dead.tmp").write_bytes(b"half")
    >>> live = open_locked(folder / ".b.ckpt.1-live.tmp")
    >>> [p.name for p in remove_leftovers(folder, ".*.tmp")], sorted(p.name for p in folder.iterdir())
    (['.a.ckpt.1-dead.tmp'], ['.b.ckpt.1-live.tmp'])
    >>> live.close()
    """
    removed = []
    for path in sorted(directory.glob(pattern)):
        try:
            handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO by that name: no wait for a writer
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:   # held: a writer is at work
            os.close(handle)
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(handle)
    return removed
