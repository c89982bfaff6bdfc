"""`shopstream demo`: the whole pipeline in one process, no Kafka, no setup.

Generate a shop with a drift, bootstrap on its first 30%, then stream the rest
through the same engine the workers use, next to a frozen copy of the bootstrap
model (the baseline that never learns), while serving Prometheus metrics.
Ends with a summary and a plot of both models' rolling metrics, drift marked.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from .artifacts import load_artifact
from .curves import LearningCurve, plot_curves
from .engine import Engine
from .events import decode_event
from .exporter import EngineCollector, MetricsServer
from .generator import START, Drift, generate, write_jsonl

BOOTSTRAP_FRACTION = 0.3
DAYS = 30.0


def run_demo(args) -> dict:
    import msgspec
    from tqdm import tqdm

    from offline.bootstrap import bootstrap

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    drift = Drift.parse(args.drift) if args.drift else None
    events = list(generate(args.events, seed=args.seed, days=DAYS, drifts=(drift,) if drift else ()))
    split = int(len(events) * BOOTSTRAP_FRACTION)
    history = out / "history.jsonl"
    write_jsonl(events[:split], history)
    print(f"demo: {len(events)} events generated; bootstrapping on the first {split} ...")
    report = bootstrap(history, out / "artifacts", models=["logreg", "logreg_tuned"], feature_set="shop",
                       progress=args.progress)

    artifact = load_artifact(out / "artifacts")
    online = Engine(artifact.model, artifact.features, model_name=artifact.meta["model"],
                    model_version=artifact.meta["version"])
    baseline = copy.deepcopy(online)
    baseline.learn = False
    baseline.model_name = "frozen_baseline"

    registry = CollectorRegistry()
    registry.register(EngineCollector(lambda: [({"model": e.model_name, "partition": "0"}, e, {})
                                               for e in (online, baseline)]))
    server = MetricsServer(registry, args.metrics_host, args.metrics_port).start()
    print(f"demo: metrics at http://{args.metrics_host}:{server.port}/metrics")

    marks = {}
    drift_times = {}
    if drift:
        drift_times = {"drift starts": START + drift.start * DAYS * 86400, "drift ends": START + drift.end * DAYS * 86400}
    curves = [LearningCurve(f"online ({online.model_name})", 500), LearningCurve("frozen baseline", 500)]
    encoder = msgspec.json.Encoder()
    started = time.perf_counter()
    try:
        for record in tqdm(events[split:], unit="ev", desc="stream", disable=not args.progress):
            event = decode_event(encoder.encode(record))  # the workers' path: bytes -> Event
            for name, at in drift_times.items():
                if name not in marks and event.event_time >= at:
                    marks[name] = online.counts["resolved"]
            online.process(event)
            baseline.process(event)
            curves[0].observe(online)
            curves[1].observe(baseline)
    finally:
        server.stop()
    elapsed = time.perf_counter() - started
    plot = plot_curves(curves, out / "demo_rolling_metrics.png",
                       title=f"Online learning vs frozen bootstrap model ({args.drift or 'no drift'})", marks=marks)

    def phase_mean(curve, metric, low, high):
        values = [p[metric] for p in curve.points if low <= p["resolved"] < high]
        return sum(values) / len(values) if values else None

    summary = {
        "events_streamed": len(events) - split,
        "seconds": round(elapsed, 1),
        "events_per_second": round((len(events) - split) / elapsed),
        "bootstrap_default": report["default"],
        "online": {**online.counts, **online.joiner.counts, **online.scores.cumulative.values()},
        "frozen_baseline": baseline.scores.cumulative.values(),
        "plot": str(plot),
        "report": str(out / "artifacts" / "report.md"),
    }
    if len(marks) == 2:
        start, end = marks["drift starts"], marks["drift ends"]
        summary["rolling_roc_auc_during_drift"] = {
            "online": phase_mean(curves[0], "roc_auc", start, end),
            "frozen_baseline": phase_mean(curves[1], "roc_auc", start, end)}
        summary["rolling_roc_auc_after_drift"] = {
            "online": phase_mean(curves[0], "roc_auc", end, float("inf")),
            "frozen_baseline": phase_mean(curves[1], "roc_auc", end, float("inf"))}
    return summary
