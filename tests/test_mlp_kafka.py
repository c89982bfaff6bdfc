"""The seed's network on the real broker: a worker whose partitions run `mlp` (as a
challenger, or as the bootstrap's champion with its frozen baseline) is killed with
kill -9 mid-stream, restarted, and ends bit for bit where an uninterrupted run ends; so
do partitions that move between workers killed at random while events stream in."""

import random
import signal
import subprocess
import threading
import time

import msgspec
import pytest

from conftest import WORKER_ENV, worker_command
from helpers import assert_same_engine, checkpointed_engines, paced, reference_engines, send_records, wait_for
from test_model_state import state_bytes
from offline.bootstrap import EpochSettings, bootstrap
from shopstream.artifacts import load_artifact
from shopstream.events import decode_event
from shopstream.generator import generate, write_jsonl
from shopstream.lineup import build_engine
from stream.settings import WorkerSettings

pytestmark = pytest.mark.kafka
encode = msgspec.json.Encoder().encode


def reference_lineups(kafka, topic, artifacts=None, model="logreg", challengers=()):
    """One uninterrupted engine per partition, started the way a worker starts one."""
    return reference_engines(kafka, topic, make=lambda: build_engine(
        artifacts, lineup=WorkerSettings.from_options(model=model, challengers=challengers).lineup)[0])


def kill_mid_stream_and_finish(kafka, topic, checkpoints, records, *options):
    common = ["--until-idle", "8", "--metrics-port", "-1", "--checkpoint-every", "1500", *options]
    victim = subprocess.Popen(worker_command(kafka, topic, checkpoints, *common), env=WORKER_ENV,
                              stderr=subprocess.DEVNULL)
    try:
        # Kill once both partitions hold a checkpoint and a good part of the stream is learned.
        wait_for(lambda: len(engines := checkpointed_engines(checkpoints)) == 2 and sum(
            e.counts["consumed"] for e in engines.values()) >= len(records) // 4, 300, "checkpoints with 1/4 learned")
        time.sleep(0.5)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    at_kill = sum(e.counts["consumed"] for e in checkpointed_engines(checkpoints).values())
    assert 0 < at_kill < len(records), "the kill did not land mid-stream"
    survivor = subprocess.run(worker_command(kafka, topic, checkpoints, *common), env=WORKER_ENV,
                              capture_output=True, text=True, timeout=600)
    assert survivor.returncode == 0, survivor.stderr[-2000:]
    assert "checkpoint, next offset" in survivor.stderr
    print(f"\nkilled with {at_kill} of {len(records)} events checkpointed; the restart finished the rest")
    return checkpointed_engines(checkpoints)


def assert_same_lineup(actual, expected, probes):
    assert_same_engine(actual, expected, probes)
    assert [(s.name, s.role, s.version) for s in actual.slots] == [(s.name, s.role, s.version) for s in expected.slots]
    assert actual.history == expected.history  # same promotions, at the same moments
    for mine, theirs in zip(actual.slots, expected.slots):
        assert mine.scores.cumulative.values() == theirs.scores.cumulative.values()
        assert [mine.model.predict_proba_one(x) for x in probes] == [theirs.model.predict_proba_one(x) for x in probes]
        if mine.name.startswith("mlp"):  # every weight, moment and scaler statistic, bit for bit
            assert state_bytes(mine.model) == state_bytes(theirs.model)


def test_mlp_challenger_survives_kill_9(kafka, new_topic, tmp_path):
    topic = new_topic(2)
    records = list(generate(30_000, seed=141))
    send_records(kafka, topic, records)
    actual = kill_mid_stream_and_finish(kafka, topic, tmp_path / "ckpt", records,
                                        "--model", "logreg", "--challengers", "mlp")
    expected = reference_lineups(kafka, topic, model="logreg", challengers=("mlp",))
    assert sorted(actual) == sorted(expected) == [0, 1]
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-200:]]
    for partition, engine in expected.items():
        assert engine.slot("mlp").scores.cumulative.values()["roc_auc"] > 0.6  # it did learn
        assert_same_lineup(actual[partition], engine, probes)


def test_bootstrapped_mlp_champion_and_baseline_survive_kill_9(kafka, new_topic, tmp_path):
    history = tmp_path / "history.jsonl"
    write_jsonl(generate(20_000, seed=142), history)
    artifacts = tmp_path / "artifacts"
    bootstrap(history, artifacts, models=["mlp"], progress=False, epochs=EpochSettings(epochs=3))
    topic = new_topic(2)
    records = list(generate(30_000, seed=143))
    send_records(kafka, topic, records)
    actual = kill_mid_stream_and_finish(kafka, topic, tmp_path / "ckpt", records,
                                        "--artifacts", str(artifacts), "--challengers", "logreg")
    expected = reference_lineups(kafka, topic, artifacts=str(artifacts), challengers=("logreg",))
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-200:]]
    for partition, engine in expected.items():
        roles = {s.name: s.role for s in engine.slots}
        assert roles["mlp_baseline"] == "baseline" and roles["logreg"] in ("challenger", "champion")
        frozen = load_artifact(artifacts).model   # the baseline never learns: still the artifact's bits
        assert state_bytes(actual[partition].slot("mlp_baseline").model) == state_bytes(frozen)
        assert actual[partition].slot("mlp").model._t > frozen._t  # the champion kept learning
        assert_same_lineup(actual[partition], engine, probes)


def test_mlp_partitions_survive_chaos(kafka, new_topic, tmp_path):
    """Events stream in while workers are killed with kill -9 at random moments and
    restarted, and a third worker joins and leaves: every partition still ends as one
    uninterrupted run over its events."""
    rng = random.Random(15)
    topic = new_topic(4)
    records = list(generate(30_000, seed=144))
    checkpoints = tmp_path / "ckpt"
    command = worker_command(kafka, topic, checkpoints, "--until-idle", "10", "--metrics-port", "-1",
                             "--checkpoint-every", "1000", "--checkpoint-seconds", "2",
                             "--model", "logreg", "--challengers", "mlp")

    def start():
        return subprocess.Popen(command, env=WORKER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    feeder = threading.Thread(target=lambda: send_records(kafka, topic, paced(records, 2000.0)), daemon=True)
    feeder.start()
    workers, extra = [start(), start()], None
    for kill in range(4):
        time.sleep(rng.uniform(1.0, 3.0))
        victim = rng.randrange(len(workers))
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        workers[victim] = start()
        if kill == 0:
            extra = start()
        elif kill == 2:
            extra.send_signal(signal.SIGTERM)  # before its handler is installed, this is one more crash
            extra.wait(timeout=120)
    feeder.join()
    for worker in workers:
        assert worker.wait(timeout=600) == 0

    actual = checkpointed_engines(checkpoints)
    expected = reference_lineups(kafka, topic, model="logreg", challengers=("mlp",))
    assert sorted(actual) == sorted(expected) == [0, 1, 2, 3]
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-200:]]
    for partition, engine in expected.items():
        assert actual[partition].counts["learned"] == engine.counts["resolved"] > 0
        assert_same_lineup(actual[partition], engine, probes)
