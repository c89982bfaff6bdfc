"""The promotion test: exact windowed ROC AUC (DeLong) or paired log loss, a level shared by
the challengers, a cooldown; it sees differences River's 10-threshold AUC cannot."""

from __future__ import annotations

import math
import pickle
import random
from collections import deque

import numpy as np
import pytest

from shopstream.config import ConfigError, EngineConfig
from shopstream.engine import Engine
from shopstream.evaluation import roc_auc
from shopstream.events import Event
from shopstream.features import build_features
from shopstream.lineup import PromotionPolicy
from shopstream.slots import PairedLossTest, delong


def test_delong_difference_is_the_exact_auc_difference_ties_included():
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.12
    a, b = np.round(rng.random(3000), 2), rng.random(3000) + y * 0.3
    diff, z = delong(y, a, b)
    assert diff == pytest.approx(roc_auc(y, b) - roc_auc(y, a))
    assert z > 5 and delong(y, b, a)[1] == pytest.approx(-z)
    assert delong(y, a, a) == (0.0, 0.0)


def test_the_window_keeps_the_newest_pairs_and_extend_equals_updates():
    one, bulk = PairedLossTest(window=5), PairedLossTest(window=5)
    pairs = [(i % 3 == 0, i / 10, 1 - i / 10) for i in range(8)]
    for y, a, b in pairs:
        one.update(y, a, b)
    bulk.extend(*zip(*pairs[:2]))
    bulk.extend(*zip(*pairs[2:]))
    assert one.n == bulk.n == 5
    for got, want in zip(one.pairs(), bulk.pairs()):
        assert sorted(got.tolist()) == sorted(want.tolist())
    assert sorted(one.pairs()[1].tolist()) == [0.3, 0.4, 0.5, 0.6, 0.7]


def test_a_checkpoint_from_before_keeps_working_its_window_starts_over():
    old = object.__new__(PairedLossTest)
    old.__setstate__({"window": 300, "_diffs": deque([0.1]), "_sum": 0.1, "_sum_sq": 0.01})
    assert old.n == 0 and old.window == 300
    old.update(True, 0.2, 0.8)
    assert pickle.loads(pickle.dumps(old)).pairs()[2].tolist() == [0.8]


@pytest.mark.parametrize("field, value, rule", [
    ("test", "roc", "must be one of"), ("alpha", 0.0, "(0, 0.5)"), ("margin", -0.1, "[0, 0.5)"),
    ("min_resolved", 1, "[2, window]"), ("window", 5, ">= 10"), ("check_every", 0, ">= 1"),
    ("cooldown", -1, ">= 0"), ("min_positives", 1, ">= 2")])
def test_policy_settings_are_validated(field, value, rule):
    with pytest.raises(ConfigError, match=re_escape(rule)) as error:
        PromotionPolicy(**{field: value})
    assert error.value.name == field and error.value.value == value


def re_escape(text):
    import re

    return re.escape(text)


def test_the_level_is_shared_by_the_challengers():
    policy = PromotionPolicy(alpha=0.001)
    assert policy.z_critical(1) == pytest.approx(3.0902, abs=1e-4)
    assert policy.z_critical(4) == pytest.approx(3.4808, abs=1e-4)   # Bonferroni: 0.001 / 4


class Scorer:
    """A model whose P(purchase) is a fixed function of the event's features (it learns nothing)."""

    def __init__(self, signal: float, noise: float, scale: float = 1.0):
        self.signal, self.noise, self.scale = signal, noise, scale

    def predict_proba_one(self, x):
        p = self.scale / (1 + math.exp(-(self.signal * x["signal"] + self.noise * x["noise"] - 2)))
        return {False: 1 - p, True: p}

    def learn_one(self, x, y):
        pass


def labelled(n, seed=0, rate=0.12):
    rng = random.Random(seed)
    for i in range(n):
        y = rng.random() < rate
        yield Event(1.6e9 + i, "view", str(i), "u", f"s{i}", event_id=str(i),
                    features={"signal": (1.0 if y else 0.0) + rng.gauss(0, 1), "noise": rng.gauss(0, 1)}, label=y)


def engine_with(champion, policy, **challengers):
    engine = Engine(champion, build_features("raw"), EngineConfig(features="raw"), model_name="champion",
                    promotion=policy)
    for name, model in challengers.items():
        engine.add_slot(name, model, "challenger")
    return engine


def test_a_better_ranking_under_river_s_first_threshold_is_promoted():
    """Every score below 0.11 (one River bucket): River's AUC is 0.5 for both models, so the
    rule before this change (a 0.01 lead in River's AUC) could never promote; the exact AUC can."""
    policy = PromotionPolicy(min_resolved=500, check_every=100)
    engine = engine_with(Scorer(0.3, 1.0, scale=0.1), policy, sharp=Scorer(1.0, 0.3, scale=0.1))
    for event in labelled(6000):
        engine.process(event)
    assert engine.slot("sharp").scores.rolling.values()["roc_auc"] == pytest.approx(0.5)
    [promotion] = [h for h in engine.history if h["kind"] == "promotion"]
    assert promotion["new"] == "sharp" and promotion["z_auc"] >= policy.z_critical(1) and promotion["auc_gain"] > 0.05
    assert promotion["resolved"] >= policy.min_resolved


@pytest.mark.parametrize("cooldown", [0, 3000])
def test_cooldown_holds_the_next_promotion_and_equal_challengers_are_not_promoted(cooldown):
    policy = PromotionPolicy(min_resolved=500, check_every=100, cooldown=cooldown)
    engine = engine_with(Scorer(0.2, 1.0), policy, better=Scorer(0.6, 0.8), best=Scorer(1.0, 0.2),
                         same=Scorer(0.2, 1.0))
    for event in labelled(12_000, seed=1):
        engine.process(event)
    promotions = [h for h in engine.history if h["kind"] == "promotion"]
    assert [p["new"] for p in promotions] == ["better", "best"]
    gap = promotions[1]["resolved"] - promotions[0]["resolved"]
    assert gap >= cooldown and (cooldown or gap < 3000)   # without a cooldown it comes sooner
    assert all(p["z"] >= p["z_critical"] == round(policy.z_critical(3), 2) for p in promotions)


def test_the_promotion_benchmark_runs_and_prints_its_table(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import promotion

    assert promotion.main(["--events", "3000", "--runs", "2", "--cap", "2000", "--null-labels", "2000",
                           "--rates", "0.12", "--angles", "15", "--tests", "before,auc"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 15 degrees")]
    assert [row.split(" | ")[2] for row in rows] == ["before", "auc"] and "false promotions per 100k" in out


def test_pending_pairs_land_in_the_rings_exactly_where_one_by_one_stores_put_them():
    """`update` only appends; the pairs reach the rings at a read, a pickle or once a window is
    pending. The rings (order included) are those of storing each pair at once."""
    import random

    rng = random.Random(5)
    window = 100
    test = PairedLossTest(window=window)
    ring = [[False] * window, [0.0] * window, [0.0] * window]
    for i in range(2345):
        y, a, b = rng.random() < 0.2, rng.random(), rng.random()
        test.update(y, a, b)
        ring[0][i % window], ring[1][i % window], ring[2][i % window] = y, a, b
        if rng.random() < 0.01:
            test = pickle.loads(pickle.dumps(test))
        if rng.random() < 0.01 or i == 2344:
            assert test.n == min(i + 1, window)
            assert [r.tolist() for r in test.pairs()] == [r[:test.n] for r in ring]
