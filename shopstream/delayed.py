"""Delayed-feedback learning: learn from a view at once instead of after its 30-minute window.

A view's label is known when its purchase arrives or when its attribution window closes.
Waiting for the window means the model learns every negative 30 minutes late; during an
incident (purchases stop) that is 30 minutes of predictions made on the old shop.

`FakeNegativeWeighted` (Ktena et al., "Addressing delayed feedback for continuous training
with neural networks in CTR prediction", RecSys 2019) learns every prediction as a
*provisional negative* as soon as it is made (`learn_provisional`, called by the engine),
and learns it again as a positive when its purchase arrives. The stream it learns from
then holds every positive twice (once as a fake negative), so the observed probability is
p / (1 + p); importance weights undo that: positives weigh 1 + p, negatives
(1 - p)(1 + p), p being the model's own current estimate (not differentiated through).
A window that closes without a purchase needs nothing more: its negative was learned.

Scoring is unchanged: the engine scores each prediction against its final label only.

>>> from shopstream.models import build_model
>>> model = build_model("logreg_adagrad_fnw")
>>> model.learn_provisional({"a": 1.0}); model.predict_proba_one({"a": 1.0})[True] < 0.5
True
>>> model.learn_one({"a": 1.0}, False)   # the window closed: already learned, nothing to do
>>> model.n_provisional, model.n_corrected
(1, 0)
"""

from __future__ import annotations


class FakeNegativeWeighted:
    """A River classifier (one that takes a sample weight `w` in `learn_one`) trained with
    fake-negative weighting."""

    def __init__(self, model):
        self.model = model
        self.n_provisional = 0
        self.n_corrected = 0

    def predict_proba_one(self, x) -> dict:
        return self.model.predict_proba_one(x)

    def predict_one(self, x):
        proba = self.predict_proba_one(x)
        return max(proba, key=proba.get) if proba else None

    def _p(self, x) -> float:
        return min(max(self.model.predict_proba_one(x).get(True, 0.0), 0.0), 1.0)

    def learn_provisional(self, x) -> None:
        """A new prediction: learned at once as a negative, weighted (1 - p)(1 + p)."""
        p = self._p(x)
        self.model.learn_one(x, False, w=(1.0 - p) * (1.0 + p))
        self.n_provisional += 1

    def learn_one(self, x, y, w: float = 1.0) -> None:
        """The final label of an example learned provisionally: a purchase is learned as a
        positive weighted 1 + p; a negative was learned already."""
        if y:
            self.model.learn_one(x, True, w=w * (1.0 + self._p(x)))
            self.n_corrected += 1

    def __getitem__(self, key):
        return self.model[key]  # a pipeline's steps, as for the other catalog models

    def __repr__(self) -> str:
        return f"FakeNegativeWeighted({self.model!r})"
