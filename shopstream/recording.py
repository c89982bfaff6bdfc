"""Record what an engine predicted and learned, in its own order, for offline scoring
(the demo's in-run comparison with batch retraining, and benchmarks/quality.py).

`record(engine)` makes that engine (not its class) keep, per prediction: its features,
when it was made, every slot's P(True), the published slot, its session, and once
resolved its label and when. Model calls are listed in order so any model can be
replayed on exactly the calls the engine made (`Recording.replay`).

>>> from shopstream.engine import Engine
>>> from shopstream.events import Event
>>> engine = Engine.fresh("logreg", "raw"); rec = record(engine)
>>> engine.process(Event(1.6e9, "view", "p", "u", "s", features={"a": 1.0}, label=True))
0.5
>>> rec.ys, rec.ops, rec.sessions
([True], [0, -1], ['s'])
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .engine import Engine


class Recording:
    """The engine's predictions, labels and model calls, in the engine's own order."""

    def __init__(self) -> None:
        self.xs: list = []
        self.t_pred: list = []
        self.outputs: list = []      # per prediction: every slot's P(True) when it was made
        self.champion: list = []     # per prediction: the slot index whose prediction was published
        self.sessions: list = []
        self.ys: list = []
        self.t_res: list = []
        self.ops: list = []          # i >= 0 predicts xs[i]; ~i learns xs[i] with ys[i]

    def arrays(self) -> dict:
        """Labels, times and published P(True) as numpy arrays (unresolved: y False, t_res inf)."""
        return {"y": np.array([bool(v) for v in self.ys]),
                "resolved": np.array([v is not None for v in self.ys]),
                "t_pred": np.array(self.t_pred, float),
                "t_res": np.array([np.inf if v is None else v for v in self.t_res], float),
                "published": np.array([out[c] for out, c in zip(self.outputs, self.champion)], float),
                "sessions": np.array(self.sessions, object)}

    def replay(self, model, provisional: Optional[Callable] = None) -> np.ndarray:
        """One model on the recorded calls: its P(True) per prediction. `provisional(model, x)`
        runs right after each prediction (delayed-feedback learning; see `delayed.py`)."""
        p = np.full(len(self.xs), np.nan)
        xs, ys = self.xs, self.ys
        for op in self.ops:
            if op >= 0:
                p[op] = model.predict_proba_one(xs[op]).get(True, 0.0)
                if provisional is not None:
                    provisional(model, xs[op])
            else:
                model.learn_one(xs[~op], ys[~op])
        return p


def record(engine: Engine, before_predict: Optional[Callable] = None) -> Recording:
    """Make `engine` record into a new `Recording`; `before_predict(engine, event)` runs before
    each prediction (the quality benchmark adds its frozen copy there)."""
    rec = Recording()

    class RecordingEngine(type(engine)):  # type: ignore[misc]
        def _predict(self, event, ref):
            if before_predict is not None:
                before_predict(self, event)
            prediction = super()._predict(event, ref)
            i = len(rec.xs)
            prediction.ref = i
            rec.ops.append(i)
            rec.xs.append(prediction.x)
            rec.t_pred.append(event.event_time)
            rec.outputs.append([p for p, _ in prediction.outputs])
            rec.champion.append(prediction.champion)
            rec.sessions.append(event.user_session)
            rec.ys.append(None)
            rec.t_res.append(None)
            return prediction

        def _resolve(self, prediction, y_true, now):
            i = prediction.ref
            rec.ys[i], rec.t_res[i] = y_true, now
            rec.ops.append(~i)
            super()._resolve(prediction, y_true, now)

    engine.__class__ = RecordingEngine
    return rec
