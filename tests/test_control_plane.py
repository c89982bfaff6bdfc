"""Control plane, fast: hostile commands, swapped and replayed checkpoints, signed artifact
metadata, settings checked before joining, checkpoint age. No broker needed."""

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
from collections import deque
from types import SimpleNamespace

import msgspec
import pytest

from shopstream.artifacts import ArtifactError, load_artifact, save_artifact, set_default
from shopstream.engine import Engine
from shopstream.signing import KEY_IS_SET, SignatureError
from stream.checkpointing.format import CheckpointError
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.control_protocol import SIGNATURE_HEADER, Command, check_target, parse_command
from stream.control_worker import MAX_KEPT_COMMANDS, ControlChannel
from stream.partition import Partition as PartitionState
from stream.settings import WorkerSettings
from stream.telemetry import WorkerCollector, WorkerSnapshot
from stream.worker import preflight


class Evil:
    """Unpickling this runs code: what a hostile rollback target would load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def channel(artifacts=None, end=None):
    """A ControlChannel without Kafka: records are fed by hand (`receive`), replies collected;
    `end` is the topic's end offset as the broker would tell it (default: what was fed)."""
    ch = ControlChannel.__new__(ControlChannel)
    ch.artifacts, ch.worker, ch.replies, ch.commands, ch.counts = artifacts, "w1", "r", deque(), {}
    ch.read_up_to, ch.dropped_through, ch.invalid, ch._ids = 0, -1, 0, {}
    ch._partition = SimpleNamespace(topic="control")
    ch._end_offset = lambda: ch.read_up_to if end is None else end
    ch.catch_up = lambda: None
    sent = []
    ch._producer = SimpleNamespace(send=lambda topic, value: sent.append(json.loads(value)), close=lambda **k: None)
    return ch, sent


def record(value: bytes, headers=(), offset=0):
    return SimpleNamespace(value=value, headers=list(headers), offset=offset)


def records(values, start=0):
    return [record(v if isinstance(v, bytes) else msgspec.json.encode(v), offset=start + i)
            for i, v in enumerate(values)]


def test_hostile_commands_are_rejected_with_a_reason_and_run_no_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    payload = pickle.dumps({"model": Evil(marker), "features": None})
    (evil / "model.pkl").write_bytes(payload)
    (evil / "meta.json").write_text(json.dumps({"sha256": hashlib.sha256(payload).hexdigest(), "model": "logreg",
                                                "version": "logreg-x"}))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    ch, replies = channel(str(artifacts))
    hostile = [Command("rollback", str(evil)), Command("rollback", "../evil"), Command("rollback", "x" * 300),
               Command("promote", "p" * 500), Command("promote", "hat"), Command("explode", "now"),
               b"\xff\xfe not json", b"[" * 2000, b"{" * 50_000]
    assert ch.receive(records(hostile)) is True
    # No command at all: rejected once, when read (one reply, for no partition), never kept
    assert [(r["command"], r["partition"]) for r in replies] == [(6, -1), (7, -1), (8, -1)]
    assert replies[0]["reason"].startswith("not a command") and replies[1]["reason"].startswith("not a command")
    assert replies[2]["reason"] == "50000 bytes, more than 4096"
    assert [offset for offset, _ in ch.commands] == [0, 1, 2, 3, 4, 5]
    replies.clear()
    engine = Engine.fresh("logreg", "shop")
    assert ch.apply(engine, 0) is True
    assert not marker.exists()
    assert [r["outcome"] for r in replies] == ["rejected"] * 6
    reasons = [r["reason"] for r in replies]
    assert "is not an artifact version" in reasons[0] and "is not an artifact version" in reasons[1]
    assert "is not a model name" in reasons[3] and len(reasons[3]) < 300
    assert "no model named 'hat' here" in reasons[4] and "unknown action" in reasons[5]
    assert ch.counts == {("rollback", "rejected"): 3, ("promote", "rejected"): 2, ("invalid", "rejected"): 4}
    assert engine.champion_slot.name == "logreg" and engine.control_offset == 5
    lineage = [h for h in engine.history if h["kind"] == "control"]
    assert len(lineage) == 6 and all(len(h["target"]) <= 80 for h in lineage)
    assert ch.apply(engine, 0) is False  # each command once


def test_junk_on_the_control_topic_is_not_kept_nor_replayed_into_new_partitions():
    """50,000 junk messages used to be kept (+204 MB) and replayed into every new partition (50,000
    errors and replies each). Now junk is rejected once when read; valid commands are bounded."""
    ch, replies = channel()
    ch.signing_key = b"k3y"   # handed in by the worker (from its settings)
    junk = [b'{"action": "promote", "target": "logreg"}'] * 5000 + [b"\x00junk"] * 5000
    ch.receive(records(junk), live=False)
    assert len(ch.commands) == 0 and ch.invalid == 10_000 and replies == [], "unsigned: none kept"
    engine = Engine.fresh("logreg", "shop")
    assert ch.apply(engine, 0) is False and engine.history == [] and replies == []
    ch.signing_key = None
    ch.receive(records([Command("promote", "nope")] * (MAX_KEPT_COMMANDS + 500), start=10_000))
    assert len(ch.commands) == MAX_KEPT_COMMANDS and ch.dropped_through == 10_499
    assert ch.apply(engine, 3) is True
    assert len(replies) == MAX_KEPT_COMMANDS and engine.control_offset == 10_000 + MAX_KEPT_COMMANDS + 499
    assert ch.counts[("older", "skipped")] == 1, "the dropped ones are skipped for this partition: counted"


def test_a_recreated_control_topic_is_detected_and_its_commands_applied():
    """A partition checkpointed after command 40 of a control topic that was then deleted and
    created again: the new topic's commands (offsets 0, 1) were skipped silently as 'seen'."""
    ch, replies = channel(end=2)
    ch.receive(records([Command("promote", "logreg"), Command("promote", "nope")]))
    engine = Engine.fresh("logreg", "shop")
    engine.control_offset = 40      # from a checkpoint taken while the old topic had 41 commands
    assert ch.apply(engine, 0) is True
    assert engine.control_offset == 1 and [r["command"] for r in replies] == [0, 1]
    assert ch.counts[("topic", "recreated")] == 1
    # while a worker runs: the offsets it reads go back
    ch.receive(records([Command("promote", "logreg")], start=0))
    assert ch.counts[("topic", "recreated")] == 2 and [o for o, _ in ch.commands] == [0]
    behind, _ = channel(end=45)     # not recreated: this worker only read less far than another
    behind.receive(records([Command("promote", "logreg")]))
    engine.control_offset = 40
    assert behind.apply(engine, 0) is False and engine.control_offset == 40
    assert ("topic", "recreated") not in behind.counts


def test_with_a_signing_key_unsigned_and_forged_commands_are_refused():
    from shopstream.signing import sign

    key = b"k3y"   # the key is handed in (the worker passes its settings' key), not read here
    value = b'{"action": "promote", "target": "logreg"}'
    assert parse_command(value, [], key) == f"unsigned, but {KEY_IS_SET}"
    forged = [(SIGNATURE_HEADER, sign(value, b"other").encode())]
    assert parse_command(value, forged, key) == "HMAC does not match: forged or modified"
    signed = [(SIGNATURE_HEADER, sign(value, key).encode())]
    assert parse_command(value, signed, key) == Command("promote", "logreg")
    assert parse_command(value, [], None) == Command("promote", "logreg")   # no key: nothing to verify
    ch, replies = channel()
    ch.signing_key = key
    ch.receive([record(value, offset=0), record(value, forged, offset=1), record(value, signed, offset=2)])
    assert [offset for offset, _ in ch.commands] == [2]
    assert [r["reason"] for r in replies] == [f"unsigned, but {KEY_IS_SET}",
                                              "HMAC does not match: forged or modified"]


def test_a_command_cannot_write_a_line_of_its_own_into_the_log(caplog):
    """A target or an unknown field holding a line end was logged with %s: a forged log line
    ("... INFO ... applied") followed. Logged with %r, it stays on the command's own line."""
    import logging

    ch, _ = channel()
    forged = "x\n2026-01-01 00:00:00 INFO stream.control_worker: partition 0: control command 9 applied"
    with caplog.at_level(logging.INFO, logger="stream.control_worker"):
        ch.receive(records([Command("promote", forged), {"action": "promote", "target": "y", "a\nFAKE": 1}]))
        ch.apply(Engine.fresh("logreg", "shop"), 0)
    lines = caplog.text.splitlines()
    assert not any(line.startswith(("2026-01-01", "FAKE")) for line in lines), caplog.text
    assert any("\\n2026-01-01" in line for line in lines)   # there, escaped
    # a signature of the wrong type or length is a mismatch, compared in constant time
    from shopstream.signing import sign
    value = b'{"action": "promote", "target": "logreg"}'
    for tag in (b"", sign(value, b"k3y").encode()[:-1] + b"\xff", "text"):
        assert parse_command(value, [(SIGNATURE_HEADER, tag)], b"k3y") == "HMAC does not match: forged or modified"


def test_a_signed_command_sent_again_is_a_replay_and_refused():
    """The HMAC covers a command's bytes, so the same signed bytes at a later offset passed, and an
    old rollback could be repeated by anyone who may write to the topic. A command's id (the
    operator draws one) makes the copy a replay: refused, replied, never kept nor applied."""
    from stream.control_protocol import encode_command

    key = b"k3y"
    ch, replies = channel()
    ch.signing_key = key
    first = encode_command(Command("promote", "logreg", id="a1"), key)
    other = encode_command(Command("promote", "logreg", id="b2"), key)
    ch.receive([record(*first, offset=0), record(*first, offset=57), record(*other, offset=58)])
    assert [offset for offset, _ in ch.commands] == [0, 58]
    assert [(r["command"], r["reason"]) for r in replies] == [(57, "a replay of command 0 (the same id, 'a1')")]
    ch.receive([record(*first, offset=0)], live=False)   # a recreated topic: the command is itself again
    assert [offset for offset, _ in ch.commands] == [0]


def test_check_target_takes_names_not_paths():
    for bad in ("/etc", "../x", "logreg-20260101T000000-0123abcd/..", "logreg/../../x", "", "a" * 65):
        with pytest.raises(ValueError):
            check_target("rollback" if bad[:1] != "a" else "promote", bad)
    with pytest.raises(ValueError, match="names no catalog model"):
        check_target("rollback", "nosuch-20260101T000000-0123abcd")
    check_target("promote", "logreg_tuned")
    check_target("rollback", "logreg_tuned-20260101T000000-0123abcd")  # artifacts made before the rename


def state(partition, offset=10):
    engine = Engine.fresh("logreg", "raw")
    return PartitionState("events", partition, engine, next_offset=offset, events_since_checkpoint=1)


def test_a_checkpoint_of_another_partition_or_group_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPSTREAM_SIGNING_KEY", "k3y")
    store = DirectoryCheckpointStore(tmp_path, group="g1")
    store.save(state(3))
    (tmp_path / "events-2.ckpt").write_bytes((tmp_path / "events-3.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match="holds the state of events-3, not of events-2"):
        DirectoryCheckpointStore(tmp_path, group="g1").load("events", 2)
    with pytest.raises(CheckpointError, match="belongs to consumer group 'g1', not 'g2'"):
        DirectoryCheckpointStore(tmp_path, group="g2").load("events", 3)


def test_an_older_checkpoint_put_back_is_refused_under_a_signing_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPSTREAM_SIGNING_KEY", "k3y")
    store = DirectoryCheckpointStore(tmp_path, group="g")
    s = state(0)
    store.save(s)
    old = (tmp_path / "events-0.ckpt").read_bytes()
    s.events_since_checkpoint, s.next_offset = 1, 20
    store.save(s)
    assert store.load("events", 0).sequence == 2
    (tmp_path / "events-0.ckpt").write_bytes(old)
    with pytest.raises(CheckpointError, match="sequence 1 is older than the 2 this worker already saw"):
        store.load("events", 0)


def test_artifact_metadata_and_default_are_signed(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPSTREAM_SIGNING_KEY", "k3y")
    directory = save_artifact(tmp_path, "logreg", {"w": 1}, None, {"metrics": {"holdout": {"roc_auc": 0.7}}})
    set_default(tmp_path, directory)
    assert load_artifact(tmp_path).model == {"w": 1}
    meta = json.loads((directory / "meta.json").read_text())
    meta["metrics"]["holdout"]["roc_auc"] = 0.99  # a better-looking model, same pickle
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SignatureError, match="meta.json: HMAC does not match"):
        load_artifact(directory)
    other = save_artifact(tmp_path, "logreg", {"w": 2}, None, {})
    (tmp_path / "DEFAULT").write_text(str(other.relative_to(tmp_path)) + "\n")  # unsigned pointer
    with pytest.raises(SignatureError, match="DEFAULT: not signed"):
        load_artifact(tmp_path)
    monkeypatch.delenv("SHOPSTREAM_SIGNING_KEY")
    (tmp_path / "DEFAULT").write_text("../../etc\n")
    with pytest.raises(ArtifactError, match="is not an artifact of this directory"):
        load_artifact(tmp_path)


@pytest.mark.slow
def test_bad_settings_fail_before_joining_with_one_line(tmp_path):
    with pytest.raises(ValueError, match="window -5.0 must be > 0"):
        preflight(WorkerSettings.from_options(window=-5))
    with pytest.raises(FileNotFoundError, match="--artifacts .*nowhere: no such directory"):
        preflight(WorkerSettings.from_options(artifacts=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        preflight(WorkerSettings.from_options(challengers=("nope",)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "cli", "worker", "--bootstrap-servers",
                                 "127.0.0.1:1", "--metrics-port", str(port), "--checkpoints", str(tmp_path / "c")],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"metrics port 127.0.0.1:{port} cannot be used (Address already in use): choose another with " \
           "--metrics-port" in result.stderr
    assert "Traceback" not in result.stderr
    window = subprocess.run([sys.executable, "-m", "cli", "worker", "--window", "-5",
                             "--bootstrap-servers", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert window.returncode == 2 and window.stderr.strip().splitlines() == [
        "shopstream worker: error: --window -5.0 must be > 0 seconds"]


@pytest.mark.slow
def test_produce_without_a_broker_is_one_clear_line():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "cli", "produce", "--events", "10",
                             "--bootstrap-servers", f"127.0.0.1:{port}", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"shopstream produce: error: Kafka at 127.0.0.1:{port}: KafkaTimeoutError: Unable to bootstrap from "
        f"['127.0.0.1:{port}'] (is the broker up?)"]
    assert "Traceback" not in result.stderr


def test_checkpoint_age_is_unsaved_progress_not_time_since_the_last_save(tmp_path):
    import time

    idle = state(0)
    idle.checkpointed_at = time.time() - 3600       # saved an hour ago, nothing since
    busy = state(1)
    busy.unsaved_since = time.time() - 90           # 90 s of events no checkpoint holds
    from kafka import TopicPartition

    worker = SimpleNamespace(partitions={TopicPartition("events", 0): idle, TopicPartition("events", 1): busy},
                             consumer=SimpleNamespace(highwater=lambda tp: None), end_offsets={}, blocked={},
                             handled=0, broker_ok=True, outputs=SimpleNamespace(counts={}), outputs_blocked=False,
                             skipper=SimpleNamespace(skipped_records=0), control=None)
    ages = {s.labels["partition"]: s.value for family in WorkerCollector(lambda: WorkerSnapshot.of(worker)).collect()
            if family.name == "shopstream_checkpoint_age_seconds" for s in family.samples}
    assert ages["0"] == 0.0 and 89 < ages["1"] < 100
