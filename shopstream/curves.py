"""Learning curves: rolling metrics sampled as predictions resolve, and their plot."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from .engine import Engine

CURVE_METRICS = ("accuracy", "f1", "roc_auc")


class LearningCurve:
    """Samples the rolling metrics of an engine's model in `role` (whichever model holds
    it at the time) every `every` resolved predictions."""

    def __init__(self, label: str, every: int = 1000, role: str = "champion"):
        self.label = label
        self.every = every
        self.role = role
        self.points: list[dict] = []
        self._next = every

    def observe(self, engine: Engine) -> None:
        resolved = engine.counts["resolved"]
        if resolved >= self._next:
            self._next = resolved + self.every
            slot = next(s for s in engine.slots if s.role == self.role)
            point = {"resolved": resolved, "event_time": engine.joiner.max_time, "model": slot.name}
            point.update(slot.scores.rolling.values())
            self.points.append(point)


def plot_curves(curves: Iterable[LearningCurve], path: str | Path, title: str,
                metrics: tuple[str, ...] = CURVE_METRICS, x: str = "resolved",
                marks: Optional[dict[str, float]] = None) -> Path:
    """One panel per metric, one line per curve; `marks` draws labelled vertical lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: workers and CI have no display
    import matplotlib.pyplot as plt

    curves = list(curves)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.6 * len(metrics)), sharex=True)
    for axis, metric in zip(axes, metrics):
        for curve in curves:
            axis.plot([p[x] for p in curve.points], [p[metric] for p in curve.points],
                      label=curve.label, linewidth=1.2)
        for name, position in (marks or {}).items():
            axis.axvline(position, color="grey", linestyle="--", linewidth=1)
            axis.text(position, axis.get_ylim()[1], f" {name}", va="top", fontsize=8, color="grey")
        axis.set_ylabel(f"rolling {metric}")
        axis.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("resolved predictions" if x == "resolved" else x)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
