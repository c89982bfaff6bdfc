"""Files that are whole or absent: the one atomic write of artifacts and checkpoints."""

from __future__ import annotations

import os
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb", buffering=buffering) as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:  # a full disk leaves no half-written temp file behind
            os.unlink(tmp)
        except OSError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_leftovers(directory: Path, pattern: str, pid_of: Callable[[str], int]) -> list[Path]:
    """Delete the files of `directory` matching `pattern` whose writer (the pid `pid_of`
    reads from the name) is gone: the half-written temp files of a killed process. A file
    of a live process, or one whose name holds no pid, is left alone.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in (".a.ckpt.999999999.tmp", f".b.ckpt.{os.getpid()}.tmp", ".c.ckpt.x.tmp"):
    ...     _ = (folder / name).write_bytes(b"half")
    >>> [p.name for p in remove_leftovers(folder, ".*.tmp", lambda name: int(name.split(".")[-2]))]
    ['.a.ckpt.999999999.tmp']
    """
    removed = []
    for path in sorted(directory.glob(pattern)):
        try:
            pid = pid_of(path.name)
        except (ValueError, IndexError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:   # no such pid can exist
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
