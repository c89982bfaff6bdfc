"""A slot's model keeps CPython's fast attribute loads after its state was kept (model_state.py)."""

import ctypes
import gc
import pickle
import sys

import pytest

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.model_state import dumps, fresh_copy
from shopstream.models import CATALOG, build_model
from shopstream.slots import ModelSlot

_MANAGED_DICT = 1 << 4


def _objects(model) -> list:
    """The River objects a model is made of (a pipeline's steps, optimizers, losses...), found
    through the garbage collector's references: never asking any of them for its __dict__."""
    seen, out, todo = set(), [], [model]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if type(obj).__module__.split(".")[0] == "river":
            out.append(obj)
        if isinstance(obj, (dict, list, tuple)) or type(obj).__flags__ & _MANAGED_DICT:
            todo.extend(gc.get_referents(obj))
    return out


def _attributes_on_fast_path(obj) -> bool:
    """CPython 3.11: the object's inline values pointer (4 words before it) is set until its
    __dict__ is materialized (then the values move into that dict and the pointer is NULL)."""
    return ctypes.c_void_p.from_address(id(obj) - 4 * ctypes.sizeof(ctypes.c_void_p)).value is not None


def state_bytes(obj) -> bytes:
    """`obj` pickled after one pickle round trip: its state, float bits included, without which of
    its equal strings are one object (a copy made at a checkpoint keeps the model's own strings,
    shopstream/model_state.py; one restored from a checkpoint has the checkpoint's)."""
    return pickle.dumps(pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)), pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("name", ["logreg", "logreg_adagrad", "logreg_avg", "logreg_adagrad_fnw"])
def test_a_fresh_copy_predicts_and_learns_exactly_like_the_original(name):
    events = [event_from_record(r) for r in generate(3000, seed=5)]
    a = Engine.fresh(name, "shop")
    for event in events[:1500]:
        a.process(event)
    original = a.champion_slot.model
    copy = fresh_copy(original)
    assert copy is not original and dumps(copy) == dumps(original)
    xs = [a.features.transform(event) for event in events[1500:]]
    for i, x in enumerate(xs):
        assert copy.predict_proba_one(x) == original.predict_proba_one(x)
        copy.learn_one(x, i % 7 == 0)
        original.learn_one(x, i % 7 == 0)
    assert pickle.dumps(copy) == pickle.dumps(original)


def test_every_catalog_model_survives_the_round_trip():
    for name in sorted(CATALOG):
        model = build_model(name)
        model.learn_one({"a": 1.0, "b": -2.0}, True)
        copy = pickle.loads(dumps(model))
        assert type(copy) is type(model)
        assert copy.predict_proba_one({"a": 0.3, "b": 0.1}) == model.predict_proba_one({"a": 0.3, "b": 0.1}), name


def test_a_slot_runs_its_own_copy_of_the_model_handed_to_it():
    model = build_model("logreg")
    slot = ModelSlot("m", model)
    assert slot.model is not model
    slot.model.learn_one({"a": 1.0}, True)
    assert model["LogisticRegression"].weights == {}   # the caller's object is left alone


@pytest.mark.skipif(sys.version_info[:2] != (3, 11) or sys.implementation.name != "cpython",
                    reason="the inline-values layout this reads is CPython 3.11's")
def test_kept_checkpointed_and_restored_models_keep_their_attributes_on_the_fast_path():
    events = [event_from_record(r) for r in generate(2000, seed=5)]
    engine = Engine.fresh("logreg", "shop")
    for event in events[:1000]:
        engine.process(event)
    engine.mark_good()   # what a checkpoint does: reads the weights, pickles the model
    restored = pickle.loads(pickle.dumps(engine))   # what a worker taking the partition over gets
    for event in events[1000:]:
        engine.process(event)
        restored.process(event)
    for model in (engine.champion_slot.model, restored.champion_slot.model):
        objects = [obj for obj in _objects(model) if type(obj).__name__ in
                   ("Pipeline", "StandardScaler", "LogisticRegression", "SGD", "Log")]
        assert len(objects) == 5
        assert all(_attributes_on_fast_path(obj) for obj in objects), [type(o).__name__ for o in objects]
