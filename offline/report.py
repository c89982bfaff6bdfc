"""The bootstrap report: report.json for machines, report.md and a PNG for people."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from shopstream.curves import LearningCurve, plot_curves
from shopstream.scoring import METRIC_NAMES


def _when(seconds) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M")


def write_report(report: dict, curves: list[LearningCurve], out: Path, split_resolved: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    # The holdout boundary differs per model only in resolved counts; mark the first.
    boundary = min(split_resolved.values()) if split_resolved else None
    plot_curves(curves, out / "learning_curve.png",
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
        f"- default model: `{report['default']}`",
        "",
        "## Holdout (frozen model, last part of the history)",
        "",
        "| model | " + " | ".join(METRIC_NAMES) + " | base rate | resolved |",
        "|---" * (len(METRIC_NAMES) + 3) + "|",
    ]
    for name, candidate in report["candidates"].items():
        h = candidate["holdout"]
        lines.append(f"| {name} | " + " | ".join(f"{h[m]:.4f}" for m in METRIC_NAMES)
                     + f" | {h['base_rate']:.4f} | {h['resolved']} |")
    lines += ["", "## Progressive validation (before the holdout)", "",
              "| model | " + " | ".join(METRIC_NAMES) + " | resolved |",
              "|---" * (len(METRIC_NAMES) + 2) + "|"]
    for name, candidate in report["candidates"].items():
        p = candidate["progressive"]
        lines.append(f"| {name} | " + " | ".join(f"{p[m]:.4f}" for m in METRIC_NAMES) + f" | {p['resolved']} |")
    if data["malformed_reasons"]:
        lines += ["", "## Malformed rows", ""]
        lines += [f"- {count} x {reason}" for reason, count in data["malformed_reasons"].items()]
        lines += ["", "First examples:", ""] + [f"- `{example}`" for example in data["malformed_examples"]]
    lines += ["", "![learning curve](learning_curve.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
