"""Latency and load of the scoring API (issue 23), with a real HTTP load generator, the code
before a change and after it in one run, in alternating order.

Per worker run (one worker: the production command line, shop features, default checkpoints,
the scoring API on loopback, on a 1-partition topic pre-filled with `--state` events and two
backlogs of `--backlog` events each, all in Kafka before the worker starts):

1. capacity: the first backlog is worked off with no API load: C events/s;
2. the second while vegeta sends `POST /score/whatif` at 200 requests/s: what the API costs the
   stream's throughput (C1 / C);
3. the shop's stream is fed at `--feed-fraction` (0.5) x the first run's capacity C, as issue 23
   asks ("while the same worker consumes the event stream at half its capacity"; the same feed for
   every run: a paced producer, keyed by user; the run prints C and how it was measured), and
   vegeta sends `--requests` requests at 200/s and then at 1,000/s, first `POST /score`
   (recorded: each request its own event id, written to the events topic and answered once the
   worker processed it), then `POST /score/whatif`.
   vegeta reports p50/p90/p99/max and every non-200 answer.

Runs: `--rounds` pairs of (before, after), the order alternating (before, after, after, before,
...), so a machine whose load drifts during the run favours neither. "after" is this checkout;
"before" is `--before REV` (default: the commit before the scoring API's clerk, found in git),
extracted with `git archive` and run from its own directory. `--before none`: this checkout only.
`--clients kafka-python,confluent` compares the worker's two Kafka clients instead (this
checkout, `--kafka-client` per run, each run fed at the fraction of its own capacity).
`--serve-recorded processed,written` compares when recorded scores are answered (this checkout,
`--serve-recorded` per run, the same feed for both: the first run's capacity sets it).
Every figure is printed with the machine's 1-minute load average at its start and end, and the
summary table at the end holds everything BENCHMARKS.md quotes.

    python benchmarks/serving.py [--rounds 2] [--state 50000] [--backlog 40000] [--requests 10000]
        [--modes record,whatif] [--rates 200,1000] [--trace]

Each row also gives the worker's CPU per request (all its threads, from /proc, beyond what the
feed alone cost in a 10 s feed-only window before the attacks), and each capacity the cores the
worker used. `--trace` runs the workers through `request_trace.py` and prints, per recorded
attack, where a request's time went (produce, fetch, queue in the batch, handle, answer).
Every topic a run makes is deleted at its end, the control channel's replies topic included.

Needs vegeta (`go install github.com/tsenart/vegeta/v12@v12.12.0`; `--vegeta PATH`), git, and
the broker scripts/kafka.sh runs. Tests never depend on it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BOOTSTRAP, ROOT, Topics, ensure_kafka, machine, prefill, producer, worker_command,  # noqa: E402
                    paced_records, worker_env)

RATES = (200, 1000)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far: what serving costs the worker,
    a figure a shared machine's load disturbs far less than latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def consumed(port: int) -> float:
    return sum(v for (name, labels), v in scrape(port).items()
               if name == "shopstream_events_total" and ("outcome", "consumed") in labels)


def checkpoints_written(port: int) -> float:
    return sum(v for (name, _), v in scrape(port).items() if name == "shopstream_checkpoints_total")


def wait_consumed(port: int, target: float, proc: subprocess.Popen, timeout: float = 900.0) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}): see its log")
        try:
            if consumed(port) >= target:
                return time.time()
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"worker did not reach {target} consumed events")


class PacedFeed(threading.Thread):
    """The shop's own stream at `rate` events/s (keyed by user, as `shopstream produce`), sent in
    1 ms slices. On librdkafka when it is installed (the bench extra): at the feeds a fast worker
    needs (10,000 events/s and more), kafka-python's producer with no linger took about a core of
    this 2-core machine for itself (2026-12-05), starving the worker it was meant to feed."""

    def __init__(self, topic: str, messages, rate: float):
        super().__init__(daemon=True)
        self.topic, self.messages, self.rate = topic, messages, rate
        self.stop = threading.Event()
        self.sent = 0
        self.client = "kafka-python"

    def run(self) -> None:
        try:
            from confluent_kafka import Producer
        except ImportError:
            Producer = None
        if Producer is not None:
            self.client = "librdkafka"
            rd = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 1, "acks": "all",
                           "partitioner": "murmur2_random"})   # where Java and kafka-python put a key

            def send(key, value):
                while True:
                    try:
                        return rd.produce(self.topic, value, key)
                    except BufferError:
                        rd.poll(0.01)

            def done():
                rd.flush(30)
        else:
            p = producer(linger_ms=1)

            def send(key, value):
                p.send(self.topic, key=key, value=value)

            def done():
                p.flush()
                p.close()
        started = time.monotonic()
        messages = iter(self.messages)
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                for _ in range(due - self.sent):
                    key, value = next(messages)
                    send(key, value)
                    self.sent += 1
                if Producer is not None:
                    rd.poll(0)
                time.sleep(0.001)
        except StopIteration:
            pass
        done()


def recent_sessions(messages) -> list:
    """(user, session) pairs of these messages, once each. At a feed of thousands of events per second
    the event time runs several times faster than wall time, and sessions taken from the pre-filled
    state expire during the run (what-ifs on them are 404 unknown_session, up to 2026-12-05)."""
    records = (json.loads(value) for _, value in messages)
    return list(dict.fromkeys((str(r["user_id"]), str(r["user_session"])) for r in records))


def targets_file(path: Path, port: int, route: str, sessions: list, count: int, tag: str) -> Path:
    """vegeta JSON targets: one request each, its own event id, on sessions the worker knows."""
    with open(path, "w") as out:
        for i in range(count):
            user, session = sessions[i % len(sessions)]
            body = {"user_id": user, "user_session": session, "product_id": f"bench-p{i % 500}",
                    "event_type": "view" if i % 4 else "cart", "price": 10.0 + i % 90, "platform": "web",
                    "event_id": f"bench-{tag}-{i}"}
            out.write(json.dumps({"method": "POST", "url": f"http://127.0.0.1:{port}{route}",
                                  "header": {"Content-Type": ["application/json"]},
                                  "body": base64.b64encode(json.dumps(body).encode()).decode()}) + "\n")
    return path


def attack(vegeta: str, targets: Path, rate: int, count: int, out: Path) -> dict:
    duration = f"{count / rate:.3f}s"
    with open(out, "wb") as results:
        subprocess.run([vegeta, "attack", "-format=json", f"-targets={targets}", f"-rate={rate}",
                        f"-duration={duration}", "-timeout=10s", "-max-workers=2000", "-keepalive=true"],
                       stdout=results, check=True)
    report = subprocess.run([vegeta, "report", "-type=json", str(out)], capture_output=True, check=True)
    data = json.loads(report.stdout)
    lat = data["latencies"]
    codes = data["status_codes"] or {}
    return {"requests": data["requests"], "rate": round(data["rate"], 1), "ok": codes.get("200", 0),
            "failed": data["requests"] - codes.get("200", 0), "p50_ms": round(lat["50th"] / 1e6, 2),
            "p90_ms": round(lat["90th"] / 1e6, 2), "p99_ms": round(lat["99th"] / 1e6, 2),
            "max_ms": round(lat["max"] / 1e6, 2), "status_codes": codes, "errors": data["errors"][:5]}


# -- the code under test -------------------------------------------------------------------

def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def default_before() -> str:
    """The commit before the one that brought the clerk (EngineGate) into stream/serving.py."""
    introduced = git("log", "--format=%H", "--reverse", "-S", "class EngineGate", "--", "stream/serving.py")
    if not introduced:
        raise SystemExit("--before: no commit introduced EngineGate in this history; pass --before REV")
    return git("rev-parse", "--short", introduced.splitlines()[0] + "^")


def code_versions(before: str, work: Path) -> dict:
    """label -> (source directory, description). "after" is this checkout, as it is."""
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    versions = {"after": (ROOT, f"{git('rev-parse', '--short', 'HEAD')}{dirty} (this checkout)")}
    if before != "none":
        rev = git("rev-parse", "--short", before)
        source = work / f"src-{rev}"
        source.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
        versions["before"] = (source, f"{rev} (git archive)")
    return versions


def order(rounds: int, labels: list) -> list:
    """(before, after), (after, before), ...: alternating, so drift favours neither."""
    if len(labels) == 1:
        return labels * rounds
    if labels == ["after", "before"]:
        labels = ["before", "after"]
    runs = []
    for i in range(rounds):
        runs += labels if i % 2 == 0 else labels[::-1]
    return runs


# -- one worker run ------------------------------------------------------------------------

def one_run(label: str, source: Path, data: dict, args, work: Path, feed_rate: list, feed_basis: dict,
            run_number: int, source_name: str) -> dict:
    topics = Topics()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=work))
    api_port, metrics_port = free_port(), free_port()
    env = worker_env()
    env["PYTHONPATH"] = str(source)  # the version's own packages (its directory is also the cwd)
    result: dict = {"code": label, "load_start": load1()}
    proc = None
    feed = None
    try:
        topic = topics.for_worker("serve")
        # The worker's control channel creates its replies topic; made here, Topics.close deletes it too
        # (it was left behind on the broker by every run before).
        topics.new("", 1, name=f"{topic}-control-replies")
        # The state and both backlogs are in Kafka before the worker starts, so it is busy from the first
        # backlog event to the last: capacity = events / time between the consumed counts crossing
        # each backlog's bounds (read from /metrics, refreshed every second: +-1 s on about 15 s).
        prefill(topic, data["state"] + data["backlog1"] + data["backlog2"])
        trace = run_dir / "trace.json"
        python = [sys.executable, str(Path(__file__).resolve().parent / "request_trace.py"), str(trace)] \
            if args.trace else None
        client = ["--kafka-client", label] if args.clients else []   # --clients: the label is the client
        client += ["--serve-recorded", label] if args.serve_recorded else []   # ... or the answer mode
        command = worker_command(topic, f"g-{topic}", run_dir / "ckpt", "--metrics-port", str(metrics_port),
                                 "--serve-port", str(api_port), *client, *args.worker_arg, python=python)
        with open(run_dir / "worker.log", "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=source, env=env)
        bounds = [len(data["state"]), len(data["state"]) + len(data["backlog1"]),
                  len(data["state"]) + len(data["backlog1"]) + len(data["backlog2"])]
        if args.pin_worker is not None:   # every thread of the worker (librdkafka's too) on its own core
            subprocess.run(["taskset", "-a", "-p", "-c", str(args.pin_worker), str(proc.pid)], check=True,
                           capture_output=True)
        t_state = wait_consumed(metrics_port, bounds[0], proc)
        cpu_state = cpu_seconds(proc.pid)
        l0 = load1()
        say(label, f"state of {bounds[0]} events worked off")
        t_first = wait_consumed(metrics_port, bounds[1], proc)
        cpu_first = cpu_seconds(proc.pid)
        c0 = round((bounds[1] - bounds[0]) / (t_first - t_state))
        say(label, f"capacity, no API load: {c0:,} events/s [load {l0} -> {load1()}]")
        whatif_targets = targets_file(run_dir / "whatif-cap.json", api_port, "/score/whatif", data["sessions"], 2000,
                                      "cap")
        l1 = load1()
        vegeta = subprocess.Popen([args.vegeta, "attack", "-format=json", f"-targets={whatif_targets}", "-rate=200",
                                   "-duration=3600s", "-timeout=10s"], stdout=subprocess.DEVNULL)
        try:
            t_vegeta, at_vegeta, cpu_vegeta = time.time(), consumed(metrics_port), cpu_seconds(proc.pid)
            t_second = wait_consumed(metrics_port, bounds[2], proc)
            cpu_second = cpu_seconds(proc.pid)
        finally:
            vegeta.terminate()
            vegeta.wait()
        c1 = round((bounds[2] - at_vegeta) / (t_second - t_vegeta))
        say(label, f"capacity while serving 200 what-ifs/s: {c1:,} events/s [load {l1} -> {load1()}]")
        result["capacity"] = {"no_api": c0, "no_api_load": l0, "with_200_whatif_per_s": c1, "with_load": l1,
                              "ratio": round(c1 / c0, 3),
                              # cores the worker used: about 1 when the loop runs flat out alone
                              "no_api_cores": round((cpu_first - cpu_state) / (t_first - t_state), 2),
                              "with_cores": round((cpu_second - cpu_vegeta) / (t_second - t_vegeta), 2)}
        say(label, f"worker CPU cores used: {result['capacity']['no_api_cores']} with no API load, "
                   f"{result['capacity']['with_cores']} while serving 200 what-ifs/s")
        if args.clients:   # two different workers: each is fed at the fraction of its own capacity
            feed_rate.clear()
        if not feed_rate:
            # Issue 23: "while the same worker consumes the event stream at half its capacity". Its capacity
            # is C, what it consumes with no API load; the first run's C sets the feed of every run (the same
            # offered load for each version). Before 2026-12-03 18:00 the feed was half of min(C, C1), C1
            # the capacity while serving what-ifs: not the issue's, and lower than it by up to half.
            feed_rate.append(round(c0 * args.feed_fraction))
            feed_basis.update(capacity=c0, measured_by=(
                f"run {run_number} ({label}: {source_name}): the worker worked off a backlog of "
                f"{bounds[1] - bounds[0]:,} events already in Kafka, with no API load, in "
                f"{t_first - t_state:.1f} s (load {l0})"), fraction=args.feed_fraction)
        result["feed_rate"] = feed_rate[0]
        result["feed_basis"] = dict(feed_basis)
        say(label, f"feed: {feed_rate[0]:,} events/s = {feed_basis['fraction']} x the worker's capacity C = "
                   f"{feed_basis['capacity']:,} events/s, measured by {feed_basis['measured_by']}")
        if feed_rate[0]:  # --feed-fraction 0: the API alone, on an idle stream
            feed = PacedFeed(topic, data["stream"], feed_rate[0])
            feed.start()
            time.sleep(3)
            # The feed alone for 10 s: the worker's CPU for the stream, to tell the API's share in each row.
            before, t0, cpu0 = consumed(metrics_port), time.time(), cpu_seconds(proc.pid)
            time.sleep(10)
            seconds = time.time() - t0
            result["feed_only"] = {"events_per_s": round((consumed(metrics_port) - before) / seconds),
                                   "cores": round((cpu_seconds(proc.pid) - cpu0) / seconds, 3)}
            say(label, f"feed alone ({feed.client}): {result['feed_only']['events_per_s']:,} events/s handled, "
                       f"{result['feed_only']['cores']} worker cores [load {load1()}]")
        runs = []
        for route, mode in (("/score", "record"), ("/score/whatif", "whatif")):
            if mode not in args.modes:
                continue
            for rate in args.rates:
                sessions = data["sessions"]
                if feed is not None and feed.sent:   # sessions the feed just sent: the state's would have expired
                    sessions = recent_sessions(data["stream"][max(0, feed.sent - 5000):feed.sent]) or sessions
                targets = targets_file(run_dir / f"{mode}-{rate}.json", api_port, route, sessions,
                                       args.requests, f"{label}-{mode}{rate}")
                load = load1()
                before, t0, cpu0 = consumed(metrics_port), time.time(), cpu_seconds(proc.pid)
                saved = checkpoints_written(metrics_port)
                outcome = attack(args.vegeta, targets, rate, args.requests, run_dir / f"{mode}-{rate}.bin")
                cpu = cpu_seconds(proc.pid) - cpu0
                saved = checkpoints_written(metrics_port) - saved   # how often a copy ran (CHILD_NICENESS)
                events = consumed(metrics_port) - before
                seconds = time.time() - t0
                events_rate = events / seconds
                # the API's share: the worker's CPU beyond what the feed alone cost over as long
                api_cpu = cpu - result.get("feed_only", {}).get("cores", 0.0) * seconds
                outcome.update(code=label, mode=mode, target_rate=rate, worker_events_per_s=round(events_rate),
                               feed_running=feed is not None and feed.is_alive(), load_start=load, load_end=load1(),
                               window=(t0, time.time()), worker_cpu_s=round(cpu, 2), checkpoints=saved,
                               worker_cpu_ms_per_request=round(api_cpu * 1e3 / args.requests, 3),
                               worker_cpu_us_per_event=round(cpu * 1e6 / events, 1) if events else None)
                runs.append(outcome)
                say(label, json.dumps(outcome))
                time.sleep(3)
        result["runs"] = runs
        metrics = scrape(metrics_port)
        result["worker_errors_by_reason"] = {dict(labels)["reason"]: v for (name, labels), v in metrics.items()
                                             if name == "shopstream_score_errors_total" and v}
    finally:
        if feed is not None:
            feed.stop.set()
            feed.join(30)
            result["feed_sent"] = feed.sent
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        created = list(topics.created)
        topics.close()
        result["topics_left"] = delete_topics(created)  # Topics.close swallows a failed delete: check
    result["load_end"] = load1()
    if args.trace and trace.exists():
        from request_trace import summarise

        data = json.loads(trace.read_text())
        for r in result.get("runs", []):
            if r["mode"] == "record":
                r["trace"] = parts = summarise(data, *r["window"])
                say(label, f"where recorded scores at {r['target_rate']}/s went (ms):")
                for name, p in parts.items():
                    print(f"    {name:45s} n {p['n']:>6}  p50 {p['p50']:>9}  p90 {p['p90']:>9}  p99 {p['p99']:>9}  "
                          f"max {p['max']:>9}", flush=True)
    return result


def delete_topics(names: list, tries: int = 3) -> list:
    """Delete `names` from the broker and check they are gone; returns those still there."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        left = [n for n in names if n in set(admin.list_topics())]
        for _ in range(tries):
            if not left:
                break
            for name in left:  # one by one: a name already gone must not fail the others
                try:
                    admin.delete_topics([name], timeout_ms=30_000)
                except Exception:  # noqa: BLE001 - gone already, or slow: checked below
                    pass
            time.sleep(1)
            present = set(admin.list_topics())
            left = [n for n in left if n in present]
        return left
    finally:
        admin.close()


def orphaned_replies() -> list:
    """Control-reply topics of serving runs whose events topic is gone (left by runs before
    2026-12-03 15:00, which never deleted them)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        present = set(admin.list_topics())
    finally:
        admin.close()
    suffix = "-control-replies"
    return sorted(n for n in present if n.startswith("bench-serve-") and n.endswith(suffix)
                  and n[:-len(suffix)] not in present)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(label: str, text: str) -> None:
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} [{label}] {text}", flush=True)


def summary(results: list) -> str:
    lines = ["| # | code | mode | rate | p50 ms | p90 ms | p99 ms | max ms | 200 of sent | failed (codes) "
             "| worker events/s (feed on) | worker CPU ms per request (beyond the feed) | load 1 min start/end |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for i, result in enumerate(results, 1):
        for r in result.get("runs", []):
            codes = ", ".join(f"{n} {c}" for c, n in sorted(r["status_codes"].items()) if c != "200") or "0"
            lines.append(f"| {i} | {result['code']} | {r['mode']} | {r['target_rate']} | {r['p50_ms']} | "
                         f"{r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['ok']:,} of {r['requests']:,} | "
                         f"{codes} | {r['worker_events_per_s']:,} ({'yes' if r['feed_running'] else 'NO'}) | "
                         f"{r['worker_cpu_ms_per_request']} | "
                         f"{r['load_start']} / {r['load_end']} |")
    lines += ["", "| # | code | capacity, no API (load) | with 200 what-ifs/s (load) | ratio | worker cores used "
              "(no API / with) | feed events/s |",
              "|---|---|---:|---:|---:|---|---:|"]
    for i, result in enumerate(results, 1):
        c = result.get("capacity")
        if c:
            lines.append(f"| {i} | {result['code']} | {c['no_api']:,} ({c['no_api_load']}) | "
                         f"{c['with_200_whatif_per_s']:,} ({c['with_load']}) | {c['ratio']} | "
                         f"{c.get('no_api_cores')} / {c.get('with_cores')} | "
                         f"{result['feed_rate']:,} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", type=int, default=50_000)
    parser.add_argument("--backlog", type=int, default=40_000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--stream", type=int, default=600_000,
                        help="events the paced feed can send (it must outlast the attacks: about 140 s at "
                             "10,000 requests; each row says whether the feed still ran at its end)")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of (before, after) runs, alternating order")
    parser.add_argument("--before", default=None, help="git revision to compare against; 'none': this checkout only")
    parser.add_argument("--vegeta", default=shutil.which("vegeta") or str(Path.home() / "go" / "bin" / "vegeta"))
    parser.add_argument("--feed-fraction", type=float, default=0.5, help="feed rate as a fraction of the capacity")
    parser.add_argument("--worker-arg", action="append", default=[],
                        help="an extra worker option, for every run (repeat: --worker-arg=--checkpoint-seconds "
                             "--worker-arg=600)")
    parser.add_argument("--modes", default="record,whatif", type=lambda text: text.split(","),
                        help="which attacks: record, whatif or both (comma-separated)")
    parser.add_argument("--rates", default=",".join(map(str, RATES)),
                        type=lambda text: [int(r) for r in text.split(",")], help="request rates, comma-separated")
    parser.add_argument("--trace", action="store_true",
                        help="run the workers through request_trace.py and print where recorded scores' time went "
                             "(the 'records' rows are counts, not ms)")
    parser.add_argument("--clients", default=None, type=lambda text: text.split(","),
                        help="compare Kafka clients instead of code versions, this checkout only (e.g. "
                             "kafka-python,confluent): each run's worker gets --kafka-client LABEL and is fed at "
                             "--feed-fraction of its own capacity")
    parser.add_argument("--serve-recorded", default=None, type=lambda text: text.split(","),
                        help="compare when recorded scores are answered instead of code versions, this checkout only "
                             "(processed,written): each run's worker gets --serve-recorded LABEL, the same feed")
    parser.add_argument("--pin-worker", type=int, default=None, metavar="CPU",
                        help="the worker alone on core CPU; the broker, the feed and vegeta on the others (the broker "
                             "is given back every core at the end)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if not os.path.exists(args.vegeta):
        print(f"vegeta not found at {args.vegeta}: go install github.com/tsenart/vegeta/v12@v12.12.0")
        return 2
    ensure_kafka()
    pinned = pin_others(args.pin_worker) if args.pin_worker is not None else None
    try:
        return run(args, pinned)
    finally:
        if pinned is not None:
            for pid in pinned["broker"]:
                subprocess.run(["taskset", "-a", "-p", "-c", pinned["all"], str(pid)], capture_output=True)


def pin_others(cpu: int) -> dict:
    """--pin-worker CPU: this process (the feed; vegeta inherits it) and the broker on the other
    cores, so the worker has a core to itself, as beside a broker on other machines. The broker's
    affinity is given back at the end."""
    every = sorted(os.sched_getaffinity(0))
    others = [c for c in every if c != cpu]
    if cpu not in every or not others:
        raise SystemExit(f"--pin-worker {cpu}: needs that core and another among {every}")
    os.sched_setaffinity(0, others)
    broker = [int(pid) for pid in subprocess.run(["pgrep", "-f", "kafka.Kafka"], capture_output=True,
                                                  text=True).stdout.split()]
    for pid in broker:
        subprocess.run(["taskset", "-a", "-p", "-c", ",".join(map(str, others)), str(pid)], capture_output=True)
    print(f"pinned: the worker on core {cpu}; this process, vegeta and the broker ({broker}) on {others}", flush=True)
    return {"broker": broker, "all": ",".join(map(str, every))}


def run(args, pinned) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.clients:
        head = git("rev-parse", "--short", "HEAD")
        versions = {client: (ROOT, f"{head} (this checkout), --kafka-client {client}") for client in args.clients}
    elif args.serve_recorded:
        head = git("rev-parse", "--short", "HEAD")
        versions = {mode: (ROOT, f"{head} (this checkout), --serve-recorded {mode}") for mode in args.serve_recorded}
    else:
        versions = code_versions(args.before or default_before(), work)
    plan = order(args.rounds, list(versions) if args.clients or args.serve_recorded else sorted(versions))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "started": started,
              "machine": machine(), "code": {k: v[1] for k, v in versions.items()}, "plan": plan,
              "sizes": {k: v for k, v in vars(args).items() if k not in ("vegeta", "workdir")}, "load": os.getloadavg(),
              "pinned": pinned}
    print(json.dumps(header, indent=2), flush=True)

    # Event time advancing about as fast as wall time at the feed's rate (1,500 events per second of
    # event time), as in a live shop: a 30-day history replayed in minutes would move each
    # partition's clock hours per second, and a request dated "now" would be late by the time it is
    # processed (and every session expired). Every run gets the same events.
    total = args.state + 2 * args.backlog + args.stream
    messages = [(str(r["user_id"]).encode(), json.dumps(r).encode()) for r in paced_records(total, 1500)]
    state = messages[:args.state]
    sessions = recent_sessions(state[-5000:])
    data = {"state": state, "backlog1": messages[args.state:args.state + args.backlog],
            "backlog2": messages[args.state + args.backlog:args.state + 2 * args.backlog],
            "stream": messages[args.state + 2 * args.backlog:], "sessions": sessions}
    feed_rate: list = []
    feed_basis: dict = {}
    results = []
    for label in plan:
        source, _ = versions[label]
        say(label, f"worker run {len(results) + 1} of {len(plan)}: {versions[label][1]} [load {load1()}]")
        results.append(one_run(label, source, data, args, work, feed_rate, feed_basis, len(results) + 1,
                               versions[label][1]))
        (work / "serving.json").write_text(json.dumps({**header, "results": results}, indent=2))
    print()
    print(f"{started} -> {time.strftime('%H:%M UTC', time.gmtime())}; code: "
          + "; ".join(f"{k} = {v[1]}" for k, v in versions.items()))
    print(summary(results))
    if feed_basis:
        print(f"feed: {feed_rate[0]:,} events/s = {feed_basis['fraction']} x the worker's capacity C = "
              f"{feed_basis['capacity']:,} events/s, measured by {feed_basis['measured_by']}")
    left = [n for result in results for n in result.get("topics_left", [])]
    orphans = orphaned_replies()
    left += delete_topics(orphans)
    earlier = f", and {len(orphans)} orphaned replies topics of earlier runs" if orphans else ""
    print(f"topics deleted: every run's{earlier}" + (f"; STILL ON THE BROKER: {left}" if left else ""))
    print(f"\nall figures: {work / 'serving.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
