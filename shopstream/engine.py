"""The predict-then-learn engine that the bootstrap and the workers both drive.

For each event, in order:

1. drop it if its ``event_id`` was seen recently (a redelivered duplicate);
2. advance event time; predictions whose window closed resolve *negative*;
3. an event carrying ``label`` is predicted, scored and learned at once;
   a purchase resolves the open predictions of its (session, product) *positive*;
   a view or cart is predicted and the prediction is recorded, still unlabelled;
4. fold the event into the feature state (after predicting: no leakage).

Resolving a prediction scores the probability recorded when it was made, then
learns from the features recorded then. With the ``raw`` features and the
``logreg`` model, a labelled stream gives exactly river.evaluate's numbers.

>>> from shopstream.events import Event
>>> engine = Engine.fresh("logreg", "raw")
>>> engine.process(Event(1.6e9, "view", "p", "u", "s", features={"a": 1.0}, label=True))
0.5
>>> engine.counts["learned"], len(engine.scores.cumulative)
(1, 1)
"""

from __future__ import annotations

import bisect
from typing import Optional

from .events import PREDICTION_POINTS, Event
from .features import build_features
from .labels import LabelJoiner, OpenPrediction
from .models import build_model
from .scoring import Scoreboard

#: Upper bounds (seconds of event time) of the label-delay histogram buckets.
LABEL_DELAY_BUCKETS = (0.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
COUNT_NAMES = ("consumed", "duplicate", "predicted", "unscored", "resolved", "learned")


class Engine:
    """One model's predict-then-learn state over one ordered stream (one partition)."""

    def __init__(self, model, features, *, model_name: str = "model", model_version: str = "fresh",
                 window: float = 1800.0, lateness: float = 0.0, max_open: int = 1_000_000,
                 metric_window: int = 1000, dedupe: int = 100_000, learn: bool = True):
        self.model = model
        self.features = features
        self.model_name = model_name
        self.model_version = model_version
        self.joiner = LabelJoiner(window=window, lateness=lateness, max_open=max_open)
        self.scores = Scoreboard(metric_window)
        self.learn = learn
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        # Cumulative counts per label-delay bucket, the last one is +Inf.
        self.label_delay_counts = [0] * (len(LABEL_DELAY_BUCKETS) + 1)
        self.label_delay_sum = 0.0
        self._dedupe = dedupe
        self._recent_ids: dict = {}

    @classmethod
    def fresh(cls, model_name: str, feature_set: str, seed: int = 42, **options) -> "Engine":
        """An untrained model from the catalog with empty feature state."""
        return cls(build_model(model_name, seed), build_features(feature_set),
                   model_name=model_name, **options)

    @property
    def open_predictions(self) -> int:
        return len(self.joiner)

    def process(self, event: Event, ref: object = None) -> Optional[float]:
        """Handle one validated event; return P(purchase) if it was predicted, else None.

        `ref` is kept with the open prediction (e.g. the Kafka offset) for tracing."""
        counts = self.counts
        counts["consumed"] += 1
        event_id = event.event_id
        if event_id is not None:
            recent = self._recent_ids
            if event_id in recent:
                counts["duplicate"] += 1
                return None
            recent[event_id] = None
            if len(recent) > self._dedupe:
                del recent[next(iter(recent))]

        t = event.event_time
        joiner = self.joiner
        for expired in joiner.advance(t):
            self._resolve(expired, False, t)

        p_true = None
        if event.label is not None:
            prediction = self._predict(event, ref)
            p_true = prediction.p_true
            self._resolve(prediction, event.label, t)
        elif event.event_type == "purchase":
            for bought in joiner.purchase((event.user_session, event.product_id), t):
                self._resolve(bought, True, t)
        elif event.event_type in PREDICTION_POINTS:
            prediction = self._predict(event, ref)
            if joiner.open(prediction):
                p_true = prediction.p_true
        self.features.learn(event)
        return p_true

    def _predict(self, event: Event, ref: object) -> OpenPrediction:
        x = self.features.transform(event)
        proba = self.model.predict_proba_one(x)
        self.counts["predicted"] += 1
        if proba:
            # River's predict_one is the argmax of predict_proba_one (ties: first key).
            y_pred = max(proba, key=proba.get)
            p_true = proba.get(True, 0.0)
        else:
            y_pred, p_true = None, 0.0
        return OpenPrediction((event.user_session, event.product_id), event.event_time,
                              x, p_true, y_pred, ref)

    def _resolve(self, prediction: OpenPrediction, y_true: bool, now: float) -> None:
        counts = self.counts
        counts["resolved"] += 1
        delay = now - prediction.event_time
        self.label_delay_counts[bisect.bisect_left(LABEL_DELAY_BUCKETS, delay)] += 1
        self.label_delay_sum += delay
        if prediction.y_pred is None:
            counts["unscored"] += 1  # river.evaluate skips empty predictions too
        else:
            self.scores.update(y_true, prediction.p_true, prediction.y_pred)
        if self.learn:
            self.model.learn_one(prediction.x, y_true)
            counts["learned"] += 1
        prediction.x = None  # learned: the features are no longer needed
