"""The bootstrap's holdout: the frozen copy that runs as a slot of the learner's engine
(`offline.bootstrap._add_frozen_slot`) scores exactly what a frozen engine of its own scored
(the deep copy the bootstrap ran before), and leaves the learner exactly as it was."""

import pickle

import pytest

import offline.bootstrap as ob
from offline.settings import EpochSettings
from shopstream.config import EngineConfig
from shopstream.events import event_from_record
from shopstream.generator import generate


@pytest.fixture(scope="module")
def events():
    return sorted((event_from_record(e) for e in generate(4000, seed=11, days=2.0)), key=lambda e: e.event_time)


def _run(events, monkeypatch, shared: bool, model="logreg", **config):
    with monkeypatch.context() as patch:
        if not shared:
            patch.setattr(ob, "_frozen_slot_fits", lambda engine: False)
        split = int(len(events) * 0.8)
        return ob.train_candidate(model, events, split, EngineConfig(**config), 42, 100,
                                  epochs=EpochSettings(epochs=2, patience=1))


def _state(result):
    engine = result.engine
    open_predictions = engine.joiner.open_predictions()
    return {
        "train": result.train, "holdout": result.holdout, "split_resolved": result.split_resolved,
        "training": result.training, "curve": result.curve.points, "counts": engine.counts,
        "joiner": engine.joiner.counts, "slots": [(s.name, s.role, s.learn) for s in engine.slots],
        "history": engine.history, "delays": (engine.label_delay_counts, engine.label_delay_sum),
        "open": [(p.key, p.event_time, p.x, tuple(p.outputs)) for p in open_predictions],
        "model": pickle.dumps(engine.champion_slot.model), "features": pickle.dumps(engine.features),
        "champion": (engine.champion_slot.scores.cumulative.values(), engine.champion_slot.scores.rolling.values()),
    }


@pytest.mark.parametrize("model", ["logreg", pytest.param("mlp", marks=pytest.mark.slow)])  # mlp: 4 s
def test_the_frozen_slot_scores_what_a_frozen_engine_scored(events, monkeypatch, model):
    split = int(len(events) * 0.8)
    probe = ob.Engine.fresh("logreg", "shop")
    for event in events[:split]:
        probe.process(event)
    assert probe.open_predictions > 20   # some of the holdout's labels resolve predictions made before it
    shared, apart = _run(events, monkeypatch, True, model), _run(events, monkeypatch, False, model)
    assert shared.holdout["resolved"] > 100 and shared.holdout["open_at_end"] > 0
    assert _state(shared) == _state(apart)


def test_predictions_open_at_the_split_are_scored_by_the_frozen_copy(events, monkeypatch):
    """A short window: many predictions open at the split resolve in the holdout (expired or
    bought), and the frozen copy scores the champion's recorded output for them."""
    shared, apart = _run(events, monkeypatch, True, window=60.0), _run(events, monkeypatch, False, window=60.0)
    assert _state(shared) == _state(apart)


def test_a_line_up_that_can_change_runs_a_frozen_engine_of_its_own(events, monkeypatch):
    calls = []
    monkeypatch.setattr(ob, "_add_frozen_slot", lambda engine: calls.append(engine))
    result = _run(events, monkeypatch, True, drift_reaction="challenger")
    assert not calls and result.holdout["resolved"] > 100


def test_without_the_dedupe_window_on_unique_ids_the_candidate_is_the_same(events, monkeypatch):
    """`unique_ids` (the bootstrap's: load_history dropped repeated ids) keeps no dedupe window;
    on events with distinct ids nothing else changes."""
    assert len({event.event_id for event in events}) == len(events)
    split = int(len(events) * 0.8)
    kept, skipped = (ob.train_candidate("logreg", events, split, EngineConfig(), 42, 100, unique_ids=unique)
                     for unique in (False, True))
    assert _state(skipped) == _state(kept)
    assert len(kept.engine._recent_ids) == len(events) and len(skipped.engine._recent_ids) == 0
    assert skipped.engine.deduplicates   # an engine as any other afterwards
