"""The metrics endpoint: prometheus_client's exposition (content negotiation, gzip) with
/healthz and /readyz beside it."""

import gzip
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.exporter import EngineCollector, MetricsServer
from shopstream.generator import generate


@pytest.fixture
def served():
    engine = Engine.fresh("logreg", "shop")
    for record in generate(3000, seed=5):
        engine.process(event_from_record(record))
    engine.counts["promotions"] = 2  # as if two champions had changed
    registry = CollectorRegistry()
    registry.register(EngineCollector(lambda: [({"partition": 0}, engine, {"dead_lettered": 1})]))
    ready = [True]
    server = MetricsServer(registry, port=0, ready=lambda: ready[0]).start()
    yield f"http://127.0.0.1:{server.port}", ready
    server.stop()


def get(url: str, **headers):
    try:
        answer = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    return answer.status, dict(answer.headers), answer.read()


def test_health_readiness_and_unknown_paths(served):
    url, ready = served
    assert get(url + "/healthz")[::2] == (200, b"ok\n")
    assert get(url + "/readyz")[::2] == (200, b"ready\n")
    ready[0] = False
    assert get(url + "/readyz")[::2] == (503, b"not ready\n")
    assert get(url + "/healthz")[0] == 200  # alive, though not ready
    assert get(url + "/nope")[::2] == (404, b"not found\n")


def test_metrics_in_the_text_format_the_dashboards_read(served):
    url, _ = served
    status, headers, body = get(url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    slot = {"model": "logreg", "role": "champion", "partition": "0"}
    assert samples[("shopstream_model_info", frozenset({**slot, "version": "fresh"}.items()))] == 1
    engine = {"model": "logreg", "partition": "0"}
    assert samples[("shopstream_promotions_total", frozenset(engine.items()))] == 2
    outcomes = {dict(labels)["outcome"] for name, labels in samples if name == "shopstream_events_total"}
    assert {"consumed", "predicted", "learned", "dead_lettered"} <= outcomes
    assert "promotions" not in outcomes  # counted once, by shopstream_promotions_total


def test_metrics_negotiate_openmetrics_and_gzip(served):
    url, _ = served
    status, headers, body = get(url + "/metrics", Accept="application/openmetrics-text; version=1.0.0",
                                **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    families = {family.name: family for family in openmetrics_families(gzip.decompress(body).decode())}
    info = families["shopstream_model"]
    assert info.type == "info"
    [sample] = info.samples
    assert sample.name == "shopstream_model_info" and sample.value == 1
    assert sample.labels == {"model": "logreg", "role": "champion", "partition": "0", "version": "fresh"}
