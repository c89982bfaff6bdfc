"""Binary classification metrics over resolved predictions, cumulative or rolling.

Accuracy, precision, recall and F1 come from confusion counts with River's own
formulas; ROC AUC is River's 10-threshold ROCAUC kept as two histograms (one bisect
per update instead of ten confusion-matrix updates); log loss is River's object.
Values therefore equal what `river.evaluate.progressive_val_score` reports.

>>> board = BinaryScores(window=2)
>>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.4)]:
...     board.update(y, p, p > 0.5)
>>> board.counts(), round(board.values()["accuracy"], 3)
((0, 0, 1, 1), 0.5)
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from typing import Optional

from river import metrics
from scipy import integrate

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
_LOW, _HIGH = 1e-15, 1 - 1e-15   # River's LogLoss clamps probabilities to these


def _log_loss(y_true: bool, p_true: float) -> float:
    """River's `LogLoss._eval` on a float, inline (the same operations, the same bits)."""
    p_true = max(min(p_true, _HIGH), _LOW)
    return -math.log(p_true) if y_true else -math.log(1 - p_true)


class ThresholdROCAUC:
    """River's `metrics.ROCAUC` (same thresholds, same integration, same value),
    updated in O(log n_thresholds)."""

    def __init__(self, n_thresholds: int = 10):
        thresholds = [i / (n_thresholds - 1) for i in range(n_thresholds)]
        thresholds[0] -= 1e-7
        thresholds[-1] += 1e-7
        self.thresholds = thresholds
        # bucket k holds the scores above exactly k thresholds
        self.positives = [0] * (n_thresholds + 1)
        self.negatives = [0] * (n_thresholds + 1)

    def update(self, y_true: bool, p_true: float, step: int = 1) -> None:
        bucket = bisect_left(self.thresholds, p_true)
        if y_true:
            self.positives[bucket] += step
        else:
            self.negatives[bucket] += step

    def get(self) -> float:
        n_positive, n_negative = sum(self.positives), sum(self.negatives)
        tprs, fprs = [], []
        for i in range(len(self.thresholds)):
            tp, fp = sum(self.positives[i + 1:]), sum(self.negatives[i + 1:])
            tprs.append(tp / n_positive if n_positive else 0.0)
            fprs.append(fp / n_negative if n_negative else 0.0)
        return float(-integrate.trapezoid(x=fprs, y=tprs))


class BinaryScores:
    """Metrics over all resolved predictions, or over the last `window` of them."""

    def __init__(self, window: Optional[int] = None):
        self.window = window
        self._recent: deque | None = deque() if window else None
        self.tp = self.fp = self.tn = self.fn = 0
        self.roc_auc = ThresholdROCAUC()
        self.log_loss = metrics.LogLoss()

    def __len__(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def update(self, y_true: bool, p_true: float, y_pred: bool) -> None:
        self._count(y_true, y_pred, 1)
        self.roc_auc.update(y_true, p_true)
        # River's LogLoss.update (its Mean.update with w=1.0), without four calls per update.
        mean = self.log_loss._mean
        mean.n += 1.0
        mean._mean += (1.0 / mean.n) * (_log_loss(y_true, p_true) - mean._mean)
        recent = self._recent
        if recent is not None:
            recent.append((y_true, p_true, y_pred))
            if len(recent) > (self.window or 0):
                old_y, old_p, old_pred = recent.popleft()
                self._count(old_y, old_pred, -1)
                self.roc_auc.update(old_y, old_p, -1)
                mean.n -= 1.0   # River's LogLoss.revert (its Mean.revert with w=1.0)
                if mean.n < 0:
                    raise ValueError("Cannot go below 0")
                elif mean.n == 0:
                    mean._mean = 0.0
                else:
                    mean._mean -= (1.0 / mean.n) * (_log_loss(old_y, old_p) - mean._mean)

    def _count(self, y_true: bool, y_pred: bool, step: int) -> None:
        if y_pred:
            if y_true:
                self.tp += step
            else:
                self.fp += step
        elif y_true:
            self.fn += step
        else:
            self.tn += step

    def counts(self) -> tuple[int, int, int, int]:
        """(tp, fp, tn, fn)"""
        return self.tp, self.fp, self.tn, self.fn

    def values(self) -> dict[str, float]:
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        n = tp + fp + tn + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return {
            "accuracy": (tp + tn) / n if n else 0.0,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "roc_auc": self.roc_auc.get(),
            "log_loss": self.log_loss.get(),
        }


class Scoreboard:
    """Cumulative and rolling scores of one model's resolved predictions."""

    def __init__(self, window: int = 1000):
        self.cumulative = BinaryScores()
        self.rolling = BinaryScores(window)

    def update(self, y_true: bool, p_true: float, y_pred: bool) -> None:
        self.cumulative.update(y_true, p_true, y_pred)
        self.rolling.update(y_true, p_true, y_pred)
