"""Offline bootstrap: history file -> clean, ordered events -> one trained, evaluated,
versioned artifact per candidate model, a report and a learning-curve plot.

Each candidate runs through the same `Engine` the workers use:

1. progressive validation over the first part of the history (predict, then learn
   when the label resolves), sampled into a learning curve;
2. a frozen copy predicts the time-based holdout (the last 20% by default) without
   learning: those are the holdout metrics, and they choose the DEFAULT model;
3. the original keeps learning through the holdout, so the artifact has seen it all.
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from shopstream.artifacts import save_artifact, set_default
from shopstream.curves import LearningCurve
from shopstream.engine import Engine
from shopstream.events import Event, InvalidEvent
from shopstream.readers import read_events
from shopstream.scoring import Scoreboard


@dataclass
class CleanHistory:
    events: list[Event]
    rows: int
    malformed: Counter = field(default_factory=Counter)   # reason -> rows
    examples: list[str] = field(default_factory=list)     # "file:line: reason", first few
    duplicates: int = 0
    sha256: str = ""


def load_history(path: str | Path, columns: Optional[dict] = None, max_examples: int = 20) -> CleanHistory:
    """Read, validate, de-duplicate by event_id and sort by event time (stable)."""
    digest = hashlib.sha256()
    with open(path, "rb") as raw:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)
    history = CleanHistory(events=[], rows=0, sha256=digest.hexdigest())
    seen_ids: set = set()
    for where, parsed in read_events(path, columns):
        history.rows += 1
        if isinstance(parsed, InvalidEvent):
            history.malformed[f"{parsed.field}: {parsed.reason}"] += 1
            if len(history.examples) < max_examples:
                history.examples.append(f"{where}: {parsed}")
            continue
        if parsed.event_id is not None:
            if parsed.event_id in seen_ids:
                history.duplicates += 1
                continue
            seen_ids.add(parsed.event_id)
        history.events.append(parsed)
    history.events.sort(key=lambda e: e.event_time)
    return history


@dataclass
class CandidateResult:
    model: str
    engine: Engine
    curve: LearningCurve
    train: dict
    holdout: dict
    artifact: Optional[Path] = None


def _summary(scores: Scoreboard, engine: Engine) -> dict:
    resolved = len(scores.cumulative)
    tp, fp, tn, fn = scores.cumulative.counts()
    return {
        **scores.cumulative.values(),
        "resolved": resolved,
        "base_rate": (tp + fn) / resolved if resolved else 0.0,
        "open_at_end": engine.open_predictions,
    }


def train_candidate(model_name: str, events: Sequence[Event], split: int, feature_set: str,
                    engine_options: dict, curve_every: int, progress=None) -> CandidateResult:
    engine = Engine.fresh(model_name, feature_set, **engine_options)
    curve = LearningCurve(model_name, curve_every)
    for event in events[:split]:
        engine.process(event)
        curve.observe(engine)
        if progress is not None:
            progress.update()
    train = _summary(engine.scores, engine)

    frozen = copy.deepcopy(engine)
    frozen.learn = False
    frozen.scores = Scoreboard(engine.scores.rolling.window)
    for event in events[split:]:
        frozen.process(event)
        engine.process(event)
        curve.observe(engine)
        if progress is not None:
            progress.update()
    return CandidateResult(model_name, engine, curve, train, _summary(frozen.scores, frozen))


def bootstrap(history_path: str | Path, out: str | Path, models: Sequence[str] = ("logreg",),
              feature_set: str = "shop", holdout: float = 0.2, window: float = 1800.0,
              lateness: float = 0.0, metric_window: int = 1000, columns: Optional[dict] = None,
              seed: int = 42, progress: bool = True, max_open: int = 1_000_000,
              drift_delta: float = 1e-6) -> dict:
    """Run the whole offline stage; return the report (also written to `out`)."""
    from tqdm import tqdm

    from .report import write_report

    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout}")
    out = Path(out)
    history = load_history(history_path, columns)
    events = history.events
    if not events:
        raise ValueError(f"{history_path}: no valid events among {history.rows} rows")
    split = int(len(events) * (1.0 - holdout))
    engine_options = {"window": window, "lateness": lateness, "metric_window": metric_window, "seed": seed,
                      "max_open": max_open, "drift_delta": drift_delta}
    curve_every = max(100, len(events) // 400)
    results = []
    with tqdm(total=len(events) * len(models), unit="ev", disable=not progress, desc="bootstrap") as bar:
        for name in models:
            bar.set_postfix_str(name)
            results.append(train_candidate(name, events, split, feature_set, engine_options, curve_every, bar))

    data = {
        "history": str(history_path),
        "history_sha256": history.sha256,
        "rows": history.rows,
        "events": len(events),
        "malformed": sum(history.malformed.values()),
        "malformed_reasons": dict(history.malformed.most_common()),
        "malformed_examples": history.examples,
        "duplicates": history.duplicates,
        "time_range": [events[0].event_time, events[-1].event_time],
        "holdout_from": events[split].event_time if split < len(events) else None,
        "train_events": split,
        "holdout_events": len(events) - split,
    }
    for result in results:
        engine = result.engine
        result.artifact = save_artifact(out, result.model, engine.model, engine.features, {
            "feature_set": feature_set,
            "label_window_seconds": window,
            "lateness_seconds": lateness,
            "data": {k: data[k] for k in ("history", "history_sha256", "events", "time_range", "holdout_from")},
            "metrics": {"progressive": result.train, "holdout": result.holdout},
        })
    best = max(results, key=lambda r: (r.holdout["roc_auc"], -r.holdout["log_loss"]))
    set_default(out, best.artifact)
    report = {
        "data": data,
        "feature_set": feature_set,
        "label_window_seconds": window,
        "default": best.artifact.relative_to(out).as_posix(),
        "candidates": {
            r.model: {"artifact": r.artifact.relative_to(out).as_posix(), "progressive": r.train,
                      "holdout": r.holdout, "joiner": dict(r.engine.joiner.counts)}
            for r in results
        },
    }
    write_report(report, [r.curve for r in results], out, split_resolved={
        r.model: r.train["resolved"] for r in results})
    return report
