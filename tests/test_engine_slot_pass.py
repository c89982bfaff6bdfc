"""A resolution scores, watches for drift and compares every slot in one pass, and a prediction
asks each slot's `provisional` flag (kept by `ModelSlot.__setattr__`) instead of checking the
model's class: the same numbers as the engine that scored and compared in two passes
(`_TwoPassEngine`, its `_predict`, `_resolve` and `_compare` copied verbatim from before)."""

import math
import pickle
from bisect import bisect_left
from typing import Any

from river.drift import ADWIN

from shopstream import engine as engine_module
from shopstream.delayed import FakeNegativeWeighted
from shopstream.engine import LABEL_DELAY_BUCKETS, Engine, _argmax, _isfinite, _UNSCORED
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.labels import OpenPrediction, PackedLayout, prediction_key
from shopstream.models import build_model
from shopstream.policies import PromotionPolicy
from shopstream.slots import ModelSlot


class _TwoPassEngine(Engine):
    """The engine as it was: an isinstance check per slot per prediction, `Scoreboard.update` and
    `PairedLossTest.update` called, the comparisons in a second pass after learning."""

    def _predict(self, event, ref):
        x = self.features.transform(event)
        outputs = []
        for slot in self.slots:
            proba = slot.model.predict_proba_one(x)
            output = _UNSCORED
            if proba:
                p_true = proba.get(True, 0.0)
                if _isfinite(p_true):
                    if len(proba) == 2:   # _argmax, inline for the usual two classes
                        first, second = proba
                        output = (p_true, second if proba[second] > proba[first] else first)
                    else:
                        output = (p_true, _argmax(proba))
                else:  # a poisoned model: back to its last good state
                    slot.reset("non_finite_prediction")
                    proba = slot.model.predict_proba_one(x)
                    p_true = proba.get(True, 0.0) if proba else math.nan
                    if _isfinite(p_true):
                        output = (p_true, _argmax(proba))
            outputs.append(output)
            # Provisional negatives learned as each slot predicts: each model sees only its own calls.
            if slot.learn and isinstance(slot.model, FakeNegativeWeighted):
                self._learn_provisional(slot, x)
        self.counts["predicted"] += 1
        t: float = event.event_time
        return OpenPrediction(prediction_key(event), t, x, outputs, self.champion, ref)

    def _resolve(self, prediction, y_true, now):
        counts = self.counts
        counts["resolved"] += 1
        delay = now - prediction.event_time
        self.label_delay_counts[0 if delay <= 0.0 else bisect_left(LABEL_DELAY_BUCKETS, delay)] += 1
        self.label_delay_sum += delay
        x: Any = prediction._x
        outputs: Any = prediction._outputs
        if outputs.__class__ is PackedLayout:
            x, outputs = outputs.unpack(x)
        slots = self.slots
        if outputs[prediction.champion][1] is None:
            counts["unscored"] += 1  # river.evaluate skips empty predictions too
        predicted_by = slots if len(slots) == len(outputs) else slots[:len(outputs)]  # later slots skip it
        for slot, (p_true, y_pred) in zip(predicted_by, outputs):
            if y_pred is not None:
                slot.scores.update(y_true, p_true, y_pred)
                drift = slot.drift
                if drift.__class__ is ADWIN:  # ADWIN.update's two lines, without its method and property calls
                    if drift._drift_detected:
                        drift._reset()
                    detected = drift._drift_detected = drift._helper.update(0.0 if y_pred == y_true else 1.0)
                else:
                    drift.update(0.0 if y_pred == y_true else 1.0)
                    detected = drift.drift_detected
                if detected:
                    self._on_drift(slot)
        sink = self.learn_sink
        if sink is not None:
            sink(x, y_true, prediction, now)  # shared learning: learned when the learn log brings it back
        else:
            self.learn_example(x, y_true, predicted_by, prediction.event_time)  # x: a dict
        if len(slots) > 1:
            self._compare(outputs, y_true)
        prediction._outputs = outputs
        prediction._x = None

    def _compare(self, outputs, y_true):
        champion = self.champion
        if champion >= len(outputs) or outputs[champion][1] is None:
            return
        p_champion = outputs[champion][0]
        for slot, (p_true, y_pred) in zip(self.slots, outputs):
            if slot.comparison is not None and y_pred is not None:
                slot.comparison.update(y_true, p_champion, p_true)
        policy = self.promotion
        if policy is not None and self.counts["resolved"] % policy.check_every == 0:
            self._maybe_promote(policy)


_LINEUP = (("logreg_adagrad", "challenger"), ("logreg_adagrad_fnw", "challenger"), ("logreg_slow", "baseline"))
_POLICY = PromotionPolicy(test="log_loss", alpha=0.3, min_resolved=50, min_positives=2, window=300, check_every=25,
                          cooldown=200)


def _engine(cls, policy=None, **settings):
    engine = cls.fresh("logreg", "shop", **settings)
    engine.promotion = policy
    for name, role in _LINEUP:
        engine.add_slot(name, build_model(name), role)
    return engine


def _state(engine) -> list:
    """What the line-up holds, each part pickled apart (float bits included)."""
    parts: list = [engine.counts, engine.history, engine.champion, engine.label_delay_counts, engine.label_delay_sum]
    for slot in engine.slots:
        pairs = slot.comparison.pairs() if slot.comparison is not None else ()
        parts += [slot.name, slot.role, slot.resets, slot.drift_detections, slot.scores, slot.drift, slot.model,
                  [array.tobytes() for array in pairs],
                  sorted(slot.scores.cumulative.values().items()), sorted(slot.scores.rolling.values().items())]
    return [pickle.dumps(part) for part in parts]


def _run(engine, events, checkpoint_at=None):
    outputs = []
    for i, event in enumerate(events):
        outputs.append(engine.process(event))
        if i == checkpoint_at:   # a checkpoint's round trip, midway
            engine.mark_good()
            engine = pickle.loads(pickle.dumps(engine))
    return engine, outputs


def test_one_pass_equals_two_passes_through_promotions_drift_reactions_and_a_checkpoint():
    events = [event_from_record(r) for r in generate(4000, seed=5)]
    for policy, settings in ((_POLICY, {}), (_POLICY, {"drift_delta": 0.05, "drift_reaction": "challenger"}),
                             (None, {"drift_delta": 0.05, "drift_reaction": "reset"})):
        old, old_outputs = _run(_engine(_TwoPassEngine, policy, **settings), events, checkpoint_at=2000)
        new, new_outputs = _run(_engine(Engine, policy, **settings), events, checkpoint_at=2000)
        assert new_outputs == old_outputs
        assert _state(new) == _state(old)
        assert new.counts["promotions"] > 0 or settings.get("drift_reaction") == "reset"
        if settings:
            assert any(entry["kind"] == "drift" for entry in new.history)


def test_the_provisional_flag_follows_the_model_and_learn():
    fnw, plain = build_model("logreg_adagrad_fnw"), build_model("logreg")
    slot = ModelSlot("m", fnw, "challenger")
    assert slot.provisional is True
    assert ModelSlot("b", fnw, "baseline").provisional is False   # a baseline never learns
    assert ModelSlot("p", plain, "challenger").provisional is False
    slot.learn = False   # Engine.freeze
    assert slot.provisional is False
    slot.learn = True
    assert slot.provisional is True
    slot.model = build_model("logreg")   # e.g. the bootstrap's or a benchmark's own model
    assert slot.provisional is False
    slot.model = fnw
    slot.reset("non_finite_prediction")   # back to the last good state: a FakeNegativeWeighted again
    assert slot.provisional is True


def test_the_provisional_flag_is_not_checkpointed_and_old_checkpoints_get_it():
    slot = ModelSlot("m", build_model("logreg_adagrad_fnw"), "challenger")
    assert "provisional" not in slot.__getstate__()
    assert pickle.loads(pickle.dumps(slot)).provisional is True
    old = slot.__getstate__()   # a checkpoint from before the flag: the same state
    restored = ModelSlot.__new__(ModelSlot)
    restored.__setstate__(old)
    assert restored.provisional is True


def test_rollback_and_drift_challengers_decide_the_flag_for_their_own_model():
    engine = Engine.fresh("logreg", "shop")
    assert engine.champion_slot.provisional is False
    engine.rollback(build_model("logreg_adagrad_fnw"), "v2")
    assert engine.champion_slot.provisional is True
    assert engine.add_slot("fnw", build_model("logreg_adagrad_fnw")).provisional is True
    engine.freeze()
    assert not any(slot.provisional for slot in engine.slots)
    assert engine_module.FakeNegativeWeighted is FakeNegativeWeighted
