"""After a checkpoint forks, `Prefault` copies the pages the worker shares with the child in
bulk (stream/checkpointing/prefault.py): the worker's later writes then take no page fault,
and neither side sees the other's writes."""

from __future__ import annotations

import hashlib
import os
import resource
import time

import pytest

from shopstream.config import ConfigError
from shopstream.engine import Engine
from stream.checkpointing import prefault as prefault_module
from stream.checkpointing.prefault import PAGE, Prefault, shared_runs
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.partition import Partition
from stream.settings import CheckpointSettings, WorkerSettings

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/pagemap"), reason="Linux /proc only")

MIB = 1 << 20


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _write_every_page(buffer: bytearray) -> int:
    """Minor faults taken while writing one byte of every page of `buffer`."""
    before = _faults()
    for i in range(0, len(buffer), PAGE):
        buffer[i] = (buffer[i] + 1) & 0xFF
    return _faults() - before


def _fork_sharing(buffer: bytearray) -> tuple[int, int]:
    """A child that waits, then reports (by exit code) whether `buffer` still holds what it did at the fork."""
    digest = hashlib.sha256(buffer).digest()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(write)
        os.read(read, 1)   # until the parent has written
        os._exit(0 if hashlib.sha256(buffer).digest() == digest else 3)
    os.close(read)
    return child, write


def _end_child(child: int, write: int) -> int:
    os.write(write, b"x")
    os.close(write)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


@pytest.mark.parametrize("copy_ahead", [False, True])
def test_the_worker_writes_without_faults_once_its_shared_pages_are_copied(copy_ahead):
    buffer = bytearray(os.urandom(64 * MIB))
    pages = len(buffer) // PAGE
    child, write = _fork_sharing(buffer)
    try:
        if copy_ahead:
            copier = Prefault().start()
            copier.join(timeout=60)
            assert copier.error is None and copier.pages >= pages
        faults = _write_every_page(buffer)
    finally:
        status = _end_child(child, write)
    assert status == 0   # the child's snapshot never saw the parent's writes
    if copy_ahead:
        assert faults < pages // 20
    else:
        assert faults >= pages * 0.9   # a copy-on-write fault per page: what the copier saves


def test_shared_runs_cover_a_buffer_shared_with_a_child_and_nothing_once_it_is_gone():
    buffer = bytearray(os.urandom(32 * MIB))
    child, write = _fork_sharing(buffer)
    try:
        shared = sum(length for _, length in shared_runs())
        assert all(length <= prefault_module.RUN_PAGES * PAGE for _, length in shared_runs())
    finally:
        assert _end_child(child, write) == 0
    assert shared >= len(buffer)
    alone = sum(length for _, length in shared_runs())
    assert alone < shared - len(buffer) // 2   # no child: its pages are this process's alone


def test_a_stopped_copier_copies_nothing_and_an_unsupported_kernel_turns_it_off(monkeypatch):
    copier = Prefault()
    copier.stop()
    copier.start().join(timeout=30)
    assert copier.pages == 0 and copier.error is None
    monkeypatch.setattr(prefault_module, "MADV_POPULATE_WRITE", 0x7FFF)   # an advice no kernel knows: EINVAL
    monkeypatch.setattr(prefault_module, "_unsupported", [])
    buffer = bytearray(os.urandom(4 * MIB))
    child, write = _fork_sharing(buffer)
    try:
        refused = Prefault().start()
        refused.join(timeout=30)
    finally:
        assert _end_child(child, write) == 0
    assert refused.pages == 0 and "refused" in refused.error
    later = Prefault().start()   # off for the process from then on: no thread at all
    assert later._thread is None


def test_a_forked_checkpoint_copies_ahead_and_stops_once_its_child_is_done(tmp_path):
    store = DirectoryCheckpointStore(tmp_path)
    state = Partition("t", 0, Engine.fresh("logreg", "raw"), next_offset=3)
    ballast = bytearray(os.urandom(16 * MIB))   # noqa: F841 - pages to share
    pending = store.begin_save(state, prefault=True)
    assert pending.prefault is not None
    assert pending.finish(timeout=60) == 3
    deadline = time.monotonic() + 30
    while pending.prefault._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pending.prefault._thread.is_alive() and pending.prefault._stop.is_set()
    assert store.load("t", 0).next_offset == 3
    unasked = store.begin_save(state)
    assert unasked.prefault is None   # off unless asked
    unasked.finish(timeout=60)


def test_the_setting_is_on_by_default_and_refuses_anything_but_on_or_off(monkeypatch, capsys):
    from cli import main

    assert WorkerSettings().checkpoints.prefault == "on"
    assert WorkerSettings.from_options(checkpoint_prefault="off").checkpoints.prefault == "off"
    with pytest.raises(ConfigError, match="prefault"):
        CheckpointSettings(prefault="maybe")
    monkeypatch.setenv("SHOPSTREAM_CHECKPOINT_PREFAULT", "maybe")   # the variable is the option too
    assert main(["worker"]) == 2
    assert "prefault" in capsys.readouterr().err
