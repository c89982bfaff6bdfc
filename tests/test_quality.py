"""The quality benchmark compares fairly: batch models only see labels resolved before they
predict, the frozen copy never learns, every approach scores the same predictions. Runs
without scikit-learn (the benchmark's only extra dependency)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402

from shopstream.generator import START, generate  # noqa: E402
from shopstream.lineup import TUNING, Lineup  # noqa: E402
from shopstream.models import build_model  # noqa: E402
from shopstream.slots import PromotionPolicy  # noqa: E402

DAY = quality.DAY


class Spy:
    """A batch model that records what it was fitted on and predicts its fit's size."""

    fits: list = []

    def fit(self, X, y):
        self.n = len(X)
        Spy.fits.append(X[:, 0].copy())
        return self

    def predict_proba(self, X):
        return np.column_stack([np.zeros(len(X)), np.full(len(X), float(self.n))])


def test_batch_models_learn_only_labels_resolved_before_the_midnight_they_are_refitted_at():
    # One prediction every 6 hours from day 0; each resolves 10 hours after it is made.
    t_pred = START + np.arange(0, 4 * DAY, 6 * 3600.0)
    t_res = t_pred + 10 * 3600.0
    X = np.arange(len(t_pred), dtype=float)[:, None]  # column 0 = the prediction's index
    y = np.arange(len(t_pred)) % 2 == 0
    Spy.fits = []
    p = quality.batch_daily(X, y, t_pred, t_res, first_day=1, make=Spy)
    assert np.isnan(p[:4]).all()                       # day 0: before the first refit
    for day, trained in zip((1, 2, 3), Spy.fits):
        midnight = START + day * DAY
        assert (t_res[trained.astype(int)] <= midnight).all()           # nothing from the future
        assert len(trained) == int((t_res <= midnight).sum())          # and everything resolved by then
        today = (t_pred >= midnight) & (t_pred < midnight + DAY)
        assert (p[today] == len(trained)).all()                        # that day's predictions, that model
    Spy.fits = []
    quality.batch_daily(X, y, t_pred, t_res, first_day=3, make=Spy, max_train=2)
    assert sorted(Spy.fits[0].astype(int)) == [9, 10]  # resolved by day 3 (6k + 10 h <= 72 h): k <= 10, newest two


def test_engine_run_records_the_published_prediction_and_a_frozen_copy_cut_after_n_labels():
    records = list(generate(6000, seed=5, days=2.0))
    lineup = Lineup(model="logreg", challengers=("tuning",), promotion=PromotionPolicy(min_resolved=200, window=200,
                                                                                      check_every=50, cooldown=0))
    rec, engine, _ = quality.run_engine(records, 1000, lineup)
    names = [s.name for s in engine.slots]
    assert names == [*TUNING, "frozen"] and engine.slot("frozen").role == "baseline"
    frozen_index = names.index("frozen")
    # resolved labels before each prediction, from the recorded order of calls
    resolved_before, seen = {}, 0
    for op in rec.ops:
        if op >= 0:
            resolved_before[op] = seen
        else:
            seen += 1
    before = [i for i in range(len(rec.xs)) if resolved_before[i] < 1000]
    after = [i for i in range(len(rec.xs)) if resolved_before[i] >= 1000]
    assert before and after and rec.t_pred[after[0]] == engine.frozen_at
    assert all(len(rec.outputs[i]) == frozen_index for i in before)     # the copy joins after 1,000 labels
    assert all(len(rec.outputs[i]) == frozen_index + 1 for i in after)
    # The frozen copy is the champion as it was at the cut: it has not learned since.
    assert engine.slot("frozen").model.predict_proba_one(rec.xs[after[-1]])[True] == rec.outputs[after[-1]][-1]
    assert engine.slot("frozen").model.predict_proba_one(rec.xs[after[0]])[True] == rec.outputs[after[0]][-1]
    # Every recorded prediction is replayable: replaying `logreg` gives the slot's own numbers.
    replayed = quality.replay(rec, build_model("logreg"))
    logreg = names.index("logreg")
    assert replayed.tolist() == pytest.approx([out[logreg] for out in rec.outputs])
    # Resolved labels come back in the engine's order, each after its prediction.
    assert sum(op < 0 for op in rec.ops) == sum(y is not None for y in rec.ys)
    assert all(r is None or r >= t for t, r in zip(rec.t_pred, rec.t_res))


def test_a_target_is_met_only_when_its_interval_says_so():
    from shopstream.evaluation import Difference

    def result(low):
        d = {"roc_auc": Difference(0.02, low, 0.05), "roc_auc_within_block": Difference(0.0, low - 0.006, 0.01),
             "log_loss_reduction": Difference(0.0, -0.01, 0.01)}
        return {"diffs": {(quality.BATCH_ALL, "overall"): d, (quality.BATCH_ALL, "during"): d,
                          (quality.FROZEN, "overall"): d}}

    met = {what: ok for what, _, ok in quality.targets({"incident": result(0.011)})}
    assert met == {
        "incident: champion's within-day ROC AUC >= daily batch LR's - 0.005 (interval's lower end)": True,  # 0.005
        "incident: during the incident, champion >= daily batch LR + 0.01, within-day ROC AUC": False,     # 0.005
        "incident: during the incident, champion >= daily batch LR + 0.01, pooled ROC AUC": True,          # 0.011
        "incident: champion >= its frozen copy, pooled ROC AUC (lower end >= 0)": True}
    missed = {what: ok for what, _, ok in quality.targets({"incident": result(-0.001)})}
    assert not missed["incident: champion >= its frozen copy, pooled ROC AUC (lower end >= 0)"]   # point +0.02


def test_recovery_is_the_first_hour_the_trailing_log_loss_is_near_the_settled_level():
    start, hour = 1000 * DAY, 3600.0
    t = start + np.arange(0, 48 * hour, 60.0)                    # a prediction a minute for two days
    y = np.arange(len(t)) % 10 == 0
    good = np.full(len(t), 0.1)
    slow = np.where(t < start + 10 * hour, 0.5, 0.1)            # wrong for its first 10 hours
    hours = quality.recovery_hours(y, t, {"good": good, "slow": slow}, start, start + 48 * hour)
    assert hours == {"good": 3.0, "slow": 13.0}                  # a 3-hour trailing window


def test_demo_opens_with_online_against_frozen_and_runs_the_tuning_line_up(tmp_path):
    from argparse import Namespace

    from shopstream.cli.demo import run_demo

    args = Namespace(out=str(tmp_path), events=12_000, seed=7, drift="checkout_incident@0.5-0.65:web",
                     metrics_host="127.0.0.1", metrics_port=0, progress=False)
    summary = run_demo(args)
    assert list(summary)[:2] == ["online_vs_frozen", "online_vs_daily_batch_retraining"]
    batch = summary["online_vs_daily_batch_retraining"]   # measured in this run (tests/test_evaluation.py)
    assert batch["scored_predictions"] > 1000 and set(batch["online_minus_batch_95"]) == {
        "roc_auc", "roc_auc_within_block", "log_loss_reduction"}
    assert set(TUNING) | {"mlp"} <= set(summary["models"]) and set(TUNING) <= set(summary["bootstrap_holdout"])
    lift = summary["online_vs_frozen"]
    champion = summary["models"][lift["final_champion"]]
    assert champion["role"] == "champion" and lift["online_champion"]["roc_auc"] == round(champion["roc_auc"], 4)
    baseline = next(m for m in summary["models"].values() if m["role"] == "baseline")
    assert lift["roc_auc_gain"] == round(champion["roc_auc"] - baseline["roc_auc"], 4)
