"""Faults on the real broker: a full disk under the checkpoint store, a worker
that refuses a forged checkpoint, a group join that does not finish, one that ends between polls,
a leader's join against a stale snapshot, and rebalance callbacks longer than the session timeout."""

import resource
import subprocess
import threading
import time

import msgspec
import pytest
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from conftest import WORKER_ENV, LoggedProcess, free_port, worker_command
from helpers import (assert_same_engine, checkpointed_engines, read_predictions, readyz, reference_engines, scrape,
                     send_records, wait_for)
from shopstream.events import decode_event
from shopstream.generator import generate
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.clients import KafkaClients
from stream.settings import WorkerSettings
from stream.worker import Worker

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


def _burn(seconds: float) -> None:
    """Hold the CPU (and, between bytecodes, the GIL) for `seconds`, as pickling a large state does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _SlowStore(DirectoryCheckpointStore):
    """Each restore and each blocking save (a revocation's, a stop's) takes 4 s of CPU, as a large
    state's do: a checkpoint of 237k open predictions took 2.8 s to load, and a worker owns several.
    Two partitions: 8 s in one rebalance callback, past the 6 s session timeout."""

    SECONDS = 4.0

    def load(self, topic, partition):
        _burn(self.SECONDS)
        return super().load(topic, partition)

    def save(self, state) -> None:
        _burn(self.SECONDS)
        super().save(state)


class _SlowClients(KafkaClients):
    def checkpoint_store(self):
        s = self.settings
        return _SlowStore(s.checkpoints.directory, s.group, signing_key=s.signing_key)


class _Observed(Worker):
    """A worker that notes, in its rebalance callbacks, its member id and any partitions lost."""

    def __init__(self, *args, **kwargs):
        self.members: list[str] = []
        self.lost: list[list[int]] = []
        self.assignments: list[list[int]] = []
        self.result: int | None = None
        super().__init__(*args, **kwargs)

    def on_partitions_assigned(self, assigned):
        self.members.append(self.consumer._coordinator._generation.member_id)
        self.assignments.append(sorted(tp.partition for tp in assigned))
        super().on_partitions_assigned(assigned)

    def on_partitions_lost(self, lost):   # kafka-python: the group dropped this member
        self.lost.append(sorted(tp.partition for tp in lost))
        super().on_partitions_lost(lost)

    def run(self) -> int:
        self.result = super().run()
        return self.result


def test_a_worker_starting_alone_is_assigned_its_partitions_once(kafka, new_topic, tmp_path):
    """kafka-python 3.0.12's leader assigned against a snapshot of no topics, so a worker starting
    alone on a new group was assigned every partition, then revoked them (a checkpoint each) and
    restored them again a moment later, when the next metadata response came (group_join.py,
    `snapshot_subscription`): with large states, a start paid twice. Mended: one generation, one
    assignment, and the only revocation is the stop's."""
    topic = new_topic(2)
    send_records(kafka, topic, list(generate(2000, seed=5)))
    settings = WorkerSettings.from_options(
        bootstrap_servers=kafka, topic=topic, group=f"g-{topic}", predictions_topic=f"{topic}-predictions",
        dead_letter_topic=f"{topic}-dlq", checkpoints=str(tmp_path / "ckpt"), until_idle=4.0, metrics_port=-1)
    worker = _Observed(settings, CollectorRegistry())
    assert worker.run() == 0 and worker.handled == 2000
    print(f"assignments {worker.assignments}")
    assert worker.assignments == [[0, 1]], "assigned, revoked and assigned again"
    assert worker.lost == [] and len(set(worker.members)) == 1


def test_rebalance_callbacks_longer_than_the_session_timeout_keep_both_workers_in_the_group(kafka, new_topic,
                                                                                             tmp_path):
    """kafka-python 3.0.12 ran the worker's rebalance callbacks on the event loop that heartbeats: a
    restore or a revocation longer than the session timeout got the member dropped by the broker, and a
    worker whose every restore outlasts it never settled (8 partitions of 237k open predictions: 14
    drops in 4 minutes, RELIABILITY.md). Here each callback takes 8 s against a 6 s session timeout,
    on a real group of two in-process workers (a slow store stands in for the large states): the
    first restores both partitions, then revokes them for the second. Neither is ever dropped (one
    member id each, no partition lost), and every event is predicted and learned once."""
    topic = new_topic(2)
    records = list(generate(3000, seed=97))
    send_records(kafka, topic, records)
    checkpoints = tmp_path / "ckpt"

    def start(name: str):
        settings = WorkerSettings.from_options(
            bootstrap_servers=kafka, topic=topic, group=f"g-{topic}", client_id=name,
            predictions_topic=f"{topic}-predictions", dead_letter_topic=f"{topic}-dlq", checkpoints=str(checkpoints),
            until_idle=5.0, metrics_port=-1, session_timeout_ms=6000,
            checkpoint_every=1_000_000, checkpoint_seconds=3600)   # saved only when revoked or stopped
        worker = _Observed(settings, CollectorRegistry(), clients=_SlowClients(settings))
        thread = threading.Thread(target=worker.run, name=name, daemon=True)
        thread.start()
        return worker, thread

    started = time.time()
    first, first_thread = start("first")
    wait_for(lambda: first.handled > 0 and len(first.partitions) == 2, 120, "the first worker reading both partitions")
    second, second_thread = start("second")
    for worker, thread in ((first, first_thread), (second, second_thread)):
        thread.join(timeout=240)
        if thread.is_alive():   # a group that never settles: stop it, then say what happened
            worker.stopping = True
            thread.join(timeout=120)
    print(f"\nfinished in {time.time() - started:.0f} s; first: members {first.members}, assignments "
          f"{first.assignments}, lost {first.lost}; second: members {second.members}, assignments "
          f"{second.assignments}, lost {second.lost}")
    assert first.result == second.result == 0
    assert first.lost == [] and second.lost == [], "a worker was dropped by its group"
    assert len(set(first.members)) == 1 and len(set(second.members)) == 1, "a worker rejoined as a new member"
    assert len(first.assignments[-1]) == len(second.assignments[-1]) == 1, "the partitions were not shared"

    published = [(p["partition"], p["offset"]) for p in read_predictions(kafka, f"{topic}-predictions")]
    assert published and len(published) == len(set(published))   # nothing predicted twice
    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(checkpoints)
    assert sorted(actual) == sorted(expected) == [0, 1]
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-50:]]
    for partition, engine in expected.items():
        assert engine.counts["consumed"] == actual[partition].counts["consumed"] > 0
        assert_same_engine(actual[partition], engine, probes)
