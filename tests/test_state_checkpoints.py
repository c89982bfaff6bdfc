"""Checkpoint format CKPT-3 in a directory: streamed (no whole-state copy in memory),
checked before unpickling, bound to its partition and group, old formats refused."""

import os
import hashlib
import pickle
import time

import pytest

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.signing import KEY_ENV, SignatureError
from stream.checkpointing.format import CheckpointError, decode_state, encode_state
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.partition import Partition as PartitionState


def busy_state(n=3000, partition=0):
    engine = Engine.fresh("logreg", "shop", window=1e9)   # nothing expires: open predictions pile up
    for offset, record in enumerate(generate(n, seed=11)):
        engine.process(event_from_record(record), offset)
    return PartitionState("events", partition, engine, next_offset=n, events_since_checkpoint=n)


def test_a_checkpoint_is_streamed_to_its_file_and_comes_back_the_same(tmp_path, monkeypatch):
    state = busy_state()
    probes = [{"f": float(i), "g": 1.0 / (i + 1)} for i in range(5)]
    probes = [p.x for p in list(state.engine.joiner._by_seq.values())[:20] if p.x is not None] or probes
    expected = [state.engine.champion_slot.model.predict_proba_one(x) for x in probes]
    monkeypatch.setattr(pickle, "dumps", lambda *a, **k: pytest.fail("the whole state pickled into memory"))
    store = DirectoryCheckpointStore(tmp_path, group="g")
    store.save(state)
    data = store.path("events", 0).read_bytes()
    assert data.startswith(b"SHOPSTREAM-CKPT-3\nsha256:")
    header = data.split(b"\n")[2]
    assert b'"group":"g"' in header and b'"topic":"events"' in header and b'"sequence":1' in header
    monkeypatch.undo()
    loaded = DirectoryCheckpointStore(tmp_path, group="g").load("events", 0)
    assert loaded.origin == "checkpoint" and loaded.next_offset == 3000 and loaded.sequence == 1
    assert loaded.engine.open_predictions == state.engine.open_predictions > 100
    assert [loaded.engine.champion_slot.model.predict_proba_one(x) for x in probes] == expected
    assert not list(tmp_path.glob(".*tmp"))


def test_torn_forged_and_old_format_checkpoints_are_refused(tmp_path, monkeypatch):
    store = DirectoryCheckpointStore(tmp_path)
    store.save(busy_state(500))
    path = store.path("events", 0)
    good = path.read_bytes()
    path.write_bytes(good[:-100])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        store.load("events", 0)
    path.write_bytes(good[:30])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        store.load("events", 0)
    for old in (b"SHOPSTREAM-CKPT-2\nsha256:00\n1\n", b"SHOPSTREAM-CKPT-1\nsha256:00\n"):
        path.write_bytes(old + pickle.dumps("anything"))
        with pytest.raises(CheckpointError, match=r"format CKPT-[12] was written by an older shopstream; this "
                                                  r"version reads only CKPT-3.*--force-fresh-start"):
            store.load("events", 0)
    path.write_bytes(b"something else entirely")
    with pytest.raises(CheckpointError, match="not a shopstream checkpoint"):
        store.load("events", 0)
    # a newer format is not called older (whose advice, --force-fresh-start, would throw the state away)
    path.write_bytes(good.replace(b"SHOPSTREAM-CKPT-3\n", b"SHOPSTREAM-CKPT-4\n", 1))
    with pytest.raises(CheckpointError, match="format CKPT-4 was written by a newer shopstream"):
        store.load("events", 0)
    for cut in (16, 17):   # "SHOPSTREAM-CKPT-" and "SHOPSTREAM-CKPT-3", no line end: truncated, not old
        path.write_bytes(good[:cut])
        with pytest.raises(CheckpointError, match="a truncated or damaged checkpoint"):
            store.load("events", 0)
    deep = b"[" * 100_000 + b"]" * 100_000   # a header JSON nested past the parser's depth, its sha256 right
    path.write_bytes(b"SHOPSTREAM-CKPT-3\nsha256:" + hashlib.sha256(deep).hexdigest().encode() + b"\n" + deep + b"\n")
    with pytest.raises(CheckpointError, match="unreadable header .RecursionError"):
        store.load("events", 0)

    monkeypatch.setenv(KEY_ENV, "k3y")
    signed = encode_state(busy_state(500))
    header_at = signed.index(b"{")
    forged = bytearray(signed)
    forged[header_at + 20] ^= 1            # in the signed header
    with pytest.raises(SignatureError, match="HMAC does not match"):
        decode_state(bytes(forged), "forged header")
    forged = bytearray(signed)
    forged[len(signed) // 2] ^= 1          # in the payload: its digest is in the signed header
    with pytest.raises(SignatureError, match="HMAC does not match"):
        decode_state(bytes(forged), "forged payload")
    check_at = signed.index(b"hmac-sha256:") + len(b"hmac-sha256:")
    for byte in (0x80, 0xff):   # past ASCII in the tag: refused like any other flip (compare_digest raised TypeError)
        forged = bytearray(signed)
        forged[check_at + 5] = byte
        with pytest.raises(SignatureError, match="HMAC does not match"):
            decode_state(bytes(forged), "a non-ASCII tag")
    assert decode_state(signed, "good").next_offset == 500


@pytest.mark.parametrize("change", [{"sequence": "x"}, {"sequence": [1]}, {"sequence": 1e999}, {"size": 1e999},
                                    {"sha256": None}, {"sha256": [0]}, "no sha256", "no sequence"])
def test_a_header_whose_check_holds_but_whose_fields_do_not_is_refused(tmp_path, change):
    """A header is checked by its sha256 line (no key set): a writer's bug, or a forger, can give its fields
    any type with the check right. Each such header raised ValueError, TypeError, KeyError or OverflowError
    from `load`, which the worker's restore does not catch, nor `models list`: refused with the reason now."""
    import json

    store = DirectoryCheckpointStore(tmp_path)
    store.save(busy_state(50))
    path = store.path("events", 0)
    magic, check, header, payload = path.read_bytes().split(b"\n", 3)
    fields = json.loads(header)
    if change == "no sha256":
        del fields["sha256"]
    elif change == "no sequence":
        del fields["sequence"]
    else:
        fields.update(change)
    header = json.dumps(fields).encode()   # 1e999 is written as Infinity, which json reads back as a float
    path.write_bytes(b"\n".join([magic, b"sha256:" + hashlib.sha256(header).hexdigest().encode(), header, payload]))
    with pytest.raises(CheckpointError, match="checkpoint events-0: unreadable header"):
        store.load("events", 0)


def test_a_full_disk_leaves_the_last_checkpoint_and_the_bookkeeping(tmp_path):
    store = DirectoryCheckpointStore(tmp_path / "ckpt")
    state = busy_state(500)
    store.save(state)
    (tmp_path / "ckpt").rename(tmp_path / "good")
    (tmp_path / "ckpt").write_text("not a directory")
    state.events_since_checkpoint, state.next_offset = 7, 507
    with pytest.raises(OSError):
        store.save(state)
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 7, 500)


def more_events(state, n, seed=5):
    for record in generate(n, seed=seed):
        state.engine.process(event_from_record(record), state.next_offset)
        state.next_offset += 1
        state.events_since_checkpoint += 1


def test_a_background_checkpoint_holds_the_state_as_it_was_when_it_began(tmp_path):
    store = DirectoryCheckpointStore(tmp_path / "ckpt", group="g")
    state = busy_state(2000)
    opened = state.engine.open_predictions
    pending = store.begin_save(state)          # forks; the loop goes on at once
    assert state.events_since_checkpoint == 0 and state.sequence == 1
    more_events(state, 500)                    # learned while the child writes
    offset = pending.finish()
    assert offset == 2000 and pending.done()
    assert state.events_since_checkpoint == 500 and state.next_offset == 2500
    loaded = DirectoryCheckpointStore(tmp_path / "ckpt", group="g").load("events", 0)
    assert loaded.next_offset == 2000 and loaded.sequence == 1 and loaded.engine.open_predictions == opened
    assert not list((tmp_path / "ckpt").glob(".*tmp"))

    (tmp_path / "ckpt").rename(tmp_path / "good")
    (tmp_path / "ckpt").write_text("not a directory: the write fails in the child")
    pending = store.begin_save(state)
    more_events(state, 100, seed=6)
    with pytest.raises(OSError, match="NotADirectoryError|FileExistsError|Errno"):
        pending.finish()
    # As if the failed checkpoint had never begun: every event since the last good one counts.
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 600, 2000)
    (tmp_path / "ckpt").unlink()
    (tmp_path / "good").rename(tmp_path / "ckpt")
    pending = store.begin_save(state)
    assert pending.finish() == 2600 and state.sequence == 2
    assert DirectoryCheckpointStore(tmp_path / "ckpt", group="g").load("events", 0).next_offset == 2600


def test_a_forked_copy_runs_at_a_lower_priority_until_the_worker_waits_for_it(tmp_path):
    import threading

    from stream.checkpointing.background import CHILD_NICENESS

    go, seen = tmp_path / "go", tmp_path / "child-niceness"

    class Slow(DirectoryCheckpointStore):
        def _write_in_child(self, key, state, spool):
            while not go.exists():   # the test reads the child's priority meanwhile
                time.sleep(0.005)
            seen.write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))
            super()._write_in_child(key, state, spool)

    loop = os.getpriority(os.PRIO_PROCESS, 0)
    store = Slow(tmp_path / "ckpt", group="g")
    pending = store.begin_save(busy_state(200))
    assert os.getpriority(os.PRIO_PROCESS, pending.pid) == min(19, loop + CHILD_NICENESS)   # 19: the lowest
    assert loop == 19 or os.getpriority(os.PRIO_PROCESS, pending.pid) > loop
    assert os.getpriority(os.PRIO_PROCESS, 0) == loop   # the worker itself is untouched
    threading.Timer(0.3, go.touch).start()   # the child writes once finish() has begun to wait
    assert pending.finish() == 200 and pending.child_cpu_s > 0
    from conftest import may_raise_priority

    assert int(seen.read_text()) == (loop if may_raise_priority() else min(19, loop + CHILD_NICENESS)), \
        "waited for, the copy runs at the worker's priority"
    assert DirectoryCheckpointStore(tmp_path / "ckpt", group="g").load("events", 0).next_offset == 200


def test_a_synced_checkpoint_is_published_only_once_durable_and_holds_the_state_it_began_with(tmp_path,
                                                                                           monkeypatch):
    import threading

    store = DirectoryCheckpointStore(tmp_path / "ckpt", group="g")
    state = busy_state(2000)
    opened = state.engine.open_predictions
    may_sync = threading.Event()
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (may_sync.wait(10), fsync(fd)))
    pending = store.begin_synced_save(state)   # pickled now; a thread fsyncs, then renames
    assert state.events_since_checkpoint == 0 and state.sequence == 1
    more_events(state, 500)                    # learned while the thread waits for the disk
    time.sleep(0.05)
    assert not pending.done() and not (tmp_path / "ckpt" / "events-0.ckpt").exists(), "not durable: not published"
    may_sync.set()
    assert pending.finish() == 2000 and pending.done()
    assert state.events_since_checkpoint == 500 and state.next_offset == 2500
    assert store._syncing[store.key("events", 0)].state is None, "the store keeps no revoked partition alive"
    loaded = DirectoryCheckpointStore(tmp_path / "ckpt", group="g").load("events", 0)
    assert loaded.next_offset == 2000 and loaded.sequence == 1 and loaded.engine.open_predictions == opened
    assert not list((tmp_path / "ckpt").glob(".*tmp"))


def test_a_stalled_sync_is_abandoned_and_never_published_later(tmp_path, monkeypatch):
    import threading

    store = DirectoryCheckpointStore(tmp_path / "ckpt", group="g")
    state = busy_state(1000)
    store.save(state)
    more_events(state, 200)
    may_sync, synced = threading.Event(), threading.Event()
    fsync = os.fsync

    def stuck_fsync(fd):   # a dead network volume that comes back later
        may_sync.wait(10)
        fsync(fd)
        synced.set()

    monkeypatch.setattr(os, "fsync", stuck_fsync)
    pending = store.begin_synced_save(state)
    with pytest.raises(OSError, match="fsync stalled.*abandoned"):
        pending.finish(timeout=0.1)
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 200, 1000)
    for write in (store.begin_synced_save, store.save):   # nothing else is written while it hangs
        with pytest.raises(OSError, match="an earlier checkpoint's fsync or rename has not returned"):
            write(state)
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 200, 1000)
    may_sync.set()   # the disk answers after all: the abandoned file must not replace the checkpoint
    assert synced.wait(10)
    pending._thread.join(10)
    assert DirectoryCheckpointStore(tmp_path / "ckpt", group="g").load("events", 0).next_offset == 1000
    assert not list((tmp_path / "ckpt").glob(".*tmp")), "the abandoned temp file is removed"
    monkeypatch.undo()
    assert store.begin_synced_save(state).finish() == 1200 and state.sequence == 2


def test_a_synced_checkpoint_is_published_only_once_its_outputs_are_acknowledged(tmp_path):
    store = DirectoryCheckpointStore(tmp_path / "ckpt", group="g")
    state = busy_state(500)
    store.save(state)
    more_events(state, 50)
    waited = []

    def refused(seconds):   # the broker refused a prediction the checkpoint would cover
        waited.append(seconds)
        return "outputs not acknowledged: NotLeaderForPartitionError"

    with pytest.raises(OSError, match="^outputs not acknowledged: NotLeaderForPartitionError$"):
        store.begin_synced_save(state, refused, 2.5).finish()
    assert waited == [2.5]
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 50, 500)
    assert DirectoryCheckpointStore(tmp_path / "ckpt", group="g").load("events", 0).next_offset == 500
    assert not list((tmp_path / "ckpt").glob(".*tmp"))
    assert store.begin_synced_save(state, lambda seconds: None).finish() == 550


def test_a_full_disk_leaves_no_temp_file_beside_the_last_checkpoint(tmp_path):
    """The write fails part-way (EFBIG past RLIMIT_FSIZE: a full disk as the writer sees it; Python
    ignores SIGXFSZ), and so does the close that flushes the rest: the temp file must still go."""
    import resource

    store = DirectoryCheckpointStore(tmp_path / "ckpt", group="g")
    state = busy_state(500)
    store.save(state)
    more_events(state, 7)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(OSError, match="File too large"):
            store.begin_synced_save(state)
        with pytest.raises(OSError, match="File too large"):
            store.save(state)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["events-0.ckpt"]
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 7, 500)
    assert store.begin_synced_save(state).finish() == 507


def test_a_synced_checkpoint_whose_thread_cannot_start_leaves_nothing(tmp_path, monkeypatch):
    import threading

    store = DirectoryCheckpointStore(tmp_path / "ckpt", group="g")
    state = busy_state(300)
    store.save(state)
    more_events(state, 3)

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(OSError, match="cannot start its sync thread: RuntimeError: can't start new thread"):
        store.begin_synced_save(state)
    monkeypatch.undo()
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 3, 300)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["events-0.ckpt"]


def test_a_synced_checkpoint_that_cannot_be_written_leaves_the_last_one_and_the_bookkeeping(tmp_path):
    store = DirectoryCheckpointStore(tmp_path / "ckpt", group="g")
    state = busy_state(500)
    store.save(state)
    more_events(state, 7)
    (tmp_path / "ckpt").rename(tmp_path / "good")
    (tmp_path / "ckpt").write_text("not a directory")
    with pytest.raises(OSError):
        store.begin_synced_save(state)
    assert (state.sequence, state.events_since_checkpoint, state.checkpointed_offset) == (1, 7, 500)
    assert [p.name for p in (tmp_path / "good").iterdir()] == ["events-0.ckpt"]


@pytest.mark.slow
def test_a_restored_engine_goes_on_exactly_like_the_original(tmp_path):
    """Open predictions go into a checkpoint apart, in batches, and their index is rebuilt
    on load: the restored engine then resolves and learns exactly what the original does."""
    import stream.checkpointing.format as checkpoints

    records = list(generate(12_000, seed=21))
    engine = Engine.fresh("logreg", "shop", window=360_000.0)   # ~1,000 open at the checkpoint
    for offset, record in enumerate(records[:6000]):
        engine.process(event_from_record(record), offset)
    state = PartitionState("events", 0, engine, next_offset=6000, events_since_checkpoint=6000)
    assert engine.open_predictions > 500
    checkpoints._BATCH, batch = 37, checkpoints._BATCH   # many batches, one of them short
    try:
        DirectoryCheckpointStore(tmp_path).save(state)
    finally:
        checkpoints._BATCH = batch
    restored = DirectoryCheckpointStore(tmp_path).load("events", 0).engine
    assert restored.open_predictions == engine.open_predictions
    for offset, record in enumerate(records[6000:], 6000):
        event = event_from_record(record)
        assert restored.process(event, offset) == engine.process(event, offset)
    assert restored.counts == engine.counts and restored.joiner.counts == engine.joiner.counts
    assert restored.open_predictions == engine.open_predictions
    probes = [engine.features.transform(event_from_record(r)) for r in records[-50:]]
    assert [restored.champion_slot.model.predict_proba_one(x) for x in probes] == \
        [engine.champion_slot.model.predict_proba_one(x) for x in probes]
    assert pickle.dumps(restored.slots[0].scores.cumulative.values()) == \
        pickle.dumps(engine.slots[0].scores.cumulative.values())


@pytest.mark.slow
def test_a_checkpoint_child_dies_with_its_worker_and_the_collector_is_thawed(tmp_path):
    """A child outliving a killed worker could rename an old snapshot over a newer checkpoint;
    and a collector left frozen would never reclaim cycles made before a fork."""
    import gc
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, sys, time
        from shopstream.engine import Engine
        from stream.checkpointing.stores import DirectoryCheckpointStore
        from stream.partition import Partition as PartitionState
        store = DirectoryCheckpointStore({str(tmp_path / "ckpt")!r}, "g")
        store._write_in_child = lambda key, state, spool: time.sleep(60)   # a slow writer
        pending = store.begin_save(PartitionState("t", 0, Engine.fresh("logreg", "raw"), next_offset=5))
        print(pending.pid, flush=True)
        time.sleep(60)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(worker.stdout.readline())
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().split()[2] == "Z":
                    break   # dead, waiting for init to reap it
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the checkpoint child outlived its worker")
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))

    from stream.checkpointing.background import _FROZEN_FORKS

    store = DirectoryCheckpointStore(tmp_path / "thaw", "g")
    forks_before = _FROZEN_FORKS[0]
    pending = store.begin_save(PartitionState("t", 1, Engine.fresh("logreg", "raw"), next_offset=3))
    assert gc.get_freeze_count() > 0 and _FROZEN_FORKS[0] == forks_before + 1
    assert pending.finish() == 3
    assert _FROZEN_FORKS[0] == forks_before
    if forks_before == 0:   # no other child alive: the collector has its objects back
        assert gc.get_freeze_count() == 0


def test_the_next_store_removes_what_a_killed_writer_left(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()   # a pid that has exited
    root = tmp_path / "ckpt"
    root.mkdir()
    left = root / f".t-0.ckpt.{dead}.tmp"
    left.write_bytes(b"half a checkpoint")
    live = root / f".t-1.ckpt.{os.getpid()}.tmp"   # a writer still at work: not touched
    from shopstream.files import open_locked

    live_writer = open_locked(live)
    live_writer.write(b"half a checkpoint")
    spools = tmp_path / "spool"
    spools.mkdir()
    spool = spools / f".shopstream-ckpt-g_t-0-{dead}-3.spool"
    spool.write_bytes(b"half a spool")
    store = DirectoryCheckpointStore(root, "g")
    assert not left.exists() and live.exists()
    store.spool_dir = spools
    store.begin_save(PartitionState("t", 0, Engine.fresh("logreg", "raw"), next_offset=2)).finish()
    assert not spool.exists() and store.load("t", 0).next_offset == 2
    live_writer.close()


def test_a_live_writer_in_another_container_keeps_its_temp_file_whatever_its_pid(tmp_path):
    """Two containers share the checkpoint volume; process ids repeat across them, so a
    writer's pid can be one that is dead (or another process) here. Its temp file was
    removed as a killed writer's leftover, and its checkpoint failed. Its lock now says it lives."""
    import subprocess
    import sys

    dead_here = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout.strip()
    root = tmp_path / "shared"
    root.mkdir()
    theirs = root / f".t-0.ckpt.{dead_here}.tmp"   # what the other container's writer named it
    writer = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys\n"   # a writer holds a lock on what it writes (shopstream.files.open_locked)
        f"out = open({str(theirs)!r}, 'wb'); fcntl.flock(out, fcntl.LOCK_EX); out.write(b'half'); out.flush()\n"
        "print('writing', flush=True); sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        DirectoryCheckpointStore(root, "g")   # a worker starting in this container
        assert theirs.exists(), "a live writer's file is left alone"
    finally:
        writer.communicate("")
    DirectoryCheckpointStore(root, "g")   # once that writer is gone, its file is a leftover
    assert not theirs.exists()


def test_a_group_never_writes_over_another_groups_checkpoint_in_a_shared_directory(tmp_path):
    """The directory store names a file by topic and partition only: a second group given the same
    directory used to replace the first's checkpoint, which then refused to load ("belongs to
    consumer group ..."). Now the second group's save is refused, naming both, and writes nothing."""
    mine = DirectoryCheckpointStore(tmp_path, group="shop-a")
    mine.save(busy_state(300))
    before = (tmp_path / "events-0.ckpt").read_bytes()
    theirs = DirectoryCheckpointStore(tmp_path, group="shop-b")
    state = busy_state(200)
    for save in (theirs.save, theirs.begin_synced_save):
        with pytest.raises(OSError, match="holds consumer group 'shop-a'.s checkpoint, not 'shop-b'.s: two groups"):
            save(state)
        assert state.next_offset == 200 and state.sequence == 0   # its bookkeeping as it was
    assert (tmp_path / "events-0.ckpt").read_bytes() == before
    assert mine.load("events", 0).next_offset == 300
    mine.save(busy_state(400))   # its own group goes on writing it
    assert mine.load("events", 0).next_offset == 400


def test_a_restored_partition_keeps_its_engine_settings_out_loud_and_takes_this_workers_caps(tmp_path, caplog):
    """A worker restarted with --window 60 --max-sessions 500 restored its checkpoints with window
    1800 and 200,000 sessions and said nothing. The checkpoint's engine settings stay (its open
    predictions were made under them), named in a warning; the caps, limits on memory, are the worker's."""
    import logging

    from shopstream.config import EngineConfig
    from shopstream.features import FeatureCaps
    from stream.restore import PartitionRestorer

    store = DirectoryCheckpointStore(tmp_path, group="g")
    store.save(busy_state(300))
    Tp = __import__("collections").namedtuple("Tp", "topic partition")
    restorer = PartitionRestorer(store, lambda: None, None, "g", config=EngineConfig(window=60.0, features="shop"),
                                 caps=FeatureCaps(sessions=500))
    with caplog.at_level(logging.INFO, logger="stream.restore"):
        state = restorer.restore(Tp("events", 0))
    assert state.engine.config.window == 1e9 and state.next_offset == 300
    assert "restored under the engine settings of its checkpoint: window 1000000000.0 (this worker's: 60.0)" \
        in caplog.text
    assert state.engine.features.caps.sessions == 500 and "feature caps are now this worker's" in caplog.text
    caplog.clear()
    same = PartitionRestorer(store, lambda: None, None, "g", config=state.engine.config, caps=FeatureCaps())
    with caplog.at_level(logging.INFO, logger="stream.restore"):
        same.restore(Tp("events", 0))
    assert "restored under" not in caplog.text and "caps" not in caplog.text   # nothing differs: nothing said


def test_the_payload_unpickled_is_the_payload_hashed_even_if_the_file_changes_between(tmp_path, monkeypatch):
    """The store hashed the file, then read it again to unpickle it: whoever could write the file in
    between got an unchecked payload unpickled (under a signing key too). Now the bytes hashed are
    the bytes unpickled."""
    from stream.checkpointing import stores

    store = DirectoryCheckpointStore(tmp_path, group="g")
    store.save(busy_state(300))
    path = tmp_path / "events-0.ckpt"
    other = tmp_path / "other"
    DirectoryCheckpointStore(other, group="g").save(busy_state(100))
    checked = stores.check_payload

    def check_then_swap(pieces, header, where, key):
        checked(pieces, header, where, key)
        path.write_bytes((other / "events-0.ckpt").read_bytes())   # replaced after the check
    monkeypatch.setattr(stores, "check_payload", check_then_swap)
    assert store.load("events", 0).next_offset == 300
