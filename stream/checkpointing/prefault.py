"""After a checkpoint forks, copy the worker's shared pages in bulk instead of one trap at a time.

A forked checkpoint child shares every page of the worker's memory, write-protected. In CPython
each read of an object writes its reference count, so the loop's first write to each page traps
and copies it: with a large state, thousands of faults per 0.1 s, each about 4.7 us in this
machine's VM, and the loop falls behind its stream for seconds (BENCHMARKS.md section 13:
7.1 faults and +21 us per event after a fork at 749,161 open predictions, against 0.10 and none
without it).

`Prefault` asks Linux to do that copying ahead of the loop: a thread of its own reads
/proc/self/pagemap for the pages of the worker's private anonymous memory that are present
and still shared, and hands each run of them to madvise(MADV_POPULATE_WRITE) (Linux 5.14+),
which breaks the sharing as a write would, without changing a byte. ctypes releases the GIL
around the call, and the thread runs at a lower priority (`NICENESS`): it takes what the loop
leaves of a core, or another core. It measured 1.9 us a page (401,548 pages in 0.78 s), after
which the loop ran at its no-fork speed. It stops early when the child has exited (its pages
are then the worker's alone: a write re-enables them without a copy).

The price is memory: while the child lives, the worker holds its own copy of every present
page of its heap, up to twice its usual footprint (lazy copying reaches that only if the loop
writes every page). `--checkpoint-prefault off` keeps the lazy copies. A kernel without
MADV_POPULATE_WRITE (EINVAL) turns it off for the process, with one log line.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from typing import Optional

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: Pages per madvise call: a stop request waits for at most one such call (16 MiB of 4 KiB pages).
RUN_PAGES = 4096
#: Added to the thread's nice value (Linux: a thread's own priority): the loop comes first on a shared core.
NICENESS = 10
_PRESENT, _EXCLUSIVE = 1 << 63, 1 << 56
_unsupported: list[str] = []   # why the kernel refused, once: every later Prefault does nothing


def shared_runs(maps_path: str = "/proc/self/maps", pagemap_path: str = "/proc/self/pagemap",
                max_pages: int = RUN_PAGES) -> list[tuple[int, int]]:
    """(address, length) of every run of present pages that another process still maps, in the
    private anonymous mappings and the [heap] (where Python keeps its objects), cut every
    `max_pages` pages."""
    import numpy as np

    runs: list[tuple[int, int]] = []
    with open(maps_path) as maps, open(pagemap_path, "rb") as pagemap:
        for line in maps:
            fields = line.split()
            if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
                continue   # not private and writable, or a file's pages, a stack, the vdso
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            flags = np.frombuffer(pagemap.read((end - start) // PAGE * 8), dtype=np.uint64)
            wanted = np.flatnonzero((flags & np.uint64(_PRESENT | _EXCLUSIVE)) == np.uint64(_PRESENT))
            if not wanted.size:
                continue
            cuts = np.flatnonzero(np.diff(wanted) != 1) + 1
            for first, last in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [wanted.size]))):
                page, pages = int(wanted[first]), int(last - first)
                for offset in range(0, pages, max_pages):
                    runs.append((start + (page + offset) * PAGE, min(max_pages, pages - offset) * PAGE))
    return runs


class Prefault:
    """Copies the worker's shared pages after a fork, in a thread (see the module docstring).

    `start()` returns at once; `stop()` asks the thread to end after its current run (the child
    has exited); `pages`, `seconds` and `error` say what it did."""

    def __init__(self) -> None:
        self.pages = 0
        self.seconds = 0.0
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Prefault":
        if not _unsupported:
            self._thread = threading.Thread(target=self._run, name="shopstream-prefault", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        started = time.monotonic()
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS))
        except OSError:   # refused: it runs at the worker's priority, without the GIL all the same
            pass
        try:
            madvise = ctypes.CDLL(None, use_errno=True).madvise
            madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            for address, length in shared_runs():
                if self._stop.is_set():
                    break
                if madvise(address, length, MADV_POPULATE_WRITE) == 0:
                    self.pages += length // PAGE
                    continue
                code = ctypes.get_errno()
                if code == errno.EINVAL:   # an older kernel: no MADV_POPULATE_WRITE
                    _unsupported.append(f"madvise(MADV_POPULATE_WRITE) refused: {os.strerror(code)}")
                    log.warning("checkpoint prefault off for this worker: %s (Linux 5.14+ has it); forks copy "
                                "pages as the loop writes them", _unsupported[0])
                    self.error = _unsupported[0]
                    break
                # ENOMEM: the loop unmapped the range since the scan; EFAULT and the rest: that run only
        except (OSError, AttributeError, ValueError) as exc:   # no /proc, no libc madvise: nothing copied ahead
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.seconds = time.monotonic() - started
