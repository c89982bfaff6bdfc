"""Binary classification metrics over resolved predictions, cumulative or rolling.

Accuracy, precision, recall and F1 come from confusion counts with River's own
formulas; ROC AUC is River's 10-threshold ROCAUC kept as two histograms; log loss is
River's object, updated with River's own operations. Values therefore equal what
`river.evaluate.progressive_val_score` reports.

Nothing is computed per event: `Scoreboard.update` appends the probability and the
confusion cell to two compact buffers (an ``array('d')`` and a ``bytearray``), and a read
(`values`, `counts`, a checkpoint) folds what is pending first: confusion counts and ROC
histograms with numpy, log loss in one tight loop doing River's float operations in
River's order (so its bits are River's). Metrics are read about once a second (the
worker's snapshot) and every `check_every` resolved predictions (promotion), so the fold
is amortised over hundreds or thousands of events.

>>> board = BinaryScores(window=2)
>>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.4)]:
...     board.update(y, p, p > 0.5)
>>> board.counts(), round(board.values()["accuracy"], 3)
((0, 0, 1, 1), 0.5)
"""

from __future__ import annotations

import math
import os
import threading
from array import array
from bisect import bisect_left
from collections import deque
from typing import Optional

import numpy as np
from river import metrics
from scipy import integrate

from . import model_state

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
_LOW, _HIGH = 1e-15, 1 - 1e-15   # River's LogLoss clamps probabilities to these
#: Pending updates folded at once past this many (bounds the buffers between two reads).
FOLD_EVERY = 8192
# A confusion cell as one byte: 2 * y_true + y_pred. tn, fp, fn, tp = 0, 1, 2, 3.
TN, FP, FN, TP = 0, 1, 2, 3
# Folds may come from another thread (the demo's scrapes read a live engine): one at a time.
# Appends need no lock: a cell is appended before its probability, and a fold takes only the
# first len(probabilities) of both buffers, each step one atomic array operation.
_FOLD_LOCK = threading.RLock()


def _new_lock() -> None:   # a forked checkpoint writer must not inherit a lock held by a thread
    global _FOLD_LOCK
    _FOLD_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_new_lock)


def _cell(y_true, y_pred) -> int:
    return (2 if y_true else 0) + (1 if y_pred else 0)


def _losses(p, cells) -> list[float]:
    """River's `LogLoss._eval` of many: its clamp (min, then max) and formula, the same bits.

    The clamp and ``1 - q`` in numpy (exact operations: the same floats as Python's), then
    ``math.log`` itself on each, as River calls it (numpy's own log may differ in the last bit)."""
    q = np.clip(np.asarray(p, dtype=np.float64), _LOW, _HIGH)   # a NaN stays NaN, as in River's min/max
    positive = (np.frombuffer(cells, dtype=np.uint8) if isinstance(cells, (bytes, bytearray))
                else np.asarray(cells, dtype=np.uint8)) >= FN   # y_true: the cell's 2 bit
    return [-x for x in map(math.log, np.where(positive, q, 1.0 - q).tolist())]


def _take(p: array, cells: bytearray) -> tuple[array, bytearray]:
    """Remove and return the complete pending updates (see `_FOLD_LOCK`)."""
    n = len(p)
    taken = p[:n], cells[:n]
    del p[:n]
    del cells[:n]
    return taken


class ThresholdROCAUC:
    """River's `metrics.ROCAUC` (same thresholds, same integration, same value), kept as
    two histograms of scores by the number of thresholds below them."""

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

    def add(self, p: np.ndarray, positive: np.ndarray, step: int = 1) -> None:
        """Many updates at once: `positive[i]` is y_true of score `p[i]` (bisect_left's buckets)."""
        buckets = np.searchsorted(np.asarray(self.thresholds), p, side="left")
        size = len(self.positives)
        pos = np.bincount(buckets[positive], minlength=size).tolist()
        neg = np.bincount(buckets[~positive], minlength=size).tolist()
        self.positives = [a + step * b for a, b in zip(self.positives, pos)]
        self.negatives = [a + step * b for a, b in zip(self.negatives, neg)]

    def get(self) -> float:
        n_positive, n_negative = sum(self.positives), sum(self.negatives)
        tprs, fprs = [], []
        for i in range(len(self.thresholds)):
            tp, fp = sum(self.positives[i + 1:]), sum(self.negatives[i + 1:])
            tprs.append(tp / n_positive if n_positive else 0.0)
            fprs.append(fp / n_negative if n_negative else 0.0)
        return float(-integrate.trapezoid(x=fprs, y=tprs))


class _Buffered:
    """Updates appended to two compact buffers (`_p`, `_cells`) and applied in bulk by
    `_apply` when read or when `FOLD_EVERY` are pending: one append per update on the hot path."""

    _p: array
    _cells: bytearray

    def update(self, y_true: bool, p_true: float, y_pred: bool) -> None:
        self._cells.append((2 if y_true else 0) + (1 if y_pred else 0))   # the cell first: see _take
        self._p.append(p_true)
        if len(self._p) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Apply the pending updates, exactly as that many `update`s one by one would have."""
        if self._p:
            with _FOLD_LOCK:
                self._apply(*_take(self._p, self._cells))

    def _apply(self, p: array, cells: bytearray) -> None:
        raise NotImplementedError


class BinaryScores(_Buffered):
    """Metrics over all resolved predictions, or over the last `window` of them.

    The state is River's (confusion counts, the ROC histograms, a `LogLoss`); `_recent`
    holds the window's probabilities and cells, compact, for the rolling reverts."""

    def __init__(self, window: Optional[int] = None):
        self.window = window
        self._recent: Optional[tuple[array, bytearray]] = (array("d"), bytearray()) if window else None
        self.tp = self.fp = self.tn = self.fn = 0
        self.roc_auc = ThresholdROCAUC()
        self.log_loss = metrics.LogLoss()
        self._p = array("d")        # pending: probabilities ...
        self._cells = bytearray()   # ... and their confusion cells

    def __len__(self) -> int:
        self.fold()
        return self.tp + self.fp + self.tn + self.fn

    def _apply(self, p: array, cells: bytearray) -> None:
        self.extend(p, cells)

    def extend(self, p_new: array, cells_new: bytearray, losses: Optional[list[float]] = None) -> None:
        """Apply many updates, in order (what `Scoreboard` hands both of its boards, with their
        log losses computed once)."""
        if not p_new:
            return
        mean = self.log_loss._mean
        n, m = mean.n, mean._mean
        recent = self._recent
        if losses is None:
            losses = _losses(p_new, cells_new)
        if recent is None:
            for loss in losses:   # River's Mean.update with w=1.0, in order
                n += 1.0
                m += (1.0 / n) * (loss - m)
            mean.n, mean._mean = n, m
            self._count(np.frombuffer(p_new, dtype=np.float64), np.frombuffer(cells_new, dtype=np.uint8), 1)
            return
        window = self.window or 0
        old = len(recent[1])
        p_all, cells_all = recent[0] + p_new, recent[1] + cells_new
        leaving = max(0, len(cells_all) - window)   # the oldest, reverted as the new arrive
        # Their losses: the window's oldest computed here, the new ones' already are (same values)
        from_old = min(leaving, old)
        left = _losses(recent[0][:from_old], recent[1][:from_old]) + losses[:leaving - from_old]
        # The first `filling` new ones fill the window; each later one makes the oldest leave
        filling = max(0, min(len(losses), window - old))
        for loss in losses[:filling]:
            n += 1.0
            m += (1.0 / n) * (loss - m)
        up = n + 1.0
        if up - 1.0 == n > 0:
            # A full window: each step takes n to n + 1 and back to n, so the two weights are the
            # same floats at every step (River's 1.0 / n of each), computed once
            w_in, w_out = 1.0 / up, 1.0 / n
            for loss, gone in zip(losses[filling:], left):
                m += w_in * (loss - m)
                m -= w_out * (gone - m)   # River's LogLoss.revert (its Mean.revert with w=1.0)
        else:
            for loss, gone in zip(losses[filling:], left):
                n += 1.0
                m += (1.0 / n) * (loss - m)
                n -= 1.0   # River's LogLoss.revert (its Mean.revert with w=1.0)
                if n > 0:
                    m -= (1.0 / n) * (gone - m)
                elif n == 0:
                    m = 0.0
                else:
                    raise ValueError("Cannot go below 0")
        mean.n, mean._mean = n, m
        self._recent = (p_all[leaving:], cells_all[leaving:])
        self._reset_counts()
        kept_p, kept_cells = self._recent
        self._count(np.frombuffer(kept_p, dtype=np.float64), np.frombuffer(kept_cells, dtype=np.uint8), 1)

    def _reset_counts(self) -> None:
        self.tp = self.fp = self.tn = self.fn = 0
        roc = self.roc_auc
        roc.positives = [0] * len(roc.positives)
        roc.negatives = [0] * len(roc.negatives)

    def _count(self, p: np.ndarray, cells: np.ndarray, step: int) -> None:
        tn, fp, fn, tp = np.bincount(cells, minlength=4).tolist()
        self.tp += step * tp
        self.fp += step * fp
        self.tn += step * tn
        self.fn += step * fn
        self.roc_auc.add(p, cells >= FN, step)

    def counts(self) -> tuple[int, int, int, int]:
        """(tp, fp, tn, fn)"""
        self.fold()
        return self.tp, self.fp, self.tn, self.fn

    def values(self) -> dict[str, float]:
        self.fold()
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

    def __getstate__(self):
        self.fold()   # a checkpoint holds folded numbers only
        return dict(self.__dict__)

    def __setstate__(self, state):
        recent = state.get("_recent")
        if isinstance(recent, deque):   # checkpoints before compact buffers: (y, p, y_pred) tuples
            state["_recent"] = (array("d", (p for _, p, _ in recent)),
                                bytearray(_cell(y, pred) for y, _, pred in recent))
        state.setdefault("_p", array("d"))
        state.setdefault("_cells", bytearray())
        model_state.restore_attributes(self, state)


class Scoreboard(_Buffered):
    """Cumulative and rolling scores of one model's resolved predictions: one append per
    resolved prediction, both boards folded from the same buffers when read."""

    def __init__(self, window: int = 1000):
        self._cumulative = BinaryScores()
        self._rolling = BinaryScores(window)
        self._p = array("d")
        self._cells = bytearray()

    def _apply(self, p: array, cells: bytearray) -> None:
        losses = _losses(p, cells)   # computed once for both boards
        self._cumulative.extend(p, cells, losses)
        self._rolling.extend(p, cells, losses)

    @property
    def cumulative(self) -> BinaryScores:
        self.fold()
        return self._cumulative

    @property
    def rolling(self) -> BinaryScores:
        self.fold()
        return self._rolling

    def __getstate__(self):
        self.fold()
        return dict(self.__dict__)

    def __setstate__(self, state):
        if "cumulative" in state:   # checkpoints before compact buffers (CKPT-3 and earlier)
            state["_cumulative"] = state.pop("cumulative")
            state["_rolling"] = state.pop("rolling")
        state.setdefault("_p", array("d"))
        state.setdefault("_cells", bytearray())
        model_state.restore_attributes(self, state)
