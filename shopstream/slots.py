"""The mechanics of the models an engine runs side by side on the same events.

Every slot predicts every event and is scored on every resolved prediction:

- the *champion* learns, and its predictions are the ones published;
- a *challenger* learns too; it is only measured, until it is promoted;
- the *baseline* is the bootstrap model frozen as it came out of the offline stage: it
  predicts and never learns, so champion minus baseline is what online learning gains.

Here: a slot (`ModelSlot`: model, role, scores, drift detector, last good state), a
challenger's pairs with the champion (`PairedLossTest`) and the paired statistics
(`delong`, `paired_loss`). When a challenger replaces the champion, and which models run,
is the line-up's policy (`lineup.py`).

>>> import random
>>> rng = random.Random(1); test = PairedLossTest(window=2000)
>>> for _ in range(2000):
...     y = rng.random() < 0.2
...     truth = (1.0 if y else 0.0) + rng.gauss(0, 1)
...     test.update(y, truth + rng.gauss(0, 1.5), truth)   # champion, challenger (sharper)
>>> test.n, test.auc()[1] > 3
(2000, True)
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from typing import cast

import numpy as np
from river import drift

from . import model_state
from .delayed import FakeNegativeWeighted
from .scoring import Scoreboard

ROLES = ("champion", "challenger", "baseline")


def log_loss(y_true: bool, p_true: float) -> float:
    p = min(max(p_true, 1e-15), 1 - 1e-15)  # River's clamp
    return -math.log(p) if y_true else -math.log(1.0 - p)


def delong(y, a, b) -> tuple[float, float]:
    """Exact ROC AUC of scores `b` minus that of `a` on the same labels `y` (ties half), and
    DeLong's z for it (the paired variance from each prediction's placement value)."""
    y = np.asarray(y, bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return 0.0, 0.0
    placements = []
    for scores in (np.asarray(a, float), np.asarray(b, float)):
        pos, neg = scores[y], scores[~y]
        sorted_pos, sorted_neg = np.sort(pos), np.sort(neg)
        # each positive: the share of negatives below it; each negative: of positives above it
        below = np.searchsorted(sorted_neg, pos, "left") + np.searchsorted(sorted_neg, pos, "right")
        above = np.searchsorted(sorted_pos, neg, "left") + np.searchsorted(sorted_pos, neg, "right")
        placements.append((below / (2 * n), 1.0 - above / (2 * m)))
    (v10a, v01a), (v10b, v01b) = placements
    diff = float(v10b.mean() - v10a.mean())
    variance = float(np.var(v10b - v10a, ddof=1) / m + np.var(v01b - v01a, ddof=1) / n)
    return diff, diff / math.sqrt(variance) if variance > 0 else 0.0


def paired_loss(y, a, b) -> tuple[float, float]:
    """Mean log loss of `a` minus that of `b` (> 0: `b` is better) and its paired z."""
    y = np.asarray(y, bool)
    qa = np.clip(np.asarray(a, float), 1e-15, 1 - 1e-15)
    qb = np.clip(np.asarray(b, float), 1e-15, 1 - 1e-15)
    d = np.where(y, np.log(qb) - np.log(qa), np.log1p(-qb) - np.log1p(-qa))
    if len(d) < 2:
        return 0.0, 0.0
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    return mean, mean / (sd / math.sqrt(len(d))) if sd > 0 else 0.0


class PairedLossTest:
    """A challenger's last `window` resolved predictions paired with the champion's on the
    same events (label, champion's P(True), challenger's P(True)), in ring buffers. An
    update appends to a pending array, stored in the rings at the next read (or once a window
    is pending): the same rings as storing each at once. The tests run only when the policy checks.
    (Pending as three doubles an update in one ``array('d')``, not a tuple each: tuples waiting
    there are objects the garbage collector counts, and a collection every 700 of them cost
    the shop features' second slot about 1 microsecond per event.)"""

    def __init__(self, window: int = 2000):
        self.window = window
        self._y = np.zeros(window, bool)
        self._champion = np.zeros(window)
        self._challenger = np.zeros(window)
        self._next = 0
        self._n = 0
        self._pending = array("d")   # y (0.0, 1.0), champion, challenger: the pairs not yet in the rings
        self._limit = 3 * window     # a window of them pending: stored (not in checkpoints)

    @property
    def n(self) -> int:
        self._store_pending()
        return self._n

    @property
    def positives(self) -> int:
        self._store_pending()
        return int(self._y[:self._n].sum())

    def update(self, y_true: bool, p_champion: float, p_challenger: float) -> None:
        pending = self._pending
        pending.append(1.0 if y_true else 0.0)
        pending.append(p_champion)
        pending.append(p_challenger)
        if len(pending) >= self._limit:
            self._store_pending()

    def _store_pending(self) -> None:
        pending = self._pending
        if pending:
            self._pending = array("d")
            triples = np.frombuffer(pending, dtype=np.float64).reshape(-1, 3)
            # at most a window: each lands where `update` put it one by one
            self._store(triples[:, 0] != 0.0, triples[:, 1], triples[:, 2])

    def extend(self, y, p_champion, p_challenger) -> None:
        """`update` for each pair in order, at once (what a benchmark streams between checks)."""
        self._store_pending()
        self._store(y, p_champion, p_challenger)

    def _store(self, y, p_champion, p_challenger) -> None:
        y, a, b = np.asarray(y, bool)[-self.window:], np.asarray(p_champion, float)[-self.window:], \
            np.asarray(p_challenger, float)[-self.window:]
        at = (self._next + np.arange(len(y))) % self.window
        self._y[at], self._champion[at], self._challenger[at] = y, a, b
        self._next = (self._next + len(y)) % self.window
        self._n = min(self.window, self._n + len(y))

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._store_pending()
        n = self._n
        return self._y[:n], self._champion[:n], self._challenger[:n]

    def z(self) -> float:
        """Paired z of the log-loss differences: > 0 when the challenger's loss is lower."""
        return paired_loss(*self.pairs())[1]

    def auc(self) -> tuple[float, float]:
        """The challenger's exact ROC AUC minus the champion's on the window, and DeLong's z."""
        return delong(*self.pairs())

    def __getstate__(self):
        self._store_pending()   # checkpoints hold the rings as they always did
        state = dict(self.__dict__)
        del state["_pending"], state["_limit"]
        return state

    def __setstate__(self, state):
        if "_diffs" in state:  # a checkpoint from before the pairs were kept: start the window over
            self.__init__(state["window"])
        else:
            model_state.restore_attributes(self, state)
            self._pending = array("d")
            self._limit = 3 * self.window


class ModelSlot:
    """One model the engine runs on every event: its role, scores and drift detector.

    `provisional`: whether the engine has the model learn each new prediction at once as a
    provisional negative (a delayed-feedback model that learns, `delayed.py`), decided whenever
    `model` or `learn` is set (`__setattr__`), not at every prediction; never checkpointed.

    `share_names`: the feature set's (set by the engine, never checkpointed): the copies the slot
    runs hold the str objects its events bring (`model_state.keep`)."""

    provisional = False
    share_names = None

    def __init__(self, name: str, model, role: str = "champion", version: str = "fresh",
                 learn: bool = True, metric_window: int = 1000, drift_delta: float = 1e-6, share_names=None):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.name = name
        self.model = model
        self.role = role
        self.version = version
        self.learn = learn and role != "baseline"
        self.scores = Scoreboard(metric_window)
        # A small delta: shops have daily cycles that ADWIN's default (0.002) flags as drift.
        self.drift = drift.ADWIN(delta=drift_delta)
        self.drift_detections = 0
        self.comparison: PairedLossTest | None = None  # vs the champion, for challengers
        self.resets: dict[str, int] = {}  # reason -> times the model went back to its last good state
        if share_names is not None:
            self.share_names = share_names
        self.keep_as_good()

    def clear_scores(self) -> None:
        """Start the slot's scores over (same rolling window): what it scores from now on."""
        self.scores = Scoreboard(cast(int, self.scores.rolling.window))

    def keep_as_good(self) -> None:
        """Remember the model as it is now as the state to return to if it is poisoned, and
        run a copy of it from now on: pickling the model asked for its objects' ``__dict__``,
        which on CPython 3.11-3.12 slows its every attribute load for good; the copy, made by
        `model_state`, keeps them fast and holds the same state bit for bit. So a slot always
        runs its own copy of a model handed to it (never the caller's object)."""
        self._good = model_state.keep(self.model, self.share_names)   # (in this process only: never pickled)
        self.model = model_state.copy_of(self._good)

    def refresh(self) -> None:
        """Run an identical copy of the model whose attribute loads are fast again (after
        something pickled it: a checkpoint; see `keep_as_good`), and of what scores it."""
        self.model = model_state.fresh_copy(self.model, self.share_names)
        self._refresh_scoring()

    def _refresh_scoring(self) -> None:
        """Identical copies of the scores, the drift detector and the comparison, whose attribute
        loads are fast again: a checkpoint pickled them (the scores fold what is pending first,
        the comparison stores its pending pairs: what a read does, the same numbers after)."""
        self.scores = model_state.fresh_copy(self.scores)
        self.drift = model_state.fresh_copy(self.drift)
        if self.comparison is not None:
            self.comparison = model_state.fresh_copy(self.comparison)

    def reset(self, reason: str) -> None:
        """Back to the last good state (the last checkpoint's, or the start's), counted by reason."""
        self.model = model_state.copy_of(self._good)
        self.resets[reason] = self.resets.get(reason, 0) + 1

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name == "model" or name == "learn":
            object.__setattr__(self, "provisional", bool(getattr(self, "learn", False))
                               and isinstance(getattr(self, "model", None), FakeNegativeWeighted))

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_good"]  # the checkpoint holds the model once; the restored model is the good one
        state.pop("provisional", None)   # decided again as the restored slot keeps its model
        state.pop("share_names", None)   # the engine's feature set's, set again by the engine
        return state

    def __setstate__(self, state):
        model_state.restore_attributes(self, state)
        if "resets" not in state:
            self.resets = {}
        self.keep_as_good()
        self._refresh_scoring()   # restored by pickle, their attribute loads are slow (see refresh)

    def __repr__(self) -> str:
        return f"ModelSlot({self.name!r}, role={self.role!r}, version={self.version!r})"


def model_is_finite(model, depth: int = 3) -> bool:
    """False if a number a model keeps (weights, intercepts, scaler statistics) is NaN or
    infinite. Reads River's linear models, scalers and pipelines, and numpy arrays;
    models it cannot read (trees) are judged by their predictions instead.

    >>> from river import linear_model
    >>> model = linear_model.LogisticRegression()
    >>> model.learn_one({"a": 1.0}, True); model_is_finite(model)
    True
    >>> model._weights["a"] = float("nan"); model_is_finite(model)
    False
    """
    if depth < 0:
        return True
    for value in vars(model).values() if hasattr(model, "__dict__") else ():
        if isinstance(value, float):
            if not math.isfinite(value):
                return False
        elif isinstance(value, np.ndarray):
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return False
        elif isinstance(value, Mapping) or type(value).__name__ == "VectorDict":
            for item in value.values():
                if isinstance(item, float):
                    if not math.isfinite(item):
                        return False
                elif hasattr(item, "__dict__") and not model_is_finite(item, depth - 1):
                    return False  # a pipeline's steps
        elif hasattr(value, "_weights") and not model_is_finite(value, depth - 1):
            return False
        elif hasattr(value, "learn_one") and hasattr(value, "__dict__") and not model_is_finite(value, depth - 1):
            return False  # a wrapped model (delayed.FakeNegativeWeighted's pipeline)
    return True
