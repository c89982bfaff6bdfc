"""The models an engine runs side by side on the same events, and how one replaces another.

Every slot predicts every event and is scored on every resolved prediction:

- the *champion* learns, and its predictions are the ones published;
- a *challenger* learns too; it is only measured, until it is promoted;
- the *baseline* is the bootstrap model frozen as it came out of the offline stage: it
  predicts and never learns, so champion minus baseline is what online learning gains.

A challenger replaces the champion when, over the same last `window` resolved
predictions, its ROC AUC is higher by `margin` *and* a one-sided paired z-test on the
per-prediction log-loss differences says it is better (z above `z_critical`, 3.09 is
p < 0.001) with at least `min_resolved` pairs: one noisy window is not enough.

>>> test = PairedLossTest(window=500)
>>> for i in range(500):
...     test.update(0.7, 0.5 + (i % 2) * 0.1)    # the challenger's loss is lower
>>> test.n, round(test.z(), 1) > 3
(500, True)
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from river import drift

from .scoring import Scoreboard

ROLES = ("champion", "challenger", "baseline")


def log_loss(y_true: bool, p_true: float) -> float:
    p = min(max(p_true, 1e-15), 1 - 1e-15)  # River's clamp
    return -math.log(p) if y_true else -math.log(1.0 - p)


class PairedLossTest:
    """Paired differences (champion loss - challenger loss) over a sliding window."""

    def __init__(self, window: int = 2000):
        self.window = window
        self._diffs: deque = deque()
        self._sum = 0.0
        self._sum_sq = 0.0

    @property
    def n(self) -> int:
        return len(self._diffs)

    def update(self, champion_loss: float, challenger_loss: float) -> None:
        d = champion_loss - challenger_loss
        self._diffs.append(d)
        self._sum += d
        self._sum_sq += d * d
        if len(self._diffs) > self.window:
            old = self._diffs.popleft()
            self._sum -= old
            self._sum_sq -= old * old

    def z(self) -> float:
        """Mean difference in standard errors: > 0 when the challenger's loss is lower."""
        n = len(self._diffs)
        if n < 2:
            return 0.0
        mean = self._sum / n
        variance = max((self._sum_sq - n * mean * mean) / (n - 1), 1e-18)
        return mean / math.sqrt(variance / n)


@dataclass(frozen=True)
class PromotionPolicy:
    margin: float = 0.01         # rolling ROC AUC points the challenger must lead by
    min_resolved: int = 2000     # paired resolved predictions before any decision
    z_critical: float = 3.09     # one-sided p < 0.001
    window: int = 2000           # resolved predictions compared
    check_every: int = 250       # resolved predictions between checks


class ModelSlot:
    """One model the engine runs on every event: its role, scores and drift detector."""

    def __init__(self, name: str, model, role: str = "champion", version: str = "fresh",
                 learn: bool = True, metric_window: int = 1000, drift_delta: float = 1e-6):
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
        self.keep_as_good()

    def keep_as_good(self) -> None:
        """Remember the model as it is now as the state to return to if it is poisoned."""
        self._good = pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)

    def reset(self, reason: str) -> None:
        """Back to the last good state (the last checkpoint's, or the start's), counted by reason."""
        self.model = pickle.loads(self._good)
        self.resets[reason] = self.resets.get(reason, 0) + 1

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_good"]  # the checkpoint holds the model once; the restored model is the good one
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("resets", {})
        self.keep_as_good()

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
    return True
