"""Control plane on the real broker: hostile commands leave workers ready and running no
foreign code; swapped, replayed and tombstoned checkpoints are refused under a signing
key; a misconfigured worker fails before it joins, moving nobody's partitions."""

import hashlib
import json
import pickle
import re
import subprocess
import sys
import time

import pytest
from kafka import KafkaProducer

from conftest import WORKER_ENV, LoggedProcess, free_port, worker_command
from helpers import checkpointed_engines, readyz, scrape, send_records, send_unreadable, wait_for
from shopstream.generator import generate

pytestmark = pytest.mark.kafka


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_hostile_control_commands_leave_the_worker_ready_and_run_no_code(kafka, new_topic, tmp_path):
    topic = new_topic(2)
    control = f"{topic}-control"
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    payload = pickle.dumps({"model": Evil(marker), "features": None})
    (evil / "model.pkl").write_bytes(payload)
    (evil / "meta.json").write_text(json.dumps({"sha256": hashlib.sha256(payload).hexdigest(),
                                                "model": "logreg", "version": "logreg-x"}))
    records = list(generate(20_000, seed=301))
    send_records(kafka, topic, records[:10_000])
    port = free_port()
    worker = LoggedProcess(worker_command(kafka, topic, tmp_path / "ckpt", "--control-topic", control,
                                          "--metrics-port", str(port)), tmp_path / "worker.log", WORKER_ENV)

    def consumed():
        return sum(v for (name, labels), v in scrape(port).items()
                   if name == "shopstream_events_total" and ("outcome", "consumed") in labels)

    try:
        wait_for(lambda: readyz(port) == 200, 90, "worker ready")
        producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
        ours = {"group": f"g-{topic}", "topic": topic}   # commands name their workers' group (else refused at once)
        for value in (json.dumps({"action": "rollback", "target": str(evil), **ours}).encode(),
                      json.dumps({"action": "rollback", "target": "../" * 10 + "tmp/evil", **ours}).encode(),
                      json.dumps({"action": "rollback", "target": "x" * 300, **ours}).encode(),
                      json.dumps({"action": "promote", "target": "p" * 5000, **ours}).encode(),
                      b"\xff\xfe\x00 not a command"):
            producer.send(control, value=value)
        producer.flush()
        producer.close()
        wait_for(lambda: scrape(port).get(("shopstream_control_commands_total",
                                           (("action", "invalid"), ("outcome", "rejected")))) == 2.0,
                 30, "every command rejected")
        # a batch the client cannot read: every worker reads this topic, and it stopped them all
        unreadable = send_unreadable(kafka, control)
        wait_for(lambda: scrape(port).get(("shopstream_control_commands_total",
                                           (("action", "invalid"), ("outcome", "rejected")))) == 3.0,
                 30, "the unreadable batch rejected")
        metrics = scrape(port)
        # per partition: 3 rollbacks; the 5,000-character promote is over the 4 KiB a command may
        # take and the undecodable bytes are no command at all: both "invalid", rejected once when read
        assert metrics[("shopstream_control_commands_total", (("action", "rollback"), ("outcome", "rejected")))] == 6
        assert readyz(port) == 200
        send_records(kafka, topic, records[10_000:])   # and it goes on handling events
        wait_for(lambda: consumed() == len(records), 120, "every event consumed")
    finally:
        worker.proc.terminate()
        log = worker.finish(timeout=180)
    assert worker.proc.returncode == 0, log[-3000:]
    assert not marker.exists()
    assert len(re.findall(r"rejected: [\"']rollback target", log)) == 6 and "Traceback" not in log   # (quoted: %r)
    engines = checkpointed_engines(tmp_path / "ckpt")
    assert sum(e.counts["consumed"] for e in engines.values()) == len(records)
    assert f"control messages {unreadable}..{unreadable} cannot be read" in log
    # A worker starting now reads the whole control topic first, the unreadable batch with it: it starts.
    started = run(kafka, topic, tmp_path / "ckpt", WORKER_ENV, "--control-topic", control)
    assert started.returncode == 0, started.stderr[-3000:]
    assert f"control messages {unreadable}..{unreadable} cannot be read" in started.stderr


def run(kafka, topic, checkpoints, env, *extra, timeout=180):
    return subprocess.run(worker_command(kafka, topic, checkpoints, "--until-idle", "4", "--metrics-port", "-1",
                                         *extra), env=env, capture_output=True, text=True, timeout=timeout)


def test_swapped_and_replayed_checkpoints_are_refused_under_a_signing_key(kafka, new_topic, tmp_path):
    topic = new_topic(2)
    env = {**WORKER_ENV, "SHOPSTREAM_SIGNING_KEY": "k3y-for-tests"}
    checkpoints = tmp_path / "ckpt"
    records = list(generate(12_000, seed=302))
    send_records(kafka, topic, records[:6000])
    first = run(kafka, topic, checkpoints, env)
    assert first.returncode == 0, first.stderr[-2000:]
    old = {p.name: p.read_bytes() for p in checkpoints.glob("*.ckpt")}
    send_records(kafka, topic, records[6000:])
    second = run(kafka, topic, checkpoints, env)
    assert second.returncode == 0, second.stderr[-2000:]
    current = {p.name: p.read_bytes() for p in checkpoints.glob("*.ckpt")}

    # Swapped: partition 0's (signed, valid) checkpoint in partition 1's place.
    (checkpoints / f"{topic}-1.ckpt").write_bytes(current[f"{topic}-0.ckpt"])
    swapped = run(kafka, topic, checkpoints, env)
    assert swapped.returncode == 2
    assert f"holds the state of {topic}-0, not of {topic}-1" in swapped.stderr
    (checkpoints / f"{topic}-1.ckpt").write_bytes(current[f"{topic}-1.ckpt"])

    # Replayed: an older signed checkpoint of the same partition put back.
    (checkpoints / f"{topic}-0.ckpt").write_bytes(old[f"{topic}-0.ckpt"])
    replayed = run(kafka, topic, checkpoints, env)
    assert replayed.returncode == 2, replayed.stderr[-3000:]
    assert "is older than the offset" in replayed.stderr and "an old checkpoint put back?" in replayed.stderr

    # Deleted: the group committed offsets, so starting over is refused unless asked for.
    (checkpoints / f"{topic}-0.ckpt").unlink()
    deleted = run(kafka, topic, checkpoints, env)
    assert deleted.returncode == 2 and "no checkpoint, but group" in deleted.stderr
    forced = run(kafka, topic, checkpoints, env, "--force-fresh-start")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "--force-fresh-start: starting it over" in forced.stderr
    assert "k3y-for-tests" not in swapped.stderr + replayed.stderr + deleted.stderr


def test_a_tombstone_in_the_checkpoint_topic_is_refused_under_a_signing_key(kafka, new_topic, tmp_path):
    topic = new_topic(1)
    env = {**WORKER_ENV, "SHOPSTREAM_SIGNING_KEY": "k3y-for-tests"}
    ckpt_topic = f"{topic}-ckpt"
    store = ["--checkpoint-store", "kafka", "--checkpoint-topic", ckpt_topic]
    send_records(kafka, topic, generate(4000, seed=303))
    first = run(kafka, topic, tmp_path / "unused", env, *store)
    assert first.returncode == 0, first.stderr[-2000:]
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
    producer.send(ckpt_topic, key=f"g-{topic}/{topic}-0".encode(), value=None)
    # skipped with a warning (a key outside the group's is skipped before, only counted: never kept)
    producer.send(ckpt_topic, key=f"g-{topic}/".encode() + b"\xff\xfe not utf-8", value=b"junk")
    producer.flush()
    producer.close()
    again = run(kafka, topic, tmp_path / "unused", env, *store)
    assert again.returncode == 2
    assert "a tombstone replaced it" in again.stderr
    assert "has a key that is not UTF-8: skipped" in again.stderr


def test_a_bad_setting_fails_before_joining_and_moves_nobody_s_partitions(kafka, new_topic, tmp_path):
    topic = new_topic(2)
    send_records(kafka, topic, generate(3000, seed=304))
    port = free_port()
    healthy = LoggedProcess(worker_command(kafka, topic, tmp_path / "ckpt", "--metrics-port", str(port)),
                            tmp_path / "healthy.log", WORKER_ENV)
    try:
        wait_for(lambda: scrape(port).get(("shopstream_assigned_partitions", ())) == 2.0, 90, "both partitions")
        time.sleep(3)  # past the first rebalance a new group goes through
        started = time.time()
        bad = subprocess.run(worker_command(kafka, topic, tmp_path / "ckpt2", "--window", "-5",
                                            "--metrics-port", "-1"),
                             env=WORKER_ENV, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == ["shopstream worker: error: --window -5.0 must be > 0 seconds"]
        missing = run(kafka, topic, tmp_path / "ckpt3", WORKER_ENV, "--artifacts", str(tmp_path / "nowhere"))
        assert missing.returncode == 2 and "no such directory" in missing.stderr
        time.sleep(max(0.0, 8 - (time.time() - started)))  # a join would have rebalanced by now
        assert scrape(port).get(("shopstream_assigned_partitions", ())) == 2.0
        stopped = time.time()
    finally:
        healthy.proc.terminate()
        log = healthy.finish(timeout=60)
    from datetime import datetime

    moved = [line for line in log.splitlines() if ("revoked" in line or "assigned partition" in line)
             and started < datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() < stopped]
    assert moved == [], log[-2000:]  # no partition moved while the misconfigured workers tried


def test_replies_are_signed_and_neither_a_forged_reply_nor_a_backdated_command_passes(kafka, new_topic, tmp_path):
    """Anyone who may write to the reply topic could show a command as applied; anyone who may
    write to the control topic could send a signed command again once its first copy expired,
    even stamped with its old time. Under a signing key: replies are signed and verified, and the
    control topic takes the broker's time (LogAppendTime), so a backdated copy is refused."""
    import threading
    import uuid

    from kafka import KafkaConsumer, TopicPartition

    from shopstream.signing import sign
    from stream.control_protocol import SIGNATURE_HEADER, Command, encode_command

    key = b"k3y-for-tests"
    env = {**WORKER_ENV, "SHOPSTREAM_SIGNING_KEY": key.decode()}
    topic = new_topic(2)
    control, replies = f"{topic}-control", f"{topic}-control-replies"
    send_records(kafka, topic, generate(2000, seed=305))
    port = free_port()
    worker = LoggedProcess(worker_command(kafka, topic, tmp_path / "ckpt", "--control-topic", control,
                                          "--metrics-port", str(port)), tmp_path / "worker.log", env)

    def models(*extra):
        return subprocess.run([sys.executable, "-m", "cli", "models", "promote", "logreg", "--bootstrap-servers",
                               kafka, "--control-topic", control, "--topic", topic, "--group", f"g-{topic}", *extra],
                              env=env, capture_output=True, text=True, timeout=120)

    def read_all(name):
        consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest",
                                 consumer_timeout_ms=3000)
        consumer.assign([TopicPartition(name, 0)])
        try:
            return list(consumer)
        finally:
            consumer.close()

    try:
        wait_for(lambda: scrape(port).get(("shopstream_assigned_partitions", ())) == 2.0, 90, "both partitions")
        genuine = models()
        assert genuine.returncode == 0, genuine.stdout + genuine.stderr
        assert "partition 0: applied" in genuine.stdout and "partition 1: applied" in genuine.stdout
        assert "ignored" not in genuine.stdout
        written = read_all(replies)
        assert len(written) == 2 and all(dict(r.headers) == {SIGNATURE_HEADER: sign(r.value, key).encode()}
                                         for r in written)
        # A signed command copied back with its old time (first copy gone), producer-backdated too.
        old = time.time() - 2 * 24 * 3600
        value, headers = encode_command(Command("promote", "logreg", id=uuid.uuid4().hex, issued_at=old,
                                                group=f"g-{topic}", topic=topic), key)
        producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
        producer.send(control, value=value, headers=headers, timestamp_ms=int(old * 1000)).get(timeout=30)
        producer.close()
        wait_for(lambda: scrape(port).get(("shopstream_control_commands_total",
                                           (("action", "invalid"), ("outcome", "rejected")))) == 1.0,
                 30, "the backdated copy rejected")
        copy = read_all(control)[-1]
        assert copy.timestamp_type == 1 and copy.timestamp > (time.time() - 60) * 1000, "the broker's time"
        reasons = [json.loads(r.value)["reason"] for r in read_all(replies) if json.loads(r.value)["partition"] == -1]
        assert len(reasons) == 1 and "before the broker appended it, more than the 86400 s" in reasons[0]
    finally:
        worker.proc.terminate()
        log = worker.finish(timeout=180)
    assert worker.proc.returncode == 0, log[-3000:]

    # No worker runs now: a forger answers "applied" for both partitions, naming the command.
    forged_from = len(read_all(control))   # the next command's offset

    def forge():
        consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, consumer_timeout_ms=30_000)
        consumer.assign([TopicPartition(control, 0)])
        consumer.seek(TopicPartition(control, 0), forged_from)
        command = next(iter(consumer))
        consumer.close()
        producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
        for partition in (0, 1):
            producer.send(replies, value=json.dumps({
                "command": command.offset, "partition": partition, "outcome": "applied", "model": "logreg",
                "worker": "forger", "id": json.loads(command.value)["id"]}).encode())
        producer.close()

    forger = threading.Thread(target=forge, daemon=True)
    forger.start()
    shown = models("--wait-timeout", "10")
    forger.join(timeout=60)
    assert shown.returncode == 1, shown.stdout
    assert "ignored 2 replies that were unsigned or forged" in shown.stdout
    assert "partition 0: no reply" in shown.stdout and "applied" not in shown.stdout


def test_control_and_reply_topics_made_with_several_partitions_lose_no_command_nor_reply(kafka, new_topic):
    """Workers read commands from partition 0 of the control topic and `shopstream models` reads
    replies from partition 0 of the reply topic. Sent without a partition, on topics made with
    more partitions (by hand, a topic template), commands and replies were spread over them and
    most were never read. Now both go to partition 0."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from shopstream.engine import Engine
    from stream.control_operator import ControlClient
    from stream.control_protocol import Command
    from stream.control_worker import ControlChannel

    control = new_topic(3, "-control")
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        admin.create_topics([NewTopic(f"{control}-replies", 3, 1)])
    finally:
        admin.close()
    options = {"bootstrap_servers": kafka}
    client = ControlClient(options, control).connect()
    try:
        offsets = [client.send(Command("promote", "logreg", id=f"c{i}", issued_at=time.time(), group="g",
                                       topic="events")) for i in range(10)]
    finally:
        client.close()
    assert offsets == list(range(10)), "every command at the next offset of partition 0"
    channel = ControlChannel(options, control, None, worker="w", group="g", events_topic="events").open()
    try:
        assert [offset for offset, _ in channel.commands] == offsets
        assert channel.apply(Engine.fresh("logreg", "raw"), 0)
    finally:
        channel.close()
    read = ControlClient(options, control).read_replies(timeout=10)
    assert sorted(r.command for r in read.replies) == offsets, "one reply per command, all read"


def test_a_reply_batch_that_cannot_be_read_is_passed_over_and_counted(kafka, new_topic):
    """Anyone who may write to the reply topic could put there a batch the client cannot read: it
    failed every read of the replies after it (`shopstream models` saw none)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from stream.control_operator import ControlClient
    from stream.control_protocol import Reply, encode_reply, replies_topic

    control = new_topic(1, "-control")
    replies = replies_topic(control)
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        admin.create_topics([NewTopic(replies, 1, 1)])
    finally:
        admin.close()
    options = {"bootstrap_servers": kafka}
    producer = KafkaProducer(bootstrap_servers=kafka)
    try:
        for command in (0, 2):
            value, headers = encode_reply(Reply(command, 0, "applied", "", worker="w"))
            producer.send(replies, value=value, headers=headers).get(timeout=30)
            if command == 0:
                send_unreadable(kafka, replies)
    finally:
        producer.close()
    read = ControlClient(options, control).read_replies(timeout=10)
    assert [r.command for r in read.replies] == [0, 2] and read.unreadable == 1
    assert read.ignored_line() == "passed over 1 record of the reply topic that could not be read (a corrupt batch)"
