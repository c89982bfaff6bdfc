"""Every command's options come from its frozen settings class (each default written once), every
refusal is a `ConfigError` from the settings object, printed as one line naming the option (exit
2), and the signing key is a setting: from SHOPSTREAM_SIGNING_KEY or --signing-key-file, never an
option, never in a repr, --help or log line."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import fields
from pathlib import Path

import pytest

from cli.commands import COMMAND_SETTINGS, build_parser, main, settings_of
from offline.settings import BootstrapSettings
from shopstream.artifacts import load_artifact
from shopstream.config import ConfigError, EngineConfig
from shopstream.features import FeatureCaps
from shopstream.options import leaves, option_name
from shopstream.signing import KEY_ENV, SignatureError
from stream.settings import ModelsSettings, ProduceSettings, TopicsSettings, WorkerSettings

KEY = "k3y-only-in-this-test"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_shopstream_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SHOPSTREAM_"):
            monkeypatch.delenv(name)


def subparser(command: str):
    [action] = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices[command]


#: what a command needs beyond its defaults, as arguments and as fields
GIVEN = {"models": (["models", "list"], {}),
         "bootstrap": (["bootstrap", "--history", "h.jsonl"], {"history": "h.jsonl"})}


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_each_command_s_defaults_are_its_settings_class_defaults(command):
    settings_class = COMMAND_SETTINGS[command][0]
    argv, given = GIVEN.get(command, ([command], {}))
    assert settings_of(build_parser().parse_args(argv)) == settings_class(**given), \
        "the parser's defaults are the settings' defaults"
    # every option is a field (or the file of a secret field): none is written by hand
    derived = set()
    for part, f in leaves(settings_class):
        name = option_name(part, f)
        derived.add(f"{name}_file" if f.metadata.get("env_only") else name)
    options = {a.dest for a in subparser(command)._actions
               if a.option_strings and a.dest != "help" and a.help != argparse.SUPPRESS}
    assert options == derived


def test_no_default_is_written_in_the_command_line_module():
    import ast

    calls = [n for n in ast.walk(ast.parse((ROOT / "cli" / "commands.py").read_text())) if isinstance(n, ast.Call)]
    named = [getattr(c.func, "attr", getattr(c.func, "id", "")) for c in calls]
    assert "option" not in named and named.count("add_argument") == 3   # --version and the models positionals
    assert not [c for c in calls if getattr(c.func, "attr", "") == "add_argument" and
                any(k.arg == "default" for k in c.keywords)]
    packages = ("shopstream", "stream", "offline", "cli")
    helpers = [p for folder in packages for p in (ROOT / folder).glob("*.py") if "def _help(" in p.read_text()]
    assert helpers == []   # option_meta, in shopstream/options.py, is the one


def test_shared_options_are_written_once_and_follow_the_worker_s():
    topics, worker = TopicsSettings(), WorkerSettings()
    assert (topics.topic, topics.predictions_topic, topics.dead_letter_topic, topics.control_topic) == \
        (worker.topic, worker.predictions_topic, worker.dead_letter_topic, worker.control_topic)
    models = ModelsSettings()
    assert (models.checkpoint_topic, models.group, ProduceSettings().topic) == \
        (worker.checkpoints.topic, worker.group, worker.topic)


def test_feature_caps_options_come_from_its_fields():
    worker = {a.dest: a for a in subparser("worker")._actions}
    for f in fields(FeatureCaps):
        if "help" in f.metadata:
            name = option_name(FeatureCaps, f)
            assert worker[name].default == f.default and f.metadata["help"] in worker[name].help
    assert {"max_sessions", "max_raw_features", "session_ttl"} <= set(worker)
    assert "one_hot" not in worker and "max_one_hot" not in worker   # no help: not an option
    with pytest.raises(ConfigError) as refused:   # the caps check themselves, like every settings object
        FeatureCaps(sessions=0)
    assert (refused.value.name, refused.value.value) == ("sessions", 0)
    with pytest.raises(ConfigError, match="max_session_products 0 must be > 0"):
        WorkerSettings.from_options(max_session_products=0)


@pytest.mark.parametrize("argv, line", [
    (["generate", "--days", "0"], "--days 0.0 must be > 0"),
    (["generate", "--max-user-share", "2"], "--max-user-share 2.0 must be in (0, 1]"),
    (["generate", "--drift", "meteor@0.5"], "--drift ['meteor@0.5'] is not a drift scenario"),
    (["bootstrap"], "--history is required (or SHOPSTREAM_HISTORY), or --generate-events N"),
    (["bootstrap", "--history", "h.jsonl", "--holdout", "1"], "--holdout 1.0 must be a fraction in [0, 1)"),
    (["bootstrap", "--history", "h.jsonl", "--epochs", "0"], "--epochs 0 must be >= 1"),
    (["bootstrap", "--history", "h.jsonl", "--learning-rate", "2"], "--learning-rate 2.0 must be in (0, 1)"),
    (["bootstrap", "--history", "h.jsonl", "--max-sessions", "0"], None),  # not a bootstrap option
    (["bootstrap", "--history", "h.jsonl", "--out", ""], "--out '' must name a directory (empty: the current one)"),
    (["bootstrap", "--history", "h.jsonl", "--window", "inf"], "--window inf must be a finite number"),
    (["bootstrap", "--history", "h.jsonl", "--lateness", "inf"], "--lateness inf must be a finite number"),
    (["bootstrap", "--history", "h.jsonl", "--model", "logreg", "lgoreg"],   # refused before logreg trains
     "--model ('logreg', 'lgoreg') must be models of the catalog"),
    (["generate", "--out", ""], "--out '' must name a file"),
    (["demo", "--events", "-1"], "--events -1 must be >= 0"),
    (["produce", "--rate", "-1"], "--rate -1.0 must be >= 0 (0: as fast as possible)"),
    (["produce", "--events", "-5"], "--events -5 must be >= 0"),
    (["topics", "--partitions", "0"], "--partitions 0 must be 1..10000"),
    (["models", "promote"], "--target is required by promote"),
    (["models", "list", "--wait-timeout", "0"], "--wait-timeout 0.0 must be > 0 seconds"),
    (["worker", "--max-sessions", "0"], "--max-sessions 0 must be > 0"),
])
def test_every_command_refuses_a_value_with_one_line_naming_the_option(argv, line, capsys):
    argv = [*argv, "--bootstrap-servers", "127.0.0.1:1"] if argv[0] in ("produce", "topics", "models") else argv
    if line is None:
        with pytest.raises(SystemExit):   # argparse: an option of another command
            main(argv)
        return
    assert main(argv) == 2
    [printed] = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(f"shopstream {argv[0]}: error: {line}"), printed


def test_an_empty_out_from_the_environment_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("SHOPSTREAM_OUT", "")   # it wrote into the current directory
    assert main(["bootstrap", "--history", "h.jsonl"]) == 2
    assert "--out '' must name a directory" in capsys.readouterr().err


def test_a_path_that_cannot_be_used_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """Each was a traceback (an OSError), --out a file only after all the training."""
    import offline.bootstrap as ob

    monkeypatch.setattr(ob, "train_candidate", lambda *a, **k: pytest.fail("trained before refusing"))
    folder, afile = tmp_path / "d.jsonl", tmp_path / "afile"
    folder.mkdir()
    afile.write_text("x")
    history = tmp_path / "h.jsonl"
    history.write_text('{"event_time": 1.77e9, "event_type": "view", "product_id": 1, "user_id": 2, '
                       '"user_session": "s"}\n')
    for argv, line in [(["bootstrap", "--history", str(folder)], f"{folder}: Is a directory"),
                       (["bootstrap", "--history", str(history), "--out", str(afile)], f"{afile}: Not a directory"),
                       (["bootstrap", "--generate-events", "100", "--out", str(afile)], f"{afile}: Not a directory"),
                       (["bootstrap", "--history", str(history), "--out", str(afile / "sub")],
                        f"{afile / 'sub'}: Not a directory"),
                       (["generate", "--events", "10", "--out", str(folder)], f"{folder}: Is a directory")]:
        assert main([*argv, "--no-progress"] if argv[0] == "bootstrap" else argv) == 2, argv
        [printed] = capsys.readouterr().err.strip().splitlines()
        assert printed == f"shopstream {argv[0]}: error: {line}", printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d.jsonl", "h.jsonl"]   # nothing written


def test_a_checkpoint_directory_the_worker_cannot_write_is_refused_before_kafka(tmp_path, capsys):
    """It failed only after the Kafka clients connected (a path under a file), paused every partition
    at its first checkpoint (a directory it may not write), or was the current directory (empty)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for given, line in [("", "--checkpoints '' names no directory: name one"),
                        (str(afile / "sub"), f"--checkpoints {afile / 'sub'}: cannot write there: Not a directory"),
                        (str(afile), f"--checkpoints {afile} is not a directory"),
                        ("/proc/self/no-such-dir/ckpt", "--checkpoints /proc/self/no-such-dir/ckpt: cannot write "
                                                        "there: No such file or directory")]:
        assert main(["worker", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "-1",
                     "--checkpoints", given]) == 2, given
        assert capsys.readouterr().err.strip() == f"shopstream worker: error: {line}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_history_that_is_not_a_regular_file_is_refused_not_waited_on(kind, tmp_path):
    """A FIFO (or /dev/zero) was hashed, then opened again: the command hung forever."""
    import subprocess
    import sys

    history = tmp_path / "h.jsonl"
    if kind == "fifo":
        os.mkfifo(history)
    else:
        history = Path("/dev/zero")
    done = subprocess.run([sys.executable, "-m", "cli", "bootstrap", "--history", str(history), "--out",
                           str(tmp_path / "out"), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"shopstream bootstrap: error: {history}: not a regular file (a pipe, device or socket): the history "
        "must be a file"), done.stderr


def test_the_settings_objects_refuse_by_themselves():
    with pytest.raises(ConfigError, match="rate"):
        ProduceSettings.from_options(rate=float("nan"))
    with pytest.raises(ConfigError, match="partitions"):
        TopicsSettings(partitions=20_000)
    with pytest.raises(ConfigError, match="batch_size"):
        BootstrapSettings.from_options(history="h", batch_size=0)
    with pytest.raises(TypeError, match=r"unknown produce settings: \['speed'\]"):
        ProduceSettings.from_options(speed=3)
    produce = ProduceSettings.from_options(events=10, seed=3, topic="t", bootstrap_servers="b:1")
    assert (produce.generator.events, produce.generator.seed, produce.kafka.bootstrap_servers) == (10, 3, "b:1")
    bootstrap = BootstrapSettings.from_options(history="h", window=600, epochs=2, learning_rate=0.01)
    assert bootstrap.engine == EngineConfig(window=600) and (bootstrap.epochs.epochs, bootstrap.epochs.lr) == (2, 0.01)


# -- the signing key -----------------------------------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "signing.key"
    path.write_text(KEY + "\n")   # as `echo` writes it: the line end is not part of the key
    return str(path)


@pytest.mark.parametrize("argv", [["worker"], ["bootstrap", "--generate-events", "10"], ["models", "list"]])
def test_a_key_from_a_file_or_from_the_environment_gives_the_same_settings(argv, key_file, monkeypatch):
    from_file = settings_of(build_parser().parse_args([*argv, "--signing-key-file", key_file]))
    monkeypatch.setenv(KEY_ENV, KEY)
    from_env = settings_of(build_parser().parse_args(argv))
    assert from_file == from_env and from_env.signing_key == KEY.encode()
    monkeypatch.setenv(KEY_ENV, KEY + "\n")   # as `$(cat signing.key)` would not, but a secret store may: the same key
    assert settings_of(build_parser().parse_args(argv)).signing_key == KEY.encode()
    monkeypatch.delenv(KEY_ENV)
    assert settings_of(build_parser().parse_args(argv)).signing_key is None
    assert WorkerSettings.from_options(signing_key_file=key_file).signing_key == KEY.encode()  # not only by CLI


def test_a_key_given_twice_or_unreadable_is_refused_naming_the_file_option(key_file, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    assert main(["worker", "--signing-key-file", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"shopstream worker: error: --signing-key-file {str(empty)!r} is empty"
    assert main(["bootstrap", "--generate-events", "10", "--signing-key-file", str(tmp_path / "missing")]) == 2
    assert "--signing-key-file" in capsys.readouterr().err and "cannot be read: No such file" in \
        str(ConfigError("signing_key_file", "x", "cannot be read: No such file or directory"))
    blank = tmp_path / "blank.key"
    blank.write_text("  \n")
    assert main(["worker", "--signing-key-file", str(blank)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--signing-key-file {str(blank)!r} is only blanks")
    monkeypatch.setenv(KEY_ENV, " \t")   # a key of blanks is no key: refused, never echoed
    assert main(["worker"]) == 2
    assert capsys.readouterr().err.strip() == "shopstream worker: error: SHOPSTREAM_SIGNING_KEY is only blanks"
    monkeypatch.setenv(KEY_ENV, "another")
    assert main(["worker", "--signing-key-file", key_file]) == 2
    err = capsys.readouterr().err
    assert f"--signing-key-file {key_file!r} and SHOPSTREAM_SIGNING_KEY are both set" in err and "another" not in err


def test_the_key_is_never_an_option_nor_shown(key_file, monkeypatch, capsys, caplog, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY)
    for command in COMMAND_SETTINGS:
        text = subparser(command).format_help()
        assert KEY not in text and "--signing-key " not in text and "--signing-key\n" not in text
    for argv in (["worker"], ["bootstrap", "--generate-events", "10"], ["models", "list"]):
        settings = settings_of(build_parser().parse_args(argv))
        assert settings.signing_key == KEY.encode()
        assert KEY not in repr(settings) and KEY not in str(settings)
    with pytest.raises(SystemExit):   # not an option (ps would show it), refused without repeating it
        build_parser().parse_args(["worker", "--signing-key", KEY])
    refused = capsys.readouterr().err
    assert "--signing-key is not an option" in refused and "SHOPSTREAM_SIGNING_KEY" in refused and KEY not in refused
    # A worker that stops on its settings: nothing it printed or logged holds the key.
    with caplog.at_level(logging.DEBUG):
        assert main(["worker", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "-1",
                     "--checkpoints", str(tmp_path / "c"), "--window", "-1"]) == 2
    out = capsys.readouterr()
    assert "--window" in out.err and KEY not in out.out + out.err + caplog.text


def test_an_empty_key_setting_is_refused_never_taken_for_no_key(tmp_path, monkeypatch, capsys):
    """An empty --signing-key-file (an unset shell variable: "$KEYFILE") or SHOPSTREAM_SIGNING_KEY="" ran
    without a key: every artifact, checkpoint and command was taken unverified, without a word."""
    assert main(["worker", "--signing-key-file", ""]) == 2
    assert capsys.readouterr().err.strip() == ("shopstream worker: error: --signing-key-file '' is empty: name the "
                                               "key's file, or leave the option out to run without a key")
    monkeypatch.setenv(KEY_ENV, "")
    assert main(["bootstrap", "--generate-events", "10", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == ("shopstream bootstrap: error: SHOPSTREAM_SIGNING_KEY is set but "
                                               "empty: unset it to run without a key")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["device", "fifo", "directory", "too large"])
def test_a_key_file_that_is_not_a_small_regular_file_is_refused_not_read(kind, tmp_path, capsys):
    """/dev/zero was read until the memory ran out, a FIFO waited for a writer forever."""
    path = {"device": "/dev/zero", "fifo": str(tmp_path / "fifo"), "directory": str(tmp_path),
            "too large": str(tmp_path / "big.key")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "too large":
        Path(path).write_bytes(b"k" * (64 * 1024 + 1))
    assert main(["worker", "--signing-key-file", path]) == 2
    err = capsys.readouterr().err.strip()
    why = {"too large": "holds more than 65536 bytes: not a key", "directory": "cannot be read: Is a directory"}
    assert err.startswith(f"shopstream worker: error: --signing-key-file {path!r} ") and \
        why.get(kind, "is not a regular file (a pipe, device or directory)") in err, err


@pytest.mark.parametrize("typed", ["--signing-k=hunter2secret", "--sig=hunter2secret", "--signing-key=hunter2secret"])
def test_a_key_typed_as_an_abbreviated_option_is_refused_without_repeating_it(typed, capsys):
    """argparse's "ambiguous option" error repeated the whole argument, value and all."""
    with pytest.raises(SystemExit):
        main(["worker", typed])
    err = capsys.readouterr().err
    assert "not an option" in err and "SHOPSTREAM_SIGNING_KEY" in err and "hunter2secret" not in err, err


def test_an_empty_switch_variable_keeps_the_default_and_a_list_flag_given_twice_adds(monkeypatch):
    """Empty, an on/off variable turned default-on switches off (empty text options are unset); a
    list flag given twice kept only the last one's values."""
    monkeypatch.setenv("SHOPSTREAM_AUTO_PROMOTE", "")
    monkeypatch.setenv("SHOPSTREAM_BASELINE", " ")
    args = build_parser().parse_args(["worker", "--challengers", "logreg_tuned", "--challengers", "logreg"])
    assert (args.auto_promote, args.baseline) == (True, True)
    assert args.challengers == ["logreg_tuned", "logreg"]
    monkeypatch.setenv("SHOPSTREAM_CHALLENGERS", "logreg")
    assert build_parser().parse_args(["worker"]).challengers == ["logreg"]
    assert build_parser().parse_args(["worker", "--challengers", "hat"]).challengers == ["hat"]   # not added to


def test_an_artifact_signed_with_the_setting_verifies_and_is_refused_under_another_key(key_file, tmp_path):
    out = tmp_path / "artifacts"
    assert main(["bootstrap", "--generate-events", "3000", "--model", "logreg", "--no-progress",
                 "--out", str(out), "--signing-key-file", key_file]) == 0
    assert KEY_ENV not in os.environ   # the file alone gave the key
    signed = load_artifact(out, KEY.encode())
    assert signed.meta["hmac_sha256"] and (out / "DEFAULT").read_text().count("hmac-sha256:") == 1
    with pytest.raises(SignatureError, match="HMAC does not match"):
        load_artifact(out, b"another key")
    with pytest.raises(SignatureError, match="HMAC does not match"):
        load_artifact(signed.path, b"another key")
    plain = tmp_path / "plain"
    assert main(["bootstrap", "--generate-events", "3000", "--model", "logreg", "--no-progress",
                 "--out", str(plain)]) == 0
    with pytest.raises(SignatureError, match="not signed"):
        load_artifact(plain, KEY.encode())
