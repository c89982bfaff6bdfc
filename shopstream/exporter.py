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
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

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
        # promotions have their own counter (shopstream_promotions_total), not an event outcome
        counts = {name: count for name, count in engine.counts.items() if name != "promotions"}
        return cls(engine.champion_slot.name, slots, {**counts, **joiner.counts, **(extra or {})},
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
        info = InfoMetricFamily("shopstream_model", "Model versions serving a partition, by role",
                                labels=slot_labels)  # exposed as shopstream_model_info{..., version} 1
        events = CounterMetricFamily("shopstream_events",
                                     "Events by outcome (consumed, predicted, resolved, learned, ...)",
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
                info.add_metric(values, {"version": slot.version})
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


class _QuietHandler(WSGIRequestHandler):
    timeout = 10.0   # an idle or trickling connection is closed, and its thread ends, after this

    def log_message(self, format, *args):  # scrapes every few seconds would flood the log
        pass


class _BoundedServer(ThreadingWSGIServer):
    """A thread per connection, at most `max_connections` at once: a flood of idle connections
    held a thread each, for ever. A connection past the bound is closed at once (counted in
    `refused`); each one's socket times out after `_QuietHandler.timeout`."""

    request_queue_size = 128   # the listen backlog (socketserver's 5: connects timed out under a burst)
    max_connections = 32

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def metrics_app(registry: CollectorRegistry, ready: Callable[[], bool] = lambda: True):
    """A WSGI app: /metrics is prometheus_client's own (text or OpenMetrics as the scraper
    asks, gzip when it accepts it), /healthz answers while the process is alive, /readyz 200
    while `ready()` is true and 503 otherwise; any other path is 404."""
    metrics = make_wsgi_app(registry)

    def text(start_response, status: str, body: bytes):
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            return text(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            return text(start_response, "200 OK", b"ready\n") if ready() else \
                text(start_response, "503 Service Unavailable", b"not ready\n")
        return text(start_response, "404 Not Found", b"not found\n")

    return app


class MetricsServer:
    """`metrics_app` served on host:port (127.0.0.1 unless told otherwise) from a daemon thread.
    The socket is bound here, so a port in use fails at construction; port 0 takes a free one
    (then read `port`)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9108,
                 ready: Callable[[], bool] = lambda: True):
        self.httpd = make_server(host, port, metrics_app(registry, ready), _BoundedServer,
                                 handler_class=_QuietHandler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which never ran otherwise
            self.httpd.shutdown()
        self.httpd.server_close()
