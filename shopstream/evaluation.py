"""Offline scoring of recorded predictions: exact ROC AUC (pooled or within blocks such as
days), log loss, a session bootstrap for the interval of a difference, and a batch
logistic regression retrained every midnight, all in numpy/scipy (runtime dependencies),
so the demo can measure in its own run what the quality benchmark measures.

River's `ROCAUC` (what the engine exports) integrates 10 thresholds; at a 12% base rate
most scores fall in its first buckets. Everything here is the exact Mann-Whitney AUC,
ties counted half.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1, 0, 1], bool); p = np.array([.1, .4, .35, .8, .2, .9])
>>> round(roc_auc(y, p), 4), round(log_loss(y, p), 4)
(0.8889, 0.3696)
>>> round(roc_auc(y, p, blocks=np.array([0, 0, 0, 1, 1, 1])), 4)   # 3 of the 4 same-block pairs
0.75
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import optimize, special

DAY = 86400.0
_LOW, _HIGH = 1e-15, 1 - 1e-15   # River's LogLoss clamp


def log_loss(y, p, weights=None) -> float:
    q = np.clip(np.asarray(p, float), _LOW, _HIGH)
    losses = -np.where(np.asarray(y, bool), np.log(q), np.log1p(-q))
    return float(np.average(losses, weights=weights))


class RankedScores:
    """Scores sorted once (within blocks), so the AUC under many weightings (bootstrap
    replicates) costs O(n) each. `blocks`: only positive/negative pairs of the same
    block count (within-day AUC); None: all pairs (pooled AUC)."""

    def __init__(self, y, p, blocks=None):
        y = np.asarray(y, bool)
        p = np.asarray(p, float)
        b = np.zeros(len(p), np.int64) if blocks is None else np.asarray(blocks, np.int64)
        self.order = np.lexsort((p, b))
        ps, bs = p[self.order], b[self.order]
        new_group = np.ones(len(ps), bool)
        new_group[1:] = (ps[1:] != ps[:-1]) | (bs[1:] != bs[:-1])
        self.group = np.cumsum(new_group) - 1            # tie group of each sorted score
        starts = np.flatnonzero(new_group)
        self.group_block = bs[starts]
        new_block = np.ones(len(starts), bool)
        new_block[1:] = self.group_block[1:] != self.group_block[:-1]
        self.block_start = np.maximum.accumulate(np.where(new_block, np.arange(len(starts)), 0))
        self.positive = y[self.order]
        self.n_groups = len(starts)

    def auc(self, weights=None) -> float:
        w = np.ones(len(self.order)) if weights is None else np.asarray(weights, float)[self.order]
        pos = np.bincount(self.group, weights=w * self.positive, minlength=self.n_groups)
        neg = np.bincount(self.group, weights=w * ~self.positive, minlength=self.n_groups)
        below = np.cumsum(neg) - neg                          # negatives in lower groups, all blocks
        below -= (np.cumsum(neg) - neg)[self.block_start]     # ... of this block only
        wins = float(np.sum(pos * (below + 0.5 * neg)))
        per_block_pos = np.bincount(self.group_block, weights=pos)
        per_block_neg = np.bincount(self.group_block, weights=neg)
        pairs = float(np.sum(per_block_pos * per_block_neg))
        return wins / pairs if pairs else math.nan


def roc_auc(y, p, blocks=None, weights=None) -> float:
    """Exact ROC AUC (ties half); with `blocks`, over positive/negative pairs of the same block."""
    return RankedScores(y, p, blocks).auc(weights)


@dataclass(frozen=True)
class Difference:
    """A - B on one metric, with a bootstrap interval."""

    value: float
    low: float
    high: float

    def at_least(self, threshold: float) -> bool:
        """Met only when the whole interval is at or above `threshold`."""
        return self.low >= threshold

    def __str__(self) -> str:
        return f"{self.value:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def session_bootstrap(y, p_a, p_b, sessions, blocks=None, n_boot: int = 200, seed: int = 0,
                      level: float = 0.95) -> dict[str, Difference]:
    """A minus B on pooled ROC AUC, within-block ROC AUC (if `blocks`) and log loss (B minus
    A, so positive is A better), each with a percentile interval from resampling *sessions*
    with replacement (predictions of one session are not independent)."""
    y = np.asarray(y, bool)
    _, codes = np.unique(np.asarray(sessions), return_inverse=True)
    n_sessions = int(codes.max()) + 1 if len(codes) else 0
    ranked = {"roc_auc": (RankedScores(y, p_a), RankedScores(y, p_b))}
    if blocks is not None:
        ranked["roc_auc_within_block"] = (RankedScores(y, p_a, blocks), RankedScores(y, p_b, blocks))
    qa = np.clip(np.asarray(p_a, float), _LOW, _HIGH)
    qb = np.clip(np.asarray(p_b, float), _LOW, _HIGH)
    loss_gain = -np.where(y, np.log(qb), np.log1p(-qb)) + np.where(y, np.log(qa), np.log1p(-qa))

    def metrics(w):
        out = {name: a.auc(w) - b.auc(w) for name, (a, b) in ranked.items()}
        out["log_loss_reduction"] = float(np.average(loss_gain, weights=w))
        return out

    point = metrics(None)
    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {name: [] for name in point}
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, n_sessions, n_sessions), minlength=n_sessions)
        for name, value in metrics(counts[codes].astype(float)).items():
            draws[name].append(value)
    tail = (1 - level) / 2 * 100
    return {name: Difference(point[name], float(np.nanpercentile(draws[name], tail)),
                             float(np.nanpercentile(draws[name], 100 - tail))) for name in point}


class BatchLogisticRegression:
    """L2-regularised logistic regression fitted exactly (L-BFGS) on standardised features:
    scikit-learn's `StandardScaler` + `LogisticRegression(C=1)` objective, in scipy."""

    def __init__(self, c: float = 1.0, max_iter: int = 1000):
        self.c = c
        self.max_iter = max_iter
        self.coef: np.ndarray = np.zeros(0)
        self.intercept = 0.0
        self.mean: np.ndarray = np.zeros(0)
        self.scale: np.ndarray = np.zeros(0)

    def fit(self, X, y, start: Optional["BatchLogisticRegression"] = None) -> "BatchLogisticRegression":
        """Fit on `X`, `y`; from `start`'s solution (yesterday's fit: far fewer steps) if given."""
        X = np.asarray(X, float)
        t = np.asarray(y, float)
        self.mean = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        Z = (X - self.mean) / self.scale
        n_features = Z.shape[1]

        def loss(theta):
            w, b = theta[:-1], theta[-1]
            logit = Z @ w + b
            value = np.sum(np.logaddexp(0.0, logit) - t * logit) + 0.5 * (w @ w) / self.c
            residual = special.expit(logit) - t
            return value, np.append(Z.T @ residual + w / self.c, residual.sum())

        theta = np.zeros(n_features + 1)
        if start is not None and len(start.coef) == n_features:
            # the same function of the raw features, in today's standardisation
            theta[:-1] = start.coef * self.scale / start.scale
            theta[-1] = start.intercept + float(np.sum(start.coef * (self.mean - start.mean) / start.scale))
        result = optimize.minimize(loss, theta, jac=True, method="L-BFGS-B",
                                   options={"maxiter": self.max_iter})
        self.coef, self.intercept = result.x[:-1], float(result.x[-1])
        return self

    def predict_proba(self, X) -> np.ndarray:
        p = special.expit(((np.asarray(X, float) - self.mean) / self.scale) @ self.coef + self.intercept)
        return np.column_stack([1 - p, p])


def nightly_batch(X, y, t_pred, t_res, first_midnight: float, make: Callable = BatchLogisticRegression,
                  window_days: Optional[float] = None, max_train: Optional[int] = None) -> np.ndarray:
    """P(True) per prediction from a model refitted at each midnight (from `first_midnight`) on
    the labels *resolved* by then, predicting that day's predictions; NaN before the first
    refit. `window_days`: only labels whose prediction was made in the last N days (a
    sliding window); `max_train`: only the newest N resolved labels."""
    X = np.asarray(X, float)
    y = np.asarray(y, bool)
    t_pred, t_res = np.asarray(t_pred, float), np.asarray(t_res, float)
    p = np.full(len(y), np.nan)
    if not len(y):
        return p
    previous = None
    midnight = first_midnight
    while midnight <= t_pred.max():
        today = (t_pred >= midnight) & (t_pred < midnight + DAY)
        if today.any():
            known = t_res <= midnight
            if window_days is not None:
                known &= t_pred >= midnight - window_days * DAY
            train = np.flatnonzero(known)
            if max_train is not None:
                train = train[np.argsort(t_res[train], kind="stable")[-max_train:]]  # the newest labels
            if len(train) and y[train].any() and not y[train].all():
                model = make()
                if isinstance(model, BatchLogisticRegression):
                    model.fit(X[train], y[train], start=previous)
                    previous = model
                else:
                    model.fit(X[train], y[train])
                p[today] = model.predict_proba(X[today])[:, 1]
        midnight += DAY
    return p


def vectorize(xs: list[dict]) -> tuple[np.ndarray, list[str]]:
    """Feature dicts as a dense matrix (missing features 0), columns in sorted name order."""
    names = sorted({name for x in xs for name in x})
    index = {name: i for i, name in enumerate(names)}
    X = np.zeros((len(xs), len(names)))
    for row, x in enumerate(xs):
        for name, value in x.items():
            X[row, index[name]] = float(value)
    return X, names


def versus_nightly_batch(history, stream, n_boot: int = 100, seed: int = 0) -> dict:
    """The engine's published predictions on `stream` (a `recording.Recording`) against a
    batch logistic regression refitted every midnight on every label resolved by then
    (`history`'s, a recording of the same features over the events before the stream, and
    the stream's own), scored on the same resolved predictions from the first midnight of
    the stream: exact ROC AUC pooled and within each day, and log loss, each difference
    (online minus batch; for log loss batch minus online) with a 95% session-bootstrap interval."""
    xs = history.xs + stream.xs
    h, s = history.arrays(), stream.arrays()
    y = np.concatenate([h["y"], s["y"]])
    t_pred = np.concatenate([h["t_pred"], s["t_pred"]])
    t_res = np.concatenate([h["t_res"], s["t_res"]])
    resolved = np.concatenate([h["resolved"], s["resolved"]])
    keep = np.flatnonzero(resolved)
    X, _ = vectorize([xs[i] for i in keep])
    if not len(s["t_pred"]):
        raise ValueError("the stream made no predictions")
    first_midnight = math.ceil(s["t_pred"].min() / DAY) * DAY
    batch = nightly_batch(X, y[keep], t_pred[keep], t_res[keep], first_midnight)
    in_stream = keep >= len(history.xs)
    scored = in_stream & (t_pred[keep] >= first_midnight) & ~np.isnan(batch)
    rows = keep[scored] - len(history.xs)
    y_s, online, offline = s["y"][rows], s["published"][rows], batch[scored]
    if y_s.all() or not y_s.any():
        raise ValueError("too few resolved predictions after the stream's first midnight to compare")
    days = np.floor(s["t_pred"][rows] / DAY).astype(np.int64)
    diffs = session_bootstrap(y_s, online, offline, s["sessions"][rows], blocks=days, n_boot=n_boot, seed=seed)
    return {
        "scored_predictions": int(len(rows)), "positives": int(y_s.sum()), "days": int(len(np.unique(days))),
        "online_champion": {"roc_auc": round(roc_auc(y_s, online), 4),
                            "roc_auc_within_day": round(roc_auc(y_s, online, days), 4),
                            "log_loss": round(log_loss(y_s, online), 4)},
        "nightly_batch_logistic_regression": {"roc_auc": round(roc_auc(y_s, offline), 4),
                                              "roc_auc_within_day": round(roc_auc(y_s, offline, days), 4),
                                              "log_loss": round(log_loss(y_s, offline), 4)},
        "online_minus_batch_95": {name: [round(d.value, 4), round(d.low, 4), round(d.high, 4)]
                                  for name, d in diffs.items()},
    }
