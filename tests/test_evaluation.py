"""Offline scoring used by the demo and the quality benchmark: exact AUC (pooled, within
blocks, weighted), the session bootstrap, the scipy batch logistic regression and the
nightly refit that only sees labels resolved by each midnight."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shopstream.evaluation import (DAY, BatchLogisticRegression, nightly_batch, roc_auc, session_bootstrap,
                                   versus_nightly_batch)


def brute_auc(y, p, blocks, w):
    wins = pairs = 0.0
    for i, j in itertools.product(range(len(y)), repeat=2):
        if y[i] and not y[j] and blocks[i] == blocks[j]:
            pairs += w[i] * w[j]
            wins += w[i] * w[j] * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    return wins / pairs


def test_exact_auc_counts_every_pair_ties_half_within_blocks_and_weighted():
    rng = np.random.default_rng(3)
    y = rng.random(60) < 0.3
    p = np.round(rng.random(60), 1)           # many ties
    blocks = rng.integers(0, 3, 60)
    w = rng.integers(0, 3, 60).astype(float)
    ones, same = np.ones(60), np.zeros(60, int)
    assert roc_auc(y, p) == pytest.approx(brute_auc(y, p, same, ones))
    assert roc_auc(y, p, blocks) == pytest.approx(brute_auc(y, p, blocks, ones))
    assert roc_auc(y, p, blocks, w) == pytest.approx(brute_auc(y, p, blocks, w))


def test_session_bootstrap_interval_contains_zero_for_equal_models_and_not_for_a_better_one():
    rng = np.random.default_rng(0)
    n = 4000
    sessions = rng.integers(0, 800, n)
    signal = rng.normal(size=n)
    y = rng.random(n) < 1 / (1 + np.exp(-(2 * signal - 1.5)))
    sharp = 1 / (1 + np.exp(-(2 * signal - 1.5)))
    blurred = 1 / (1 + np.exp(-(2 * signal + rng.normal(scale=1.5, size=n) - 1.5)))
    same = session_bootstrap(y, sharp, sharp, sessions, blocks=sessions % 7, n_boot=50)
    assert all(d.value == 0 and d.low == d.high == 0 for d in same.values())
    better = session_bootstrap(y, sharp, blurred, sessions, blocks=sessions % 7, n_boot=50)
    for d in better.values():
        assert d.low > 0 and d.low <= d.value <= d.high and d.at_least(0.0)


def test_batch_logistic_regression_reaches_sklearns_fit():
    sklearn = pytest.importorskip("sklearn")  # noqa: F841  (a bench-only dependency)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 4)) * [1, 10, 0.1, 3] + [0, 5, 0, 0]
    y = rng.random(3000) < 1 / (1 + np.exp(-(X @ [1, 0.1, -5, 0.2] - 1)))
    ours = BatchLogisticRegression().fit(X, y).predict_proba(X)[:, 1]
    theirs = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y).predict_proba(X)[:, 1]
    assert np.abs(ours - theirs).max() < 1e-3


class Spy:
    """A batch model that records what it was fitted on and predicts its fit's size."""

    fits: list = []

    def fit(self, X, y):
        self.n = len(X)
        Spy.fits.append(X[:, 0].copy())
        return self

    def predict_proba(self, X):
        return np.column_stack([np.zeros(len(X)), np.full(len(X), float(self.n))])


def test_nightly_batch_learns_only_labels_resolved_by_each_midnight_and_a_window_keeps_recent_ones():
    start = 1000 * DAY
    t_pred = start + np.arange(0, 4 * DAY, 6 * 3600.0)     # one prediction every 6 hours
    t_res = t_pred + 10 * 3600.0                           # resolved 10 hours later
    X = np.arange(len(t_pred), dtype=float)[:, None]       # column 0: the prediction's index
    y = np.arange(len(t_pred)) % 2 == 0
    Spy.fits = []
    p = nightly_batch(X, y, t_pred, t_res, start + DAY, make=Spy)
    assert np.isnan(p[:4]).all()
    for day, trained in zip((1, 2, 3), Spy.fits):
        midnight = start + day * DAY
        assert (t_res[trained.astype(int)] <= midnight).all()
        assert len(trained) == int((t_res <= midnight).sum())
        today = (t_pred >= midnight) & (t_pred < midnight + DAY)
        assert (p[today] == len(trained)).all()
    Spy.fits = []
    nightly_batch(X, y, t_pred, t_res, start + 3 * DAY, make=Spy, window_days=1.0)
    assert sorted(Spy.fits[0].astype(int)) == [8, 9, 10]   # made from 48 h (the last day), resolved by 72 h
    Spy.fits = []
    nightly_batch(X, y, t_pred, t_res, start + 3 * DAY, make=Spy, max_train=2)
    assert sorted(Spy.fits[0].astype(int)) == [9, 10]      # resolved by 72 h (6k + 10 <= 72: k <= 10), newest two


def test_the_demos_batch_comparison_is_measured_on_the_run_not_quoted(tmp_path):
    """Two shops, two different figures, each equal to the exact AUC of what was published."""
    from shopstream.config import EngineConfig
    from shopstream.engine import Engine
    from shopstream.events import event_from_record
    from shopstream.features import build_features
    from shopstream.generator import generate
    from shopstream.models import build_model
    from shopstream.recording import record

    from cli.demo import against_nightly_batch

    figures = []
    for seed in (3, 4):
        events = list(generate(6000, seed=seed, days=6.0))
        config = EngineConfig(features="shop")
        engine = Engine(build_model("logreg_adagrad"), build_features("shop"), config)
        calls = record(engine)
        for event in events[2000:]:
            engine.process(event_from_record(event))
        result = against_nightly_batch(events[:2000], config, calls)
        arrays = calls.arrays()
        scored = arrays["resolved"] & (arrays["t_pred"] >= np.ceil(arrays["t_pred"].min() / DAY) * DAY)
        assert result["scored_predictions"] == int(scored.sum())
        assert result["online_champion"]["roc_auc"] == round(roc_auc(arrays["y"][scored],
                                                                     arrays["published"][scored]), 4)
        low, value, high = (result["online_minus_batch_95"]["roc_auc"][i] for i in (1, 0, 2))
        assert low <= value <= high
        figures.append(result["online_minus_batch_95"]["roc_auc"][0])
    assert figures[0] != figures[1]
    with pytest.raises(ValueError, match="no predictions"):
        versus_nightly_batch(calls, record(Engine.fresh("logreg", "shop")))
