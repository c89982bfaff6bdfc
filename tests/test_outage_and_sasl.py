"""A broker outage mid-stream, and SASL authentication, on a private broker."""

import socket
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from conftest import WORKER_ENV, free_port, worker_command
from helpers import (assert_same_engine, checkpointed_engines, readyz, reference_engines, scrape, send_records,
                     wait_for)
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
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen(worker_command(kafka, topic, checkpoints, "--checkpoint-every", "2000",
                                                 "--until-idle", "10", "--metrics-port", str(port)),
                                  env=WORKER_ENV, stderr=log_file, text=True)
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
        worker.wait(timeout=300)
    except Exception as exc:  # a timeout tells nothing without the worker's side of the story
        raise AssertionError(f"{exc}\n{worker_story(log_path.read_text())}") from exc
    finally:
        if not restarted:
            private_kafka.script("start")  # the other tests of this module use the broker too
        if worker.poll() is None:
            worker.kill()
    log = log_path.read_text()
    assert worker.returncode == 0, worker_story(log)
    assert "broker not answering" in log and "broker answering again" in log, worker_story(log)

    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(checkpoints)
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-100:]]
    assert actual[0].counts["consumed"] == len(records), worker_story(log)
    assert_same_engine(actual[0], expected[0], probes)


def test_a_worker_owning_no_partition_still_sees_the_broker_leave_and_return(private_kafka, tmp_path):
    """A worker checks the broker whether or not it owns partitions. One that lost its
    partitions in an outage otherwise kept "broker away" for good, and with it the rejoin
    deadline disarmed: in a CI run it stayed not ready for the 120 s the outage test waits."""
    kafka = private_kafka.bootstrap
    topic = "idle-member-events"
    send_records(kafka, topic, list(generate(2000, seed=7)))  # one partition: one worker owns nothing
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = []
    for port, log_path in zip(ports, logs):
        with open(log_path, "w") as log_file:
            command = worker_command(kafka, topic, tmp_path / "ckpt", "--metrics-port", str(port))
            workers.append(subprocess.Popen(command, env=WORKER_ENV, stderr=log_file, text=True))

    def gauges(name):
        return [scrape(port).get((name, ())) for port in ports]

    restarted = False
    try:
        # All read and published first: an outage mid-stream holds the owner in its checkpoint's
        # flush for up to 30 s, which this test is not about.
        wait_for(lambda: sorted(n or 0 for n in gauges("shopstream_assigned_partitions")) == [0, 1]
                 and sum(n or 0 for n in gauges("shopstream_worker_handled_events")) >= 2000
                 and gauges("shopstream_broker_up") == [1, 1], 90, "one owner, done reading, one member owning nothing")
        private_kafka.script("stop")
        wait_for(lambda: gauges("shopstream_broker_up") == [0, 0], 60, "both report the broker away")
        private_kafka.script("start")
        restarted = True
        wait_for(lambda: gauges("shopstream_broker_up") == [1, 1], 60, "both report the broker back")
        assert all(worker.poll() is None for worker in workers)
    except Exception as exc:
        stories = "\n\n".join(worker_story(log_path.read_text()) for log_path in logs)
        raise AssertionError(f"{exc}\n{stories}") from exc
    finally:
        if not restarted:
            private_kafka.script("start")
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_credentials_pass_through_and_are_never_logged(private_kafka, tmp_path, mechanism):
    topic = f"sasl-{mechanism.lower()}"
    password = private_kafka.env["KAFKA_SASL_PASSWORD"]
    env = {**WORKER_ENV, "SHOPSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SHOPSTREAM_SASL_MECHANISM": mechanism,
           "SHOPSTREAM_SASL_USERNAME": "shop", "SHOPSTREAM_SASL_PASSWORD": password}
    sasl = private_kafka.sasl_bootstrap
    produced = subprocess.run(["python", "-m", "cli", "produce", "--bootstrap-servers", sasl,
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


def _jvms_of(data_dir: str) -> list[int]:
    """The processes running the broker of `data_dir`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"kafka.Kafka {data_dir}/server.properties".encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_kafka_sh_finds_its_broker_by_data_directory_and_a_stop_frees_everything(private_kafka):
    """`kafka.sh start` reported a live broker as "exited during startup" (its pid file named a pid
    that was not the JVM), and a start right after a stop found the old JVM still holding the data
    directory. Now a broker is found by its command line, and `stop` returns once it is gone."""
    data = private_kafka.env["SHOPSTREAM_KAFKA_DATA"]
    pidfile = Path(data) / "kafka.pid"
    [jvm] = _jvms_of(data)
    pidfile.write_text("999999999\n")   # a pid that is not the JVM (setsid forked, or not exec'd yet)
    status = subprocess.run(["bash", "scripts/kafka.sh", "status"], env=private_kafka.env, capture_output=True,
                            text=True, cwd=Path(__file__).parent.parent)
    assert status.returncode == 0 and f"pid {jvm}" in status.stdout, status.stdout + status.stderr
    assert pidfile.read_text().strip() == str(jvm)
    private_kafka.script("stop")
    assert _jvms_of(data) == []
    if Path(f"/proc/{jvm}").exists():   # at most a zombie: every thread gone, every file closed
        assert Path(f"/proc/{jvm}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    for port in (private_kafka.port, private_kafka.controller_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after stop"
    private_kafka.script("start")   # at once: nothing of the old broker stands in its way
    wait_for(lambda: _jvms_of(data) != [], 30, "the new broker")
