"""Artifacts: versioned, checksummed, refused when tampered with or truncated."""

import hashlib
import json
import pickle

import pytest

import shopstream.models
from offline.bootstrap import bootstrap
from shopstream.artifacts import ArtifactError, list_versions, load_artifact, save_artifact, set_default
from shopstream.generator import generate, write_jsonl

slow = pytest.mark.slow  # the tests of the module fixture (10+ s); the others are fast


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("boot")
    history = root / "history.jsonl"
    write_jsonl(generate(6000, seed=3), history)
    with open(history, "a") as log:
        log.write('{"event_time": "soon", "event_type": "view"}\n')
        log.write(open(history).readline())          # a duplicate event_id
    report = bootstrap(history, root / "out", models=["logreg", "hat"], progress=False)
    return root / "out", report


@slow
def test_bootstrap_writes_versioned_artifacts_and_a_report(artifacts):
    out, report = artifacts
    assert report["data"]["malformed"] == 1 and report["data"]["duplicates"] == 1
    assert report["data"]["events"] == 6000
    for name in ("logreg", "hat"):
        meta = load_artifact(out / report["candidates"][name]["artifact"]).meta
        assert meta["model"] == name and meta["river_version"] == "0.26.1"
        assert meta["data"]["history_sha256"] == report["data"]["history_sha256"]
        assert 0.5 < meta["metrics"]["holdout"]["roc_auc"] <= 1.0
    default = load_artifact(out)   # the root resolves to DEFAULT
    assert default.meta["version"] in report["default"]
    assert (out / "report.md").read_text().count("| logreg |") == 2
    assert (out / "learning_curve.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["default"] == report["default"]


@slow
def test_tampered_artifact_is_refused(artifacts, tmp_path):
    out, report = artifacts
    import shutil

    copy = tmp_path / "a"
    shutil.copytree(out / report["default"], copy)
    data = bytearray((copy / "model.pkl").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.pkl").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match metadata"):
        load_artifact(copy)
    (copy / "model.pkl").write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(ArtifactError, match="refusing to unpickle"):
        load_artifact(copy)
    for meta in ("[]", '{"sha256": 7}', "[" * 100_000):   # JSON, but not metadata: refused, not a TypeError
        (copy / "meta.json").write_text(meta)
        with pytest.raises(ArtifactError, match="unreadable metadata"):
            load_artifact(copy)
    (copy / "meta.json").unlink()
    with pytest.raises(ArtifactError, match="not an artifact"):
        load_artifact(copy)


@slow
def test_models_list_lists_what_it_cannot_read_and_goes_on(tmp_path, capsys):
    """One odd artifact (an empty DEFAULT, meta.json `[]`, without created_at, not JSON) ended the
    listing with a traceback; a mistyped --artifacts said "nothing found", exit 0."""
    from cli.commands import main
    from shopstream.artifacts import save_artifact
    from stream.control_operator import list_models

    root = tmp_path / "artifacts"
    good = save_artifact(root, "logreg", None, None, {"metrics": {"holdout": {"roc_auc": 0.75}}})
    (root / "DEFAULT").write_text("")
    odd = {"a": "[]", "b": "{not json", "c": json.dumps({"version": "c-1"})}   # c: no created_at nor metrics
    for name, text in odd.items():
        (root / name / f"{name}-1").mkdir(parents=True)
        (root / name / f"{name}-1" / "meta.json").write_text(text)
    lines = list_models(str(root)).splitlines()
    assert lines[0] == "artifact versions (rollback targets):" and len(lines) == 5
    assert lines[1] == f"  unreadable: {root}/a/a-1/meta.json: not a JSON object with a version string"
    assert lines[2].startswith(f"  unreadable: {root}/b/b-1/meta.json: Expecting property name")
    assert lines[3].split() == ["c-1", "created", "-", "holdout", "roc_auc", "n/a"]
    assert lines[4].split()[0] == good.name and lines[4].endswith("holdout roc_auc 0.7500")
    for missing in (tmp_path / "typo", root / "DEFAULT"):
        assert main(["models", "list", "--artifacts", str(missing), "--bootstrap-servers", ""]) == 2
        assert capsys.readouterr().err.strip() == f"shopstream models: error: --artifacts {missing}: not a directory"


def small_artifact(root):
    """A quick artifact (no bootstrap), unsigned, and its DEFAULT."""
    directory = save_artifact(root, "logreg", {"w": 1}, {"f": 2}, {}, key=None)
    set_default(root, directory, key=None)
    return directory


def reseal(directory, payload=None, drop=(), **changes):
    """What a consistent artifact (size and sha256 matching) with other contents would hold."""
    if payload is not None:
        (directory / "model.pkl").write_bytes(payload)
    meta = json.loads((directory / "meta.json").read_text())
    payload = (directory / "model.pkl").read_bytes()
    meta.update(changes, sha256=hashlib.sha256(payload).hexdigest(), size_bytes=len(payload))
    (directory / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in drop}))


def newer_class_pickle(monkeypatch):
    """A pickle of a class a newer version has and this one lacks."""
    class FutureModel:
        pass

    FutureModel.__module__, FutureModel.__qualname__ = "shopstream.models", "FutureModel"
    with monkeypatch.context() as patch:
        patch.setattr(shopstream.models, "FutureModel", FutureModel, raising=False)
        return pickle.dumps({"model": FutureModel(), "features": None})


REFUSALS = {
    "newer class": r"model.pkl: not loadable by this version \(made with River 9.9.9\): "
                   r"UnpicklingError: an artifact may not name shopstream.models.FutureModel",
    "a list": r"model.pkl: holds a list, not a dict of 'model' and 'features'",
    "no features": r"model.pkl: holds a dict without 'features'",
    "no model field": r"meta.json: unreadable metadata \(no 'model'\)",
    "model a number": r"meta.json: unreadable metadata \('model' is a number, not a string\)",
    "engine a list": r"meta.json: unreadable metadata \('engine' is an array, not an object\)",
    "newer format": r"meta.json: artifact format 2, this version reads format 1 at most",
}


@pytest.mark.parametrize("case", REFUSALS)
def test_artifact_this_version_cannot_use_is_refused_in_one_line(tmp_path, monkeypatch, case):
    """Consistent (sha256 intact) but from a newer version, or not what the loader uses: a class
    it lacks, another shape, meta fields missing or of another type gave a traceback."""
    directory = small_artifact(tmp_path)
    if case == "newer format":   # this version writes format 1
        assert json.loads((directory / "meta.json").read_text())["format"] == 1
    assert load_artifact(tmp_path, key=None).model == {"w": 1}
    edits = {"newer class": lambda: reseal(directory, newer_class_pickle(monkeypatch), river_version="9.9.9"),
             "a list": lambda: reseal(directory, pickle.dumps([1, 2])),
             "no features": lambda: reseal(directory, pickle.dumps({"model": 1})),
             "no model field": lambda: reseal(directory, drop=("model",)),
             "model a number": lambda: reseal(directory, model=7),
             "engine a list": lambda: reseal(directory, engine=[1]),
             "newer format": lambda: reseal(directory, format=2)}
    edits[case]()
    with pytest.raises(ArtifactError, match=REFUSALS[case]):
        load_artifact(tmp_path, key=None)


@pytest.mark.parametrize("name", ["model.pkl", "meta.json", "DEFAULT"])
def test_oversized_file_is_refused_before_it_is_read(tmp_path, name):
    """A model.pkl of another size than meta.json's was read whole first (6 GB: MemoryError);
    meta.json and DEFAULT are read at most 1 MiB."""
    directory = small_artifact(tmp_path)
    path = {"DEFAULT": tmp_path / "DEFAULT"}.get(name, directory / name)
    with open(path, "a") as file:
        file.write("\n" + " " * (1 << 20 if name != "model.pkl" else 1))
    match = {"model.pkl": r"model.pkl: \d+ bytes, metadata says \d+; .*refusing to unpickle it",
             "meta.json": r"meta.json: unreadable metadata \(larger than 1048576 bytes",
             "DEFAULT": r"DEFAULT: unreadable pointer \(larger than 1048576 bytes"}[name]
    with pytest.raises(ArtifactError, match=match):
        load_artifact(tmp_path, key=None)


def test_default_pointer_not_utf8_is_refused_naming_it(tmp_path):
    """A byte that is not UTF-8 in DEFAULT gave a bare UnicodeDecodeError (the worker: "invalid
    engine settings: 'utf-8' codec can't decode...", no file named)."""
    small_artifact(tmp_path)
    (tmp_path / "DEFAULT").write_bytes(b"\xff" + (tmp_path / "DEFAULT").read_bytes())
    with pytest.raises(ArtifactError, match=r"DEFAULT: unreadable pointer \(not UTF-8 text, byte 0xff at offset 0\)"):
        load_artifact(tmp_path, key=None)
    assert list_versions(tmp_path)[0]["unreadable"].endswith("DEFAULT: not UTF-8 text, byte 0xff at offset 0")


def test_an_artifact_whose_features_or_engine_settings_this_version_cannot_run_is_refused_naming_it(tmp_path):
    """Consistent (size and sha256 match), but its feature state is no feature set, or its recorded
    engine settings are not values: each was a traceback, or an error naming no file."""
    from shopstream.lineup import build_engine

    directory = small_artifact(tmp_path)   # its features: a dict
    with pytest.raises(ArtifactError, match=r"model.pkl: holds dict as its feature state, not a feature set"):
        build_engine(str(tmp_path), signing_key=None)
    reseal(directory, engine={"window": "x"})
    with pytest.raises(ArtifactError, match=r"meta.json: the engine settings it records cannot be used: "):
        build_engine(str(tmp_path), signing_key=None)
