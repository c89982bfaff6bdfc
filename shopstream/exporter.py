"""Prometheus metrics of engines, read at scrape time, and the HTTP endpoint.

Nothing here runs per event: a worker copies each engine's counters and scores into an
`EngineSnapshot` between polls (at most once a second), and `EngineCollector` formats
the latest snapshots when Prometheus scrapes, so metrics cost the hot path almost
nothing and a scrape never touches a live engine. Because the
counters live in the engine (and so in its checkpoint), they restart from the
checkpoint after a crash; Prometheus treats the drop as a counter reset.

Confusion-matrix counters let PromQL compute metrics across workers, e.g. recall::

    sum(rate(shopstream_confusion_total{cell="tp"}[5m]))
      / sum(rate(shopstream_confusion_total{cell=~"tp|fn"}[5m]))
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .engine import LABEL_DELAY_BUCKETS, Engine
from .scoring import METRIC_NAMES

#: (labels, engine or its snapshot, extra outcome counts) triples; labels hold at least "partition".
EngineSource = Callable[[], Iterable[tuple[dict, "Engine | EngineSnapshot", dict]]]


@dataclass(frozen=True)
class SlotSnapshot:
    name: str
    role: str
    version: str
    rolling: dict
    cumulative: dict
    confusion: tuple
    drift_detections: int
    resets: dict


@dataclass(frozen=True)
class EngineSnapshot:
    """Every number a scrape shows of one engine, copied on the thread that runs it:
    the HTTP thread reads these and never the live engine."""

    model_name: str
    slots: tuple
    counts: dict
    promotions: int
    open_predictions: int
    oldest_open_age: float
    watermark: float
    delay_buckets: tuple
    delay_sum: float
    evicted: dict

    @classmethod
    def of(cls, engine: Engine, extra: dict | None = None) -> "EngineSnapshot":
        slots = tuple(SlotSnapshot(slot.name, slot.role, slot.version, slot.scores.rolling.values(),
                                   slot.scores.cumulative.values(), tuple(slot.scores.cumulative.counts()),
                                   slot.drift_detections, dict(slot.resets)) for slot in engine.slots)
        joiner = engine.joiner
        first = joiner.oldest_open_time()
        buckets, running = [], 0
        for bound, count in zip(list(LABEL_DELAY_BUCKETS) + [float("inf")], engine.label_delay_counts):
            running += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
        return cls(engine.model_name, slots, {**engine.counts, **joiner.counts, **(extra or {})},
                   engine.counts["promotions"], engine.open_predictions,
                   0.0 if first is None else max(0.0, joiner.max_time - first), joiner.max_time,
                   tuple(buckets), engine.label_delay_sum, dict(getattr(engine.features, "evicted", {})))


class EngineCollector:
    """Exports every engine (or engine snapshot) that `source()` returns when scraped."""

    def __init__(self, source: EngineSource):
        self.source = source

    def describe(self):
        return []  # values change per scrape; skip the registration-time collect

    def collect(self):
        engine_labels = ["model", "partition"]          # model: the partition's champion
        slot_labels = ["model", "role", "partition"]    # every model slot
        rolling = {name: GaugeMetricFamily(f"shopstream_rolling_{name}",
                                           f"Rolling {name} over the last resolved predictions", labels=slot_labels)
                   for name in METRIC_NAMES}
        cumulative = {name: GaugeMetricFamily(f"shopstream_cumulative_{name}",
                                              f"{name} over all resolved predictions", labels=slot_labels)
                      for name in METRIC_NAMES}
        confusion = CounterMetricFamily("shopstream_confusion", "Resolved and scored predictions by confusion cell",
                                        labels=slot_labels + ["cell"])
        drifts = CounterMetricFamily("shopstream_drift_detections", "ADWIN drift detections on a model's errors",
                                     labels=slot_labels)
        resets = CounterMetricFamily("shopstream_model_resets", "Models put back to their last good state "
                                     "(non-finite prediction or weights)", labels=slot_labels + ["reason"])
        info = GaugeMetricFamily("shopstream_model_info", "Model versions serving a partition, by role",
                                 labels=slot_labels + ["version"])
        events = CounterMetricFamily("shopstream_events", "Events by outcome (consumed, predicted, resolved, learned, ...)",
                                     labels=engine_labels + ["outcome"])
        promotions = CounterMetricFamily("shopstream_promotions", "Champion changes (automatic or manual)",
                                         labels=engine_labels)
        evictions = CounterMetricFamily("shopstream_state_evictions", "Feature-state entries dropped to stay "
                                        "within a cap or TTL, by table", labels=engine_labels + ["table"])
        open_predictions = GaugeMetricFamily("shopstream_open_predictions",
                                             "Predictions waiting for their label", labels=engine_labels)
        oldest = GaugeMetricFamily("shopstream_oldest_open_prediction_age_seconds",
                                   "Event-time age of the oldest open prediction", labels=engine_labels)
        watermark = GaugeMetricFamily("shopstream_event_time_seconds", "Latest event time seen",
                                      labels=engine_labels)
        delay = HistogramMetricFamily("shopstream_label_delay_seconds",
                                      "Event time from prediction to label", labels=engine_labels)
        for labels, engine, extra in list(self.source()):
            snap = engine if isinstance(engine, EngineSnapshot) else EngineSnapshot.of(engine, extra)
            partition = str(labels["partition"])
            for slot in snap.slots:
                values = [slot.name, slot.role, partition]
                for name, value in slot.rolling.items():
                    rolling[name].add_metric(values, value)
                for name, value in slot.cumulative.items():
                    cumulative[name].add_metric(values, value)
                for cell, count in zip(("tp", "fp", "tn", "fn"), slot.confusion):
                    confusion.add_metric(values + [cell], count)
                drifts.add_metric(values, slot.drift_detections)
                for reason, count in slot.resets.items():
                    resets.add_metric(values + [reason], count)
                info.add_metric(values + [slot.version], 1.0)
            values = [snap.model_name, partition]
            for outcome, count in snap.counts.items():
                events.add_metric(values + [outcome], count)
            promotions.add_metric(values, snap.promotions)
            for table, count in snap.evicted.items():
                evictions.add_metric(values + [table], count)
            open_predictions.add_metric(values, snap.open_predictions)
            oldest.add_metric(values, snap.oldest_open_age)
            if snap.watermark > 0:
                watermark.add_metric(values, snap.watermark)
            delay.add_metric(values, list(snap.delay_buckets), snap.delay_sum)
        yield from rolling.values()
        yield from cumulative.values()
        yield from (confusion, drifts, resets, info, events, promotions, evictions, open_predictions, oldest,
                    watermark, delay)


class MetricsServer:
    """/metrics from a registry, plus /healthz (alive) and /readyz (`ready()` is true)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9108,
                 ready: Callable[[], bool] = lambda: True):
        registry_ = registry
        ready_ = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, kind = generate_latest(registry_), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    body, status, kind = b"ok\n", 200, "text/plain"
                elif path == "/readyz":
                    ok = ready_()
                    body, status, kind = (b"ready\n", 200, "text/plain") if ok else (b"not ready\n", 503, "text/plain")
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds would flood the log
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
