"""Control plane against hostile or confused writers, fast: groups sharing a control topic, a
rollback to an artifact trained under other settings, a signed command copied back after its
first copy expired, a partition number that names none. No broker needed."""

import json
import time
from types import SimpleNamespace

import msgspec
import pytest

from shopstream.artifacts import save_artifact
from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.features import RawFeatures
from shopstream.models import build_model
from shopstream.signing import sign
from stream.control_operator import answers
from stream.control_protocol import SIGNATURE_HEADER, Command, Reply, decode_reply
from stream.control_worker import ControlChannel
from stream.settings import ConfigError, KafkaConnection, ModelsSettings
from test_control_plane import FakeBroker, record, reply_to, run_models

KEY = b"k" * 32


def channel(group="eu", topic="shop-events", key=KEY, artifacts=None):
    """A worker's control channel, not connected: records are fed by hand, replies collected.
    Its group and events topic are set as attributes (what the worker hands in)."""
    ch = ControlChannel({}, "shop-control", artifacts, f"worker-{group}", key)
    ch.group, ch.events_topic = group, topic
    sent: list = []
    ch._producer = SimpleNamespace(send=lambda topic, value=None, headers=None, partition=None:
                                   sent.append(json.loads(value)), close=lambda **k: None)
    return ch, sent


def command_record(offset=7, key=KEY, appended=None, **fields):
    """A command as `shopstream models` writes it (`fields` None: left out); appended now by default."""
    fields = {"action": "promote", "target": "logreg_adagrad", "id": "c1", "issued_at": time.time(), **fields}
    value = json.dumps({name: v for name, v in fields.items() if v is not None}).encode()
    assert msgspec.json.decode(value, type=Command) is not None   # a command as the protocol has it
    headers = [(SIGNATURE_HEADER, sign(value, key).encode())] if key else []
    return record(value, headers, offset=offset, timestamp=None if appended is None else int(appended * 1000))


def two_models() -> Engine:
    engine = Engine.fresh("logreg", "shop")
    engine.add_slot("logreg_adagrad", build_model("logreg_adagrad"))
    return engine


# -- 1. groups sharing a control topic ---------------------------------------------------------

def test_a_command_for_one_group_leaves_another_group_s_partitions_alone_and_unanswered():
    """Neither a command nor a reply named a group: every group sharing the control topic (the
    default shop-control is every group's) applied a command meant for one."""
    eu, eu_replies = channel("eu")
    us, us_replies = channel("us")
    elsewhere, elsewhere_replies = channel("eu", topic="shop-events-2")   # same group name, other events
    sent = command_record(group="eu", topic="shop-events")
    engines = {name: two_models() for name in ("eu", "us", "elsewhere")}
    for name, ch in (("eu", eu), ("us", us), ("elsewhere", elsewhere)):
        assert ch.receive([sent]) is True
        ch.apply(engines[name], 0)
    assert engines["eu"].champion_slot.name == "logreg_adagrad", "its own group's command: applied"
    assert [(r["outcome"], r["group"], r["topic"]) for r in eu_replies] == [("applied", "eu", "shop-events")]
    for name, ch, replies, away in (("us", us, us_replies, "other_group"),
                                    ("elsewhere", elsewhere, elsewhere_replies, "other_topic")):
        engine = engines[name]
        assert engine.champion_slot.name == "logreg" and engine.history == [], name
        assert replies == [], f"{name}: another group's command is not answered"
        assert ch.counts == {(away, "skipped"): 1} and list(ch.commands) == []
        assert engine.control_offset == 7, "moved past it: not judged again"


def test_a_command_naming_no_group_is_refused_by_a_worker_that_knows_its_group():
    """A command from a `shopstream models` of before groups: every group would apply it. Refused
    once when read, said and counted, with or without a signing key."""
    for key in (KEY, None):
        ch, replies = channel("eu", key=key)
        ch.receive([command_record(key=key), command_record(offset=8, key=key, id="c2", group="eu")])
        engine = two_models()
        ch.apply(engine, 0)
        assert engine.champion_slot.name == "logreg" and list(ch.commands) == []
        assert ch.counts == {("invalid", "rejected"): 2}
        assert [(r["command"], r["partition"], r["id"], r["group"]) for r in replies] == [
            (7, -1, "c1", "eu"), (8, -1, "c2", "eu")]
        assert replies[0]["reason"].startswith("names no consumer group nor events topic (sent by a `shopstream "
                                               "models` from before groups")
        assert replies[1]["reason"].startswith("names no events topic")
    # A channel that is not told its group (built as before) takes every command, as before.
    legacy = ControlChannel({}, "shop-control", None, "w", None)
    legacy._producer = SimpleNamespace(send=lambda *a, **k: None)
    legacy.receive([command_record(key=None)])
    assert [offset for offset, _ in legacy.commands] == [7]


def test_the_operator_takes_no_reply_from_another_group():
    """`--wait` matched a reply by offset and id only: another group's worker answered for the
    operator's partition 0 ("applied", its own champion), while the group's own partition had
    rejected the command."""
    theirs = Reply(7, 0, "applied", model="logreg_adagrad", worker="worker-us-1", id="c1", group="us",
                   topic="shop-events")
    ours = Reply(7, 0, "rejected", "no model named 'logreg_adagrad' here", worker="worker-eu-1", id="c1",
                 group="eu", topic="shop-events")
    old = Reply(7, 0, "applied", worker="worker-of-before-groups", id="c1")
    other_topic = Reply(7, 0, "applied", id="c1", group="eu", topic="shop-events-2")
    assert answers(ours, 7, "c1", "eu", "shop-events")
    for reply in (theirs, old, other_topic):
        assert not answers(reply, 7, "c1", "eu", "shop-events"), reply
    assert decode_reply(b'{"command": 7, "partition": 0, "outcome": "applied"}').group is None


def test_wait_reports_its_own_group_s_answer_not_another_group_s(monkeypatch, capsys):
    """End to end on one control topic: group us's worker (which runs the model) and the
    operator's group's worker (which does not) both read the command; --wait showed us's
    'applied' for partition 0 and exited 0."""
    engines = {"us": two_models(), "shopstream": Engine.fresh("logreg", "shop")}

    def workers(broker, command):   # us reads it first; a worker from before groups answers too
        broker.append("control-replies", *reply_to(command, 0, b"k3y", group=None, topic=None))
        for group, engine in engines.items():
            ch, _ = channel(group, topic="events", key=b"k3y")
            ch.replies, ch._producer = "control-replies", broker.producer()
            ch.receive([command])
            ch.apply(engine, 0)
    status, out = run_models(monkeypatch, capsys, FakeBroker(workers, partitions=(0,)), target="logreg_adagrad",
                             partition=0)
    assert status == 1, out
    assert "partition 0: rejected: no model named 'logreg_adagrad' here" in out, out
    assert "for partition 0 of events in group shopstream" in out
    assert "ignored 1 reply to this command from workers not of group shopstream on events" in out
    assert engines["us"].champion_slot.name == "logreg", "group us was not asked"


def test_models_list_shows_the_replies_of_its_own_group(monkeypatch, capsys):
    broker = FakeBroker()
    for group, model in (("shopstream", "logreg"), ("us", "hat")):
        value = json.dumps({"command": 3, "partition": 0, "outcome": "applied", "model": model, "version": "v",
                            "worker": f"w-{group}", "id": "c", "group": group, "topic": "events"}).encode()
        broker.append("control-replies", value)
    status, out = run_models(monkeypatch, capsys, broker, key=None, action="list", target=None)
    assert status == 0 and "partition 0: champion logreg v" in out and "hat" not in out, out
    assert "1 reply of workers not of group shopstream on events not shown" in out


# -- 2. a rollback to an artifact trained under other settings ----------------------------------

@pytest.mark.parametrize("group", ["g", None])   # (None: a channel not told its group, as before groups)
def test_a_rollback_to_an_artifact_trained_under_other_settings_is_rejected(tmp_path, group):
    """At a start `build_engine` refuses such an artifact (ArtifactMismatch); a rollback command
    installed it as the champion and replied "applied"."""
    artifacts = tmp_path / "artifacts"
    raw = EngineConfig(features="raw", window=600.0)
    other = save_artifact(artifacts, "logreg", build_model("logreg"), RawFeatures(), {"engine": raw.to_dict()},
                          key=None).name
    stranger = save_artifact(artifacts, "logreg_adagrad", build_model("logreg_adagrad"), RawFeatures(),
                             {"engine": raw.to_dict()}, key=None).name
    fitting = save_artifact(artifacts, "logreg", build_model("logreg"), None,   # (another pickle: another version)
                            {"engine": EngineConfig().to_dict()}, key=None).name
    assert fitting != other
    ch, replies = channel(group, key=None, artifacts=str(artifacts))
    ch.receive([command_record(offset, key=None, action="rollback", target=target, id=f"r{offset}", group=group,
                               topic=group and "shop-events") for offset, target in enumerate((other, stranger,
                                                                                                  fitting))])
    engine = Engine.fresh("logreg", "shop")   # the partition: shop features, window 1800
    ch.apply(engine, 0)
    assert [r["outcome"] for r in replies] == ["rejected", "rejected", "applied"]
    assert replies[0]["reason"] == (f"artifact {other} was trained under other settings: features 'shop' (the "
                                    "artifact: 'raw'), window 1800.0 (the artifact: 600.0); roll back to an artifact "
                                    "trained under this partition's")
    assert replies[1]["reason"].startswith(f"artifact {stranger} was trained under other settings")
    assert [slot.name for slot in engine.slots] == ["logreg"], "the mismatched one was not added either"
    assert engine.champion_slot.version == fitting and ch.counts == {("rollback", "rejected"): 2,
                                                                     ("rollback", "applied"): 1}


# -- 3. a signed command copied back after its first copy expired ------------------------------

@pytest.mark.parametrize("group", ["eu", None])
def test_a_copy_refused_once_is_not_applied_by_a_restarted_worker(group):
    """A copy refused as a replay left the partition's control offset where it was; once retention
    deleted the first copy, a restarted worker read the copy as the first and applied it again."""
    issued = time.time() - 8 * 86400
    topic = group and "shop-events"
    first = command_record(5, appended=issued + 1, group=group, topic=topic, issued_at=issued)
    copy = command_record(6, appended=issued + 20 * 3600, group=group, topic=topic, issued_at=issued)
    engine = two_models()
    live, replies = channel(group)
    live.receive([first])
    live.apply(engine, 0)
    assert live.receive([copy]) is True, "only a refused message read: the partitions still move past it"
    assert live.apply(engine, 0) is True and engine.control_offset == 6
    assert replies[-1]["reason"] == "a replay of command 5 (the same id, 'c1')"
    engine.promote("logreg", reason="auto")   # later, another champion
    restarted, replies = channel(group)
    restarted.receive([copy], live=False)     # offset 5 deleted by retention
    assert restarted.apply(engine, 0) is False
    assert engine.champion_slot.name == "logreg" and replies == []


@pytest.mark.parametrize("group", ["eu", None])
def test_a_command_the_lineage_records_is_refused_as_a_replay(group):
    """The partition's checkpoint from before it moved past the copy: its lineage names the id."""
    issued = time.time() - 8 * 86400
    topic = group and "shop-events"
    first = command_record(5, appended=issued + 1, group=group, topic=topic, issued_at=issued)
    copy = command_record(6, appended=issued + 20 * 3600, group=group, topic=topic, issued_at=issued)
    engine = two_models()
    live, _ = channel(group)
    live.receive([first])
    live.apply(engine, 0)
    assert engine.history[-1]["kind"] == "control" and engine.history[-1]["id"] == "c1"
    engine.promote("logreg", reason="auto")
    engine.control_offset = 5   # checkpointed before the copy came
    restarted, replies = channel(group)
    restarted.receive([copy], live=False)
    assert restarted.apply(engine, 3) is True
    assert engine.champion_slot.name == "logreg"
    assert [(r["command"], r["partition"], r["outcome"], r["id"]) for r in replies] == [(6, 3, "rejected", "c1")]
    assert replies[0]["reason"] == ("a replay of command 5 (the same id, 'c1'), which this partition's lineage "
                                    "records")
    assert engine.history[-1]["outcome"] == "rejected" and restarted.counts == {("promote", "rejected"): 1}


# -- 4. a partition that is none ----------------------------------------------------------------

def test_a_negative_partition_is_refused_with_a_precise_error(capsys):
    with pytest.raises(ConfigError, match=r"^partition -1 must be a partition number, >= 0$"):
        ModelsSettings(action="promote", target="logreg", partition=-1,
                       kafka=KafkaConnection(bootstrap_servers="fake:1"))
    import cli.commands as commands

    assert commands.main(["models", "promote", "logreg", "--partition", "-1",
                          "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.strip() == \
        "shopstream models: error: --partition -1 must be a partition number, >= 0"


def test_a_partition_the_topic_does_not_have_is_refused_before_sending(monkeypatch, capsys):
    broker = FakeBroker(partitions=(0, 1, 2, 5))
    with pytest.raises(ValueError, match=r"--partition 4: topic 'events' has partitions 0\.\.2, 5"):
        run_models(monkeypatch, capsys, broker, partition=4, wait=False)
    assert broker.topics["control"] == [], "nothing sent"
    assert parse_partition_field(b'{"action": "promote", "target": "logreg", "partition": -1}').startswith(
        "not a command: Expected `int` >= 0")


def parse_partition_field(value: bytes):
    from stream.control_protocol import parse_command

    return parse_command(value, [], None)
