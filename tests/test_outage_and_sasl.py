"""A broker outage mid-stream, and SASL authentication, on a private broker."""

import subprocess
import time

import msgspec
import pytest

from conftest import WORKER_ENV, free_port, worker_command
from helpers import assert_same_engine, checkpointed_engines, readyz, reference_engines, send_records, wait_for
from shopstream.events import decode_event
from shopstream.generator import generate

pytestmark = pytest.mark.kafka
encode = msgspec.json.Encoder().encode


def worker_story(log: str) -> str:
    """The worker's own lines and the group's, the ones that tell what happened."""
    return "\n".join(line for line in log.splitlines()
                     if "shopstream" in line or "coordinator" in line or "WARNING" in line or "ERROR" in line)


def test_broker_outage_of_30_s_recovers_by_itself_nothing_lost_or_twice(private_kafka, tmp_path):
    kafka = private_kafka.bootstrap
    topic = "outage-events"
    records = list(generate(50_000, seed=101))
    send_records(kafka, topic, records)
    checkpoints = tmp_path / "ckpt"
    port = free_port()
    worker = subprocess.Popen(worker_command(kafka, topic, checkpoints, "--checkpoint-every", "2000",
                                             "--until-idle", "10", "--metrics-port", str(port)),
                              env=WORKER_ENV, stderr=subprocess.PIPE, text=True)
    restarted = False
    try:
        wait_for(lambda: any(checkpoints.glob("*.ckpt")) and readyz(port) == 200, 90, "worker ready")
        private_kafka.script("stop")
        stopped = time.time()
        wait_for(lambda: readyz(port) == 503, 45, "not ready while the broker is away")
        time.sleep(max(0.0, 30 - (time.time() - stopped)))
        assert worker.poll() is None, "the worker must survive the outage"
        private_kafka.script("start")
        restarted = True
        wait_for(lambda: readyz(port) == 200 or worker.poll() is not None, 120, "ready again")
        _, log = worker.communicate(timeout=300)
    finally:
        if not restarted:
            private_kafka.script("start")  # the other tests of this module use the broker too
        if worker.poll() is None:
            worker.kill()
    (tmp_path / "worker.log").write_text(log)
    assert worker.returncode == 0, log[-3000:]
    assert "broker not answering" in log and "broker answering again" in log, worker_story(log)

    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(checkpoints)
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-100:]]
    assert actual[0].counts["consumed"] == len(records), worker_story(log)
    assert_same_engine(actual[0], expected[0], probes)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_credentials_pass_through_and_are_never_logged(private_kafka, tmp_path, mechanism):
    topic = f"sasl-{mechanism.lower()}"
    password = private_kafka.env["KAFKA_SASL_PASSWORD"]
    env = {**WORKER_ENV, "SHOPSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SHOPSTREAM_SASL_MECHANISM": mechanism,
           "SHOPSTREAM_SASL_USERNAME": "shop", "SHOPSTREAM_SASL_PASSWORD": password}
    sasl = private_kafka.sasl_bootstrap
    produced = subprocess.run(["python", "-m", "shopstream.cli", "produce", "--bootstrap-servers", sasl,
                               "--topic", topic, "--events", "2000", "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=120)
    assert produced.returncode == 0, produced.stderr[-2000:]
    worker = subprocess.run(worker_command(sasl, topic, tmp_path / "ckpt", "--until-idle", "4",
                                           "--metrics-port", "-1"), env=env, capture_output=True, text=True,
                            timeout=180)
    assert worker.returncode == 0, worker.stderr[-2000:]
    [engine] = checkpointed_engines(tmp_path / "ckpt").values()
    assert engine.counts["consumed"] == 2000
    assert password not in produced.stdout + produced.stderr + worker.stdout + worker.stderr

    if mechanism == "PLAIN":  # kafka-python reports a failed login only as "cannot bootstrap", after retries
        wrong = subprocess.run(worker_command(sasl, topic, tmp_path / "ckpt2", "--until-idle", "4",
                                              "--metrics-port", "-1"),
                               env={**env, "SHOPSTREAM_SASL_PASSWORD": "Wr0ng-pa55"},
                               capture_output=True, text=True, timeout=180)
        assert wrong.returncode == 2 and "no Kafka broker answered" in wrong.stderr, wrong.stderr[-2000:]
        assert "Wr0ng-pa55" not in wrong.stderr + wrong.stdout
        assert not list((tmp_path / "ckpt2").glob("*.ckpt")), "no access with a wrong password"
