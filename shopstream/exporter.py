"""Prometheus metrics of engines, read at scrape time, and the HTTP endpoint.

Nothing here runs per event: `EngineCollector` reads each engine's counters and
scores when Prometheus scrapes, so metrics cost the hot path nothing. Because the
counters live in the engine (and so in its checkpoint), they restart from the
checkpoint after a crash; Prometheus treats the drop as a counter reset.

Confusion-matrix counters let PromQL compute metrics across workers, e.g. recall::

    sum(rate(shopstream_confusion_total{cell="tp"}[5m]))
      / sum(rate(shopstream_confusion_total{cell=~"tp|fn"}[5m]))
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .engine import LABEL_DELAY_BUCKETS, Engine
from .scoring import METRIC_NAMES

#: (labels, engine, extra outcome counts) triples; labels hold at least "partition".
EngineSource = Callable[[], Iterable[tuple[dict, Engine, dict]]]


class EngineCollector:
    """Exports every engine that `source()` returns when scraped."""

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
        info = GaugeMetricFamily("shopstream_model_info", "Model versions serving a partition, by role",
                                 labels=slot_labels + ["version"])
        events = CounterMetricFamily("shopstream_events", "Events by outcome (consumed, predicted, resolved, learned, ...)",
                                     labels=engine_labels + ["outcome"])
        promotions = CounterMetricFamily("shopstream_promotions", "Champion changes (automatic or manual)",
                                         labels=engine_labels)
        open_predictions = GaugeMetricFamily("shopstream_open_predictions",
                                             "Predictions waiting for their label", labels=engine_labels)
        oldest = GaugeMetricFamily("shopstream_oldest_open_prediction_age_seconds",
                                   "Event-time age of the oldest open prediction", labels=engine_labels)
        watermark = GaugeMetricFamily("shopstream_event_time_seconds", "Latest event time seen",
                                      labels=engine_labels)
        delay = HistogramMetricFamily("shopstream_label_delay_seconds",
                                      "Event time from prediction to label", labels=engine_labels)
        for labels, engine, extra in list(self.source()):
            partition = str(labels["partition"])
            for slot in list(engine.slots):
                values = [slot.name, slot.role, partition]
                for name, value in slot.scores.rolling.values().items():
                    rolling[name].add_metric(values, value)
                for name, value in slot.scores.cumulative.values().items():
                    cumulative[name].add_metric(values, value)
                for cell, count in zip(("tp", "fp", "tn", "fn"), slot.scores.cumulative.counts()):
                    confusion.add_metric(values + [cell], count)
                drifts.add_metric(values, slot.drift_detections)
                info.add_metric(values + [slot.version], 1.0)
            values = [engine.model_name, partition]
            for outcome, count in {**engine.counts, **engine.joiner.counts, **extra}.items():
                events.add_metric(values + [outcome], count)
            promotions.add_metric(values, engine.counts["promotions"])
            open_predictions.add_metric(values, engine.open_predictions)
            first = engine.joiner.oldest_open_time()
            oldest.add_metric(values, 0.0 if first is None else max(0.0, engine.joiner.max_time - first))
            if engine.joiner.max_time > 0:
                watermark.add_metric(values, engine.joiner.max_time)
            buckets, running = [], 0
            for bound, count in zip(list(LABEL_DELAY_BUCKETS) + [float("inf")], engine.label_delay_counts):
                running += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
            delay.add_metric(values, buckets, engine.label_delay_sum)
        yield from rolling.values()
        yield from cumulative.values()
        yield from (confusion, drifts, info, events, promotions, open_predictions, oldest, watermark, delay)


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
