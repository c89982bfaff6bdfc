"""A checkpoint names the classes it pickled: those that moved are found through the
migration table (stream/checkpointing/migration.py), and the payload's version is in the
checked header.

tests/data/ckpt3-before-d388c41.ckpt was written by shopstream at abae0a6 (the commit
before the packages were renamed): a logreg/raw engine (window 1e9) after the 40 events of
`generate(40, seed=3)`, 31 predictions open, consumer group "g", partition events-0, unsigned. Its payload names
`shopstream.stream.checkpoints.PartitionState`, a module that no longer exists."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import sys
import types
from pathlib import Path

import pytest

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from stream.checkpointing import migration
from stream.checkpointing.format import (MAGIC, CheckpointError, check_line, decode_state, dump_payload,
                                         encode_state)
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.partition import Partition

OLD = Path(__file__).parent / "data" / "ckpt3-before-d388c41.ckpt"


def test_a_checkpoint_written_before_the_packages_were_renamed_is_restored_and_goes_on(tmp_path):
    assert b"shopstream.stream.checkpoints" in OLD.read_bytes()   # the old class path, in the payload
    assert b'"payload"' not in OLD.read_bytes()[:1000]             # an unversioned header: version 1
    shutil.copy(OLD, tmp_path / "events-0.ckpt")
    restored = DirectoryCheckpointStore(tmp_path, group="g").load("events", 0)
    assert type(restored) is Partition
    assert (restored.next_offset, restored.sequence, restored.origin) == (40, 1, "checkpoint")
    assert restored.paused_because is None and restored.age_origin is None   # this worker's own, fresh
    assert restored.engine.open_predictions == 31 and restored.engine.counts["learned"] == 6
    # It goes on exactly like an engine that never went through a checkpoint.
    original = Engine.fresh("logreg", "raw", window=1e9)
    for offset, record in enumerate(generate(40, seed=3)):   # what the old worker had learned
        original.process(event_from_record(record), offset)
    for offset, record in enumerate(generate(200, seed=4), 40):
        event = event_from_record(record)
        assert restored.engine.process(event, offset) == original.process(event, offset)
    assert restored.engine.counts == original.counts
    # Saved again, it is written under today's class path and payload version.
    store = DirectoryCheckpointStore(tmp_path, group="g")
    store.save(restored)
    data = (tmp_path / "events-0.ckpt").read_bytes()
    header = json.loads(data.split(b"\n")[2])
    assert header["payload"] == migration.PAYLOAD_VERSION and b"stream.partition" in data
    assert b"shopstream.stream" not in data
    assert store.load("events", 0).sequence == 2


def _pickled_under(monkeypatch, module: str, name: str, state: Partition) -> bytes:
    """A checkpoint whose payload names `Partition` as `module.name` (where it once lived)."""
    home = types.ModuleType(module)
    setattr(home, name, Partition)
    where, called = Partition.__module__, Partition.__qualname__
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, module, home)
        try:
            Partition.__module__, Partition.__qualname__ = module, name
            return encode_state(state, signing_key=None)
        finally:
            Partition.__module__, Partition.__qualname__ = where, called


def test_a_class_that_moves_is_found_through_the_migration_table(monkeypatch):
    state = Partition("events", 2, Engine.fresh("logreg", "raw"), next_offset=7)
    data = _pickled_under(monkeypatch, "stream.rooms.old_home", "PartitionRecord", state)
    assert b"stream.rooms.old_home" in data and "stream.rooms.old_home" not in sys.modules
    with pytest.raises(CheckpointError, match="UnpicklingError: a checkpoint may not name stream.rooms.old_home"):
        decode_state(data, "moved", signing_key=None)
    monkeypatch.setitem(migration.MOVED, ("stream.rooms.old_home", "PartitionRecord"),
                        ("stream.partition", "Partition"))
    loaded = decode_state(data, "moved", signing_key=None)
    assert type(loaded) is Partition and (loaded.partition, loaded.next_offset) == (2, 7)


def test_a_payload_may_name_only_what_a_partition_is_made_of(monkeypatch):
    """Under the checks (the HMAC proves who wrote it), a payload naming anything outside the
    packages of a partition's state is refused before that class is even imported."""
    state = Partition("events", 0, Engine.fresh("logreg", "raw"))
    state.engine.extra = [print]   # builtins.print: a builtin that is not data
    with pytest.raises(CheckpointError, match="may not name builtins.print"):
        decode_state(encode_state(state, signing_key=None), "builtin", signing_key=None)
    state.engine.extra = [io.BytesIO]
    with pytest.raises(CheckpointError, match="may not name _io.BytesIO"):
        decode_state(encode_state(state, signing_key=None), "io", signing_key=None)


def _crafted(module: str, name: str, argument) -> bytes:
    """An unsigned checkpoint whose payload calls `module.name(argument)` (STACK_GLOBAL, then REDUCE)."""
    def text(value: str) -> bytes:
        return pickle.BINUNICODE + len(value.encode()).to_bytes(4, "little") + value.encode()
    payload = (b"\x80\x04" + text(module) + text(name) + pickle.STACK_GLOBAL
               + (text(argument) + pickle.TUPLE1 if argument is not None else pickle.EMPTY_TUPLE)
               + pickle.REDUCE + pickle.STOP)
    out = io.BytesIO(payload)
    header = json.dumps({"format": "CKPT-3", "payload": migration.PAYLOAD_VERSION, "group": "", "topic": "events",
                         "partition": 0, "sequence": 0, "next_offset": 0, "checkpoint_id": None,
                         "size": f"{len(payload):020d}", "sha256": hashlib.sha256(payload).hexdigest(),
                         "pickle": 4}).encode()
    return MAGIC + check_line(header, None) + b"\n" + header + b"\n" + out.getvalue()


def test_a_crafted_payload_reaches_no_function_through_an_allowed_module(tmp_path):
    """Unsigned, the allowlist is all that stands between a payload and the functions it names:
    a dotted name walks from a module of ours to `os.system`; `operator`'s getters chain to any
    object; a function of ours that writes files is a tool, not state. Each is refused, uncalled."""
    marker = tmp_path / "called"
    for module, name, argument in (("shopstream.files", "os.system", f"touch {marker}"),
                                   ("stream.checkpointing.format", "os.system", f"touch {marker}"),
                                   ("shopstream.files", "os", None),
                                   ("operator", "attrgetter", "__globals__"),
                                   ("shopstream.open_columns", "attrgetter", "__globals__"),
                                   ("shopstream.files", "remove_leftovers", str(tmp_path)),
                                   ("stream.checkpointing.stores", "DirectoryCheckpointStore", str(tmp_path / "x")),
                                   ("shopstream.exporter", "MetricsServer", "0.0.0.0"),
                                   ("numpy.testing", "assert_equal", "x"),
                                   ("functools", "reduce", "x")):
        with pytest.raises(CheckpointError, match=f"may not name {module}.{name}"):
            decode_state(_crafted(module, name, argument), "crafted", signing_key=None)
    assert not marker.exists()
    # what a state is made of still loads: a class, and a function its pickles call
    assert migration.allowed("collections", "OrderedDict") and migration.allowed("shopstream.recent_ids", "_unpack")


def test_a_payload_version_newer_than_this_reader_is_refused_clearly():
    state = Partition("events", 0, Engine.fresh("logreg", "raw"))
    out = io.BytesIO()
    size, digest = dump_payload(state, out)
    header = json.dumps({"format": "CKPT-3", "payload": migration.PAYLOAD_VERSION + 1, "group": "", "topic": "events",
                         "partition": 0, "sequence": 0, "next_offset": 0, "checkpoint_id": None, "size": size,
                         "sha256": digest, "pickle": pickle.HIGHEST_PROTOCOL}).encode()
    data = MAGIC + check_line(header, None) + b"\n" + header + b"\n" + out.getvalue()
    with pytest.raises(CheckpointError, match=f"payload version {migration.PAYLOAD_VERSION + 1} was written by a "
                                              "newer shopstream"):
        decode_state(data, "future", signing_key=None)


def test_the_signing_key_is_the_one_the_store_was_given_not_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SHOPSTREAM_SIGNING_KEY", raising=False)
    signed = DirectoryCheckpointStore(tmp_path, group="g", signing_key=b"k3y")
    signed.save(Partition("events", 0, Engine.fresh("logreg", "raw"), next_offset=3))
    assert b"hmac-sha256:" in (tmp_path / "events-0.ckpt").read_bytes()[:100]
    assert DirectoryCheckpointStore(tmp_path, group="g", signing_key=b"k3y").load("events", 0).next_offset == 3
    monkeypatch.setenv("SHOPSTREAM_SIGNING_KEY", "k3y")   # the environment is not asked
    with pytest.raises(Exception, match="signed checkpoint, but SHOPSTREAM_SIGNING_KEY is not set"):
        DirectoryCheckpointStore(tmp_path, group="g", signing_key=None).load("events", 0)
