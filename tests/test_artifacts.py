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
