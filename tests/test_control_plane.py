"""Control plane, fast: hostile commands, old commands sent again, signed replies, swapped and
replayed checkpoints, signed artifact metadata, settings checked before joining, checkpoint
age. No broker needed."""

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections import OrderedDict, defaultdict, deque
from types import SimpleNamespace

import msgspec
import pytest

from shopstream.artifacts import ArtifactError, load_artifact, save_artifact, set_default
from shopstream.engine import Engine
from shopstream.signing import KEY_IS_SET, SignatureError, sign
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
    ch.read_up_to, ch.dropped_through, ch.invalid, ch._ids = 0, -1, 0, OrderedDict()
    ch._partition = SimpleNamespace(topic="control")
    ch._end_offset = lambda: ch.read_up_to if end is None else end
    ch.catch_up = lambda: None
    sent = []
    ch.sent_records = []   # (value, headers) of each reply, as sent

    def send(topic, value, headers=(), partition=None):
        ch.sent_records.append((value, list(headers)))
        sent.append(json.loads(value))
    ch._producer = SimpleNamespace(send=send, close=lambda **k: None)
    return ch, sent


def now_ms() -> int:
    return int(time.time() * 1000)


def record(value: bytes, headers=(), offset=0, timestamp=None, timestamp_type=1):
    """A consumed record; `timestamp` (ms) is the broker's append time (LogAppendTime): now by default."""
    return SimpleNamespace(value=value, headers=list(headers), offset=offset,
                           timestamp=now_ms() if timestamp is None else timestamp, timestamp_type=timestamp_type)


def signed(command: dict, key: bytes):
    """A command's value and headers as `shopstream models` sends them, written as JSON here (any field)."""
    value = json.dumps(command).encode()
    return value, [(SIGNATURE_HEADER, sign(value, key).encode())]


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
    assert engine.champion_slot.name == "logreg" and engine.control_offset == 8, "past the refused 6..8 too"
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
    assert ch.apply(engine, 0) is True and engine.history == [] and replies == []
    assert engine.control_offset == 9999, "moved past them: judged once, not again by a restarted worker"
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
    key = b"k3y"   # the key is handed in (the worker passes its settings' key), not read here
    value = json.dumps({"action": "promote", "target": "logreg", "id": "c1", "issued_at": 1.8e9}).encode()
    assert parse_command(value, [], key) == f"unsigned, but {KEY_IS_SET}"
    forged = [(SIGNATURE_HEADER, sign(value, b"other").encode())]
    assert parse_command(value, forged, key) == "HMAC does not match: forged or modified"
    good = [(SIGNATURE_HEADER, sign(value, key).encode())]
    assert parse_command(value, good, key) == Command("promote", "logreg", id="c1", issued_at=1.8e9)
    assert parse_command(value, [], None) == parse_command(value, good, key)   # no key: nothing to verify
    ch, replies = channel()
    ch.signing_key = key
    ch.receive([record(value, offset=0), record(value, forged, offset=1),
                record(value, good, offset=2, timestamp=1_800_000_001_000)])
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
    first = encode_command(Command("promote", "logreg", id="a1", issued_at=time.time()), key)
    other = encode_command(Command("promote", "logreg", id="b2", issued_at=time.time()), key)
    ch.receive([record(*first, offset=0), record(*first, offset=57), record(*other, offset=58)])
    assert [offset for offset, _ in ch.commands] == [0, 58]
    assert [(r["command"], r["reason"]) for r in replies] == [(57, "a replay of command 0 (the same id, 'a1')")]
    ch.receive([record(*first, offset=0)], live=False)   # a recreated topic: the command is itself again
    assert [offset for offset, _ in ch.commands] == [0]


DAY = 24 * 3600


def test_with_a_signing_key_a_command_without_id_or_issue_time_is_refused():
    """Signed commands from before ids could be copied back into the topic and applied again,
    forever: nothing tells a copy from the first. With a key, a command needs an id and an
    issue time (`shopstream models` sends both); one without is refused, counted and replied."""
    key = b"k3y"
    ch, replies = channel()
    ch.signing_key = key
    no_id = signed({"action": "promote", "target": "logreg"}, key)
    no_time = signed({"action": "promote", "target": "logreg", "id": "c1"}, key)
    ch.receive([record(*no_id, offset=0), record(*no_id, offset=1), record(*no_time, offset=2)])
    assert list(ch.commands) == [] and ch.invalid == 3 and ch.counts == {("invalid", "rejected"): 3}
    reasons = [r["reason"] for r in replies]
    assert reasons[0] == reasons[1] and reasons[0].startswith("no id: ") and reasons[2].startswith("no issue time: ")
    assert [r["id"] for r in replies] == [None, None, None] and {r["partition"] for r in replies} == {-1}
    unsigned, _ = channel()   # without a key, nothing proves where a command came from: as before
    unsigned.receive([record(no_id[0], offset=0), record(no_time[0], offset=1)])
    assert [offset for offset, _ in unsigned.commands] == [0, 1] and unsigned.invalid == 0


def test_a_copy_of_an_old_command_is_refused_and_old_commands_stay_valid_at_a_restart(caplog):
    """Once a command's first copy expired from the topic, a copy was 'first' and applied. A
    command's signed issue time is judged against the broker's append time: a copy appended
    long after is refused; the commands appended in time stay valid when a worker re-reads
    them at every start (never flagged, never applied twice, given to partitions that missed them)."""
    import logging

    key, now = b"k3y", time.time()
    month_ago = signed({"action": "promote", "target": "logreg", "id": "m1", "issued_at": now - 30 * DAY}, key)
    week_ago = signed({"action": "promote", "target": "nope", "id": "w1", "issued_at": now - 7 * DAY}, key)
    topic = [record(*month_ago, offset=3, timestamp=int((now - 30 * DAY + 2) * 1000)),
             record(*week_ago, offset=4, timestamp=int((now - 7 * DAY + 1) * 1000))]
    ch, replies = channel()
    ch.signing_key = key
    with caplog.at_level(logging.WARNING, logger="stream.control_worker"):
        ch.receive(topic, live=False)     # a worker starting: catching up on what was sent
    assert [offset for offset, _ in ch.commands] == [3, 4] and ch.invalid == 0 and caplog.text == ""
    applied_both, restored_old, new = (Engine.fresh("logreg", "shop") for _ in range(3))
    applied_both.control_offset, restored_old.control_offset = 4, 3
    assert ch.apply(applied_both, 0) is False and replies == [], "applied before: skipped, not again"
    assert ch.apply(restored_old, 1) is True and [(r["command"], r["partition"]) for r in replies] == [(4, 1)]
    assert ch.apply(new, 2) is True and [r["command"] for r in replies[1:]] == [3, 4]
    assert [r["id"] for r in replies] == ["w1", "m1", "w1"], "each reply names its command"
    # The month-old command's first copy expired: a copy appended now is refused by every worker.
    later, replies = channel()
    later.signing_key = key
    later.receive([record(*month_ago, offset=90)])
    assert list(later.commands) == [] and later.counts == {("invalid", "rejected"): 1}
    assert replies == [{"command": 90, "partition": -1, "outcome": "rejected", "model": "", "version": "",
                        "worker": "w1", "id": "m1", "reason": "issued 2592000 s before the broker appended it, "
                        "more than the 86400 s a command may take: an old command sent again?",
                        "group": None, "topic": None}]


@pytest.mark.parametrize("issued_at, timestamp, reason", [
    ("-1", None, "issued 17"),                        # 1969: decades too old
    ("0", None, "issued 17"),
    ("1e308", None, "issued 1e+308 s after the broker appended it, more than the 300 s clocks may differ by"),
    ("-1e308", None, "issued 1e+308 s before the broker appended it"),
    ("NOW+3600", None, "issued 3600 s after the broker appended it"),
    ("NOW-90000", None, "issued 90000 s before the broker appended it"),
    ("NaN", None, "not a command: JSON is malformed"),
    ("1e999", None, "not a command: Number out of range - at `$.issued_at`"),
    ("-1e999", None, "not a command: Number out of range - at `$.issued_at`"),
    ('"1800000000"', None, "not a command: Expected `float | null`, got `str` - at `$.issued_at`"),
    ("true", None, "not a command: Expected `float | null`, got `bool` - at `$.issued_at`"),
    ("[1]", None, "not a command: Expected `float | null`, got `array` - at `$.issued_at`"),
    ("NOW", -1, "no broker timestamp (-1) to judge its issue time by"),
    ("NOW", "x" * 1000, "no broker timestamp ('xxxxxxxxxxxxxxxx"),
])
def test_hostile_issue_times_are_refused_with_a_reason_and_stop_nothing(issued_at, timestamp, reason):
    now = time.time()
    written = issued_at.replace("NOW", "").strip() or "0"
    raw = str(now + float(written)) if issued_at.startswith("NOW") else issued_at
    value = b'{"action": "promote", "target": "logreg", "id": "x1", "issued_at": ' + raw.encode() + b"}"
    for key in (None, b"k3y"):   # judged alike, with a key or without
        ch, replies = channel()
        ch.signing_key = key
        headers = [(SIGNATURE_HEADER, sign(value, key).encode())] if key else []
        ch.receive([record(value, headers, offset=7, timestamp=timestamp)])
        assert list(ch.commands) == [] and ch.counts == {("invalid", "rejected"): 1}
        assert len(replies) == 1 and replies[0]["reason"].startswith(reason), replies[0]["reason"]
        assert len(replies[0]["reason"]) <= 300
        engine = Engine.fresh("logreg", "shop")
        assert ch.apply(engine, 0) is True and engine.control_offset == 7 and engine.history == [], "moved past"


def test_hostile_ids_and_issue_times_made_in_process_are_refused_not_raised():
    from stream.control_protocol import issue_time_problem

    for bad in ("x" * 65, "x" * 4000, ""):   # (a longer command is refused for its size)
        value = json.dumps({"action": "promote", "target": "logreg", "id": bad, "issued_at": time.time()}).encode()
        reason = parse_command(value, [], None)
        assert isinstance(reason, str) and "length" in reason and "at `$.id`" in reason and len(reason) < 300
    for issued in (float("nan"), float("inf"), -float("inf")):
        assert issue_time_problem(Command("promote", "logreg", issued_at=issued), now_ms()) == \
            f"issue time {issued!r} is not a number of seconds"
    fine = Command("promote", "logreg", issued_at=time.time())
    assert issue_time_problem(fine, now_ms()) is None
    assert issue_time_problem(fine, True) == "no broker timestamp (True) to judge its issue time by"
    assert issue_time_problem(Command("promote", "logreg"), None) is None, "none to judge (no key): as before"


def test_a_producer_chosen_timestamp_is_warned_about_once(caplog):
    """With CreateTime, the timestamp the age is judged by is the writer's: a copy of an old
    command could be backdated to pass. Said once, with what to set."""
    import logging

    key = b"k3y"
    ch, _ = channel()
    ch.signing_key = key
    commands = [signed({"action": "promote", "target": "logreg", "id": f"c{i}", "issued_at": time.time()}, key)
                for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="stream.control_worker"):
        ch.receive([record(*command, offset=i, timestamp_type=0) for i, command in enumerate(commands)])
    assert len(ch.commands) == 3
    assert caplog.text.count("message.timestamp.type=LogAppendTime on topic control") == 1


def test_a_worker_with_a_signing_key_signs_its_replies():
    key = b"k3y"
    ch, replies = channel()
    ch.signing_key = key
    command = signed({"action": "promote", "target": "logreg", "id": "c9", "issued_at": time.time()}, key)
    ch.receive([record(*command, offset=0), record(b"junk", offset=1)])
    ch.apply(Engine.fresh("logreg", "shop"), 4)
    assert len(ch.sent_records) == 2
    for value, headers in ch.sent_records:
        assert headers == [(SIGNATURE_HEADER, sign(value, key).encode())]
    assert [(r["command"], r["partition"], r["outcome"], r["id"]) for r in replies] == [
        (1, -1, "rejected", None), (0, 4, "applied", "c9")]
    unsigned, _ = channel()
    unsigned.receive([record(b"junk")])
    assert unsigned.sent_records[0][1] == [], "no key, nothing to sign with"


class FakeBroker:
    """Topics in memory for the operator's Kafka clients (`ControlClient`, `partitions_of`);
    `on_command(broker, record)` plays the workers when a command is appended."""

    def __init__(self, on_command=None, partitions=(0, 1)):
        self.topics = defaultdict(list)
        self.on_command = on_command
        self.partitions = set(partitions)

    def append(self, topic, value, headers=()):
        appended = record(value, headers, offset=len(self.topics[topic]))
        self.topics[topic].append(appended)
        return appended

    def producer(self, **_):
        def send(topic, value=None, headers=None, **__):
            appended = self.append(topic, value, headers or [])
            if topic == "control" and self.on_command is not None:
                self.on_command(self, appended)
            return SimpleNamespace(get=lambda timeout=None: appended)
        return SimpleNamespace(send=send, close=lambda *a, **k: None)

    def consumer(self, **_):
        broker, at = self, {}
        return SimpleNamespace(
            assign=lambda tps: at.update({tp: 0 for tp in tps}), seek=at.__setitem__,
            poll=lambda timeout_ms=0: {tp: broker._take(tp, at) for tp in at if broker.topics[tp.topic][at[tp]:]},
            position=lambda tp: at[tp], end_offsets=lambda tps: {tp: len(broker.topics[tp.topic]) for tp in tps},
            partitions_for_topic=lambda topic: broker.partitions, close=lambda: None)

    def _take(self, tp, at):
        taken = self.topics[tp.topic][at[tp]:]
        at[tp] += len(taken)
        return taken


def run_models(monkeypatch, capsys, broker, key=b"k3y", **settings):
    import stream.control_operator as operator
    from stream.settings import KafkaConnection, ModelsSettings

    monkeypatch.setattr(operator, "KafkaConsumer", broker.consumer)
    monkeypatch.setattr(operator, "KafkaProducer", broker.producer)
    monkeypatch.setattr(operator, "create_topics", lambda *a, **k: [])
    s = ModelsSettings(**{"action": "promote", "target": "logreg", "control_topic": "control", "topic": "events",
                          "wait_timeout": 0.5, **settings}, kafka=KafkaConnection(bootstrap_servers="fake:1"),
                       signing_key=key)
    status = operator.models_command(s)
    return status, capsys.readouterr().out


def reply_to(command_record, partition, key, **fields):
    """A reply to the command in `command_record`, as a worker with `key` writes it (unsigned: None)."""
    command = json.loads(command_record.value)
    reply = {"command": command_record.offset, "partition": partition, "outcome": "applied", "model": "logreg",
             "version": "v1", "worker": "w1", "id": command.get("id"), "group": "shopstream", "topic": "events",
             **fields}
    value = json.dumps(reply).encode()
    return value, [(SIGNATURE_HEADER, sign(value, key).encode())] if key else []


def test_wait_takes_only_replies_signed_with_the_key_for_its_own_command(monkeypatch, capsys):
    """Anyone who may write to the reply topic wrote 'applied' for every partition, and `--wait`
    showed the command as applied (exit 0). With a key, a reply counts only when signed with it
    and naming this command (its offset and id); the others are said, and the exit is 1."""
    def forge(key, **fields):
        return lambda broker, command: [broker.append("control-replies", *reply_to(command, p, key, **fields))
                                        for p in (0, 1)]

    for forger, ignored in ((forge(None), "ignored 2 replies that were unsigned or forged: " + KEY_IS_SET),
                            (forge(b"guess"), "ignored 2 replies that were unsigned or forged"),
                            (forge(b"k3y", id="an-older-command"), "ignored 2 replies to control offset 0 for "
                                                                   "another command")):
        status, out = run_models(monkeypatch, capsys, FakeBroker(forger))
        assert status == 1, out
        assert "partition 0: no reply in 0.5 s" in out and "partition 1: no reply" in out and ignored in out, out
        assert "applied" not in out

    def workers(broker, command):   # real workers with the key; junk on the reply topic is skipped, uncounted
        broker.append("control-replies", b"\x00 junk")
        broker.append("control-replies", *reply_to(command, 0, None, outcome="rejected", reason="fake"))
        for partition in (0, 1):
            ch, _ = channel()
            ch.signing_key, ch.replies, ch._producer = b"k3y", "control-replies", broker.producer()
            ch.group, ch.events_topic = "shopstream", "events"   # run_models' defaults
            ch.receive([command])
            ch.apply(Engine.fresh("logreg", "shop"), partition)
    status, out = run_models(monkeypatch, capsys, FakeBroker(workers))
    assert status == 0, out
    assert "partition 0: applied (champion logreg" in out and "partition 1: applied (champion logreg" in out
    assert "ignored 1 reply that was unsigned or forged" in out, "the forged 'rejected' is said, not shown"
    # Without a key nothing can be verified: every reply to the command is taken, as before.
    status, out = run_models(monkeypatch, capsys, FakeBroker(forge(None)), key=None)
    assert status == 0 and "partition 1: applied" in out and "ignored" not in out


def test_models_list_shows_only_signed_replies_and_skips_junk(monkeypatch, capsys):
    """`models list` showed the last reply per partition: a forged one named any champion."""
    broker = FakeBroker()
    command = record(json.dumps({"action": "promote", "target": "logreg", "id": "c1"}).encode(), offset=5)
    broker.append("control-replies", *reply_to(command, 0, b"k3y"))
    broker.append("control-replies", *reply_to(command, 0, None, model="evil", version="evil-1"))
    broker.append("control-replies", b"[" * 50_000)       # junk: skipped
    shown = "partition 0: champion logreg v1  (command 5 applied; worker w1)"
    ignored = f"(ignored 1 reply that was unsigned or forged: {KEY_IS_SET}, and only replies signed with it count)"
    status, out = run_models(monkeypatch, capsys, broker, action="list", target=None)
    assert status == 0 and shown in out and "evil" not in out and ignored in out, out
    broker.append("control-replies", None)                 # a tombstone stopped the reading (TypeError)
    status, out = run_models(monkeypatch, capsys, broker, action="list", target=None)
    assert status == 0 and shown in out and ignored in out, out


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


def test_load_all_collects_the_checkpoints_it_refuses_and_loads_the_others(tmp_path, monkeypatch):
    """One refused checkpoint (torn, not ours, unsigned under a key) ended load_all with its error."""
    store = DirectoryCheckpointStore(tmp_path, group="g")
    store.save(state(4))                                  # unsigned: refused once a key is set
    monkeypatch.setenv("SHOPSTREAM_SIGNING_KEY", "k3y")
    for partition in (0, 1, 3):
        store.save(state(partition))
    (tmp_path / "events-3.ckpt").write_bytes((tmp_path / "events-3.ckpt").read_bytes()[:-50])
    (tmp_path / "events-2.ckpt").write_bytes(b"something else entirely")
    with pytest.raises(CheckpointError, match="checkpoint events-2: not a shopstream checkpoint"):
        DirectoryCheckpointStore(tmp_path, group="g").load_all()   # without `refused`: raises, as before
    refused: dict = {}
    states = DirectoryCheckpointStore(tmp_path, group="g").load_all(refused=refused)
    assert sorted(states) == [("events", 0), ("events", 1)]
    assert refused == {("events", 2): "checkpoint events-2: not a shopstream checkpoint",
                       ("events", 3): "checkpoint events-3: HMAC does not match: forged or modified, refusing to "
                                      "load it",
                       ("events", 4): f"checkpoint events-4: not signed, but {KEY_IS_SET}: refusing to load it"}


def test_models_list_names_an_unreadable_checkpoint_and_lists_the_other_partitions(tmp_path, caplog):
    """One bad checkpoint file made `models list --checkpoints` fail and hid every other partition."""
    from stream.control_operator import list_models

    store = DirectoryCheckpointStore(tmp_path)
    for partition in (0, 1, 3):
        store.save(state(partition))
    (tmp_path / "events-1.ckpt").write_bytes((tmp_path / "events-1.ckpt").read_bytes()[:-50])
    (tmp_path / "notes.ckpt").write_bytes(b"a stray file, not named <topic>-<partition>")   # ended it too
    (tmp_path / "events-x.ckpt").write_bytes(b"nor this one")
    (tmp_path / "events-5.ckpt").mkdir()   # a file that cannot be opened (an OSError) ended it too
    (tmp_path / "events-01.ckpt").write_bytes((tmp_path / "events-0.ckpt").read_bytes())   # not events-1
    (tmp_path / "events\n  events[7] champion-7.ckpt").write_bytes(b"")   # a name that would print a line
    store.save(state(6))   # a header whose check holds, naming a topic that would print a line of its own
    magic, check, header, payload = (tmp_path / "events-6.ckpt").read_bytes().split(b"\n", 3)
    header = json.dumps({**json.loads(header), "topic": "x\n  events[8] champion"}).encode()
    check = b"sha256:" + hashlib.sha256(header).hexdigest().encode()
    (tmp_path / "events-6.ckpt").write_bytes(b"\n".join([magic, check, header, payload]))
    with caplog.at_level("WARNING", logger="stream.checkpointing.stores"):
        lines = list_models(None, DirectoryCheckpointStore(tmp_path, create=False)).splitlines()
    passed_over = sorted(r.getMessage() for r in caplog.records if "passed over" in r.getMessage())
    assert passed_over == sorted(f"checkpoint store: {name!r} is not a checkpoint's name (<topic>-<partition>): "
                                 "passed over" for name in ["events\n  events[7] champion-7", "events-01", "events-x",
                                                            "notes"])   # quoted: the newline is shown, not written
    assert lines[0] == "partitions (from checkpoints):"
    assert lines.count("  events[1] unreadable: checkpoint events-1: checksum mismatch (torn or modified file)") == 1
    assert lines.count("  events[5] unreadable: checkpoint events-5: cannot be read: IsADirectoryError: Is a "
                       "directory") == 1
    assert "  events[6] unreadable: checkpoint events-6: holds the state of x\\n  events[8] champion-6, not of " \
           "events-6 (a file copied from another partition?): refusing it" in lines
    listed = [line.split()[0] for line in lines[1:] if line.startswith("  events[")]
    assert listed == ["events[0]", "events[1]", "events[3]", "events[5]", "events[6]"]   # refused ones among them


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


def test_a_kafka_error_asks_after_the_broker_only_when_it_is_a_timeout_or_a_lost_connection(monkeypatch, capsys):
    """A record the client cannot read, or a right refused, is no sign of a broker that is down."""
    import cli.commands as commands
    from kafka.errors import CorruptRecordError, KafkaTimeoutError, TopicAuthorizationFailedError

    for error, hinted in ((KafkaTimeoutError("no answer"), True), (CorruptRecordError("bad batch"), False),
                          (TopicAuthorizationFailedError(), False)):
        def fail(settings, error=error):
            raise error
        monkeypatch.setitem(commands.COMMANDS, "topics", fail)
        assert commands.main(["topics", "--bootstrap-servers", "127.0.0.1:1"]) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith("shopstream topics: error: Kafka at 127.0.0.1:1: ") and type(error).__name__ in line
        assert line.endswith("(is the broker up?)") == hinted, line


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


def test_remembered_command_ids_are_bounded_keeping_the_newest(monkeypatch):
    """Without a key anyone may send commands with fresh ids: the ids kept to refuse replays are
    bounded; the newest are kept, so a replay of a recent command is still refused."""
    import stream.control_worker as control_worker

    monkeypatch.setattr(control_worker, "MAX_KEPT_IDS", 3)
    ch, _ = channel()
    ch.signing_key = None
    ch.receive(records([{"action": "promote", "target": "logreg", "id": name} for name in "abcde"]), live=False)
    assert list(ch._ids) == ["c", "d", "e"]
    ch.receive(records([{"action": "promote", "target": "logreg", "id": "e"}], start=5), live=False)
    assert ch.invalid == 1 and [offset for offset, _ in ch.commands] == [0, 1, 2, 3, 4]


def test_reply_records_passed_over_unread_are_said_with_a_command_s_answers(capsys):
    """A reply lost in a batch that could not be read would otherwise show only as "no reply"."""
    from stream.control_operator import RepliesRead, _print_not_answers

    _print_not_answers(RepliesRead(unreadable=2), offset=5, command_id="c")
    assert "passed over 2 records of the reply topic that could not be read" in capsys.readouterr().out
