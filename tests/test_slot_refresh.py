"""After a checkpoint, a slot runs fresh copies of its scores, drift detector and comparison as
well as of its model (`ModelSlot.refresh`): their attribute loads stay on CPython's fast path,
and the engine goes on with exactly the numbers of one that was never checkpointed."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.models import build_model

from test_model_state import _attributes_on_fast_path, state_bytes


def _engine(window=600.0):
    engine = Engine.fresh("logreg", "shop", window=window)
    engine.add_slot("logreg_adagrad", build_model("logreg_adagrad"))
    return engine


def _scoring_objects(slot) -> list:
    boards = [slot.scores._cumulative, slot.scores._rolling]
    return [slot.scores, *boards, *(b.roc_auc for b in boards), *(b.log_loss for b in boards),
            *(b.log_loss._mean for b in boards), slot.drift, slot.comparison or slot.scores]


def _state(engine) -> list:
    """Everything a checkpoint holds of the slots, each pickled apart after a round trip (float bits
    included; not which of their equal strings are one object: `state_bytes`)."""
    return [state_bytes(part) for s in engine.slots
            for part in (s.scores, s.drift, s.comparison, s.drift_detections, s.model)]


def test_checkpointed_and_restored_slots_score_on_the_fast_path_with_the_same_numbers():
    events = [event_from_record(r) for r in generate(6000, seed=9)]
    plain, live = _engine(), _engine()
    outputs_plain, outputs_live, outputs_restored = [], [], []
    for event in events[:3000]:
        outputs_plain.append(plain.process(event))
        outputs_live.append(live.process(event))
    live.mark_good()   # what a checkpoint does, then pickles the engine
    restored = pickle.loads(pickle.dumps(live))
    outputs_restored = list(outputs_live)
    for i, event in enumerate(events[3000:]):
        outputs_plain.append(plain.process(event))
        outputs_live.append(live.process(event))
        outputs_restored.append(restored.process(event))
        if i == 1500:   # a second checkpoint, of the restored engine
            restored.mark_good()
            pickle.dumps(restored)
    for engine in (live, restored):   # first: pickling them (`_state`) asks for their __dict__
        for slot in engine.slots:
            assert all(_attributes_on_fast_path(obj) for obj in _scoring_objects(slot)), slot.name
    assert outputs_live == outputs_plain and outputs_restored == outputs_plain
    assert _state(live) == _state(plain) and _state(restored) == _state(plain)
    for engine in (live, restored):
        for slot in engine.slots:
            assert slot.scores.rolling.values() == plain.slot(slot.name).scores.rolling.values()
            assert slot.scores.cumulative.values() == plain.slot(slot.name).scores.cumulative.values()
    assert plain.slots[1].comparison.pairs()[2].tobytes() == restored.slots[1].comparison.pairs()[2].tobytes()


def _engine_objects(engine) -> list:
    """What the engine reads on every event, beside its slots' models and scores."""
    return [engine, engine.joiner, engine.features, engine.features.caps, engine.config, *engine.slots]


def test_a_checkpointed_engine_swapped_for_its_shell_and_a_restored_one_read_their_attributes_fast():
    # In a fresh interpreter: CPython 3.11 keeps one table of attribute names per class (30 at most), and
    # other tests give a joiner names no worker does; past 30, a new name sends an object's attributes to a dict.
    done = subprocess.run([sys.executable, "-c", "import test_slot_refresh as t; t._engine_shell_and_restore()"],
                          cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def _engine_shell_and_restore() -> None:
    from shopstream.model_state import fresh_shell
    from stream.checkpointing.format import decode_state, encode_state
    from stream.partition import Partition

    events = [event_from_record(r) for r in generate(5000, seed=11)]
    plain, live = Partition("events", 0, _engine()), Partition("events", 0, _engine())
    outputs_plain, outputs_live = [], []
    for event in events[:2500]:
        outputs_plain.append(plain.engine.process(event))
        outputs_live.append(live.engine.process(event))
    live.engine.mark_good()     # what the checkpointer does: mark good, pickle, run the shell
    data = encode_state(live)
    before = live.engine
    assert not _attributes_on_fast_path(before), "pickling asked for the engine's __dict__"
    live.engine = fresh_shell(before)
    assert live.engine is not before and live.engine.counts is before.counts, "a shell shares the state"
    restored = decode_state(data, "test")
    outputs_restored = list(outputs_live)
    for event in events[2500:]:
        outputs_plain.append(plain.engine.process(event))
        outputs_live.append(live.engine.process(event))
        outputs_restored.append(restored.engine.process(event))
    for partition in (live, restored):
        slow = [type(obj).__name__ for obj in _engine_objects(partition.engine) if not _attributes_on_fast_path(obj)]
        assert not slow, f"{slow} read their attributes through a dict"
    assert _attributes_on_fast_path(restored)
    assert outputs_live == outputs_plain and outputs_restored == outputs_plain
    for partition in (live, restored):
        engine = partition.engine
        assert engine.counts == plain.engine.counts and engine.label_delay_sum == plain.engine.label_delay_sum
        assert engine.features.__getstate__() == plain.engine.features.__getstate__()   # OrderedDicts: in order
        assert _state(engine) == _state(plain.engine)


def test_the_after_checkpoint_benchmark_runs_its_four_engines():
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "after_checkpoint.py"),
                           "--events", "3000", "--warm", "1000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("never", "checkpointed", "restored", "unrefreshed"):
        assert f"{name}: " in done.stdout, done.stdout


def test_a_checkpoint_keeps_the_models_feature_names_the_objects_events_bring():
    """River finds a name by identity when the dict holds the event's own object, and compares
    characters otherwise (about 20% of its calls on 12 raw features): the copies a checkpoint makes
    keep the model's strings, so the decoded events' names (one object each, events.py) still match."""
    from shopstream.events import decode_event

    def raw(i):
        return json.dumps({"event_time": 1.7e9 + i, "event_type": "view", "product_id": "p", "user_id": "u",
                           "user_session": "s", "features": {"clicks": float(i % 3), "dwell": i / 7},
                           "label": i % 2 == 0}).encode()
    engine = Engine.fresh("logreg", "raw")
    for i in range(50):
        engine.process(decode_event(raw(i)))
    engine.mark_good()   # a checkpoint's copies, then its pickle
    pickle.dumps(engine)
    event = decode_event(raw(50))
    engine.process(event)
    scaler = engine.champion_slot.model["StandardScaler"]
    held = {id(name) for name in scaler.means} | {id(name) for name in scaler.counts}
    assert all(id(name) in held for name in event.features)


def _names_held(model) -> set:
    """The ids of the str objects a StandardScaler | LogisticRegression keys its state by."""
    scaler, regression = model["StandardScaler"], model["LogisticRegression"]
    return {id(name) for table in (scaler.counts, scaler.means, scaler.vars, regression._weights) for name in table}


def test_a_model_restored_from_a_checkpoint_or_an_artifact_holds_the_names_the_events_bring(tmp_path):
    """A checkpoint's or an artifact's model comes back with the file's own strings, which River
    would compare character by character with every event's names (16% slower per raw event):
    the slots run copies holding the objects the events bring, for raw and shop features, and
    so do one-hot columns a restored vocabulary grows after the restore."""
    from shopstream.artifacts import load_artifact, save_artifact
    from shopstream.events import decode_event
    from stream.checkpointing.format import decode_state, encode_state
    from stream.partition import Partition

    def raw(i):
        return decode_event(json.dumps({
            "event_time": 1.7e9 + i, "event_type": "view", "product_id": "p", "user_id": "u", "user_session": "s",
            "features": {"clicks": float(i % 3), "dwell_seconds": i / 7}, "label": i % 2 == 0}).encode())

    shop_events = [event_from_record(record) for record in generate(3000, seed=5)]
    platforms = {event.platform for event in shop_events}
    late_platform = shop_events[-1].platform   # first seen after the restore below
    early = [event for event in shop_events if event.platform != late_platform]
    for features, events in (("raw", [raw(i) for i in range(300)]), ("shop", early[:1500] + shop_events[-5:])):
        engine = Engine.fresh("logreg", features, window=600.0)
        for event in events[:-5]:
            engine.process(event)
        engine.mark_good()
        restored = decode_state(encode_state(Partition("t", 0, engine, next_offset=1)), "test").engine
        path = save_artifact(tmp_path / features, "logreg", engine.champion_slot.model, engine.features,
                             {"version": "v1"})
        artifact = load_artifact(path)
        seeded = Engine(artifact.model, artifact.features, engine.config, model_name="logreg")
        for case, running in (("restored", restored), ("seeded", seeded)):
            for event in events[-5:]:
                x = running.features.peek(event) if features == "raw" else running.features.transform(event)
                running.process(event)
            held = _names_held(running.champion_slot.model)
            assert x and all(id(name) in held for name in x), (features, case)
            if features == "shop":
                assert f"platform={late_platform}" in x and len(platforms) > 1
