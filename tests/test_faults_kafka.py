"""Faults on the real broker: a full disk under the checkpoint store, a worker
that refuses a forged checkpoint, a group join that does not finish, and one that ends between polls."""

import resource
import subprocess
import time

import msgspec
import pytest
from kafka import KafkaConsumer

from conftest import WORKER_ENV, LoggedProcess, free_port, worker_command
from helpers import (assert_same_engine, checkpointed_engines, read_predictions, readyz, reference_engines, scrape,
                     send_records, wait_for)
from shopstream.events import decode_event
from shopstream.generator import generate

pytestmark = pytest.mark.kafka
encode = msgspec.json.Encoder().encode


def test_full_disk_pauses_learning_keeps_the_last_checkpoint_and_resumes(kafka, new_topic, tmp_path):
    topic = new_topic(1)
    records = list(generate(60_000, seed=91))
    send_records(kafka, topic, records)
    checkpoints = tmp_path / "ckpt"
    port = free_port()
    # Its log copied from a pipe: the disk filling up below would cut a log file the worker writes itself.
    worker = LoggedProcess(worker_command(kafka, topic, checkpoints, "--checkpoint-every", "3000",
                                          "--until-idle", "6", "--metrics-port", str(port)),
                           tmp_path / "worker.log", WORKER_ENV, copy_from_pipe=True)
    wait_for(lambda: any(checkpoints.glob("*.ckpt")), 60, "first checkpoint")
    # The disk fills up: from now on no file the worker writes may grow past 1,000 bytes (a
    # checkpoint is far larger; root ignores chmod, not this), so each checkpoint write fails
    # part-way, in the very directory and beside the very file the store keeps its last good one.
    soft, hard = resource.prlimit(worker.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(worker.proc.pid, resource.RLIMIT_FSIZE, (1000, hard))
    try:
        wait_for(lambda: scrape(port).get(("shopstream_checkpoint_blocked", (("partition", "0"),))) == 1.0,
                 60, "partition paused")
        [last_good] = list(checkpoints.glob("*.ckpt"))
        good_bytes = last_good.read_bytes()
        stalled = scrape(port)[("shopstream_next_offset", (("partition", "0"),))]
        failures = scrape(port)[("shopstream_checkpoint_failures_total", ())]
        assert readyz(port) == 503
        wait_for(lambda: scrape(port)[("shopstream_checkpoint_failures_total", ())] > failures, 60, "a retry")
        metrics = scrape(port)
        assert metrics[("shopstream_next_offset", (("partition", "0"),))] == stalled  # learning stopped
        assert stalled < len(records)
        # The failed writes left the last good checkpoint whole and no half-written file beside it.
        assert len(good_bytes) > 1000 and last_good.read_bytes() == good_bytes
        assert sorted(path.name for path in checkpoints.iterdir()) == [last_good.name]
        assert 0 < checkpointed_engines(checkpoints)[0].counts["consumed"] <= stalled
    finally:
        resource.prlimit(worker.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))  # space is back
    log = worker.finish(timeout=180)
    assert worker.proc.returncode == 0, log[-2000:]
    assert "partition paused until a checkpoint succeeds" in log and "succeeded again: resumed" in log

    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(checkpoints)
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-100:]]
    assert_same_engine(actual[0], expected[0], probes)


def test_forged_checkpoint_is_refused_with_a_clear_error(kafka, new_topic, tmp_path):
    topic = new_topic(1)
    send_records(kafka, topic, generate(2000, seed=92))
    checkpoints = tmp_path / "ckpt"
    env = {**WORKER_ENV, "SHOPSTREAM_SIGNING_KEY": "s3cret"}
    first = subprocess.run(worker_command(kafka, topic, checkpoints, "--until-idle", "3", "--metrics-port", "-1"),
                           env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    [path] = list(checkpoints.glob("*.ckpt"))
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01
    path.write_bytes(bytes(data))
    second = subprocess.run(worker_command(kafka, topic, checkpoints, "--until-idle", "3", "--metrics-port", "-1"),
                            env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert "HMAC does not match: forged or modified, refusing to load it" in second.stderr
    assert "s3cret" not in second.stderr + first.stderr


def test_unfinished_group_join_rebuilds_the_consumer_and_loses_nothing(kafka, new_topic, tmp_path):
    """A member that stops polling holds every join of its group open until its poll interval
    runs out. The worker gives up on such a join after --rejoin-deadline, rebuilds its consumer
    (the remedy for a client stuck in a join) and, once the group settles, learns every event once."""
    topic = new_topic(2)
    records = list(generate(4000, seed=93))
    send_records(kafka, topic, records)
    # The blocker holds the group until the worker has rebuilt its consumer, then leaves: decided by
    # what the worker did, not by how fast it started (its poll interval used to end the block after
    # 25 s, and a worker slow to start on a loaded machine then joined without ever being held).
    blocker = KafkaConsumer(bootstrap_servers=kafka, group_id=f"g-{topic}", enable_auto_commit=False,
                            session_timeout_ms=10_000, max_poll_interval_ms=180_000)
    blocker.subscribe([topic])
    wait_for(lambda: blocker.poll(timeout_ms=200) is not None and blocker.assignment(), 60, "blocker joined")
    # From here on the blocker never polls: it keeps heartbeating but cannot rejoin.
    log_path = tmp_path / "worker.log"
    started = time.time()
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen(worker_command(kafka, topic, tmp_path / "ckpt", "--until-idle", "5",
                                                 "--metrics-port", "-1", "--rejoin-deadline", "8"),
                                  env=WORKER_ENV, stderr=log_file, text=True)
    try:
        wait_for(lambda: "rebuilding the Kafka consumer" in log_path.read_text() or worker.poll() is not None,
                 170, "the worker to rebuild its consumer")
    finally:
        blocker.close(autocommit=False)
    try:
        worker.wait(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    took = time.time() - started
    log = log_path.read_text()
    assert worker.returncode == 0, log[-3000:]
    rebuilds = log.count("rebuilding the Kafka consumer")
    print(f"worker finished in {took:.0f} s after {rebuilds} consumer rebuild(s)")
    assert rebuilds >= 1, log[-3000:]

    published = [(p["partition"], p["offset"]) for p in read_predictions(kafka, f"{topic}-predictions")]
    assert len(published) == len(set(published))  # nothing predicted twice
    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(tmp_path / "ckpt")
    assert sorted(actual) == sorted(expected) == [0, 1]
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-50:]]
    for partition, engine in expected.items():
        assert_same_engine(actual[partition], engine, probes)




def test_a_group_join_begun_is_collected_even_when_it_ends_between_polls(kafka, new_topic):
    """kafka-python 3.0.12 lost joins that finished between two polls (`stream/group_join.py`):
    a leader rejoining for new metadata alone was then dropped from its group for good, and any
    other member sent one more JoinGroup, so a member that keeps missing the moment rebalances
    its group without end. Here partitions are added under a group of two; the other member
    answers the rebalance 2 s late, and both poll briefly and work in between, as workers do.
    Mended (as the worker's consumer factory does), each member ends with two partitions."""
    from kafka.admin import KafkaAdminClient, NewPartitions

    from stream.group_join import mend_group_join

    topic = new_topic(2)
    options = dict(bootstrap_servers=kafka, group_id=f"g-{topic}", enable_auto_commit=False,
                   session_timeout_ms=6000, heartbeat_interval_ms=1000, metadata_max_age_ms=500)
    leader, other = KafkaConsumer(**options), KafkaConsumer(**options)
    assert mend_group_join(leader) and mend_group_join(other)
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        leader.subscribe([topic])
        wait_for(lambda: leader.poll(timeout_ms=200) is not None and len(leader.assignment()) == 2, 60,
                 "the leader joined")
        other.subscribe([topic])
        wait_for(lambda: [leader.poll(timeout_ms=100), other.poll(timeout_ms=100)]
                 and len(leader.assignment()) == len(other.assignment()) == 1, 60, "both members joined")
        generation = leader._coordinator._generation.generation_id
        admin.create_partitions({topic: NewPartitions(4)})
        added = time.time()
        while time.time() < added + 30 and not len(leader.assignment()) == len(other.assignment()) == 2:
            leader.poll(timeout_ms=20)
            if time.time() > added + 2:
                other.poll(timeout_ms=20)
            time.sleep(0.4)   # the work between polls
        rebalances = leader._coordinator._generation.generation_id - generation
        print(f"assignments {leader.assignment()} / {other.assignment()} after {time.time() - added:.1f} s, "
              f"{rebalances} rebalance(s)")
        assert len(leader.assignment()) == len(other.assignment()) == 2, "a join after adding partitions was lost"
        assert rebalances <= 2, f"{rebalances} rebalances for one change of partitions"
    finally:
        admin.close()
        leader.close(autocommit=False)
        other.close(autocommit=False)
