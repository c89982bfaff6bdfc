"""docker-compose.yml brought up for real, by a container runtime.

scripts/compose/runtime.sh prepares the runtime this machine kind allows (Debian's podman as
root behind its Docker-compatible socket, Debian's docker-compose 1.29, stand-in images for
python, apache/kafka and prom/prometheus built from a debootstrapped Debian, since no image
registry is reachable). Then the repository's own docker-compose.yml and Dockerfile run,
unchanged but for environment variables the file itself reads, with every service but Grafana
(no registry has its image; tests/test_deploy.py validates its provisioning):

1. `up --build`: topics, bootstrap and feeder exit 0, both worker replicas become healthy and
   run the engine the image compiled, Prometheus finds both by DNS and scrapes them, the
   workers' consumed events add up to what the feeder sent (per partition, to Kafka's end
   offsets), every dashboard query returns data and every alert rule evaluates healthy;
2. one worker container is stopped: the other takes its partitions over from their checkpoints
   and consumes what is fed next; per partition, consumed == end offset (nothing lost, nothing
   counted twice) and no event is a duplicate;
3. `down` (volumes kept) and `up` again: Kafka's data and the checkpoints survive; every
   partition resumes from its checkpoint at the offset where it stopped, with the model versions
   it had (not the freshly bootstrapped ones), and only new events are consumed.

Teardown (`down -v`) always runs. If the runtime cannot be prepared or started, the test fails
with the reason: it never skips.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port
from shopstream.compiled import MODULES
from test_deploy import Prometheus, alert_rules, dashboard_queries, grafana_to_promql

pytestmark = [pytest.mark.compose, pytest.mark.timeout(2400)]

RUNTIME = ROOT / "scripts" / "compose" / "runtime.sh"
PROJECT = "shopstream-compose-test"
PARTITIONS = 4
FEEDS = [20_000, 10_000, 10_000]    # events fed at bring-up, after the failover, after down/up
# Container logs of the last run (before `down` and on failure), outside pytest's rotating tmp.
LOGS = Path(os.environ.get("SHOPSTREAM_COMPOSE_STATE", "/var/tmp/shopstream-compose")) / "last-run"
DNS_FAILURE = re.compile(r"name resolution|Name or service not known|NoBrokersAvailable|nodename nor servname",
                         re.IGNORECASE)


def run(command: list[str], env: dict | None = None, timeout: float = 900, check: bool = True,
        what: str = "") -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{what or ' '.join(command)} exited {result.returncode}:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False)
    return result


class Broken(AssertionError):
    """Raised by a `wait` predicate when waiting longer cannot help."""


def wait(predicate, timeout: float, what: str, every: float = 2.0, describe=None):
    """Poll until `predicate()` is truthy and return it; fail naming `what` (and the last state).
    A predicate that fails (a command inside a container under load, say) counts as false."""
    deadline = time.time() + timeout
    error = None
    while True:
        try:
            value, error = predicate(), None
        except Broken:
            raise
        except (Exception, pytest.fail.Exception) as exc:
            value, error = None, f"{type(exc).__name__}: {str(exc)[-1500:]}"
        if value:
            return value
        if time.time() > deadline:
            try:
                state = describe() if describe else value
            except (Exception, pytest.fail.Exception) as exc:
                state = f"(could not describe: {exc})"
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last state: {state}"
                        + (f"; last error: {error}" if error else ""), pytrace=False)
        time.sleep(every)


def runtime_env() -> dict:
    """os.environ with the runtime's variables, without the SHOPSTREAM_*/GRAFANA_* of the caller."""
    out = run(["bash", str(RUNTIME), "env"], what="runtime.sh env").stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPSTREAM_", "GRAFANA_", "PROMETHEUS_"))}
    env.update(dict(re.findall(r"^export (\w+)=(.*)$", out, re.MULTILINE)))
    return env


class Stack:
    """The compose project, driven through docker-compose, inspected through podman."""

    def __init__(self, env: dict, settings: dict):
        self.env = env
        self.settings = settings
        self.compose = ["docker-compose", "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml")]
        self.log: list[str] = []

    def say(self, line: str):
        print(f"[compose] {line}", flush=True)
        self.log.append(line)

    def dc(self, *args, timeout: float = 900, check: bool = True, extra_env: dict | None = None):
        env = {**self.env, **self.settings, **(extra_env or {})}
        return run([*self.compose, *args], env=env, timeout=timeout, check=check,
                   what="docker-compose " + " ".join(args))

    def podman(self, *args, timeout: float = 120, check: bool = True):
        return run(["podman", *args], env=self.env, timeout=timeout, check=check, what="podman " + " ".join(args[:2]))

    def services(self) -> list[str]:
        names = self.dc("config", "--services").stdout.split()
        return [name for name in names if name != "grafana"]   # no reachable registry has Grafana's image

    def containers(self) -> list[dict]:
        ids = self.podman("ps", "-a", "-q", "--no-trunc", "--filter",
                          f"label=com.docker.compose.project={PROJECT}").stdout.split()
        if not ids:
            return []
        inspected = json.loads(self.podman("inspect", *ids).stdout)
        out = []
        for c in inspected:
            labels = c["Config"].get("Labels") or {}
            health = (c["State"].get("Health") or c["State"].get("Healthcheck") or {}).get("Status", "")
            networks = c.get("NetworkSettings", {}).get("Networks") or {}
            out.append({"id": c["Id"], "name": c["Name"].lstrip("/"),
                        "service": labels.get("com.docker.compose.service"),
                        "number": int(labels.get("com.docker.compose.container-number", "0")),
                        "oneoff": labels.get("com.docker.compose.oneoff") == "True",
                        "status": c["State"]["Status"], "exit_code": c["State"]["ExitCode"], "health": health,
                        "ips": [n.get("IPAddress") for n in networks.values() if n.get("IPAddress")]})
        return sorted(out, key=lambda c: (c["service"] or "", c["number"]))

    def of(self, service: str) -> list[dict]:
        return [c for c in self.containers() if c["service"] == service and not c["oneoff"]]

    def logs(self, container: dict, tail: int | None = None) -> str:
        args = ["logs"] + (["--tail", str(tail)] if tail else []) + [container["id"]]
        result = self.podman(*args, check=False)
        return result.stdout + result.stderr

    def summary(self) -> str:
        return ", ".join(f"{c['name']}={c['status']}({c['exit_code']}){'/' + c['health'] if c['health'] else ''}"
                         for c in self.containers())

    def python(self, container: dict, code: str) -> str:
        return self.podman("exec", container["id"], "python", "-c", code).stdout

    def metrics(self, worker: dict) -> dict:
        """A worker's /metrics, read inside its container: {(name, sorted labels): value}."""
        text = self.python(worker, "import urllib.request; print(urllib.request.urlopen("
                                   "'http://127.0.0.1:9108/metrics', timeout=5).read().decode())")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def end_offsets(self, worker: dict) -> dict[int, int]:
        """shop-events' end offset per partition, asked from inside a worker container."""
        code = ("import json; from kafka import KafkaConsumer, TopicPartition\n"
                "c = KafkaConsumer(bootstrap_servers='kafka:9092')\n"
                "tps = [TopicPartition('shop-events', p) for p in sorted(c.partitions_for_topic('shop-events'))]\n"
                "print(json.dumps({tp.partition: o for tp, o in c.end_offsets(tps).items()})); c.close()")
        return {int(p): o for p, o in json.loads(self.python(worker, code).strip().splitlines()[-1]).items()}

    def dump_logs(self, path: Path, quiet: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for c in self.containers():
                out.write(f"===== {c['name']} {c['status']} exit={c['exit_code']} {c['health']}\n")
                out.write(self.logs(c))
        print(f"[compose] container logs: {path}")
        for c in [] if quiet else self.containers():
            if c["status"] != "running" and c["exit_code"] != 0 or c["health"] == "unhealthy":
                print(f"----- {c['name']} (last lines)\n{self.logs(c, tail=40)}")


def per_partition(metrics: dict, name: str, **labels) -> dict[int, float]:
    out = {}
    for (metric, items), value in metrics.items():
        items = dict(items)
        if metric == name and all(items.get(k) == v for k, v in labels.items()) and "partition" in items:
            out[int(items["partition"])] = out.get(int(items["partition"]), 0) + value
    return out


def assignments(log: str) -> list[tuple[int, str, int]]:
    """The worker's 'assigned partition P: ORIGIN, next offset N' lines."""
    return [(int(p), origin, int(offset))
            for p, origin, offset in re.findall(r"assigned partition (\d+): (\S+), next offset (\d+)", log)]


def fed(log: str, expected: int) -> int:
    match = re.search(r"sent (\d+) events to shop-events; rejected (\d+)", log)
    assert match, f"feeder printed no total:\n{log[-2000:]}"
    sent, rejected = int(match.group(1)), int(match.group(2))
    assert (sent, rejected) == (expected, 0), (sent, rejected)
    return sent


def bring_up(stack: Stack, services: list[str], label: str, build: bool = False) -> float:
    """`up -d` and wait for the one-shot services; retried once (after `down`, volumes kept) when
    the first attempt fails, since container DNS (aardvark-dns 1.4) failed about once in 35 starts."""
    for attempt in (1, 2):
        t0 = time.time()
        up = stack.dc("up", "-d", *(["--build"] if build else []), *services, timeout=1500, check=False)
        failed = [] if up.returncode == 0 else [f"up exited {up.returncode}: {up.stderr[-1500:]}"]
        if not failed:
            def one_shots_done():
                done = {c["service"]: c for c in stack.containers()
                        if c["service"] in ("topics", "bootstrap", "feeder") and not c["oneoff"]}
                return len(done) == 3 and all(c["status"] == "exited" for c in done.values()) and done
            done = wait(one_shots_done, 600, f"{label}: topics, bootstrap and feeder to finish",
                        describe=stack.summary)
            failed = [f"{name} exited {c['exit_code']}:\n{stack.logs(c, tail=30)}"
                      for name, c in done.items() if c["exit_code"] != 0]
        if not failed:
            seconds = time.time() - t0
            stack.say(f"{label}: up and one-shot services done in {seconds:.0f} s (attempt {attempt})")
            return seconds
        reason = "\n".join(failed)
        if attempt == 2:
            pytest.fail(f"{label}: bring-up failed twice; last reason:\n{reason}", pytrace=False)
        dns = bool(DNS_FAILURE.search(reason))
        message = f"{label}: bring-up failed ({'container DNS' if dns else 'see reason'}), retrying once:\n{reason}"
        stack.say(message)
        warnings.warn(message, stacklevel=2)
        stack.dc("down", "--remove-orphans", timeout=300, check=False)


def healthy_workers(stack: Stack, count: int, label: str) -> list[dict]:
    def ready():
        workers = [w for w in stack.of("worker") if w["status"] == "running"]
        return workers if len(workers) == count and all(w["health"] == "healthy" for w in workers) else None
    return wait(ready, 180, f"{label}: {count} healthy worker(s)", describe=stack.summary)


def settled(stack: Stack, workers: list[dict], expected_total: int, label: str):
    """Wait until the workers own every partition and have consumed up to every end offset (the
    engine counters are exported from a snapshot taken every few seconds, so they trail
    next_offset a little); return (end offsets, merged metrics). Fails at once if a partition
    counts more consumed events than it holds."""
    state = {}

    def caught_up():
        ends = stack.end_offsets(workers[0])
        merged = {}
        for worker in workers:
            merged.update(stack.metrics(worker))
        nexts = per_partition(merged, "shopstream_next_offset")
        consumed = per_partition(merged, "shopstream_events_total", outcome="consumed")
        state.update(ends=ends, next_offsets=nexts, consumed=consumed)
        over = {p: (consumed[p], ends[p]) for p in ends if consumed.get(p, 0) > ends[p]}
        if over:
            raise Broken(f"{label}: consumed events above the partition's end offset (counted twice): {over}")
        target = {p: float(o) for p, o in ends.items()}
        if sum(ends.values()) == expected_total and len(ends) == PARTITIONS and nexts == target and consumed == target:
            return ends, merged
        return None
    return wait(caught_up, 300, f"{label}: workers at the end of every partition, every event consumed once "
                f"({expected_total} events)", every=3.0, describe=lambda: state)


def check_counts(ends: dict[int, int], metrics: dict, label: str):
    consumed = per_partition(metrics, "shopstream_events_total", outcome="consumed")
    duplicates = per_partition(metrics, "shopstream_events_total", outcome="duplicate")
    assert consumed == {p: float(o) for p, o in ends.items()}, \
        f"{label}: consumed per partition {consumed} != end offsets {ends} (lost or counted twice)"
    assert not any(duplicates.values()), f"{label}: duplicates {duplicates}"


def test_compose_stack_for_real():
    t_start = time.time()
    prepare = subprocess.run(["bash", str(RUNTIME), "prepare"], capture_output=True, text=True, timeout=1800)
    if prepare.returncode != 0:
        pytest.fail(f"container runtime could not be prepared (scripts/compose/runtime.sh prepare):\n"
                    f"{prepare.stderr[-4000:]}", pytrace=False)
    status = subprocess.run(["bash", str(RUNTIME), "status"], capture_output=True, text=True)
    started_runtime = status.returncode != 0
    if started_runtime:
        start = subprocess.run(["bash", str(RUNTIME), "start"], capture_output=True, text=True, timeout=120)
        if start.returncode != 0:
            pytest.fail(f"container runtime could not start (scripts/compose/runtime.sh start):\n"
                        f"{start.stderr[-4000:]}", pytrace=False)
    env = runtime_env()
    prom_port = free_port()
    stack = Stack(env, {"SHOPSTREAM_BOOTSTRAP_EVENTS": "8000", "SHOPSTREAM_FEED_EVENTS": str(FEEDS[0]),
                        "SHOPSTREAM_FEED_RATE": "2000", "SHOPSTREAM_FEED_SEED": "101",
                        "SHOPSTREAM_PARTITIONS": str(PARTITIONS), "PROMETHEUS_PORT": f"127.0.0.1:{prom_port}"})
    stack.say(f"runtime prepared in {time.time() - t_start:.0f} s")
    stack.dc("down", "-v", "--remove-orphans", timeout=300, check=False)   # leftovers of an interrupted run
    ok = False
    try:
        services = stack.services()
        assert "grafana" not in services
        assert {"kafka", "topics", "bootstrap", "worker", "feeder", "prometheus"} <= set(services)

        # 1. bring-up
        bring_up(stack, services, "bring-up", build=True)
        one_shots = {c["service"]: c for c in stack.containers() if c["service"] in ("topics", "bootstrap", "feeder")}
        assert {name: c["exit_code"] for name, c in one_shots.items()} == {"topics": 0, "bootstrap": 0, "feeder": 0}
        fed(stack.logs(one_shots["feeder"]), FEEDS[0])
        workers = healthy_workers(stack, 2, "bring-up")
        stack.say(f"bring-up: topics, bootstrap, feeder exited 0; workers {[w['name'] for w in workers]} healthy "
                  f"{time.time() - t_start:.0f} s after the test started")
        ends, metrics = settled(stack, workers, FEEDS[0], "bring-up")
        check_counts(ends, metrics, "bring-up")
        for worker in workers:
            owned = stack.metrics(worker)[("shopstream_assigned_partitions", ())]
            assert owned >= 1, f"{worker['name']} owns no partition"
            # the Dockerfile's first stage compiled the engine, and the workers run that build
            assert f"engine: compiled: {', '.join(MODULES)}\n" in stack.logs(worker), stack.logs(worker, 40)
        stack.say(f"bring-up: {FEEDS[0]} events fed, consumed per partition = end offsets {ends}")

        api = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait(lambda: _answers(api), 120, "Prometheus ready")
        worker_ips = sorted(ip for w in workers for ip in w["ips"])

        def targets_up():
            active = api.get("/api/v1/targets")["data"]["activeTargets"]
            up = sorted(t["discoveredLabels"]["__address__"].rsplit(":", 1)[0] for t in active if t["health"] == "up")
            return up == worker_ips and len(active) == 2
        wait(targets_up, 120, "Prometheus: both workers as targets, up",
             describe=lambda: api.get("/api/v1/targets")["data"]["activeTargets"])

        def prometheus_total():
            result = api.query('sum(shopstream_events_total{outcome="consumed"})')["data"]["result"]
            return result and float(result[0]["value"][1]) == FEEDS[0]
        wait(prometheus_total, 120, f"Prometheus: {FEEDS[0]} consumed events summed over the workers",
             describe=lambda: api.query('sum by (instance) (shopstream_events_total{outcome="consumed"})'))
        stack.say(f"Prometheus: targets {worker_ips} up; sum of consumed events = {FEEDS[0]}")
        history_at = time.time()

        def empty_queries():
            empty = [f"{title}: {expr}" for title, expr in dashboard_queries()
                     if not api.query(grafana_to_promql(expr))["data"]["result"]]
            return empty
        last = {}
        wait(lambda: not last.update(empty=empty_queries()) and not last["empty"], 120,
             "every dashboard query to return data", every=5.0, describe=lambda: last)
        for variable, metric in (("model", "shopstream_model_info"), ("instance", "shopstream_assigned_partitions")):
            assert api.get(f"/api/v1/label/{variable}/values", **{"match[]": metric})["data"], variable

        def rules_healthy():
            groups = api.get("/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return len(rules) == len(alert_rules()) and all(
                r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in rules)
        wait(rules_healthy, 120, f"all {len(alert_rules())} alert rules evaluated healthy", every=5.0,
             describe=lambda: [(r["name"], r["health"], r.get("lastError"))
                               for g in api.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]])
        assert not api.query('ALERTS{alertname="ShopstreamWorkerDown"}')["data"]["result"]
        stack.say(f"Prometheus: {len(dashboard_queries())} dashboard queries return data; "
                  f"{len(alert_rules())} alert rules healthy")

        # 2. one worker container stops; the other takes its partitions over
        victim, survivor = workers
        victim_partitions = sorted(per_partition(stack.metrics(victim), "shopstream_next_offset"))
        t0 = time.time()
        stack.podman("stop", "-t", "60", victim["id"])
        stopped = next(c for c in stack.containers() if c["id"] == victim["id"])
        assert stopped["exit_code"] == 0, f"stopped worker exited {stopped['exit_code']}:\n{stack.logs(stopped, 30)}"
        wait(lambda: stack.metrics(survivor)[("shopstream_assigned_partitions", ())] == PARTITIONS, 180,
             f"{survivor['name']} to own all {PARTITIONS} partitions")
        stack.say(f"failover: {victim['name']} stopped (exit 0); {survivor['name']} owns all partitions "
                  f"after {time.time() - t0:.0f} s")
        feed = stack.dc("run", "--rm", "--no-deps", "-T", "-e", f"SHOPSTREAM_EVENTS={FEEDS[1]}",
                        "-e", "SHOPSTREAM_SEED=102", "feeder", timeout=600)
        fed(feed.stdout + feed.stderr, FEEDS[1])
        ends2, metrics = settled(stack, [survivor], sum(FEEDS[:2]), "failover")
        check_counts(ends2, metrics, "failover")
        taken = [(p, origin, offset) for p, origin, offset in assignments(stack.logs(survivor))
                 if p in victim_partitions]
        assert taken and all(origin == "checkpoint" for _, origin, _ in taken[-len(victim_partitions):]), taken
        stack.say(f"failover: {FEEDS[1]} more events; survivor took partitions {victim_partitions} from checkpoints "
                  f"{taken[-len(victim_partitions):]}; consumed per partition = end offsets {ends2}")
        versions = {(dict(k)["partition"], dict(k)["role"], dict(k)["model"]): dict(k)["version"]
                    for (name, k) in metrics if name == "shopstream_model_info"}

        # 3. down (volumes kept) and up again
        # `down` stops containers (SIGTERM, 10 s, then SIGKILL) and removes them: stop first
        # to see that every worker checkpointed and exited by itself.
        t0 = time.time()
        stack.dc("stop", timeout=300)
        stack.dump_logs(LOGS / "before-down.txt", quiet=True)
        exits = {c["name"]: c["exit_code"] for c in stack.containers() if c["service"] in ("worker", "kafka")}
        # the JVM exits 143 after its shutdown hooks ran on SIGTERM; 137 is a kill after the grace period
        assert all(code == 0 or name.endswith("kafka_1") and code == 143 for name, code in exits.items()), \
            f"stop: exit codes {exits} (137: killed after the grace period)"
        stack.say(f"stop: workers exited 0, kafka {exits[PROJECT + '_kafka_1']}, in {time.time() - t0:.0f} s")
        stack.dc("down", timeout=300)
        volumes = stack.podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
        named = {f"{PROJECT}_{v}" for v in ("kafka-data", "artifacts", "checkpoints", "prometheus-data")}
        assert named <= set(volumes), volumes
        stack.settings.update(SHOPSTREAM_FEED_EVENTS=str(FEEDS[2]), SHOPSTREAM_FEED_SEED="103")
        bring_up(stack, services, "up again")
        feeder = next(c for c in stack.containers() if c["service"] == "feeder")
        fed(stack.logs(feeder), FEEDS[2])
        workers = healthy_workers(stack, 2, "up again")
        ends3, metrics = settled(stack, workers, sum(FEEDS), "up again")
        check_counts(ends3, metrics, "up again")
        first = {}
        for worker in workers:
            for p, origin, offset in assignments(stack.logs(worker)):
                first.setdefault(p, []).append((origin, offset))
        assert sorted(first) == list(range(PARTITIONS)), first
        for p, seen in first.items():
            assert all(origin == "checkpoint" for origin, _ in seen), f"partition {p} not from its checkpoint: {seen}"
            assert min(offset for _, offset in seen) == ends2[p], \
                f"partition {p} resumed at {seen}, stopped at {ends2[p]}"
        versions3 = {(dict(k)["partition"], dict(k)["role"], dict(k)["model"]): dict(k)["version"]
                     for (name, k) in metrics if name == "shopstream_model_info"}
        baseline = {k: v for k, v in versions.items() if k[1] == "baseline"}
        assert baseline and all(versions3.get(k) == v for k, v in baseline.items()), (baseline, versions3)
        wait(lambda: _answers(api), 120, "Prometheus ready again")
        then = api.get("/api/v1/query", query='sum(shopstream_events_total{outcome="consumed"})', time=history_at)
        assert [float(r["value"][1]) for r in then["data"]["result"]] == [FEEDS[0]], \
            f"Prometheus lost its history across down/up: {then}"
        stack.say(f"up again: Kafka kept {sum(ends2.values())} events; partitions resumed from checkpoints at "
                  f"{ {p: min(o for _, o in s) for p, s in sorted(first.items())} }; {FEEDS[2]} new events; "
                  f"consumed per partition = end offsets {ends3}; baseline versions unchanged; "
                  f"Prometheus kept its history")
        ok = True
    except BaseException:
        stack.dump_logs(LOGS / "failure.txt")
        raise
    finally:
        if os.environ.get("SHOPSTREAM_COMPOSE_KEEP") and not ok:
            stack.say(f"SHOPSTREAM_COMPOSE_KEEP set: stack {PROJECT} left up for inspection")
        else:
            t0 = time.time()
            down = stack.dc("down", "-v", "--remove-orphans", timeout=300, check=False)
            stack.say(f"teardown: down -v exited {down.returncode} in {time.time() - t0:.0f} s")
            if started_runtime:
                subprocess.run(["bash", str(RUNTIME), "stop"], capture_output=True, text=True, timeout=60)
            stack.say(f"total {time.time() - t_start:.0f} s")
            if ok:
                assert down.returncode == 0, f"teardown failed: {down.stderr[-2000:]}"


def _answers(api: Prometheus) -> bool:
    try:
        return urllib.request.urlopen(f"{api.url}/-/ready", timeout=2).status == 200
    except OSError:
        return False
