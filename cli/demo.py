"""`shopstream demo`: the whole pipeline in one process, no Kafka, no setup.

Generate a shop with a drift, bootstrap on its first 30%, then stream the rest through
the engine the workers use, with the partition line-up the workers run: the bootstrap's
best logistic regression as champion, the other step variants of the self-tuning
line-up (`lineup.TUNING`) and the seed's network (`mlp`, trained in epochs by the
bootstrap, then one Adam step per resolved label) as challengers, and a frozen copy of
the champion as the baseline that never learns. Prometheus metrics are served while it
runs; its summary opens with what a user decides on, both measured in this run: how
much better the online champion is than the frozen model, and than a batch logistic
regression retrained every midnight on the labels resolved by then (numpy/scipy,
`evaluation.versus_nightly_batch`; exact ROC AUC, pooled and within each day, and log
loss, with 95% session-bootstrap intervals), then drift detections, promotions and a
plot of champion, baseline and network rolling metrics with the drift marked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Optional, cast

from prometheus_client import CollectorRegistry

from shopstream.config import GeneratorSettings
from shopstream.curves import LearningCurve, plot_curves
from shopstream.engine import Engine
from shopstream.evaluation import versus_nightly_batch
from shopstream.events import decode_event, event_from_record
from shopstream.exporter import EngineCollector, MetricsServer
from shopstream.generator import START, Drift, generate, write_jsonl
from shopstream.features import build_features
from shopstream.lineup import TUNING, Lineup, PromotionPolicy, build_engine
from shopstream.models import build_model
from shopstream.options import Settings, check, option_meta, progress_bar, same_as
from shopstream.recording import record as record_calls
from stream.settings import HOST_RULE, WorkerSettings

BOOTSTRAP_FRACTION = 0.3
DAYS = GeneratorSettings.days
CANDIDATES = list(TUNING)   # the champion is the best of these on the holdout; the others challenge it
NETWORK = "mlp"             # the seed's network, a challenger


@dataclass(frozen=True)
class DemoSettings(Settings):
    """``shopstream demo``'s settings (the demo signs with SHOPSTREAM_SIGNING_KEY when it is set)."""

    out: str = field(default="demo-out", metadata=option_meta("output directory"))
    events: int = field(default=200_000, metadata=option_meta("events to generate"))
    seed: int = field(default=GeneratorSettings.seed, metadata=option_meta("random seed"))
    drift: Optional[str] = field(default="checkout_incident@0.5-0.65:web", metadata=option_meta(
        "drift scenario ('' for none)", type=str))
    metrics_host: str = same_as(WorkerSettings, "metrics_host", help="metrics endpoint host")
    metrics_port: int = same_as(WorkerSettings, "metrics_port", help="metrics endpoint port (0: any free port)")
    progress: bool = progress_bar()

    def __post_init__(self) -> None:
        check(self, (("events", self.events >= 0, "must be >= 0"),
                     ("metrics_port", 0 <= self.metrics_port <= 65535, "must be 0..65535"),
                     ("metrics_host", bool(self.metrics_host.strip())
                      and self.metrics_host == self.metrics_host.strip(), HOST_RULE)))
        if self.drift:
            GeneratorSettings(drift=(self.drift,))  # refused here, naming --drift, if it is no scenario


class ModelCurve(LearningCurve):
    """Follows one model by name, whatever its role (a challenger may be promoted)."""

    def __init__(self, label: str, name: str, every: int = 500):
        super().__init__(label, every)
        self.name = name

    def observe(self, engine) -> None:
        resolved = engine.counts["resolved"]
        if resolved >= self._next:
            self._next = resolved + self.every
            slot = engine.slot(self.name)
            self.points.append({"resolved": resolved, "event_time": engine.joiner.max_time, "model": slot.name,
                                "role": slot.role, **slot.scores.rolling.values()})


def against_nightly_batch(history_events, config, streamed_calls) -> dict:
    """The stream's published predictions against nightly batch retraining, measured here:
    the history's labels and features come from replaying it through an engine with the
    same feature settings (features are deterministic for a stream; the model is irrelevant)."""
    history = Engine(build_model("logreg"), build_features(config.features), config)
    history_calls = record_calls(history)
    for event in history_events:
        history.process(event_from_record(event))
    return versus_nightly_batch(history_calls, streamed_calls)


def run_demo(settings: DemoSettings) -> dict:
    import msgspec
    from tqdm import tqdm

    from offline.bootstrap import bootstrap

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    drift = Drift.parse(settings.drift) if settings.drift else None
    events = list(generate(settings.events, seed=settings.seed, days=DAYS, drifts=(drift,) if drift else ()))
    split = int(len(events) * BOOTSTRAP_FRACTION)
    history = out / "history.jsonl"
    write_jsonl(events[:split], history)
    print(f"demo: {len(events)} events generated; bootstrapping on the first {split} ...")
    report = bootstrap(history, out / "artifacts", models=CANDIDATES + [NETWORK],
                       progress=settings.progress, default_from=CANDIDATES)

    engine, _ = build_engine(str(out / "artifacts"), lineup=Lineup(
        challengers=("tuning", NETWORK), baseline=True, promotion=PromotionPolicy()))
    streamed_calls = record_calls(engine)   # the published predictions and labels, for the batch comparison
    registry = CollectorRegistry()
    registry.register(EngineCollector(lambda: [({"partition": "0"}, engine, {})]))
    server = MetricsServer(registry, settings.metrics_host, settings.metrics_port).start()
    print(f"demo: metrics at http://{settings.metrics_host}:{server.port}/metrics")

    drift_times: dict[str, float] = {}
    if drift:
        drift_times = {"drift starts": START + drift.start * DAYS * 86400,
                       "drift ends": START + drift.end * DAYS * 86400}
    marks: dict[str, float] = {}
    champion, baseline = LearningCurve("online champion", 500), LearningCurve("frozen baseline", 500, "baseline")
    network = ModelCurve(f"{NETWORK} (seed's network, online)", NETWORK)
    encoder = msgspec.json.Encoder()
    started = time.perf_counter()
    try:
        for record in tqdm(events[split:], unit="ev", desc="stream", disable=not settings.progress):
            event = decode_event(encoder.encode(record))  # the workers' path: bytes -> Event
            for name, at in drift_times.items():
                if name not in marks and cast(float, event.event_time) >= at:  # validated: epoch seconds
                    marks[name] = engine.counts["resolved"]
            engine.process(event)
            champion.observe(engine)
            baseline.observe(engine)
            network.observe(engine)
    finally:
        server.stop()
    elapsed = time.perf_counter() - started
    batch = against_nightly_batch(events[:split], engine.config, streamed_calls)
    plot = plot_curves([champion, baseline, network], out / "demo_rolling_metrics.png",
                       title=f"Online champion vs frozen bootstrap model ({settings.drift or 'no drift'})", marks=marks)

    def phase_auc(curve, low, high):
        values = [p["roc_auc"] for p in curve.points if low <= p["resolved"] < high]
        return round(mean(values), 4) if values else None

    streamed = len(events) - split
    champion_scores = engine.champion_slot.scores.cumulative.values()
    baseline_scores = next(s for s in engine.slots if s.role == "baseline").scores.cumulative.values()
    summary = {
        # First what a user decides on: is learning online worth it here?
        "online_vs_frozen": {
            "final_champion": engine.champion_slot.name,   # scored on its own predictions over the whole stream
            "online_champion": {m: round(champion_scores[m], 4) for m in ("roc_auc", "log_loss")},
            "frozen_bootstrap_model": {m: round(baseline_scores[m], 4) for m in ("roc_auc", "log_loss")},
            "roc_auc_gain": round(champion_scores["roc_auc"] - baseline_scores["roc_auc"], 4),
            "log_loss_reduction": round(baseline_scores["log_loss"] - champion_scores["log_loss"], 4),
        },
        "online_vs_daily_batch_retraining": batch,
        "events_streamed": streamed,
        "seconds": round(elapsed, 1),
        "events_per_second": round(streamed / elapsed),
        "bootstrap_default": report["default"],
        "bootstrap_holdout": {name: {m: round(c["holdout"][m], 4) for m in ("roc_auc", "log_loss")}
                              for name, c in report["candidates"].items()},
        "counts": {**engine.counts, **engine.joiner.counts},
        "models": {slot.name: {"role": slot.role, "version": slot.version, "drift_detections": slot.drift_detections,
                               **slot.scores.cumulative.values()} for slot in engine.slots},
        "promotions": [h for h in engine.history if h["kind"] == "promotion"],
        "champion_drift_detections_at_resolved": [h["resolved"] for h in engine.history
                                                  if h["kind"] == "drift" and h["role"] == "champion"],
        "plot": str(plot),
        "report": str(out / "artifacts" / "report.md"),
    }
    lift = summary["online_vs_frozen"]
    final = engine.champion_slot.name
    print(f"demo: online champion ({final}) ROC AUC {lift['online_champion']['roc_auc']:.4f} against "
          f"{lift['frozen_bootstrap_model']['roc_auc']:.4f} for the frozen bootstrap model "
          f"({lift['roc_auc_gain']:+.4f})")
    ours, theirs = batch["online_champion"], batch["nightly_batch_logistic_regression"]

    def diff(name):
        value, low, high = batch["online_minus_batch_95"][name]
        return f"{value:+.4f}, 95% [{low:+.4f}, {high:+.4f}]"

    print(f"demo: against a logistic regression retrained every midnight, on the same {batch['scored_predictions']:,} "
          f"predictions (exact ROC AUC, this run): pooled {ours['roc_auc']:.4f} vs {theirs['roc_auc']:.4f} "
          f"({diff('roc_auc')}), within each day {ours['roc_auc_within_day']:.4f} vs "
          f"{theirs['roc_auc_within_day']:.4f} ({diff('roc_auc_within_block')}); log loss {ours['log_loss']:.4f} vs "
          f"{theirs['log_loss']:.4f}")
    if len(marks) == 2:
        start, end = marks["drift starts"], marks["drift ends"]
        summary["drift_at_resolved"] = [start, end]
        summary["rolling_roc_auc"] = {
            phase: {"champion": phase_auc(champion, low, high), "frozen_baseline": phase_auc(baseline, low, high),
                    NETWORK: phase_auc(network, low, high)}
            for phase, low, high in (("before_drift", 0, start), ("during_drift", start, end),
                                     ("after_drift", end, float("inf")))}
    return summary
