"""The settings objects: one default per setting, the command line derived from them, and an
artifact's training settings enforced on the workers that run it."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import fields

import pytest

from cli import build_parser
from shopstream.config import EngineConfig
from shopstream.generator import generate, write_jsonl
from shopstream.lineup import ArtifactMismatch, Lineup, build_engine
from offline.bootstrap import bootstrap
from stream.connection import KafkaConnection
from stream.settings import PARTS, CheckpointSettings, WorkerSettings, option_name


@pytest.fixture(scope="module")
def artifacts_600(tmp_path_factory):
    """A logreg artifact trained with a 600 s attribution window."""
    out = tmp_path_factory.mktemp("artifacts")
    history = out / "history.jsonl"
    write_jsonl(generate(4000, seed=5), history)
    bootstrap(history, out, models=["logreg"], config=EngineConfig(window=600), progress=False)
    return str(out)


def test_a_worker_refuses_an_artifact_trained_under_other_settings(artifacts_600):
    with pytest.raises(ArtifactMismatch, match=r"window 1800.0 \(the artifact: 600.0\).*--adopt-artifact-settings"):
        build_engine(artifacts_600, EngineConfig())
    engine, origin = build_engine(artifacts_600, EngineConfig(window=600))
    assert origin.startswith("artifact:") and engine.joiner.window == 600



def test_a_challengers_artifact_trained_under_other_settings_is_refused_too(tmp_path):
    """Only the DEFAULT's settings were checked: a challenger's newest artifact trained under another
    window (or feature set) ran, learning from labels of another window than it was trained on."""
    import shutil

    history = tmp_path / "history.jsonl"
    write_jsonl(generate(2000, seed=6), history)
    out, other = tmp_path / "artifacts", tmp_path / "other"
    bootstrap(history, out, models=["logreg"], config=EngineConfig(), progress=False)   # the DEFAULT: 1800 s
    bootstrap(history, other, models=["logreg_adagrad"], config=EngineConfig(window=600), progress=False)
    engine, _ = build_engine(str(out), EngineConfig(), Lineup(challengers=["logreg_adagrad"]))
    assert engine.slot("logreg_adagrad").version == "fresh"   # no artifact of it: a fresh one
    shutil.copytree(other / "logreg_adagrad", out / "logreg_adagrad")
    with pytest.raises(ArtifactMismatch, match=r"artifact logreg_adagrad-\S+ was trained under other settings: "
                                               r"window 1800.0 \(the artifact: 600.0\); retrain logreg_adagrad"):
        build_engine(str(out), EngineConfig(), Lineup(challengers=["logreg_adagrad"]))


def test_adopting_the_artifact_settings_is_logged(artifacts_600, caplog):
    with caplog.at_level(logging.WARNING, logger="shopstream.lineup"):
        engine, _ = build_engine(artifacts_600, EngineConfig(window=1200, features="raw", metric_window=77),
                                 adopt_artifact_settings=True)
    assert (engine.config.window, engine.config.features, engine.config.metric_window) == (600.0, "shop", 77)
    assert "adopting the settings artifact" in caplog.text and "features 'raw' (the artifact: 'shop')" in caplog.text


def test_the_worker_command_stops_with_one_line_before_contacting_kafka(artifacts_600, tmp_path):
    result = subprocess.run([sys.executable, "-m", "cli", "worker", "--artifacts", artifacts_600,
                             "--bootstrap-servers", "127.0.0.1:1", "--checkpoints", str(tmp_path / "c"),
                             "--metrics-port", "-1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("shopstream worker: error: invalid engine settings: artifact logreg-") and \
        "window 1800.0 (the artifact: 600.0)" in line


def test_every_option_of_the_worker_comes_from_a_settings_field_with_its_default(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("SHOPSTREAM_"):
            monkeypatch.delenv(name)
    args = build_parser().parse_args(["worker"])
    settings = WorkerSettings.from_args(args)
    assert settings == WorkerSettings(), "the parser's defaults are the settings' defaults"
    for part in (*PARTS.values(), WorkerSettings, CheckpointSettings, KafkaConnection):
        for f in fields(part):
            if "help" in f.metadata:
                assert hasattr(args, option_name(part, f)), f"{part.__name__}.{f.name} has no worker option"
    for f in (f for part in (*PARTS.values(), WorkerSettings) for f in fields(part)):
        if "help" in f.metadata and f.default is None:  # no default to take a type from: the metadata says
            assert f.metadata.get("type") is not None, f"{f.name} has no type for its option"
    changed = WorkerSettings.from_args(build_parser().parse_args(
        ["worker", "--window", "600", "--checkpoint-every", "7", "--challengers", "hat", "--no-auto-promote",
         "--max-sessions", "9", "--security-protocol", "SASL_PLAINTEXT", "--sasl-username", "u",
         "--sasl-password", "hunter2", "--mlp-learning-rate", "0.0003",
         "--client-id", "w1", "--artifacts", "a"]))
    assert (changed.lineup.mlp_learning_rate, changed.client_id, changed.artifacts) == (0.0003, "w1", "a")
    assert (changed.engine.window, changed.checkpoints.every, changed.lineup.challengers) == (600.0, 7, ("hat",))
    assert changed.lineup.promotion is None and changed.caps.sessions == 9
    assert "hunter2" not in repr(changed) and changed.kafka.sasl_password.reveal() == "hunter2"


def test_flat_option_names_are_checked():
    with pytest.raises(TypeError, match=r"unknown worker settings: \['windwo'\]"):
        WorkerSettings.from_options(windwo=600)
    default_policy = WorkerSettings().lineup.promotion
    assert WorkerSettings.from_options(model="hat").lineup == Lineup(model="hat", promotion=default_policy)


@pytest.mark.parametrize("argv, line", [
    (["--checkpoint-every", "0"], "error: --checkpoint-every 0 must be >= 1"),
    (["--serve-port", "70000"], "error: --serve-port 70000 must be -1..65535"),
    (["--serve-timeout", "0"], "error: --serve-timeout 0.0 must be > 0 seconds"),
])
def test_a_refused_value_names_the_option_as_typed(argv, line, capsys):
    from cli.commands import main

    assert main(["worker", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"shopstream worker: {line}"
