"""Offline bootstrap: history file -> clean, ordered events -> one trained, evaluated,
versioned artifact per candidate model, a report and a learning-curve plot.

Each candidate runs through the same `Engine` the workers use:

1. progressive validation over the first part of the history (predict, then learn
   when the label resolves), sampled into a learning curve;
2. a frozen copy predicts the time-based holdout (the last 20% by default) without
   learning: those are the holdout metrics, and they choose the DEFAULT model (the copy
   runs as a slot of the learner's engine that never learns: one pass over the holdout);
3. the original keeps learning through the holdout, so the artifact has seen it all.

Models with a `fit_epochs` method (the seed's network, `mlp`) are trained the seed's way
instead of step 1: the same engine replays the first part of the history (same feature
state, same label joins), the labelled examples it resolves are collected, and the model
is fitted on them in mini-batch epochs with early stopping on a validation split (see
`shopstream/mlp.py`), then learns the validation rows online so that it has seen the same
labels as the other models. Steps 2 and 3 are the same as for every model.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import gc
import hashlib
import os
import re
import stat
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Iterator, Optional, Sequence

from shopstream.artifacts import save_artifact, set_default
from shopstream.config import EngineConfig
from shopstream.curves import LearningCurve
from shopstream.engine import GC_THRESHOLDS, Engine
from shopstream.events import Event, InvalidEvent
from shopstream.readers import read_events
from shopstream.scoring import Scoreboard
from shopstream.signing import FROM_ENVIRONMENT, Key
from shopstream.slots import ModelSlot

from .settings import BootstrapSettings, EpochSettings


@dataclass
class CleanHistory:
    events: list[Event]
    rows: int
    malformed: Counter = field(default_factory=Counter)   # reason -> rows
    examples: list[str] = field(default_factory=list)     # "file:line: reason", first few
    duplicates: int = 0
    sha256: str = ""


def check_history(path: str | Path) -> None:
    """Refuse a history that is not a regular file: it is read twice (hashed, then parsed), and a
    FIFO or a device (/dev/zero) would hang or never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"history file {path} does not exist") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a pipe, device or socket): the history must be a file")


@contextmanager
def locked_output(out: str | Path) -> Iterator[Path]:
    """`out` as a directory (made if missing; anything else is refused), held for the block by an
    flock on `<out>/.lock`: two bootstraps into one directory would interleave their artifacts,
    reports and DEFAULT. The kernel drops the lock when its process dies, kill -9 included."""
    if not str(out).strip():
        raise ValueError("the output directory is empty: name one (--out)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "ab") as lock:   # "a": never truncated; it holds nothing but the lock
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{out}: another bootstrap is writing into this directory (it holds "
                               f"{out / '.lock'}); wait for it, or give another --out") from None
        yield out


def load_history(path: str | Path, columns: Optional[dict] = None, max_examples: int = 20,
                 max_bad_rows: Optional[int] = None, progress: bool = False) -> CleanHistory:
    """Read, validate, de-duplicate by event_id and sort by event time (stable). `progress`: a bar
    of the file's bytes hashed, then a count of its rows read (a month of a large shop's clicks is
    minutes of reading before the first model learns anything)."""
    from tqdm import tqdm

    check_history(path)
    digest = hashlib.sha256()
    name = Path(path).name
    with open(path, "rb") as raw, tqdm(total=os.fstat(raw.fileno()).st_size, unit="B", unit_scale=True,
                                       desc=f"hashing {name}", disable=not progress) as bar:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)
            bar.update(len(block))
    history = CleanHistory(events=[], rows=0, sha256=digest.hexdigest())
    seen_ids: set = set()
    rows = tqdm(read_events(path, columns, max_bad_rows), unit=" rows", desc=f"reading {name}", disable=not progress,
                mininterval=0.5)
    for where, parsed in rows:
        history.rows += 1
        if isinstance(parsed, InvalidEvent):
            history.malformed[_reason_key(parsed, history.malformed)] += 1
            if len(history.examples) < max_examples:
                history.examples.append(f"{where}: {parsed}")
            continue
        if parsed.event_id is not None:
            if parsed.event_id in seen_ids:
                history.duplicates += 1
                continue
            seen_ids.add(parsed.event_id)
        history.events.append(parsed)
    history.events.sort(key=attrgetter("event_time"))
    return history


#: Distinct reasons the report counts bad rows by; the rest are counted together (`OTHER_REASONS`).
MAX_REASONS = 100
OTHER_REASONS = "other reasons (the report counts the first 100 kinds)"
_BYTE_OFFSET = re.compile(r"\(byte \d+\)")


def _reason_key(invalid: InvalidEvent, counted: Counter) -> str:
    """What a bad row is counted under: its field and reason, a decoder's byte offset left out (one
    kind of fault at every offset of a file made thousands of reasons), and past `MAX_REASONS` kinds
    `OTHER_REASONS` (a key given twice is named in its reason: a file of ever-new keys could not grow
    the report without bound). Each row's whole reason stays in the examples."""
    key = _BYTE_OFFSET.sub("(byte N)", f"{invalid.field}: {invalid.reason}")
    return key if key in counted or len(counted) < MAX_REASONS else OTHER_REASONS


@dataclass
class CandidateResult:
    model: str
    engine: Engine
    curve: LearningCurve
    train: dict
    holdout: dict
    split_resolved: int = 0                 # resolved predictions when the holdout starts
    training: Optional[dict] = None         # epoch training: settings and per-epoch history
    artifact: Optional[Path] = None
    refused: Counter = field(default_factory=Counter)   # events the engine could not process, by reason

    def unfit(self) -> Optional[str]:
        """Why it cannot be DEFAULT whatever its holdout says, or None: it learned none of its examples."""
        counts = self.engine.counts
        if counts["learned"] == 0 and counts["learn_errors"]:
            return f"{self.model} learned none of its examples ({counts['learn_errors']} learn errors: see the log)"
        return None


def _process(engine: Engine, event: Event, refused: Counter) -> None:
    """`engine.process`, as a worker calls it: an event it cannot take (e.g. a text value that the
    model's scaler refuses, in --features raw) is counted by reason and skipped, as a worker
    dead-letters it, not the end of the bootstrap. (The per-event loops inline it: a try costs
    nothing until it catches, a call does.)"""
    try:
        engine.process(event)
    except Exception as exc:
        _refused(refused, exc)


def _refused(refused: Counter, exc: Exception) -> None:
    refused[f"engine error: {type(exc).__name__}: {str(exc)[:200]}"] += 1


class _Collector:
    """Stands in for the model while the engine replays the training part: it predicts
    nothing (so nothing is scored) and keeps every (features, label) the engine resolves."""

    def __init__(self) -> None:
        self.xs: list = []
        self.ys: list = []

    def predict_proba_one(self, x):
        return {}

    def learn_one(self, x, y):
        self.xs.append(x)
        self.ys.append(y)


def _summary(scores: Scoreboard, engine: Engine) -> dict:
    resolved = len(scores.cumulative)
    tp, fp, tn, fn = scores.cumulative.counts()
    return {
        **scores.cumulative.values(),
        "resolved": resolved,
        "base_rate": (tp + fn) / resolved if resolved else 0.0,
        "open_at_end": engine.open_predictions,
    }


def train_candidate(model_name: str, events: Sequence[Event], split: int, config: EngineConfig, seed: int,
                    curve_every: int, progress=None, epochs: Optional[EpochSettings] = None,
                    unique_ids: bool = False) -> CandidateResult:
    """`unique_ids`: no two events share an event id (`load_history` dropped the repeats), so the
    engine keeps no dedupe window (it would drop nothing; the artifact does not hold it)."""
    engine = Engine.fresh(model_name, config.features, seed, config)
    if unique_ids:
        engine.deduplicates = False
    curve = LearningCurve(model_name, curve_every)
    training = before = None
    refused: Counter = Counter()
    if hasattr(engine.champion_slot.model, "fit_epochs"):
        train, training, before = _fit_epochs(engine, events[:split], epochs or EpochSettings(), progress, refused)
    else:
        for event in events[:split]:
            try:
                engine.process(event)
            except Exception as exc:   # (`_process`, inline)
                _refused(refused, exc)
            curve.observe(engine)
            if progress is not None:
                progress.update()
        train = _summary(engine.champion_slot.scores, engine)
    split_resolved = engine.counts["resolved"]

    if _frozen_slot_fits(engine):
        frozen = _add_frozen_slot(engine)   # one engine run scores the frozen copy and the learner
        frozen_engine = engine
    else:   # a line-up that can change under drift: a frozen engine of its own, as a worker would run it
        frozen_engine = copy.deepcopy(engine)
        frozen_engine.freeze()
        frozen = frozen_engine.champion_slot
        frozen.clear_scores()
    ignored: Counter = Counter()   # (the copies refuse the events the learner does)
    for event in events[split:]:
        if frozen_engine is not engine:
            _process(frozen_engine, event, ignored)
        try:
            engine.process(event)
        except Exception as exc:   # (`_process`, inline)
            _refused(refused, exc)
        curve.observe(engine)
        if before is not None:
            _process(before, event, ignored)
        if progress is not None:
            progress.update()
    # The running slot, looked up again: a refresh (`Engine._refresh`) runs shells of the slots
    if frozen_engine is engine:
        frozen = engine.slot(FROZEN_SLOT)
        _remove_frozen_slot(engine, frozen)
    else:
        frozen = frozen_engine.champion_slot
    if before is not None and training is not None:  # what catching up on the validation rows was worth
        training["holdout_before_catch_up"] = _summary(before.champion_slot.scores, before)
    if training is not None:  # its rolling scores start empty at the split: skip the first, empty samples
        curve.points = [p for p in curve.points if p["resolved"] >= split_resolved + curve.every]
    holdout = _summary(frozen.scores, frozen_engine)
    if unique_ids:
        del engine.deduplicates   # an engine as any other from here on (its dedupe window is empty)
    return CandidateResult(model_name, engine, curve, train, holdout, split_resolved, training, refused=refused)


#: The name of the frozen copy's slot while it runs in the learner's engine (`_add_frozen_slot`).
FROZEN_SLOT = "holdout (frozen)"


def _frozen_slot_fits(engine: Engine) -> bool:
    """Whether the frozen copy can run as a slot of the learner's engine (`_add_frozen_slot`):
    the line-up is the champion alone and nothing changes it (no promotion policy, no drift
    reaction: a frozen engine would otherwise add or roll back slots of its own)."""
    return len(engine.slots) == 1 and engine.promotion is None and engine.config.drift_reaction == "none"


def _add_frozen_slot(engine: Engine) -> ModelSlot:
    """Run the holdout's frozen copy as one more slot of the learner's own engine: a copy of
    the champion's slot (its model, last good state and drift detector as they are at the
    split) that predicts on every holdout event, is scored when its predictions resolve, and
    never learns. It reads the same features and labels the learner does, so each holdout
    event is processed once, not once per copy. What it scores equals what a frozen deep copy
    of the whole engine scored: the feature state, dedupe window and label joiner depend on
    the events only, and a prediction still open at the split scores, for the frozen copy,
    what the champion recorded when it was made (appended to its outputs here).
    tests/test_bootstrap_holdout.py pins it against the frozen engine of its own."""
    champion = engine.champion_slot
    frozen = copy.deepcopy(champion)
    frozen.name, frozen.role, frozen.learn, frozen.comparison = FROZEN_SLOT, "challenger", False, None
    frozen.clear_scores()
    for prediction in engine.joiner.open_predictions():
        outputs = prediction.outputs
        prediction.outputs = (*outputs, outputs[prediction.champion])
    engine.slots.append(frozen)
    return frozen


def _remove_frozen_slot(engine: Engine, frozen: ModelSlot) -> None:
    """Leave the engine as if the frozen copy had run apart: its slot, its outputs in the
    predictions still open and its lineage entries (drift it detected) go."""
    engine.slots.remove(frozen)
    keep = len(engine.slots)
    for prediction in engine.joiner.open_predictions():
        prediction.outputs = tuple(prediction.outputs[:keep])
    engine.history = [entry for entry in engine.history if entry.get("model") != FROZEN_SLOT]


def _fit_epochs(engine: Engine, events: Sequence[Event], settings: EpochSettings,
                progress, refused: Counter) -> tuple[dict, dict, Optional[Engine]]:
    """Epoch-train the engine's model on the labels resolved in `events`. Return the
    metrics of the chosen epoch on its validation rows, the training record and, with
    `catch_up`, a frozen engine holding the model as it was before catching up."""
    champion = engine.champion_slot
    model = champion.model
    if settings.lr is not None:
        model.lr = settings.lr
    collector = _Collector()
    champion.model = collector
    for event in events:  # features from the shared feature state, labels from the joiner
        _process(engine, event, refused)
        if progress is not None:
            progress.update()
    champion.model = model
    training = model.fit_epochs(collector.xs, collector.ys, epochs=settings.epochs,
                                batch_size=settings.batch_size, validation_split=settings.validation_split,
                                patience=settings.patience)
    held_out = list(zip(collector.xs[training["fit_rows"]:], collector.ys[training["fit_rows"]:]))
    validation = Scoreboard(engine.config.metric_window)
    for x, y in held_out:
        proba = model.predict_proba_one(x)
        validation.update(y, proba[True], max(proba, key=proba.get))
    champion.clear_scores()  # the collector scored nothing
    summary = _summary(validation, engine)
    summary["resolved"] = engine.counts["resolved"]
    summary["scored_on"] = f"validation split ({training['validation_rows']} rows, frozen, best epoch)"

    before = None
    if settings.catch_up:
        # The validation rows are the newest labels before the holdout. Every other model
        # has learned them (progressive validation); without them the network would be
        # that much staler at the split. Once they have chosen the epoch, it learns them
        # online, in time order, one Adam step each, as a worker will.
        before = copy.deepcopy(engine)
        before.freeze()
        _rescore_open_predictions(before)
        for x, y in held_out:
            model.learn_one(x, y)
        training["caught_up_on"] = len(held_out)
    _rescore_open_predictions(engine)
    return summary, training, before


def _rescore_open_predictions(engine: Engine) -> None:
    """Predictions still open at the split were made while there was no model: give them
    the trained model's score on their own features, so that the holdout scores the same
    predictions for this model as for the others."""
    model = engine.champion_slot.model
    for prediction in engine.joiner.open_predictions():
        proba = model.predict_proba_one(prediction.x)
        prediction.outputs = ((proba[True], max(proba, key=proba.get)), *prediction.outputs[1:])


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The worker's garbage-collector thresholds (`GC_THRESHOLDS`) while the history loads and
    the candidates train (on a 1M-event history, 0.6 s of collections become 0.1 s). The
    caller's are restored."""
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def bootstrap(history_path: str | Path, out: str | Path, models: Sequence[str] = ("logreg",),
              config: EngineConfig = EngineConfig(), holdout: float = BootstrapSettings.holdout,
              columns: Optional[dict] = None, seed: int = 42, progress: bool = True,
              epochs: Optional[EpochSettings] = None, default_from: Optional[Sequence[str]] = None,
              max_bad_rows: Optional[int] = None, signing_key: Key = FROM_ENVIRONMENT, lock: bool = True) -> dict:
    """Run the whole offline stage; return the report (also written to `out`).

    DEFAULT is the best candidate by holdout ROC AUC, among `default_from` when given
    (the demo keeps the seed's network a challenger that way). Artifacts are signed with
    `signing_key` when there is one (`BootstrapSettings` checked the other values). It is
    written last, after the report: a run that stops sooner leaves DEFAULT as it was. A
    holdout that ranks nothing (no resolved predictions, or one class) chooses no DEFAULT:
    the artifacts and the report are written, then ValueError says why. `lock`: hold
    `<out>/.lock` for the run (False: the caller holds it, see `locked_output`)."""
    check_history(history_path)   # before any work: a FIFO would hang, a directory fail late
    with locked_output(out) if lock else nullcontext(Path(out)) as out_dir:
        return _bootstrap(history_path, out_dir, models, config, holdout, columns, seed, progress, epochs,
                          default_from, max_bad_rows, signing_key)


def _bootstrap(history_path: str | Path, out: Path, models: Sequence[str], config: EngineConfig, holdout: float,
               columns: Optional[dict], seed: int, progress: bool, epochs: Optional[EpochSettings],
               default_from: Optional[Sequence[str]], max_bad_rows: Optional[int], signing_key: Key) -> dict:
    from tqdm import tqdm

    from .report import unscorable, write_report

    with _fewer_collections():
        history = load_history(history_path, columns, max_bad_rows=max_bad_rows, progress=progress)
        events = history.events
        if not events:
            raise ValueError(f"{history_path}: no valid events among {history.rows} rows{_most_common(history)}")
        split = int(len(events) * (1.0 - holdout))
        curve_every = max(100, len(events) // 400)
        results = []
        with tqdm(total=len(events) * len(models), unit="ev", disable=not progress, desc="bootstrap") as bar:
            for name in models:
                bar.set_postfix_str(name)
                results.append(train_candidate(name, events, split, config, seed, curve_every,
                                               bar if progress else None, epochs,  # no call per event when off
                                               unique_ids=True))   # load_history dropped repeated ids

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
    saved: dict[str, Path] = {}
    for result in results:
        engine = result.engine
        meta = {
            "engine": config.to_dict(),  # the settings a worker must run this model under
            "feature_set": config.features,
            "label_window_seconds": config.window,
            "lateness_seconds": config.lateness,
            "data": {k: data[k] for k in ("history", "history_sha256", "events", "time_range", "holdout_from")},
            "metrics": {"progressive": result.train, "holdout": result.holdout},
        }
        if result.training is not None:
            meta["training"] = result.training
        saved[result.model] = result.artifact = save_artifact(out, result.model, engine.champion_slot.model,
                                                              engine.features, meta, signing_key)
    eligible = [r for r in results if default_from is None or r.model in default_from] or results
    ranked = [r for r in eligible if unscorable(r.holdout) is None and r.unfit() is None]
    best = max(ranked, key=lambda r: (r.holdout["roc_auc"], -r.holdout["log_loss"])) if ranked else None
    no_default = None if best else next(
        (r.unfit() for r in eligible if r.unfit() is not None and unscorable(r.holdout) is None),
        f"its holdout ({data['holdout_events']} events) has {unscorable(eligible[0].holdout)}, nothing to rank "
        "the models by")
    report = {
        "data": data,
        "feature_set": config.features,
        "label_window_seconds": config.window,
        "default": saved[best.model].relative_to(out).as_posix() if best else None,
        **({"no_default": no_default} if no_default else {}),
        "candidates": {
            r.model: {"artifact": saved[r.model].relative_to(out).as_posix(), "progressive": r.train,
                      "holdout": r.holdout, "joiner": dict(r.engine.joiner.counts),
                      "learn_errors": r.engine.counts["learn_errors"],
                      "refused_events": dict(r.refused.most_common()),
                      **({"training": r.training} if r.training is not None else {})}
            for r in results
        },
    }
    write_report(report, [r.curve for r in results], out, split_resolved={
        r.model: r.split_resolved for r in results})
    if best is None:   # a DEFAULT chosen by a ROC AUC of nothing would look measured
        raise ValueError(f"{history_path}: no DEFAULT chosen: {no_default} "
                         f"(DEFAULT not changed; the artifacts and report are in {out})")
    set_default(out, saved[best.model], signing_key)   # last: it points at a run whose files are whole
    return report


def _most_common(history: CleanHistory) -> str:
    """"; most often <reason> (N rows), e.g. <example>": why rows were refused, for the error that none was valid."""
    if not history.malformed:
        return ""
    reason, count = history.malformed.most_common(1)[0]
    example = next((e for e in history.examples if f": {reason}" in e), None)
    return f"; most often {reason} ({count} rows)" + (f", e.g. {example}" if example else "")
