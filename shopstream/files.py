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
