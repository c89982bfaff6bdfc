"""The seed's network (`mlp`): River's interface, determinism, exact pickles, finite
scores under extreme inputs, learning, new feature names, epoch training."""

import math
import pickle
import random

import numpy as np
import pytest
from river import base

from shopstream.mlp import MLPClassifier
from shopstream.models import build_model


def stream(n, seed=0):
    """A separable problem with a nuisance feature: y = a + b > 0."""
    rng = random.Random(seed)
    for _ in range(n):
        a, b, noise = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 3)
        yield {"a": a, "b": b, "noise": noise}, a + b > 0


def state_bytes(model):
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def test_river_interface_and_catalog():
    model = build_model("mlp", seed=5)
    assert isinstance(model, base.Classifier) and isinstance(model, MLPClassifier)
    assert model.seed == 5 and model.hidden == (64, 64)
    proba = model.predict_proba_one({"a": 1.0})
    assert set(proba) == {False, True} and proba[True] == 0.5  # untrained: knows no input yet
    for x, y in stream(50):
        model.learn_one(x, y)
    assert model.predict_one({"a": 2.0, "b": 2.0}) in (False, True)
    clone = model.clone()
    assert isinstance(clone, MLPClassifier) and clone.seed == 5 and clone._t == 0
    assert state_bytes(clone) == state_bytes(MLPClassifier(seed=5))


def test_same_seed_same_bits_other_seed_other_bits():
    runs = []
    for seed in (1, 1, 2):
        model = MLPClassifier(seed=seed)
        for x, y in stream(300):
            model.learn_one(x, y)
        runs.append(model)
    assert state_bytes(runs[0]) == state_bytes(runs[1])
    assert state_bytes(runs[0]) != state_bytes(runs[2])


def test_pickle_round_trip_is_bit_for_bit_and_keeps_learning_identically():
    model = MLPClassifier(seed=3)
    data = list(stream(400, seed=1))
    for x, y in data[:200]:
        model.learn_one(x, y)
    copy = pickle.loads(pickle.dumps(model))
    assert state_bytes(copy) == state_bytes(model)
    for x, y in data[200:]:   # the views onto the flat parameters must be rebuilt on load
        model.learn_one(x, y)
        copy.learn_one(x, y)
    assert state_bytes(copy) == state_bytes(model)
    probe = {"a": 0.3, "b": -0.1, "noise": 2.0}
    assert copy.predict_proba_one(probe) == model.predict_proba_one(probe)


def test_scores_stay_finite_under_extreme_inputs():
    model = MLPClassifier(seed=4)
    for x, y in stream(100):
        model.learn_one(x, y)
    extremes = [1e308, -1e308, 5e-324, -5e-324, 0.0, math.inf, -math.inf, math.nan, 1e-300, 10**400]
    rng = random.Random(9)
    for i in range(300):
        x = {"a": rng.choice(extremes), "b": rng.choice(extremes), "noise": rng.gauss(0, 1),
             "text": rng.choice(["x", "y"]), "new": rng.choice(extremes)}
        p = model.predict_proba_one(x)[True]
        assert 0.0 < p < 1.0 and math.isfinite(p)
        model.learn_one(x, i % 2 == 0)
    assert all(np.isfinite(a).all() for a in (model._theta, model._m, model._v, model._mean, model._var))
    for x in ({"a": 1e308, "b": -1e308}, {"a": 5e-324}, {}):
        assert 0.0 < model.predict_proba_one(x)[True] < 1.0


def test_learns_a_separable_problem_online():
    model = MLPClassifier(seed=0)
    data = list(stream(3000, seed=2))
    for x, y in data[:2000]:
        model.learn_one(x, y)
    correct = sum(model.predict_one(x) == y for x, y in data[2000:])
    assert correct / 1000 > 0.93


def test_new_feature_names_get_zero_rows_once_trained_and_then_learn():
    model = MLPClassifier(seed=6)
    for x, y in stream(300):
        model.learn_one(x, y)
    probe = {"a": 0.5, "b": -0.2, "noise": 1.0, "brand_new": 3.0, "colour": "red"}
    before = model.predict_proba_one(probe)
    n_in = model._n_in
    grown = pickle.loads(pickle.dumps(model))
    grown._add_inputs(["brand_new", "colour=red"])
    assert grown._n_in == n_in + 2 and {"brand_new", "colour=red"} <= set(grown._index)
    assert not grown._views[0][0][n_in:].any()          # zero rows ...
    assert grown.predict_proba_one(probe) == before      # ... so the same function as before
    # Learning adds the names itself (a string value is an indicator input `name=value`),
    # and once the new inputs vary their rows learn like any other.
    rng = random.Random(1)
    for x, y in stream(200, seed=5):
        model.learn_one({**x, "brand_new": rng.gauss(0, 1), "colour": rng.choice(["red", "blue"])}, y)
    assert {"brand_new", "colour=red", "colour=blue"} <= set(model._index)
    rows = [model._index[name] for name in ("brand_new", "colour=red", "colour=blue")]
    assert np.abs(model._views[0][0][rows]).max() > 0


def test_adam_moments_never_go_subnormal():
    """Weights without gradient (an input that stopped coming) see their moments decay by
    0.9 a step: without the flush they turn subnormal within ~800 steps, and subnormal
    arithmetic makes every later step many times slower."""
    model = MLPClassifier(seed=2)
    data = list(stream(1200, seed=4))
    for i, (x, y) in enumerate(data):
        model.learn_one({**x, "gone": float(i % 3)} if i < 20 else x, y)
    tiny = np.finfo(model._m.dtype).tiny
    for moments in (model._m, model._v):
        assert np.all((moments == 0) | (np.abs(moments) >= tiny))
    assert (model._m == 0).any()  # the flush did happen


def test_max_inputs_bounds_the_input_layer():
    model = MLPClassifier(seed=0, max_inputs=3)
    model.learn_one({f"f{i}": float(i) for i in range(10)}, True)
    model.learn_one({"other": 1.0, "f1": 2.0}, False)
    assert model._n_in == 3 and sorted(model._index) == ["f0", "f1", "f2"]
    assert 0.0 < model.predict_proba_one({"f9": 1.0, "f1": 5.0})[True] < 1.0


def test_fit_epochs_early_stopping_restores_the_best_epoch():
    data = list(stream(2000, seed=3))
    xs, ys = [x for x, _ in data], [y for _, y in data]
    model = MLPClassifier(seed=1)
    training = model.fit_epochs(xs, ys, epochs=30, batch_size=32, validation_split=0.2, patience=2)
    history = training["history"]
    best = min(history, key=lambda h: h["val_loss"])
    assert training["best_epoch"] == best["epoch"]
    assert training["epochs_run"] == len(history) <= 30
    if len(history) < 30:  # stopped early: `patience` epochs without improvement
        assert training["epochs_run"] == training["best_epoch"] + 2
    assert training["fit_rows"] == 1600 and training["validation_rows"] == 400
    # The restored weights are the best epoch's: their validation loss is that epoch's.
    val = list(zip(xs[1600:], ys[1600:]))
    loss = -sum(math.log(model.predict_proba_one(x)[y]) for x, y in val) / len(val)
    assert loss == pytest.approx(best["val_loss"], rel=1e-4)
    assert best["val_accuracy"] > 0.93
    # Same seed, same data: same epochs and bits.
    again = MLPClassifier(seed=1)
    assert again.fit_epochs(xs, ys, epochs=30, batch_size=32, validation_split=0.2, patience=2) == training
    assert state_bytes(again) == state_bytes(model)


def test_predict_then_learn_costs_at_most_a_few_times_logreg():
    """Not a benchmark (BENCHMARKS.md has one): a guard against an accidental 10x."""
    import time

    data = [({f"f{i}": v for i, v in enumerate(np.random.default_rng(0).normal(size=30))}, i % 2 == 0)
            for i in range(1500)]

    def cost(model):
        started = time.perf_counter()
        for x, y in data:
            model.predict_proba_one(x)
            model.learn_one(x, y)
        return time.perf_counter() - started

    mlp = min(cost(build_model("mlp")) for _ in range(2))
    logreg = min(cost(build_model("logreg")) for _ in range(2))
    assert mlp < 6 * logreg, (mlp, logreg)


@pytest.mark.slow
def test_bootstrap_trains_mlp_in_epochs_and_records_it(tmp_path, monkeypatch):
    import json

    from offline.bootstrap import EpochSettings, bootstrap
    from shopstream.artifacts import load_artifact
    from cli import build_parser
    from shopstream.generator import generate, write_jsonl

    monkeypatch.setenv("SHOPSTREAM_EPOCHS", "2")
    monkeypatch.setenv("SHOPSTREAM_BATCH_SIZE", "64")
    args = build_parser().parse_args(["bootstrap", "--history", "h.jsonl", "--patience", "1"])
    assert (args.epochs, args.batch_size, args.patience, args.learning_rate) == (2, 64, 1, 1e-3)

    history = tmp_path / "history.jsonl"
    write_jsonl(generate(8000, seed=5), history)
    out = tmp_path / "out"
    report = bootstrap(history, out, models=["logreg", "mlp"], progress=False,
                       epochs=EpochSettings(epochs=2, batch_size=64, lr=2e-3))
    mlp, logreg = report["candidates"]["mlp"], report["candidates"]["logreg"]
    training = mlp["training"]
    assert training["epochs"] == 2 and training["batch_size"] == 64 and training["lr"] == 2e-3
    assert 1 <= training["best_epoch"] <= training["epochs_run"] == len(training["history"]) <= 2
    assert training["validation_rows"] == training["caught_up_on"] > 0
    assert training["fit_rows"] + training["validation_rows"] == logreg["progressive"]["resolved"]
    # Frozen on the same holdout as every model: the same predictions are scored.
    assert mlp["holdout"]["resolved"] == logreg["holdout"]["resolved"] > 500
    assert 0.5 < mlp["holdout"]["roc_auc"] < 1.0
    assert training["holdout_before_catch_up"]["resolved"] == mlp["holdout"]["resolved"]
    artifact = load_artifact(out / mlp["artifact"])
    assert artifact.meta["training"]["batch_size"] == 64 and artifact.model.lr == 2e-3
    assert isinstance(artifact.model, MLPClassifier) and artifact.model._t > 0
    text = (out / "report.md").read_text()
    assert "mlp: trained in epochs" in text and "(chosen)" in text and "epochs_mlp.png" in text
    assert (out / "epochs_mlp.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["candidates"]["mlp"]["training"] == json.loads(
        json.dumps(training))


@pytest.mark.slow
def test_demo_runs_mlp_as_a_challenger_beside_logistic_regression(tmp_path):
    from argparse import Namespace

    from cli.demo import run_demo

    args = Namespace(out=str(tmp_path), events=12_000, seed=7, drift="checkout_incident@0.5-0.65:web",
                     metrics_host="127.0.0.1", metrics_port=0, progress=False)
    summary = run_demo(args)
    assert summary["bootstrap_default"].startswith("logreg")   # the champion is a logistic regression
    mlp = summary["models"]["mlp"]
    assert mlp["version"].startswith("mlp-") and mlp["role"] in ("challenger", "champion")  # promotion may win
    assert [p for p in summary["promotions"] if p["new"] == "mlp"] or mlp["role"] == "challenger"
    assert 0.5 < mlp["roc_auc"] < 1.0 and "mlp" in summary["bootstrap_holdout"]
    assert all("mlp" in phase for phase in summary["rolling_roc_auc"].values())
    assert (tmp_path / "artifacts" / "epochs_mlp.png").is_file()


def test_worker_mlp_learning_rate_sets_the_adam_step_of_new_partitions():
    from stream.settings import WorkerSettings
    from stream.worker import new_engine

    engine, _ = new_engine(WorkerSettings.from_options(model="mlp", challengers=("logreg",), mlp_learning_rate=3e-4))
    assert engine.champion_slot.model.lr == 3e-4
    assert new_engine(WorkerSettings.from_options(model="mlp"))[0].champion_slot.model.lr == 1e-3
