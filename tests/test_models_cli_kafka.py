"""`shopstream models promote|rollback|list` on workers: applied while running, and by a
stopped worker when it resumes; recorded in the checkpoint lineage."""

import subprocess
import sys

import pytest

from conftest import WORKER_ENV, LoggedProcess, free_port, worker_command
from helpers import read_predictions, scrape, send_records, wait_for
from offline.bootstrap import bootstrap
from shopstream.generator import generate, write_jsonl
from stream.checkpointing.stores import DirectoryCheckpointStore

pytestmark = pytest.mark.kafka


def consumed(port: int) -> float:
    return sum(v for (name, labels), v in scrape(port).items()
               if name == "shopstream_events_total" and ("outcome", "consumed") in labels)


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                            timeout=120, env=WORKER_ENV)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_promote_while_running_then_rollback_on_resume(kafka, new_topic, tmp_path):
    history = tmp_path / "history.jsonl"
    write_jsonl(generate(8000, seed=81), history)
    report = bootstrap(history, tmp_path / "artifacts", models=["logreg", "logreg_adagrad"], progress=False)
    default_model = report["default"].split("/")[0]
    other = "logreg" if default_model == "logreg_adagrad" else "logreg_adagrad"
    default_version = report["default"].split("/")[1]

    topic = new_topic(2)
    control = f"{topic}-control"
    checkpoints = tmp_path / "ckpt"
    records = list(generate(40_000, seed=82))
    send_records(kafka, topic, records[:20_000])
    command = worker_command(kafka, topic, checkpoints, "--artifacts", str(tmp_path / "artifacts"),
                             "--challengers", "logreg", "logreg_adagrad", "--no-auto-promote",
                             "--control-topic", control, "--until-idle", "6", "--metrics-port", "-1",
                             "--checkpoint-every", "2000")
    # This run stops when it has consumed everything, not after an idle spell: on a loaded machine
    # the promote command took longer than the idle spell, and the worker was gone before it.
    port = free_port()
    first = [*command[:command.index("--until-idle")], "--until-idle", "0", "--metrics-port", str(port),
             "--checkpoint-every", "2000"]
    worker = LoggedProcess(first, tmp_path / "worker.log", WORKER_ENV)
    try:
        wait_for(lambda: list(checkpoints.glob("*.ckpt")), 120, "a first checkpoint")
        out = cli("models", "promote", other, "--bootstrap-servers", kafka, "--control-topic", control,
                  "--topic", topic, "--group", f"g-{topic}")   # commands name the workers' group
        assert f"sent promote {other} for every partition" in out
        # "applied" is answered once the engines run the new champion: what comes next is its
        assert f"partition 0: applied (champion {other}" in out and f"partition 1: applied (champion {other}" in out
        send_records(kafka, topic, records[20_000:])
        wait_for(lambda: consumed(port) == len(records), 180, "every event consumed")
    finally:
        worker.proc.terminate()
        log = worker.finish(timeout=180)
    assert worker.proc.returncode == 0, log[-2000:]
    assert "GIL switch interval: 0.05 s (--switch-interval auto)" in log   # streams, serves no API

    states = DirectoryCheckpointStore(checkpoints).load_all()
    assert len(states) == 2
    for state in states.values():
        engine = state.engine
        assert engine.champion_slot.name == other
        roles = {s.name: s.role for s in engine.slots}
        assert roles == {default_model: "challenger", f"{default_model}_baseline": "baseline", other: "champion"}
        [promotion] = [h for h in engine.history if h["kind"] == "promotion"]
        assert promotion["reason"] == "manual" and promotion["old"] == default_model
    models = [p["model"] for p in read_predictions(kafka, f"{topic}-predictions")]
    assert models[0] == default_model and other in models

    # A stopped worker applies the commands it missed when it resumes.
    out = cli("models", "rollback", default_version, "--bootstrap-servers", kafka, "--control-topic", control,
              "--artifacts", str(tmp_path / "artifacts"), "--no-wait", "--topic", topic, "--group", f"g-{topic}")
    assert f"sent rollback {default_version}" in out
    resumed = subprocess.run([*command, "--switch-interval", "0.02"], env=WORKER_ENV, capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "GIL switch interval: 0.02 s (--switch-interval 0.02)" in resumed.stderr
    for state in DirectoryCheckpointStore(checkpoints).load_all().values():
        assert (state.engine.champion_slot.name, state.engine.champion_slot.version) == (default_model, default_version)
        lineage = [h["kind"] for h in state.engine.history if h["kind"] != "drift"]
        assert lineage[-3:] == ["promotion", "rollback", "control"]  # each command's outcome recorded too
        assert state.engine.history[-1]["outcome"] == "applied"

    listing = cli("models", "list", "--artifacts", str(tmp_path / "artifacts"), "--checkpoints", str(checkpoints),
                  "--bootstrap-servers", kafka, "--control-topic", control, "--topic", topic, "--group", f"g-{topic}")
    assert default_version in listing and "DEFAULT" in listing and "champion" in listing
    # The live line-up: the workers' last replies (the rollback, applied on resume) per partition.
    assert f"partition 0: champion {default_model} {default_version}" in listing
    assert f"partition 1: champion {default_model} {default_version}" in listing

    missing = "logreg-20260101T000000-0123abcd"
    failed = subprocess.run([sys.executable, "-m", "cli", "models", "rollback", missing,
                             "--artifacts", str(tmp_path / "artifacts"), "--bootstrap-servers", kafka],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and f"no artifact version '{missing}'" in failed.stderr
    path = subprocess.run([sys.executable, "-m", "cli", "models", "rollback", "../../etc",
                           "--bootstrap-servers", kafka], capture_output=True, text=True, timeout=60)
    assert path.returncode == 2 and "is not an artifact version" in path.stderr

    # A model the partitions do not run: every partition says so, and the command fails.
    rejected = subprocess.run([sys.executable, "-m", "cli", "models", "promote", "hat",
                               "--bootstrap-servers", kafka, "--control-topic", control, "--topic", topic,
                               "--group", f"g-{topic}", "--wait-timeout", "5"],
                              capture_output=True, text=True, timeout=60)
    assert rejected.returncode == 1
    assert "partition 0: no reply in 5 s" in rejected.stdout  # no worker runs now
