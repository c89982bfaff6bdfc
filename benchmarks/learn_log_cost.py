#!/usr/bin/env python3
"""What `--learning shared` costs on the real broker, against `--learning partition`, in one run.

    python benchmarks/learn_log_cost.py [--events 40000] [--rate 400] [--paced-seconds 40]

For each mode, 1 and 2 workers (real `shopstream worker` processes, champion `logreg`,
features `shop`) read a prefilled 4-partition topic to its end: events/s (handled events
over the time from the first assignment to the last event, the idle wait excluded) and
each worker's peak resident memory. Then two shared workers read a feed paced at `--rate`
events/s: how long a published example takes to be applied by a partition's models
(``shopstream_learn_delay_seconds``, p50 and p99 from its buckets, every partition counted).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from common import Topics, WorkerProcess, ensure_kafka, log_events, make_messages, prefill, producer, worker_command

IDLE = 5.0
def peak_rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"VmHWM:\s*(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else 0.0


def scrape_delay(port: int) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) buckets of the learn-delay histogram, or []."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return []
    for family in text_string_to_metric_families(text):
        if family.name == "shopstream_learn_delay_seconds":
            return [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
    return []


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile: linear within the bucket."""
    total = buckets[-1][1]
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def run(mode: str, n_workers: int, messages, workdir: Path, paced_rate: float = 0.0,
        paced_seconds: float = 0.0) -> dict:
    topics = Topics()
    try:
        topic = topics.for_worker(f"cost-{mode}", 4)
        learn = topics.new("cost-learn", 1)
        if not paced_rate:
            prefill(topic, messages)
        ports = [0] * n_workers
        procs = []
        for i in range(n_workers):
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports[i] = s.getsockname()[1]
            command = worker_command(topic, f"g-{topic}", workdir / f"ckpt-{topic}", "--until-idle", str(IDLE),
                                     "--learning", mode, "--learn-topic", learn, "--metrics-port", str(ports[i]))
            procs.append(WorkerProcess(command, workdir / f"{topic}-{i}.log"))
        feeder = None
        if paced_rate:
            def feed():
                p = producer()
                started = time.monotonic()
                for number, (key, value) in enumerate(messages[:int(paced_rate * paced_seconds)]):
                    ahead = number / paced_rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                    p.send(topic, key=key, value=value)
                p.flush()
                p.close()
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
        peaks = [0.0] * n_workers
        delays: dict = {}
        while any(w.proc.poll() is None for w in procs):
            for i, w in enumerate(procs):
                if w.proc.poll() is None:
                    peaks[i] = max(peaks[i], peak_rss_mb(w.proc.pid))
                    buckets = scrape_delay(ports[i])
                    if buckets:
                        delays[i] = buckets
            time.sleep(0.5)
        for w in procs:
            assert w.wait(60) == 0, w.log()[-2000:]
        events = [e for w in procs for e in log_events(w.log())]
        first = min(t for t, m in events if m.startswith("assigned partition"))
        last = max(t for t, m in events if m.startswith("idle for"))
        handled = sum(int(re.findall(r"handled (\d+) events", w.log())[-1]) for w in procs)
        seconds = last - IDLE - first
        merged = []
        if delays:
            bounds = [b for b, _ in next(iter(delays.values()))]
            merged = [(b, sum(d[k][1] for d in delays.values())) for k, b in enumerate(bounds)]
        return {"events_per_s": handled / seconds, "handled": handled, "seconds": seconds, "peak_mb": peaks,
                "p50": quantile(merged, 0.5) if merged else None, "p99": quantile(merged, 0.99) if merged else None,
                "applied": merged[-1][1] if merged else 0}
    finally:
        topics.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--paced-seconds", type=float, default=40.0)
    parser.add_argument("--paced-only", action="store_true", help="only the paced run (the learn delay)")
    args = parser.parse_args(argv)
    ensure_kafka()
    messages = make_messages(args.events)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in () if args.paced_only else ("partition", "shared"):
            for n in (1, 2):
                r = run(mode, n, messages, Path(tmp))
                rows.append((mode, n, r))
                print(f"{mode}, {n} worker(s): {r['events_per_s']:,.0f} events/s ({r['handled']:,} in "
                      f"{r['seconds']:.1f} s), peak RSS per worker {', '.join(f'{m:.0f}' for m in r['peak_mb'])} MiB"
                      + (f", learn delay p50 {r['p50']:.3f} s p99 {r['p99']:.3f} s" if r["p50"] is not None else ""),
                      flush=True)
        paced = run("shared", 2, messages, Path(tmp), args.rate, args.paced_seconds)
    print(f"\npaced at {args.rate:.0f} events/s, 2 shared workers: {paced['applied']:,.0f} examples applied, "
          f"label to partition model p50 {paced['p50']:.3f} s, p99 {paced['p99']:.3f} s")
    print("\n| mode | workers | events/s | peak RSS per worker (MiB) |\n|---|---:|---:|---|")
    for mode, n, r in rows:
        print(f"| {mode} | {n} | {r['events_per_s']:,.0f} | {', '.join(f'{m:.0f}' for m in r['peak_mb'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
