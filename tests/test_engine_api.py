"""The engine's one API (the line-up's), the line-up policy handed to it, the label rule in
one place, and constructors that only keep their settings (no network until opened)."""

import pickle

import pytest

from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.events import Event, event_from_record
from shopstream.generator import generate
from shopstream.labels import LABELLED, OTHER, PREDICTION_POINT, PURCHASE, label_role, prediction_key
from shopstream.policies import MAX_SLOTS, CatalogReplacements
from shopstream.models import build_model
from shopstream.slots import ModelSlot
from stream.control_operator import ControlClient
from stream.control_worker import ControlChannel
from stream.membership import GroupMembership
from stream.outputs import Outputs

T = 1.7e9
NOWHERE = {"bootstrap_servers": "127.0.0.1:1"}   # nothing listens there: any connection would fail


def test_the_engine_has_one_api_the_line_ups():
    engine = Engine.fresh("logreg", "raw")
    for facade in ("model", "model_name", "model_version", "scores", "learn", "_record"):
        assert not hasattr(engine, facade), f"the single-model facade's {facade!r} is gone"
    assert engine.champion_slot is engine.slots[engine.champion] is engine.slot("logreg")
    engine.record("control", command=3)
    assert engine.history == [{"kind": "control", "event_time": engine.joiner.max_time, "resolved": 0, "command": 3}]
    engine.add_slot("other", build_model("logreg_slow"))
    engine.freeze()
    assert [slot.learn for slot in engine.slots] == [False, False]
    engine.process(Event(T, "view", "p", "u", "s", features={"a": 1.0}, label=True))
    assert engine.counts["learned"] == 0 and len(engine.champion_slot.scores.cumulative) == 1
    engine.champion_slot.clear_scores()
    assert len(engine.champion_slot.scores.cumulative) == 0


def test_the_drift_reaction_adds_what_the_line_up_chooses():
    chosen = []

    def replacements(champion: ModelSlot, running: int):
        chosen.append((champion.name, running))
        return "picked", build_model("logreg_slow")

    engine = Engine(build_model("logreg"), Engine.fresh("logreg", "raw").features,
                    EngineConfig(features="raw", drift_reaction="challenger"), model_name="logreg",
                    replacements=replacements)
    engine._on_drift(engine.champion_slot)
    assert chosen == [("logreg", 1)] and engine.slot("picked").role == "challenger"
    alone = Engine(build_model("logreg"), engine.features, engine.config, model_name="logreg")  # no policy
    alone._on_drift(alone.champion_slot)
    assert len(alone.slots) == 1 and alone.history[-1]["kind"] == "drift"


def test_the_catalog_replacement_is_a_fresh_model_of_the_champions_kind_up_to_max_slots():
    champion = ModelSlot("logreg_tuned", build_model("logreg_tuned"))
    champion.drift_detections = 2
    name, model = CatalogReplacements()(champion, 3)
    assert name == "logreg_tuned_since_drift2" and repr(model) == repr(build_model("logreg_tuned"))
    assert CatalogReplacements()(champion, MAX_SLOTS) is None
    assert CatalogReplacements()(ModelSlot("hand_made", build_model("logreg")), 1) is None


def test_fresh_engines_carry_the_catalog_replacements_and_older_checkpoints_get_them():
    engine = Engine.fresh("logreg", "raw")
    assert engine.replacements == CatalogReplacements()
    assert pickle.loads(pickle.dumps(engine)).replacements == CatalogReplacements()
    state = pickle.loads(pickle.dumps(engine)).__dict__
    del state["replacements"]                      # as an engine pickled before the line-up chose them
    older = Engine.__new__(Engine)
    older.__setstate__(state)
    assert older.replacements == CatalogReplacements()


def test_the_label_rule_says_what_each_event_is():
    def event(kind, **fields):
        return Event(T, kind, "p", "u", "s", **fields)

    assert [label_role(event(kind)) for kind in ("view", "cart", "purchase", "remove_from_cart")] == \
        [PREDICTION_POINT, PREDICTION_POINT, PURCHASE, OTHER]
    assert label_role(event("purchase", label=False)) == label_role(event("remove_from_cart", label=True)) == LABELLED
    assert prediction_key(event("view")) == ("s", "p")


def test_constructors_only_keep_settings_the_network_waits_for_open():
    made = []
    outputs = Outputs(lambda: made.append("producer") or object(), "predictions", "dlq")
    assert made == []
    assert outputs.open() is outputs and made == ["producer"]
    membership = GroupMembership(lambda: made.append("consumer") or object(), "events", None, 60)
    assert made == ["producer"]
    assert membership.open() is membership and made == ["producer", "consumer"]
    # A connection to NOWHERE raises (NoBrokersAvailable): built, not connected.
    channel = ControlChannel(NOWHERE, "control", None, "w1", signing_key=b"k")
    client = ControlClient(NOWHERE, "control", b"k")
    assert (channel.signing_key, channel.replies, client.replies) == (b"k", "control-replies", "control-replies")
    with pytest.raises(RuntimeError, match="not open"):
        channel.poll()
    with pytest.raises(RuntimeError, match="not connected"):
        client.send(None)


def test_the_kafka_checkpoint_store_and_the_learn_log_are_built_without_the_broker(monkeypatch):
    """Both asked the broker in their constructors (topics created, a consumer built): now in open()."""
    from prometheus_client import CollectorRegistry

    import stream.checkpointing.kafka_store as kafka_store
    import stream.learn_log as learn_log_module

    asked = []

    def create_topics(options, topics, configs=None):
        asked.append(sorted(topics))
        raise RuntimeError("no broker (fake)")

    monkeypatch.setattr(kafka_store, "create_topics", create_topics)
    monkeypatch.setattr(learn_log_module, "create_topics", create_topics)
    store = kafka_store.KafkaCheckpointStore(NOWHERE, "ckpt", group="g", signing_key=None)
    learn_log = learn_log_module.LearnLog(NOWHERE, "learn", "g", "events", EngineConfig(features="raw"),
                                          outputs=None, registry=CollectorRegistry(), signing_key=None)
    assert asked == [] and (store.chunk_topic, learn_log.topic) == ("ckpt-chunks", "learn")
    with pytest.raises(RuntimeError, match="no broker"):
        store.open()
    with pytest.raises(RuntimeError, match="no broker"):
        learn_log.open()
    assert asked == [["ckpt", "ckpt-chunks"], ["learn"]]
    store.close()


def test_the_inlined_adwin_update_detects_exactly_what_adwin_update_does():
    from river import drift

    class PlainADWIN(drift.ADWIN):   # not ADWIN itself: the engine calls its update() and drift_detected
        pass

    events = [event_from_record(r) for r in generate(20_000, seed=13)]
    engines = []
    for detector in (drift.ADWIN, PlainADWIN):
        engine = Engine.fresh("logreg", "shop", drift_delta=0.002)
        engine.add_slot("adagrad", build_model("logreg_adagrad"))
        for slot in engine.slots:
            slot.drift = detector(delta=0.002)
        for event in events:
            engine.process(event)
        engines.append(engine)
    inlined, plain = engines
    assert [s.drift_detections for s in inlined.slots] == [s.drift_detections for s in plain.slots]
    assert sum(s.drift_detections for s in inlined.slots) >= 1
    assert inlined.history == plain.history
    assert [s.drift.width for s in inlined.slots] == [s.drift.width for s in plain.slots]
