"""A model's state as bytes, and copies of it that keep CPython's fast attribute loads.

Why: on CPython 3.11 and 3.12 an object's attributes live in a compact array that the
interpreter's specialised attribute loads read directly, until something asks for the
object's ``__dict__`` (``vars(obj)``, pickling it, unpickling it: pickle's default
restore updates ``obj.__dict__``). From then on every attribute load of that object goes
through a dict lookup. A River logistic regression (a pipeline of five such objects)
then takes 1.5-1.8 microseconds more per predict_proba_one + learn_one (BENCHMARKS.md,
row E), and the engine pickles every model it runs to keep its last good state.

`dumps` writes a model with ordinary pickle opcodes (any `pickle.loads` reads it) but
each plain object's attributes as *slot state*, which `pickle.loads` restores with
``setattr``: the object it builds keeps the compact array. `fresh_copy` is the round trip.
The copy holds the same values, bit for bit (pickle's floats are exact, dicts keep
their order): it predicts and learns exactly as the original would.

>>> from river import linear_model
>>> model = linear_model.LogisticRegression()
>>> model.learn_one({"a": 1.0}, True)
>>> copy = fresh_copy(model)
>>> copy.predict_proba_one({"a": 2.0}) == model.predict_proba_one({"a": 2.0}), copy is model
(True, False)
"""

from __future__ import annotations

import io
import pickle
from functools import lru_cache
from typing import Any, Callable, Optional

PROTOCOL = pickle.HIGHEST_PROTOCOL
_MANAGED_DICT = 1 << 4   # Py_TPFLAGS_MANAGED_DICT: attributes kept in the compact array (3.11+)


@lru_cache(maxsize=None)
def _kind(cls: Any) -> str:
    """How `dumps` writes an instance of `cls`: "setattr" (restored attribute by attribute),
    "setstate" (its own __setstate__ on a scratch object, then copied attribute by
    attribute), or "" (pickle's own way: a class that chose its own state, or redirects
    attribute stores)."""
    if not cls.__flags__ & _MANAGED_DICT or cls.__setattr__ is not object.__setattr__ \
            or cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__ \
            or getattr(cls, "__getstate__", object.__getstate__) is not object.__getstate__:
        return ""
    return "setstate" if hasattr(cls, "__setstate__") else "setattr"


@lru_cache(maxsize=None)
def _descriptors(cls: Any) -> frozenset:
    """Names that a ``setattr`` would hand to a class's data descriptor instead of the object."""
    return frozenset(name for klass in cls.__mro__ for name, value in vars(klass).items()
                     if hasattr(type(value), "__set__"))


def _storable(cls: Any, state: Any) -> bool:
    return type(state) is dict and bool(state) and all(type(name) is str for name in state) \
        and _descriptors(cls).isdisjoint(state)


def restore_attributes(obj: Any, state: dict) -> None:
    """``obj.__dict__.update(state)`` (a checkpoint's restore) without asking for ``obj.__dict__``:
    attribute by attribute, so that the object's attribute loads stay on the fast path. A state a
    class's data descriptor (a property) would take goes into the dict as before."""
    if _storable(type(obj), state):
        for name, value in state.items():
            object.__setattr__(obj, name, value)
    else:
        obj.__dict__.update(state)


def fresh_shell(obj: Any) -> Any:
    """A new object of `obj`'s class holding the very same attribute values (shared, not
    copied: it costs one store per attribute, whatever the size of the state behind them),
    whose attribute loads are on the fast path again: for an object a checkpoint pickled,
    which its one holder then swaps for the shell. `obj` itself when its class keeps no
    compact array, builds its objects its own way or its state is not storable.

    >>> from shopstream.labels import LabelJoiner
    >>> joiner = LabelJoiner(window=600)
    >>> shell = fresh_shell(joiner)
    >>> shell is joiner, shell.counts is joiner.counts, fresh_shell(3)
    (False, True, 3)
    """
    cls: Any = type(obj)
    if not cls.__flags__ & _MANAGED_DICT or cls.__new__ is not object.__new__:
        return obj
    attributes = obj.__dict__   # already asked for (that is why a shell is wanted)
    if not _storable(cls, attributes):
        return obj
    shell = object.__new__(cls)
    for name, value in attributes.items():
        object.__setattr__(shell, name, value)
    return shell


def _restored(cls: Any, state: dict) -> Any:
    """An instance of `cls` given `state` by its own __setstate__, then moved attribute by
    attribute to an object whose ``__dict__`` was never asked for."""
    scratch = cls.__new__(cls)
    scratch.__setstate__(state)
    return fresh_shell(scratch)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls: Any = type(obj)
        kind = _kind(cls)
        if not kind:
            return NotImplemented
        reduced = obj.__reduce_ex__(PROTOCOL)
        if len(reduced) < 3 or not _storable(cls, reduced[2]):
            return NotImplemented
        if kind == "setattr":   # same creation, state (None, attributes): restored by setattr
            return (*reduced[:2], (None, reduced[2]), *reduced[3:])
        if reduced[1] != (cls,) or any(item is not None for item in reduced[3:]):
            return NotImplemented
        return _restored, (cls, reduced[2])


def dumps(model: Any) -> bytes:
    """`model` pickled so that `pickle.loads` gives it back with its attributes on the
    fast path. A model whose objects refer back to one that has its own __setstate__
    (recursion) is pickled the ordinary way."""
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, PROTOCOL).dump(model)
    except RecursionError:
        return pickle.dumps(model, PROTOCOL)
    return buffer.getvalue()


class _SharingPickler(_Pickler):
    """`_Pickler` that leaves every str out of the bytes, by reference to `strings` (see `keep`)."""

    def __init__(self, file: Any, strings: list):
        super().__init__(file, PROTOCOL)
        self.strings = strings

    def persistent_id(self, obj: Any) -> Any:
        if obj.__class__ is str:
            self.strings.append(obj)
            return len(self.strings) - 1
        return None


class _SharingUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, strings: list):
        super().__init__(file)
        self.strings = strings

    def persistent_load(self, pid: Any) -> Any:
        return self.strings[pid]


def keep(model: Any, share_names: Optional[Callable[[list], list]] = None) -> tuple[bytes, list]:
    """`model`'s state, kept in this process to make copies from (`copy_of`): bytes as `dumps`
    writes them, less its strings, which stay the very objects the model holds. Why: River keys
    its state by feature name (the scaler's means, the weights), and a dict finds an event's
    name at once when it is the object the dict holds, but compares the characters of an equal
    copy: with strings of their own, copies made at each checkpoint ran River's calls about 20%
    slower on 12 raw features, from a worker's first checkpoint on (BENCHMARKS.md, stop 45).

    `share_names` maps the strings to equal ones that copies hold instead: a feature set's
    ``share_names`` gives the objects its events bring, so that a model restored from a
    checkpoint or an artifact (whose strings are the file's own) runs as fast as one that
    never left the process."""
    buffer, strings = io.BytesIO(), []   # type: ignore[var-annotated]
    try:
        _SharingPickler(buffer, strings).dump(model)
    except RecursionError:
        return pickle.dumps(model, PROTOCOL), []
    if share_names is not None and strings:
        strings = share_names(strings)
    return buffer.getvalue(), strings


def copy_of(kept: tuple[bytes, list]) -> Any:
    """A new model from `keep`'s state: the same values bit for bit, the same str objects, and
    attribute loads on the fast path."""
    data, strings = kept
    return _SharingUnpickler(io.BytesIO(data), strings).load()


def fresh_copy(model: Any, share_names: Optional[Callable[[list], list]] = None) -> Any:
    """An identical copy of `model` whose attribute loads stay on the fast path, holding the
    very same strings, or those `share_names` gives for them (see `keep`).

    >>> from river import preprocessing
    >>> scaler = preprocessing.StandardScaler()
    >>> scaler.learn_one({"clicks": 1.0})
    >>> copy = fresh_copy(scaler)
    >>> copy is scaler, next(iter(copy.means)) is next(iter(scaler.means)), copy.means == scaler.means
    (False, True, True)
    """
    return copy_of(keep(model, share_names))
