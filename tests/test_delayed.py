"""Delayed-feedback learning (`delayed.py`): a provisional negative at once, the purchase
corrects it; the engine calls it only for learning slots; scoring stays on final labels."""

from __future__ import annotations

import copy
import math

from shopstream.delayed import FakeNegativeWeighted
from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.models import build_model
from shopstream.slots import model_is_finite


def test_weights_undo_the_duplicated_positives():
    """On a stream where every example is bought with probability 0.3, the weighted model
    learns 0.3, not the 0.3 / 1.3 the fake negatives alone would give."""
    fnw, plain = build_model("logreg_adagrad_fnw"), build_model("logreg_adagrad")
    for i in range(6000):
        y = i % 10 < 3
        for model in (fnw, plain):
            if model is fnw:
                model.learn_provisional({"a": 1.0})
            model.learn_one({"a": 1.0}, y)
    assert abs(fnw.predict_proba_one({"a": 1.0})[True] - 0.3) < 0.03
    assert abs(plain.predict_proba_one({"a": 1.0})[True] - 0.3) < 0.03
    assert fnw.n_provisional == 6000 and fnw.n_corrected == 1800


def test_the_engine_learns_provisional_negatives_for_learning_slots_only_and_scores_final_labels():
    engine = Engine.fresh("logreg_adagrad_fnw", "shop")
    engine.add_slot("frozen", copy.deepcopy(engine.champion_slot.model), "baseline")
    engine.add_slot("waiting", build_model("logreg_adagrad"), "challenger")
    frozen_before = engine.slot("frozen").model.predict_proba_one({"price": 1.0})
    for record in generate(4000, seed=3, days=1.0):
        engine.process(event_from_record(record))
    champion = engine.champion_slot.model
    assert champion.n_provisional == engine.counts["predicted"]           # every prediction, at once
    assert champion.n_corrected == engine.joiner.counts["positive"]       # every purchase, when it came
    assert engine.slot("frozen").model.n_provisional == 0                 # the baseline never learns
    assert engine.slot("frozen").model.predict_proba_one({"price": 1.0}) == frozen_before
    scored = engine.champion_slot.scores.cumulative
    assert len(scored) == engine.counts["resolved"] - engine.counts["unscored"]  # scored on final labels only
    # the waiting model and the FNW model differ: they learned from different streams
    assert engine.slot("waiting").scores.cumulative.values() != scored.values()


class Broken(FakeNegativeWeighted):
    def learn_provisional(self, x):
        raise ValueError("boom")


def test_a_failing_provisional_learn_is_counted_not_raised():
    engine = Engine(Broken(build_model("logreg_adagrad")), Engine.fresh("logreg", "shop").features,
                    Engine.fresh("logreg", "shop").config, model_name="broken")
    for record in generate(300, seed=3, days=0.1):
        engine.process(event_from_record(record))
    assert engine.counts["learn_errors"] >= engine.counts["predicted"] > 0


def test_a_nan_inside_the_wrapped_model_is_caught():
    model = build_model("logreg_adagrad_fnw")
    model.learn_provisional({"a": 1.0})
    assert model_is_finite(model)
    model["LogisticRegression"]._weights["a"] = math.nan
    assert not model_is_finite(model)
