"""Latency and load of the scoring API (issue 23), with a real HTTP load generator.

One worker (the production command line, shop features, default checkpoints, the scoring
API on loopback) on a 1-partition topic pre-filled with `--state` events. Then, in one run:

1. capacity: a backlog of `--backlog` more events is worked off with no API load: C events/s;
2. the same, while vegeta sends `POST /score/whatif` at 200 requests/s: how much the API costs
   the stream's throughput;
3. the shop's stream is fed at C/2 events/s (paced producer) and vegeta sends 10,000
   requests at 200/s and then 10,000 at 1,000/s, first `POST /score` (recorded: each request
   its own event id, written to the events topic and answered once the worker processed it),
   then `POST /score/whatif`. vegeta reports p50/p99/max and every non-200 answer.
   `--feed-fraction` sets the feed (0.5 by default; 0: no feed, the API alone).

    python benchmarks/serving.py [--state 50000] [--backlog 40000] [--requests 10000]

Needs vegeta (`go install github.com/tsenart/vegeta/v12@v12.12.0`; `--vegeta PATH`) and the
broker scripts/kafka.sh runs. Tests never depend on it.
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
from common import Topics, WorkerProcess, ensure_kafka, machine, prefill, producer, worker_command  # noqa: E402


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def consumed(port: int) -> float:
    return sum(v for (name, labels), v in scrape(port).items()
               if name == "shopstream_events_total" and ("outcome", "consumed") in labels)


def wait_consumed(port: int, target: float, timeout: float = 900.0) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if consumed(port) >= target:
                return time.time()
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"worker did not reach {target} consumed events")


class PacedFeed(threading.Thread):
    """The shop's own stream at `rate` events/s (keyed by user, as `shopstream produce`)."""

    def __init__(self, topic: str, messages, rate: float):
        super().__init__(daemon=True)
        self.topic, self.messages, self.rate = topic, messages, rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        p = producer(linger_ms=0)
        started = time.monotonic()
        for key, value in self.messages:
            if self.stop.is_set():
                break
            ahead = self.sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            p.send(self.topic, key=key, value=value)
            self.sent += 1
        p.flush()
        p.close()


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
    return {"requests": data["requests"], "rate": round(data["rate"], 1), "success": data["success"],
            "p50_ms": lat["50th"] / 1e6, "p90_ms": lat["90th"] / 1e6, "p99_ms": lat["99th"] / 1e6,
            "max_ms": lat["max"] / 1e6, "status_codes": data["status_codes"], "errors": data["errors"][:5]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", type=int, default=50_000)
    parser.add_argument("--backlog", type=int, default=40_000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--vegeta", default=shutil.which("vegeta") or str(Path.home() / "go" / "bin" / "vegeta"))
    parser.add_argument("--feed-fraction", type=float, default=0.5, help="feed rate as a fraction of the capacity")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if not os.path.exists(args.vegeta):
        print(f"vegeta not found at {args.vegeta}: go install github.com/tsenart/vegeta/v12@v12.12.0")
        return 2
    ensure_kafka()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    total = args.state + 2 * args.backlog + 200_000
    # Event time advancing about as fast as wall time at the feed's rate (1,500 events per second of
    # event time), as in a live shop: a 30-day history replayed in minutes would move each
    # partition's clock hours per second, and a request dated "now" would be late by the time it is
    # processed (and every session expired).
    from shopstream.generator import generate

    messages = [(str(r["user_id"]).encode(), json.dumps(r).encode())
                for r in generate(total, seed=7, days=total / 1500 / 86400)]
    state, backlog1 = messages[:args.state], messages[args.state:args.state + args.backlog]
    backlog2 = messages[args.state + args.backlog:args.state + 2 * args.backlog]
    stream = messages[args.state + 2 * args.backlog:]
    sessions = []
    for _, value in state[-5000:]:
        record = json.loads(value)
        sessions.append((str(record["user_id"]), str(record["user_session"])))
    sessions = list(dict.fromkeys(sessions))

    load = os.getloadavg()
    topics = Topics()
    results: dict = {"machine": machine(), "load_before": load, "sizes": vars(args).copy()}
    api_port, metrics_port = 18600 + os.getpid() % 1000, 19600 + os.getpid() % 1000
    worker = None
    try:
        topic = topics.for_worker("serve")
        prefill(topic, state)
        worker = WorkerProcess(worker_command(topic, f"g-{topic}", work / "ckpt", "--metrics-port", str(metrics_port),
                                              "--serve-port", str(api_port)), work / "worker.log")
        wait_consumed(metrics_port, len(state))
        print(f"state of {len(state)} events worked off", flush=True)

        def capacity(events, label):
            # timed from the moment the whole backlog is in Kafka: the worker is busy throughout
            start_count = consumed(metrics_port)
            prefill(topic, events)
            started, at_start = time.time(), consumed(metrics_port)
            ended = wait_consumed(metrics_port, start_count + len(events))
            rate = (start_count + len(events) - at_start) / (ended - started)
            print(f"{label}: {rate:,.0f} events/s", flush=True)
            return rate

        c0 = capacity(backlog1, "capacity, no API load")
        whatif_targets = targets_file(work / "whatif-cap.json", api_port, "/score/whatif", sessions, 2000, "cap")
        proc = subprocess.Popen([args.vegeta, "attack", "-format=json", f"-targets={whatif_targets}", "-rate=200",
                                 "-duration=3600s", "-timeout=10s"], stdout=subprocess.DEVNULL)
        try:
            c1 = capacity(backlog2, "capacity while serving 200 what-ifs/s")
        finally:
            proc.terminate()
            proc.wait()
        results["capacity"] = {"no_api": round(c0), "with_200_whatif_per_s": round(c1), "ratio": round(c1 / c0, 3)}

        # the lower of the two capacities: the machine is shared, and the feed must leave headroom
        feed_rate = round(min(c0, c1) * args.feed_fraction)
        feed = PacedFeed(topic, stream, feed_rate)
        if feed_rate:  # --feed-fraction 0: the API alone, on an idle stream
            feed.start()
            time.sleep(5)
        results["feed_rate"] = feed_rate
        runs = []
        for route, mode in (("/score", "record"), ("/score/whatif", "whatif")):
            for rate in (200, 1000):
                targets = targets_file(work / f"{mode}-{rate}.json", api_port, route, sessions, args.requests,
                                       f"{mode}{rate}")
                before, t0 = consumed(metrics_port), time.time()
                outcome = attack(args.vegeta, targets, rate, args.requests, work / f"{mode}-{rate}.bin")
                events_rate = (consumed(metrics_port) - before) / (time.time() - t0)
                outcome.update(mode=mode, target_rate=rate, worker_events_per_s=round(events_rate))
                runs.append(outcome)
                print(json.dumps(outcome), flush=True)
                time.sleep(3)
        feed.stop.set()
        if feed_rate:
            feed.join(30)
        results["runs"] = runs
        results["feed_sent"] = feed.sent
        metrics = scrape(metrics_port)
        results["worker_errors_by_reason"] = {dict(labels)["reason"]: v for (name, labels), v in metrics.items()
                                              if name == "shopstream_score_errors_total" and v}
    finally:
        if worker is not None:
            worker.proc.terminate()
            worker.wait(60)
        topics.close()
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    (work / "serving.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
