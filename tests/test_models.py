"""Every catalog model learns, predicts, pickles and is reproducible for its seed."""

import pickle

import pytest

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.models import CATALOG, build_model


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog_model_learns_pickles_and_is_deterministic(name):
    events = [event_from_record(r) for r in generate(4000, seed=71)]
    runs = []
    for _ in range(2):
        engine = Engine.fresh(name, "shop", seed=3)
        for event in events:
            engine.process(event)
        runs.append(engine)
    assert runs[0].counts["learned"] > 1000
    assert runs[0].scores.cumulative.values() == runs[1].scores.cumulative.values()
    clone = pickle.loads(pickle.dumps(runs[0]))
    probe = runs[0].features.transform(events[-1])
    assert clone.model.predict_proba_one(probe) == runs[0].model.predict_proba_one(probe)


def test_logreg_is_rivers_defaults_exactly():
    from river import linear_model, preprocessing

    assert repr(build_model("logreg")) == repr(preprocessing.StandardScaler() | linear_model.LogisticRegression())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")


def test_mlp_is_the_seeds_network():
    from shopstream.mlp import MLPClassifier

    model = build_model("mlp", seed=9)
    assert isinstance(model, MLPClassifier)
    assert (model.hidden, model.lr, model.seed) == ((64, 64), 1e-3, 9)
    model.learn_one({"a": 1.0, "b": 2.0}, True)
    W1, b1, W2, b2, w3, b3 = model._views[0]
    assert W1.shape == (2, 64) and W2.shape == (64, 64) and w3.shape == (64,) and b3.shape == (1,)
