"""Without a signing key, what a checkpoint or an artifact may name when unpickled is all that stands
between a file anyone who may write the directory (or the checkpoint topics) crafts and the worker:
numpy as a package admitted `numpy.memmap`, which wrote any file while the payload was unpickled (an
artifact's model.pkl, then code run by the next artifact load); `builtins.bytearray` gave 286 MiB
for a 38-byte payload; and a directory checkpoint whose header claimed 200 MiB read them whole from
a 4 KiB sparse file before its digest could refuse them. Genuine checkpoints and artifacts, of every
catalog model under both feature sets, still load: the names they need are exactly those listed."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import tracemalloc

import numpy
import pytest

from shopstream.artifacts import (MODEL_NAMES, ArtifactError, RestrictedUnpickler, load_artifact, save_artifact,
                                  set_default)
from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.models import CATALOG
from stream.checkpointing import migration
from stream.checkpointing.format import CheckpointError, decode_state, encode_head, encode_state
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.partition import Partition


def text(value: str) -> bytes:
    return pickle.BINUNICODE + len(value.encode()).to_bytes(4, "little") + value.encode()


def memmap_write(path, content: bytes) -> bytes:
    """Pickle opcodes for `numpy.memmap(path, 'S<n>', 'w+', 0, (1,))[0] = content` (then dropped)."""
    return (text("numpy") + text("memmap") + pickle.STACK_GLOBAL + pickle.MARK + text(str(path))
            + text(f"S{len(content)}") + text("w+") + b"K\x00K\x01\x85" + pickle.TUPLE + pickle.REDUCE
            + b"K\x00" + pickle.BINBYTES + len(content).to_bytes(4, "little") + content + pickle.SETITEM
            + pickle.POP)


def call(module: str, name: str, argument: bytes) -> bytes:
    """Pickle opcodes for `module.name(argument)`; `argument` is already pickled."""
    return text(module) + text(name) + pickle.STACK_GLOBAL + argument + pickle.TUPLE1 + pickle.REDUCE


def unsigned_checkpoint(root, payload: bytes, size: int | None = None, digest: str | None = None):
    """An unsigned directory checkpoint of partition events-0 holding `payload` (its size and digest
    those of `payload` unless given)."""
    header = json.dumps({"format": "CKPT-3", "payload": migration.PAYLOAD_VERSION, "group": "g",
                         "topic": "events", "partition": 0, "sequence": 1, "next_offset": 0, "checkpoint_id": None,
                         "size": f"{len(payload) if size is None else size:020d}",
                         "sha256": digest or hashlib.sha256(payload).hexdigest(), "pickle": 5},
                        sort_keys=True, separators=(",", ":")).encode()
    path = root / "events-0.ckpt"
    path.write_bytes(encode_head(header, None) + payload)
    return path


def test_a_checkpoint_cannot_write_a_file_through_numpy_memmap(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"original\n")
    payload = b"\x80\x04" + memmap_write(victim, b"import os; os.system('id')\n") + b"N." + pickle.dumps(None)
    unsigned_checkpoint(tmp_path, payload)
    with pytest.raises(CheckpointError, match="may not name numpy.memmap"):
        DirectoryCheckpointStore(tmp_path, group="g", signing_key=None).load("events", 0)
    assert victim.read_bytes() == b"original\n"
    assert not migration.allowed("numpy", "memmap", numpy.memmap)


@pytest.mark.parametrize("subclass", [numpy.memmap, numpy.matrix, numpy.recarray, numpy.char.chararray,
                                      numpy.ma.MaskedArray])
def test_no_ndarray_subclass_is_admitted_even_if_a_list_named_it(monkeypatch, subclass):
    module, name = subclass.__module__, subclass.__name__
    monkeypatch.setitem(migration.STATE_NAMES, module, frozenset({name}))
    monkeypatch.setitem(MODEL_NAMES, module, frozenset({name}))
    payload = b"\x80\x04" + text(module) + text(name) + pickle.STACK_GLOBAL + b"."
    for unpickler in (migration.CheckpointUnpickler, RestrictedUnpickler):
        with pytest.raises(pickle.UnpicklingError, match=f"may not name {module}.{name}: a subclass of numpy.ndarray"):
            unpickler(io.BytesIO(payload)).load()
    assert not migration.allowed(module, name, subclass)


@pytest.mark.parametrize("module, name, argument", [
    ("builtins", "bytearray", b"J\x00\xa3\xe1\x11"),          # bytearray(300_000_000): 286 MiB
    ("builtins", "bytes", b"J\x00\xa3\xe1\x11"),
    ("builtins", "range", b"J\x00\xa3\xe1\x11"),              # list(range(...)): one int object each
    ("fractions", "Fraction", text("1e1000000")),
    ("decimal", "Decimal", text("1e999999999")),
    ("numpy", "ndarray", b"J\x00\xa3\xe1\x11\x85"),            # an ndarray of any shape, any dtype
    ("numpy.core.multiarray", "_reconstruct", b"K\x00"), ("numpy._core.multiarray", "_reconstruct", b"K\x00"),
    ("numpy", "fromfile", text("/etc/passwd")), ("numpy", "load", text("/etc/passwd")),
    ("numpy.lib.format", "open_memmap", text("/tmp/x")), ("copyreg", "_reconstructor", b"K\x00"),
    ("river.stream", "iter_csv", text("/etc/passwd")), ("shopstream.files", "write_atomically", text("/tmp/x")),
])
def test_a_payload_naming_what_no_genuine_pickle_does_is_refused_uncalled(module, name, argument):
    payload = b"\x80\x04" + call(module, name, argument) + b"."
    for unpickler in (migration.CheckpointUnpickler, RestrictedUnpickler):
        with pytest.raises(pickle.UnpicklingError, match=f"may not name {module}.{name}"):
            unpickler(io.BytesIO(payload)).load()


def genuine_engines():
    """Every catalog model under both feature sets, having learned (trees split, forests grew)."""
    records = list(generate(1500, seed=11))
    for feature_set in ("raw", "shop"):
        for name in CATALOG:
            engine = Engine.fresh(name, feature_set, window=600.0, drift_reaction="challenger", drift_delta=0.01)
            for offset, record in enumerate(records):
                engine.process(event_from_record(record), offset)
            yield feature_set, name, engine


def test_genuine_checkpoints_and_artifacts_of_every_catalog_model_load(tmp_path):
    for feature_set, name, engine in genuine_engines():
        state = Partition("events", 0, engine, next_offset=1500)
        restored = decode_state(encode_state(state, signing_key=None), name, signing_key=None)
        assert restored.engine.counts == engine.counts and restored.engine.open_predictions == engine.open_predictions
        directory = save_artifact(tmp_path / feature_set, name, engine.champion_slot.model, engine.features, {},
                                  key=None)
        set_default(tmp_path / feature_set, directory, key=None)
        loaded = load_artifact(tmp_path / feature_set, key=None)
        assert type(loaded.model) is type(engine.champion_slot.model)
        assert type(loaded.features) is type(engine.features)



@pytest.mark.parametrize("name", ["hat", "arf"])
def test_trees_grown_on_text_valued_raw_features_checkpoint_and_load(name):
    """Raw features may be text: River's trees then split on nominal branches, with nominal splitters and
    other leaves than numbers alone give. Not on the first list: a hat or arf worker refused its own checkpoint."""
    import random

    from shopstream.events import Event

    rng = random.Random(3)
    engine = Engine.fresh(name, "raw")
    for i in range(2500):
        x = {"a": rng.random(), "b": rng.choice(["red", "blue", "green"]), "c": rng.choice(["x", "y"])}
        label = rng.random() < 0.15 + (0.6 if x["b"] == "red" else 0.0)
        engine.process(Event(1.7e9 + i, "view", f"p{i % 50}", f"u{i % 30}", f"s{i % 40}", event_id=f"e{i}",
                             features=x, label=label))
    state = Partition("events", 0, engine, next_offset=2500)
    restored = decode_state(encode_state(state, signing_key=None), name, signing_key=None)
    assert restored.engine.counts == engine.counts and engine.counts["learned"] == 2500
    assert RestrictedUnpickler(io.BytesIO(pickle.dumps(engine.champion_slot.model, protocol=5))).load() is not None



def test_a_learn_outbox_holding_unpublished_events_checkpoints_and_loads():
    """Shared learning: events observed but not yet published (and an earlier epoch's, sealed) are part of a
    partition's state between two publications; the first list had neither `Event` nor `CatalogEvents`."""
    from shopstream.events import Event
    from shopstream.shared_learning import LearnOutbox

    outbox = LearnOutbox(source=1)
    for offset in (5, 6, 0):   # offsets going back: a new epoch, the first sealed
        outbox.observe(offset, Event(1.6e9, "view", "p", "u", "s", features={"a": 1.0}))
    copy = migration.CheckpointUnpickler(io.BytesIO(pickle.dumps(outbox, protocol=5))).load()
    assert [(batch.epoch, [row[0] for row in batch.events]) for batch in copy.drain_catalog()] == [(0, [5, 6]),
                                                                                                  (1, [0])]


def test_every_listed_name_exists_and_no_entry_names_a_whole_package():
    for module, names in migration.STATE_NAMES.items():
        assert names and all(name and "." not in name for name in names), module
        if module.startswith("numpy.core."):   # numpy 1's spelling, read from checkpoints it wrote
            continue
        for name in names:
            assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    assert all(MODEL_NAMES[module] <= migration.STATE_NAMES[module] for module in MODEL_NAMES)


def test_an_artifact_is_unpickled_only_as_far_as_a_model_and_its_features_go(tmp_path):
    """No signing key: a model.pkl whose size and sha256 match its metadata (anyone who may write the
    directory rewrites both) runs no function and writes no file."""
    marker, victim = tmp_path / "pwned", tmp_path / "victim.txt"
    victim.write_bytes(b"original\n")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload, refusal in ((pickle.dumps(Evil()), "may not name posix.system"),
                             (b"\x80\x04" + memmap_write(victim, b"x") + b"N.", "may not name numpy.memmap"),
                             (pickle.dumps({"model": bytearray(3), "features": None}, protocol=2),
                              "may not name __builtin__.bytearray")):   # protocol 2 spells it so
        directory = save_artifact(tmp_path / "a", "logreg", {"w": 1}, {"f": 2}, {}, key=None)
        (directory / "model.pkl").write_bytes(payload)
        meta = json.loads((directory / "meta.json").read_text())
        meta.update(sha256=hashlib.sha256(payload).hexdigest(), size_bytes=len(payload))
        (directory / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(ArtifactError, match=f"UnpicklingError: an artifact {refusal}"):
            load_artifact(directory, key=None)
    assert not marker.exists() and victim.read_bytes() == b"original\n"


def peak_bytes_held(load) -> int:
    tracemalloc.start()
    try:
        load()
    except CheckpointError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_sparse_checkpoint_claiming_a_huge_payload_is_refused_without_holding_it(tmp_path, monkeypatch):
    size = 64 << 20
    path = unsigned_checkpoint(tmp_path, b"", size=size, digest="0" * 64)
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size + size + 1)   # holes: a few KiB on disk, read as 64 MiB of zeros
    assert path.stat().st_blocks * 512 < 1 << 20
    store = DirectoryCheckpointStore(tmp_path, group="g", signing_key=None)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        store.load("events", 0)
    assert peak_bytes_held(lambda: store.load("events", 0)) < 8 << 20
    # a header claiming more than the file holds at all (1 TiB) is refused before any of it is read
    unsigned_checkpoint(tmp_path, b"x" * 100, size=1 << 40)
    with monkeypatch.context() as patch:
        patch.setattr("stream.checkpointing.stores._pieces", lambda *args: pytest.fail("the payload was read"))
        with pytest.raises(CheckpointError, match=r"checksum mismatch \(torn or modified file\)"):
            store.load("events", 0)


def test_a_genuine_checkpoint_in_a_file_with_holes_still_loads(tmp_path, monkeypatch):
    """A file system that reports fewer blocks than bytes (holes, compression) costs a second read, no refusal."""
    store = DirectoryCheckpointStore(tmp_path, group="g", signing_key=None)
    store.save(Partition("events", 0, Engine.fresh("logreg", "raw"), next_offset=5))
    data = (tmp_path / "events-0.ckpt").read_bytes()
    real_fstat = os.fstat

    class Sparse:
        def __init__(self, info):
            self.st_size, self.st_mode, self.st_blocks = info.st_size, info.st_mode, 0

    monkeypatch.setattr(os, "fstat", lambda fd: Sparse(real_fstat(fd)))
    assert store.load("events", 0).next_offset == 5
    monkeypatch.undo()
    assert (tmp_path / "events-0.ckpt").read_bytes() == data


class _Reduces:
    """Pickles as `reduce` says (callable, arguments[, state]): a crafted payload, built by pickle."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def test_a_dtype_state_saying_it_holds_objects_is_refused_not_a_segfault(tmp_path):
    """`numpy.dtype` is listed (arrays need it), but a real dtype takes any state pickle's BUILD gives
    it: flags saying a void dtype holds objects, then an array set to that dtype read past its buffer
    and the worker died of SIGSEGV. Run in a child, so that a crash is a failure, not the test run's end."""
    frombuffer = importlib.import_module("numpy._core.numeric")._frombuffer
    void_with_objects = _Reduces(numpy.dtype, ("V8", False, True), (3, "|", None, None, None, 8, 1, 63))
    float64 = _Reduces(numpy.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 0))
    array = _Reduces(frombuffer, (bytearray(8), float64, (1,), "C"), (1, (10**6,), void_with_objects, False, [1]))
    (tmp_path / "payload").write_bytes(pickle.dumps(array, protocol=5))
    child = subprocess.run([sys.executable, "-c", "import io, sys\n"
                            "from stream.checkpointing.migration import CheckpointUnpickler\n"
                            "try:\n    CheckpointUnpickler(open(sys.argv[1], 'rb')).load()\n"
                            "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n",
                            str(tmp_path / "payload")], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0 and "UnpicklingError: a pickle may not give dtype |V8 the state" in child.stdout, \
        (child.returncode, child.stdout, child.stderr[-500:])
    # what numpy pickles itself still loads, from arrays to generators
    values = {"f8": numpy.arange(6.0).reshape(2, 3), "u4": numpy.arange(4, dtype=">u4"), "b": numpy.zeros(3, bool),
              "scalar": numpy.float64(1.5), "rng": numpy.random.default_rng(7)}
    back = migration.CheckpointUnpickler(io.BytesIO(pickle.dumps(values, protocol=5))).load()
    assert all(numpy.array_equal(back[k], values[k]) for k in ("f8", "u4", "b", "scalar"))
    assert back["u4"].dtype == numpy.dtype(">u4") and back["rng"].random() == values["rng"].random()
