"""Artifacts: versioned, checksummed, refused when tampered with or truncated."""

import json

import pytest

from offline.bootstrap import bootstrap
from shopstream.artifacts import ArtifactError, load_artifact
from shopstream.generator import generate, write_jsonl

pytestmark = pytest.mark.slow  # every test here shares a module fixture of 10+ s


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
