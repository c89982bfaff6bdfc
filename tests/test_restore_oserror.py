"""A partition whose checkpoint cannot be read (an OSError opening or reading it): held, never the
worker's end, never a new start over it.

A directory, a FIFO or a file the process may not read by a checkpoint's name, or EIO under it,
stopped the worker at assignment (exit 2, its other partitions cut short), and a FIFO hung it for
good (open() waits for a writer). Now the restore says which checkpoint and why
(`restore.CheckpointUnreadable`, the wording `models list --checkpoints` uses), and the
checkpointer holds the partition: paused, counted, tried again, while the others go on. A
checkpoint that is cut short is no OSError: it stays a refused one (`CheckpointError`)."""

from __future__ import annotations

import builtins
import logging
import os
import stat
import threading
import time

import pytest
from kafka import TopicPartition

from stream.checkpointing.format import CheckpointError
from stream.restore import CheckpointUnreadable, PartitionRestorer
from test_worker_parts import events, make_worker


def within(seconds: float, call, unblock=None):
    """`call()`'s result, or AssertionError if it has not returned in `seconds` (then `unblock()`)."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            unblock()
            thread.join(5)
        raise AssertionError(f"still waiting after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def open_fifo_for_writing(path):
    """What a hung reader of a FIFO waits for: a writer (opened and closed, the reader sees its end)."""
    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


class EIOAfterHeader:
    """A checkpoint's handle whose payload cannot be read: EIO after its header was."""

    def __init__(self, handle):
        self.handle = handle

    def read(self, *args):
        raise OSError(5, "Input/output error")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def checkpointed(tmp_path):
    """A store that holds checkpoints of partitions 0 and 1 (at offset 100), and partition 1's path."""
    worker, clients = make_worker(tmp_path, {0: events(100), 1: events(100, 1)})
    assert worker.run() == 0
    return clients.store, tmp_path / "ckpt" / "events-1.ckpt"


def make_unreadable(kind, store, path, monkeypatch):
    """Partition 1's checkpoint made unreadable as `kind` says; returns the reason expected."""
    if kind == "directory":
        path.unlink()
        path.mkdir()
        return "IsADirectoryError: Is a directory"
    if kind == "fifo":
        path.unlink()
        os.mkfifo(path)
        return f"OSError: {path} is not a regular file (a FIFO or a device)"
    if kind == "permission":   # (chmod 000 stops no root: the error the kernel gives anyone else)
        def denied(name, *args, **kwargs):
            if str(name) == str(path):
                raise PermissionError(13, "Permission denied", str(name))
            return builtins.open(name, *args, **kwargs)

        monkeypatch.setattr("stream.checkpointing.stores.open", denied, raising=False)
        return "PermissionError: Permission denied"
    assert kind == "eio"
    read_head = store._read_head

    def payload_unreadable(key, where):
        found = read_head(key, where)
        return (found[0], EIOAfterHeader(found[1])) if found is not None and key == "events-1" else found

    monkeypatch.setattr(store, "_read_head", payload_unreadable)
    return "OSError: Input/output error"


def as_it_was(path) -> tuple:
    """What is at `path`: its kind and, for a file, its bytes."""
    mode = os.lstat(path).st_mode
    return stat.S_IFMT(mode), path.read_bytes() if stat.S_ISREG(mode) else None


KINDS = ["directory", "fifo", "permission", "eio"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("force_fresh_start", [False, True])
def test_a_checkpoint_that_cannot_be_read_is_neither_refused_nor_taken_as_absent(tmp_path, monkeypatch, kind,
                                                                                force_fresh_start):
    """The restore raises CheckpointUnreadable naming the partition, the checkpoint and why (its cause the
    OSError), --force-fresh-start or not: no new start is made over it, and nothing is written over it."""
    store, path = checkpointed(tmp_path)
    reason = make_unreadable(kind, store, path, monkeypatch)
    before = as_it_was(path)
    restorer = PartitionRestorer(store, lambda: pytest.fail("no new start over an unreadable checkpoint"), None,
                                 "g", force_fresh_start=force_fresh_start)
    fifo = path if kind == "fifo" else None
    tp0, tp1 = TopicPartition("events", 0), TopicPartition("events", 1)
    with pytest.raises(CheckpointUnreadable) as raised:
        within(5, lambda: restorer.restore(tp1), lambda: open_fifo_for_writing(fifo) if fifo else None)
    assert str(raised.value) == f"partition 1: checkpoint events-1: cannot be read: {reason}"
    assert isinstance(raised.value.__cause__, OSError) and isinstance(raised.value, OSError)
    assert restorer.restore(tp0).next_offset == 100, "the other partition restores as before"
    monkeypatch.undo()
    assert as_it_was(path) == before, "nothing written over it"


@pytest.mark.parametrize("kind", KINDS)
def test_models_list_names_the_same_reason_and_never_waits_on_a_fifo(tmp_path, monkeypatch, kind):
    store, path = checkpointed(tmp_path)
    reason = make_unreadable(kind, store, path, monkeypatch)
    refused: dict = {}
    fifo = path if kind == "fifo" else None
    states = within(5, lambda: store.load_all(refused), lambda: open_fifo_for_writing(fifo) if fifo else None)
    assert {key[1]: state.next_offset for key, state in states.items()} == {0: 100}
    assert refused == {("events", 1): f"checkpoint events-1: cannot be read: {reason}"}


def test_a_fifo_by_a_checkpoint_s_name_holds_up_no_save(tmp_path):
    """A save reads the group of the file it replaces (`_group_in_file`): open() of a FIFO waited there too."""
    store, path = checkpointed(tmp_path)
    state = store.load("events", 1)
    path.unlink()
    os.mkfifo(path)
    within(5, lambda: store.save(state), lambda: open_fifo_for_writing(path))
    assert path.is_file() and store.load("events", 1).next_offset == 100


def test_a_checkpoint_that_vanishes_after_listing_is_passed_over_and_one_cut_short_is_refused(tmp_path):
    """Gone between listing and opening: no checkpoint (models list passes it over; a restore makes a
    new start, as for any partition without one: with a signing key the committed offset refuses that,
    test_worker_parts). Cut short (a short read): no OSError but a torn file, refused with its reason."""
    store, path = checkpointed(tmp_path)
    listed, whole = store._keys(), path.read_bytes()
    path.unlink()
    store._keys = lambda: listed
    refused: dict = {}
    assert set(store.load_all(refused)) == {("events", 0)} and refused == {}
    assert store.load("events", 1) is None
    header = whole.index(b"\n", whole.index(b"\n") + 1) + 1   # magic and check line, header line
    for cut in (3, header - 5, header + 10, len(whole) - 1):
        path.write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match="checkpoint events-1: (not a shopstream|.*torn|.*truncated)"):
            store.load("events", 1)


def test_a_held_partition_is_paused_counted_retried_and_let_go_of(tmp_path, caplog):
    worker, clients = make_worker(tmp_path, {0: events(10), 1: events(10, 1)})
    worker.membership.subscribe()
    consumer, checkpointer = worker.consumer, worker.checkpointer
    tp = consumer.tp(1)
    attempts: list = []

    def again():
        attempts.append(tp)
        checkpointer.hold(tp, "partition 1: checkpoint events-1: cannot be read: OSError: Input/output error", again)

    with caplog.at_level(logging.ERROR, logger="stream.checkpointer"):
        checkpointer.hold(tp, "partition 1: checkpoint events-1: cannot be read: IsADirectoryError: Is a directory",
                          again)
        assert consumer.paused() == {tp} and "IsADirectoryError" in checkpointer.blocked[tp]
        assert checkpointer.unreadable._value.get() == 1
        assert worker.registry.get_sample_value("shopstream_checkpoint_held") == 1
        checkpointer.retry(now=1e9)
        checkpointer.retry(now=1e9 + checkpointer.retry_seconds)
    assert attempts == [tp, tp] and consumer.paused() == {tp} and "Input/output" in checkpointer.blocked[tp]
    assert checkpointer.unreadable._value.get() == 3
    said = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(said) == 2, "said when held and when the reason changed, not at every retry"
    assert "partition held (paused, none of its records read)" in said[0]
    assert not [c for c in clients.calls if c[0] == "save"], "nothing of a held partition is saved"

    def restored():
        attempts.append(tp)
        worker.partitions[tp] = worker.restorer.start_over(tp)

    checkpointer.held[tp] = (checkpointer.held[tp][0], restored)
    checkpointer.retry(now=1e10)
    assert tp not in checkpointer.held and tp not in checkpointer.blocked and consumer.paused() == set()
    other = consumer.tp(0)
    checkpointer.hold(other, "partition 0: checkpoint events-0: cannot be read: OSError: ...", again)
    checkpointer.release([other])   # revoked while held: let go of, nothing to save
    assert not checkpointer.held and not checkpointer.blocked
    assert worker.registry.get_sample_value("shopstream_checkpoint_held") == 0
    assert [c[:2] for c in clients.calls if c[0] == "save"] == [], "nothing saved for either"


def test_a_worker_holds_a_partition_whose_checkpoint_cannot_be_read_and_goes_on(tmp_path):
    """Partition 1's checkpoint is a directory at the assignment: partition 0 is read to its end,
    partition 1 waits, paused, none of its records read; once its checkpoint is back it is restored
    from it (offset 100, not 0) and the run ends as one that never met the directory."""
    first, _ = make_worker(tmp_path / "a", {0: events(100), 1: events(100, 1)})
    assert first.run() == 0
    path = tmp_path / "a" / "ckpt" / "events-1.ckpt"
    aside = tmp_path / "a" / "events-1.ckpt.aside"
    path.rename(aside)
    path.mkdir()
    worker, clients = make_worker(tmp_path / "a", {0: events(250), 1: events(250, 1)})
    worker.checkpointer.retry_seconds = 0.0
    worker.membership.subscribe()
    consumer = worker.consumer
    tp0, tp1 = consumer.tp(0), consumer.tp(1)
    deadline, poll = time.monotonic() + 60, consumer.poll
    seen: dict = {}

    def watched_poll(timeout_ms=0):
        assert time.monotonic() < deadline, "the worker never went on"
        if tp1 in worker.checkpointer.held and worker.partitions.get(tp0) is not None \
                and worker.partitions[tp0].next_offset == 250:   # partition 0 read to its end meanwhile
            seen.update(blocked=dict(worker.blocked), paused=consumer.paused())
            path.rmdir()
            aside.rename(path)   # its checkpoint readable again
        return poll(timeout_ms)

    consumer.poll = watched_poll
    assert worker.run() == 0 and worker.fatal is None
    assert "cannot be read: IsADirectoryError" in seen["blocked"][tp1] and seen["paused"] == {tp1}
    assert worker.checkpointer.unreadable._value.get() >= 1
    assert worker.handled == 150 + 150, "both went on from their checkpoints' offset 100"
    uninterrupted, _ = make_worker(tmp_path / "b", {0: events(250), 1: events(250, 1)})
    assert uninterrupted.run() == 0
    for partition in (0, 1):
        a, b = clients.store.load("events", partition), uninterrupted.store.load("events", partition)
        assert a.next_offset == b.next_offset == 250 and a.engine.counts == b.engine.counts



def test_a_fifo_named_like_a_leftover_temp_file_holds_up_no_store(tmp_path):
    """The store removes a killed writer's temp files when it starts: a FIFO by such a name made its
    open() wait for a writer (a worker's start and `models list` hung). Now opened without waiting."""
    from shopstream.files import remove_leftovers

    os.mkfifo(tmp_path / ".events-0.ckpt.1-x.tmp")
    (tmp_path / ".events-1.ckpt.1-y.tmp").write_bytes(b"half")
    removed: list = []
    finder = threading.Thread(target=lambda: removed.extend(remove_leftovers(tmp_path, ".*.tmp")), daemon=True)
    finder.start()
    finder.join(5)
    assert not finder.is_alive(), "remove_leftovers waited on the FIFO"
    assert sorted(p.name for p in removed) == [".events-0.ckpt.1-x.tmp", ".events-1.ckpt.1-y.tmp"]
