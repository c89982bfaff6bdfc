"""The metrics endpoint: prometheus_client's exposition (content negotiation, gzip) with
/healthz and /readyz beside it, bound to 127.0.0.1 unless told otherwise."""

import gzip
import os
import signal
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from conftest import WORKER_ENV, LoggedProcess, free_port, worker_command
from helpers import readyz, wait_for
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


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from the kernel's own tables."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    packed = bytes.fromhex(address)
                    # the kernel prints each 32-bit word in host (little-endian) order
                    packed = b"".join(packed[i:i + 4][::-1] for i in range(0, len(packed), 4))
                    found.add(socket.inet_ntop(family, packed))
    return found


def answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def other_local_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def assert_loopback_only(port: int) -> None:
    assert listening_addresses(port) == {"127.0.0.1"}
    assert answers("127.0.0.1", port)
    assert not answers("127.0.0.2", port)  # also loopback: a wildcard bind would answer here
    other = other_local_address()
    if other is not None:
        assert not answers(other, port), f"metrics answer on {other}"


def test_metrics_server_binds_127_0_0_1_by_default():
    server = MetricsServer(CollectorRegistry(), port=0).start()
    try:
        assert server.httpd.socket.getsockname() == ("127.0.0.1", server.port)
        assert_loopback_only(server.port)
    finally:
        server.stop()


@pytest.mark.kafka
def test_worker_metrics_bind_127_0_0_1_by_default(kafka, new_topic, tmp_path):
    topic = new_topic(1)
    port = free_port()
    env = {name: value for name, value in WORKER_ENV.items() if name != "SHOPSTREAM_METRICS_HOST"}
    worker = LoggedProcess(worker_command(kafka, topic, tmp_path / "ckpt", "--metrics-port", str(port)),
                           tmp_path / "worker.log", env)
    try:
        # ready: the worker has joined, so its signal handlers are in place
        wait_for(lambda: readyz(port) == 200 or worker.proc.poll() is not None, 90, "worker ready")
        assert worker.proc.poll() is None, "worker exited"
        assert_loopback_only(port)
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        log = worker.finish(timeout=60)
    assert worker.proc.returncode == 0, log[-2000:]
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log


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


def test_a_flood_of_idle_connections_holds_a_bounded_number_of_threads(monkeypatch):
    """200 idle connections used to hold 200 threads for ever (and a listen backlog of 5 made
    connects time out). Now at most 32 are served at once and the rest are closed at once."""
    import threading

    from shopstream import exporter

    monkeypatch.setattr(exporter._QuietHandler, "timeout", 300.0)   # none times out during the test
    server = MetricsServer(CollectorRegistry(), port=0).start()
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(200)]
    try:
        wait_for(lambda: server.httpd.refused == 200 - 32, 60, "every connection past the bound refused")
        assert threading.active_count() - before == 32
    finally:
        for conn in idle:
            conn.close()
    wait_for(lambda: threading.active_count() == before, 60, "the threads of closed connections ended")
    assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    assert server.httpd.request_queue_size >= 128   # the listen backlog
    server.stop()


def test_an_idle_connection_is_closed_by_the_server(monkeypatch):
    from shopstream import exporter

    assert exporter._QuietHandler.timeout is not None and exporter._QuietHandler.timeout <= 30
    monkeypatch.setattr(exporter._QuietHandler, "timeout", 0.5)
    server = MetricsServer(CollectorRegistry(), port=0).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as conn:
        assert conn.recv(1) == b"", "closed by the server, its thread ended"
    server.stop()
