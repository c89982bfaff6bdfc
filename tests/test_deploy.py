"""The compose stack, checked without a container runtime (tests/test_compose.py brings it up
for real under podman):

- a real compose implementation validates docker-compose.yml;
- its wiring is checked: every command is our CLI, every SHOPSTREAM_* variable is one
  the CLI reads, Prometheus scrapes the workers' port, Grafana's paths exist;
- the topology runs natively with the services' own commands and environment
  (topics, bootstrap, two workers, feeder) against the real Kafka, scraped by a real
  Prometheus with the repo's config; every dashboard query returns data and every
  alert rule parses and evaluates; promtool checks config and rules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port
from helpers import wait_for
from cli import build_parser, env_name
from stream.owners import partition_for

pytestmark = pytest.mark.prometheus
DASHBOARD = ROOT / "dashboards" / "shopstream.json"
PROMETHEUS_YML = ROOT / "dashboards" / "prometheus" / "prometheus.yml"
ALERTS_YML = ROOT / "dashboards" / "prometheus" / "alerts.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml as a compose implementation resolves it (anchors, defaults)."""
    assert shutil.which("docker-compose"), "docker-compose missing: scripts/test.sh installs it"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPSTREAM_", "GRAFANA_", "PROMETHEUS_"))}
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def cli_env_names() -> dict[str, set[str]]:
    """Subcommand -> the SHOPSTREAM_* variables it reads."""
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return {name: {env_name(a.option_strings[0]) for a in sub._actions
                   if a.option_strings and a.option_strings[0].startswith("--") and a.dest != "help"}
            for name, sub in subparsers.choices.items()}


def bind_mounts(service: dict) -> dict[str, Path]:
    """target -> host path of a service's bind mounts (short or long volume syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        if source.startswith("/"):
            mounts[target] = Path(source)
    return mounts


def shopstream_services(compose: dict) -> dict:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("shopstream")}


def test_compose_wiring(compose):
    services = compose["services"]
    ours = shopstream_services(compose)
    assert set(ours) == {"topics", "bootstrap", "worker", "feeder"}
    env_names = cli_env_names()
    for name, service in ours.items():
        command = service["command"]
        assert command[0] == "shopstream" and command[1] in env_names, f"{name}: {command}"
        unknown = {k for k in service.get("environment", {}) if k.startswith("SHOPSTREAM_")} - env_names[command[1]]
        assert not unknown, f"{name} sets variables `shopstream {command[1]}` does not read: {unknown}"
        assert build_parser().parse_args(command[1:]).command == command[1]

    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert worker["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    # metrics stay on the compose network; only the scoring API is published, on the host's loopback,
    # on a host port the engine picks for each replica (two replicas cannot share one)
    [published] = worker["ports"]  # compose 1.29 keeps the short syntax "127.0.0.1::8080/tcp"
    host_ip, host_port, target = published.split(":") if isinstance(published, str) else \
        (published["host_ip"], published.get("published") or "", str(published["target"]))
    assert (host_ip, host_port, target.split("/")[0]) == \
        ("127.0.0.1", "", str(worker["environment"]["SHOPSTREAM_SERVE_PORT"])), published
    assert worker["environment"]["SHOPSTREAM_SERVE_HOST"] == "0.0.0.0"  # inside the container, for the publish
    assert worker["environment"]["SHOPSTREAM_ARTIFACTS"] == services["bootstrap"]["environment"]["SHOPSTREAM_OUT"]
    # What the real bring-up (tests/test_compose.py) found: the broker's and Prometheus's data
    # must live in their volumes; workers and feeder depend on kafka directly, so `down` stops them before the
    # broker (a worker still checkpointing when the broker went away was killed); podman
    # splits a ["CMD", ...] healthcheck on spaces.
    kafka = services["kafka"]
    kafka_volume = next(v.split(":")[1] for v in kafka["volumes"] if v.startswith("kafka-data:"))
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == kafka_volume
    for name in ("worker", "feeder"):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy", name
    assert worker["healthcheck"]["test"][0] == "CMD-SHELL"
    prometheus = services["prometheus"]
    tsdb = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--storage.tsdb.path="))
    assert f"prometheus-data:{tsdb}" in [":".join(v.split(":")[:2]) for v in prometheus["volumes"]]

    kafka_version = re.search(r"KAFKA_VERSION=(\S+)", (ROOT / "scripts" / "kafka.sh").read_text()).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version}"
    for service in services.values():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"unpinned image {image}"

    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"][0]["dns_sd_configs"][0]
    assert scrape["names"] == ["worker"]
    assert scrape["port"] == int(worker["environment"]["SHOPSTREAM_METRICS_PORT"])

    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "dashboards" / "grafana" / "provisioning" and provisioning.is_dir()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboards_mount = next(t for t in mounts if home.startswith(t + "/"))
    assert (mounts[dashboards_mount] / home[len(dashboards_mount) + 1:]) == DASHBOARD
    provider = yaml.safe_load((provisioning / "dashboards" / "shopstream.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == dashboards_mount
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["uid"]}
    prometheus_mounts = bind_mounts(services["prometheus"])
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_YML
    assert prometheus_mounts["/etc/prometheus/alerts.yml"] == ALERTS_YML


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends with every template variable on "All"."""
    return expr.replace("$model", ".*").replace("$worker", ".*").replace("$__rate_interval", "1m")


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params):
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str):
        return self.get("/api/v1/query", query=expr)


def _native(command: list[str], service_env: dict, replacements: dict, extra_env: dict) -> tuple[list[str], dict]:
    """A compose service's command and environment, pointed at local resources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSTREAM_")}
    for key, value in service_env.items():
        value = str(value)
        for old, new in replacements.items():
            value = value.replace(old, new)
        env[key] = value
    env.update(extra_env)
    assert command[0] == "shopstream"
    return [sys.executable, "-m", "cli", *command[1:]], env




def test_compose_topology_natively_with_real_prometheus(compose, kafka, tmp_path):
    assert shutil.which("prometheus") and shutil.which("promtool"), "scripts/test.sh installs Debian's prometheus"
    services = compose["services"]
    suffix = f"{os.getpid()}-{int(time.time())}"
    replacements = {"kafka:9092": kafka, "/artifacts": str(tmp_path / "artifacts"),
                    "/checkpoints": str(tmp_path / "checkpoints"), "/data": str(ROOT / "data"),
                    "shop-events": f"deploy-{suffix}-events", "shop-predictions": f"deploy-{suffix}-predictions"}

    def run_once(name, **extra):
        command, env = _native(services[name]["command"], services[name]["environment"], replacements, extra)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        return result.stdout

    run_once("topics")
    assert "artifacts" in run_once("bootstrap", SHOPSTREAM_GENERATE_EVENTS="8000")
    ports = [free_port(), free_port()]
    api_ports = [free_port(), free_port()]
    workers = []
    for number, port in enumerate(ports):
        command, env = _native(services["worker"]["command"], services["worker"]["environment"], replacements,
                               {"SHOPSTREAM_METRICS_HOST": "127.0.0.1", "SHOPSTREAM_METRICS_PORT": str(port),
                                "SHOPSTREAM_SERVE_HOST": "127.0.0.1", "SHOPSTREAM_SERVE_PORT": str(api_ports[number]),
                                "SHOPSTREAM_GROUP": f"deploy-{suffix}", "SHOPSTREAM_SESSION_TIMEOUT_MS": "6000",
                                # A learn topic of its own: the default one keeps every earlier run's records on a
                                # broker whose data outlives runs, and reading past them delayed learning by minutes.
                                "SHOPSTREAM_LEARN_TOPIC": f"deploy-{suffix}-learn",
                                "SHOPSTREAM_CLIENT_ID": f"worker-{number}"})
        # Logs to a file, not a pipe: a pipe read only at the end fills (64 KiB) on a slow machine,
        # and a worker then blocks on its next log line, its consumer's IO thread too.
        with open(tmp_path / f"worker-{number}.log", "w") as log_file:
            workers.append(subprocess.Popen(command, env=env, stderr=log_file, text=True))

    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(ALERTS_YML)]
    job = config["scrape_configs"][0]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in ports]}]
    local_config = tmp_path / "prometheus.yml"
    local_config.write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(local_config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS_YML)], capture_output=True, text=True)
    assert check.returncode == 0 and f"SUCCESS: {len(alert_rules())} rules found" in check.stdout, \
        check.stdout + check.stderr

    prom_port = free_port()
    with open(tmp_path / "prometheus.log", "w") as prometheus_log:
        prometheus = subprocess.Popen(["prometheus", f"--config.file={local_config}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=prometheus_log, text=True)
    api = Prometheus(f"http://127.0.0.1:{prom_port}")
    try:
        wait_for(lambda: urllib.request.urlopen(f"{api.url}/-/ready", timeout=2).status == 200, 60, "prometheus ready")
        # feeder: the compose command and env, at a rate that keeps the dashboards moving
        run_once("feeder", SHOPSTREAM_EVENTS="24000", SHOPSTREAM_RATE="3000")

        seen: dict[str, object] = {}

        def everything_scraped():
            for name, expr in (("up", 'sum(up{job="shopstream-workers"})'),
                               ("learned", 'sum(shopstream_events_total{outcome="learned"})'),
                               ("consumed rate", 'sum(rate(shopstream_events_total{outcome="consumed"}[1m]))')):
                result = api.query(expr)["data"]["result"]
                seen[name] = float(result[0]["value"][1]) if result else None
            return seen["up"] == 2 and (seen["learned"] or 0) > 5000 and seen["consumed rate"] is not None
        try:
            wait_for(everything_scraped, 120, "both workers scraped with learned events")
        except TimeoutError as error:
            dead = [(tmp_path / f"worker-{n}.log").read_text()[-3000:] for n, w in enumerate(workers)
                    if w.poll() is not None]
            raise TimeoutError(f"{error}; last seen {seen}; workers alive: {[w.poll() is None for w in workers]}"
                               + "".join(f"\na stopped worker's last words:\n{log}" for log in dead)) from None
        # The scoring API as compose configures it: one worker answers for users of every partition,
        # forwarding those of the other worker's partitions to it. A recorded score is answered when its
        # partition's worker reaches the event: first let the workers catch up with the feed, each holding
        # its share of the partitions (both scraped is not enough: the second worker's join may still be
        # rebalancing the group, and then the first holds all four and forwards nothing).
        def caught_up():
            lag = api.query("sum(shopstream_consumer_lag)")["data"]["result"]
            holders = api.query("count(shopstream_assigned_partitions > 0)")["data"]["result"]
            held = api.query("sum(shopstream_assigned_partitions)")["data"]["result"]
            return (lag and float(lag[0]["value"][1]) == 0 and holders and float(holders[0]["value"][1]) == 2
                    and held and float(held[0]["value"][1]) == 4)
        try:
            wait_for(caught_up, 120, "workers caught up with the feed, two partitions each")
        except TimeoutError as error:
            held = {q: api.query(q)["data"]["result"] for q in ("shopstream_assigned_partitions",
                                                                 "sum(shopstream_consumer_lag)")}
            raise TimeoutError(f"{error}; seen {held}; workers alive: {[w.poll() is None for w in workers]}") from None
        users, covered = [], set()
        for number in range(1000):
            partition = partition_for(f"deploy-user-{number}", 4)  # SHOPSTREAM_PARTITIONS' default
            if partition not in covered:
                covered.add(partition)
                users.append(f"deploy-user-{number}")

        def score(user: str) -> dict:
            """POST /score as a client should: with an event id of its own, so that after a 503 (a
            partition moving, its owner not known yet) or a 504 (not answered in time) the same
            request is sent again, for up to 60 s, and scored once; each refusal's reason is kept."""
            body = json.dumps({"user_id": user, "user_session": f"{user}-s", "product_id": "p1",
                               "event_type": "view", "event_id": f"deploy-{suffix}-{user}"}).encode()
            deadline, refusals = time.time() + 60, []
            while True:
                request = urllib.request.Request(f"http://127.0.0.1:{api_ports[0]}/score", method="POST", data=body)
                try:
                    return json.loads(urllib.request.urlopen(request, timeout=30).read())
                except urllib.error.HTTPError as error:
                    refusals.append(error.read().decode(errors="replace").strip())
                    if error.code not in (503, 504) or time.time() > deadline:
                        raise AssertionError(f"/score for {user}: {error.code}; answers: {refusals[-3:]}") from None
                    time.sleep(0.5)
        for user in users:
            answer = score(user)
            assert answer["recorded"] and 0 <= answer["score"] <= 1, answer
        time.sleep(3)
        forwarded = api.query('sum(shopstream_score_forwarded_total{outcome="answered"})')["data"]["result"]
        assert forwarded and float(forwarded[0]["value"][1]) > 0, "no request was forwarded to the other worker"

        empty = []
        for title, expr in dashboard_queries():
            answer = api.query(grafana_to_promql(expr))
            assert answer["status"] == "success", (title, expr, answer)
            if not answer["data"]["result"]:
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        for variable in ("model", "instance"):
            metric = "shopstream_model_info" if variable == "model" else "shopstream_assigned_partitions"
            values = api.get(f"/api/v1/label/{variable}/values", **{"match[]": metric})["data"]
            assert values, f"template variable {variable} has no values"
        for alert, expr in alert_rules():
            assert api.query(expr)["status"] == "success", alert
        for annotation in json.loads(DASHBOARD.read_text())["annotations"]["list"]:
            assert api.query(annotation["expr"])["status"] == "success", annotation["name"]
        wait_for(lambda: all(rule["health"] == "ok" for group in api.get("/api/v1/rules")["data"]["groups"]
                          for rule in group["rules"]) and api.get("/api/v1/rules")["data"]["groups"], 30,
              "alert rules evaluated")
        firing = api.query('ALERTS{alertname="ShopstreamWorkerDown"}')["data"]["result"]
        assert not firing, "both workers are up: WorkerDown must not fire"
    finally:
        prometheus.send_signal(signal.SIGTERM)
        prometheus.wait(timeout=30)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
        logs = [(tmp_path / f"worker-{number}.log").read_text() for number in range(len(workers))]
        if sys.exc_info()[0] is not None:   # failing: what the workers said (pytest shows it with the failure)
            for number, log in enumerate(logs):
                print(f"--- worker {number}'s log, its end:\n{log[-6000:]}")
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert all("assigned partition" in log for log in logs), "each worker must own partitions"
