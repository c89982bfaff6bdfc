"""The bootstrap report: report.json for machines, report.md and a PNG for people."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from operator import methodcaller
from pathlib import Path
from typing import Optional

from shopstream.curves import LearningCurve, plot_curves
from shopstream.files import write_atomically
from shopstream.scoring import METRIC_NAMES


def _when(seconds) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M")


def unscorable(summary: dict) -> Optional[str]:
    """Why a summary's ROC AUC measured nothing (no resolved predictions, or one class only: it
    ranks positives against negatives), or None: then it cannot choose a DEFAULT.

    >>> unscorable({"resolved": 0, "base_rate": 0.0}), unscorable({"resolved": 9, "base_rate": 0.0})
    ('no resolved predictions', 'only negative labels among its 9 resolved predictions')
    """
    resolved, rate = summary["resolved"], summary["base_rate"]
    if not resolved:
        return "no resolved predictions"
    if rate in (0.0, 1.0):
        return f"only {'positive' if rate else 'negative'} labels among its {resolved} resolved predictions"
    return None


#: The metrics that need both classes (River says 0 for them with one, as if measured).
BOTH_CLASSES = ("precision", "recall", "f1", "roc_auc")


def metric_text(summary: dict, name: str) -> str:
    """A metric to 4 places, or n/a where it measured nothing: every metric without resolved
    predictions, `BOTH_CLASSES` with one class only."""
    if unscorable(summary) and (name in BOTH_CLASSES or not summary["resolved"]):
        return "n/a"
    return f"{summary[name]:.4f}"


def _metrics(summary: dict) -> list[str]:
    return [metric_text(summary, m) for m in METRIC_NAMES]


def _metric_pairs(summary: dict) -> list[str]:
    return [f"{m} {metric_text(summary, m)}" for m in METRIC_NAMES]


def plot_epochs(name: str, training: dict, path: Path) -> Path:
    """The seed's figure: training and validation accuracy and loss per epoch, the
    restored (best validation loss) epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = training["history"]
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        axis.plot(epochs, [h[metric] for h in history], marker="o", label=f"training {metric}")
        axis.plot(epochs, [h[f"val_{metric}"] for h in history], marker="o", label=f"validation {metric}")
        axis.axvline(training["best_epoch"], color="grey", linestyle="--", linewidth=1)
        axis.text(training["best_epoch"], axis.get_ylim()[1], " chosen epoch", va="top", fontsize=8, color="grey")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"{name}: mini-batches of {training['batch_size']}, {training['validation_rows']} of "
                 f"{training['fit_rows'] + training['validation_rows']} labelled examples held for validation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, curves: list[LearningCurve], out: Path, split_resolved: dict) -> None:
    """report.json, report.md and the figures. All are made first (the figures in a scratch
    directory inside `out`: nothing is written outside it), then each is written whole
    (`write_atomically`): a run stopped meanwhile leaves the previous files, never half of one."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as scratch:
        files = _render(report, curves, Path(scratch), split_resolved)
        for name, made in files.items():
            data = made.read_bytes() if isinstance(made, Path) else made
            write_atomically(out / name, methodcaller("write", data))


def _render(report: dict, curves: list[LearningCurve], scratch: Path, split_resolved: dict) -> dict:
    """File name -> its bytes (or the scratch file holding them), report.md last."""
    files: dict[str, bytes | Path] = {"report.json": json.dumps(report, indent=2, default=float).encode()}
    # The holdout boundary differs per model only in resolved counts; mark the first.
    boundary = min(split_resolved.values()) if split_resolved else None
    files["learning_curve.png"] = plot_curves(curves, scratch / "learning_curve.png",
                                              title="Rolling metrics over the history (progressive validation)",
                                              marks={"holdout starts": boundary} if boundary else None)

    data = report["data"]
    lines = [
        "# shopstream bootstrap report",
        "",
        f"- history: `{data['history']}` (sha256 `{data['history_sha256'][:16]}...`)",
        f"- rows: {data['rows']}, valid events: {data['events']}, malformed: {data['malformed']}, "
        f"duplicates dropped: {data['duplicates']}",
        f"- time range: {_when(data['time_range'][0])} .. {_when(data['time_range'][1])} UTC; "
        f"holdout from {_when(data['holdout_from'])} ({data['holdout_events']} events)",
        f"- feature set: `{report['feature_set']}`, label window: {report['label_window_seconds']:.0f} s",
        f"- default model: `{report['default']}`" if report["default"] else
        f"- default model: none chosen: {report['no_default']} (DEFAULT not changed)",
        "",
        "## Holdout (frozen model, last part of the history)",
        "",
        "| model | " + " | ".join(METRIC_NAMES) + " | base rate | resolved |",
        "|---" * (len(METRIC_NAMES) + 3) + "|",
    ]
    for name, candidate in report["candidates"].items():
        h = candidate["holdout"]
        rate = f"{h['base_rate']:.4f}" if h["resolved"] else "n/a"
        lines.append(f"| {name} | " + " | ".join(_metrics(h)) + f" | {rate} | {h['resolved']} |")
    lines += ["", "## Progressive validation (before the holdout)", "",
              "| model | " + " | ".join(METRIC_NAMES) + " | resolved |",
              "|---" * (len(METRIC_NAMES) + 2) + "|"]
    for name, candidate in report["candidates"].items():
        if "training" in candidate:
            continue  # epoch-trained: no progressive validation, see its training below
        p = candidate["progressive"]
        lines.append(f"| {name} | " + " | ".join(_metrics(p)) + f" | {p['resolved']} |")
    for name, candidate in report["candidates"].items():
        training = candidate.get("training")
        if training is None:
            continue
        figure = files[f"epochs_{name}.png"] = plot_epochs(name, training, scratch / f"epochs_{name}.png")
        v = candidate["progressive"]
        lines += ["", f"## {name}: trained in epochs (the seed's way)", "",
                  f"Labelled examples resolved before the holdout: {training['fit_rows']} to fit, the last "
                  f"{training['validation_rows']} to validate. Mini-batches of {training['batch_size']}, Adam "
                  f"(lr {training['lr']:g}), at most {training['epochs']} epochs, early stopping after "
                  f"{training['patience']} without a lower validation loss: ran {training['epochs_run']}, "
                  f"restored epoch **{training['best_epoch']}**. "
                  + (f"Then it learned the {training['caught_up_on']} validation rows online (one Adam step each, "
                     "in time order: the newest labels, which every progressively trained model has seen) "
                     if "caught_up_on" in training else "")
                  + "and was frozen for the holdout above; the artifact kept learning online (one Adam step per "
                  "resolved label) through the holdout.",
                  "", "| epoch | loss | accuracy | val_loss | val_accuracy |", "|---|---|---|---|---|"]
        for h in training["history"]:
            mark = " (chosen)" if h["epoch"] == training["best_epoch"] else ""
            lines.append(f"| {h['epoch']}{mark} | {h['loss']:.4f} | {h['accuracy']:.4f} | {h['val_loss']:.4f} | "
                         f"{h['val_accuracy']:.4f} |")
        stale = training.get("holdout_before_catch_up")
        if stale:
            lines += ["", "Holdout without learning the validation rows: " + ", ".join(_metric_pairs(stale))]
        lines += ["", "Chosen epoch on the validation rows: " + ", ".join(_metric_pairs(v)),
                  "", f"![{name} epochs]({figure.name})"]
    troubled = {name: c for name, c in report["candidates"].items() if c.get("learn_errors") or c.get("refused_events")}
    if troubled:   # what a worker would have dead-lettered, or failed to learn, on this history
        lines += ["", "## Events the engine refused, examples a model could not learn", ""]
        for name, c in troubled.items():
            lines.append(f"- {name}: {c.get('learn_errors', 0)} learn errors (the first are in the log)")
            lines += [f"  - {count} x {reason}" for reason, count in c.get("refused_events", {}).items()]
    if data["malformed_reasons"]:
        lines += ["", "## Malformed rows", ""]
        lines += [f"- {count} x {reason}" for reason, count in data["malformed_reasons"].items()]
        lines += ["", "First examples:", ""] + [f"- `{example}`" for example in data["malformed_examples"]]
    lines += ["", "![learning curve](learning_curve.png)", ""]
    files["report.md"] = "\n".join(lines).encode()
    return files
