#!/usr/bin/env python3
"""The broker's floor under a recorded score: how long one event takes from a producer's send
to a consumer's poll on this machine, with no worker at all, while the shop's stream is fed.

A recorded `POST /score` (issue 23) is answered once the owner's loop has processed the
request's event, so it takes at least that event's trip: the API's produce, the broker, the
worker's fetch. This measures the trip alone. A child process stands where the worker stands
(alone on core `--pin`, as `serving.py --pin-worker` puts the worker): a producer configured as
the API's (librdkafka, no linger, every replica acknowledges, idempotent) sends one small probe
every 1/`--rate` s into the partition the feed writes, and a consumer configured as the
worker's reads that partition and notes when each probe comes back from its poll. This process
(the feed: `serving.PacedFeed`, the same generated events) and the broker share the other
core(s), as in `serving.py --pin-worker`. Per feed rate: the rate the feed kept while the probes
ran, and p50/p90/p99/max of send -> delivery report (the acknowledgement) and of send -> returned
by the consumer's poll.

    python benchmarks/broker_floor.py [--feeds 0,8600] [--seconds 20] [--rate 200] [--pin 1]

Needs confluent-kafka (the bench extra) and the broker scripts/kafka.sh runs.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BOOTSTRAP, Topics, ensure_kafka, make_messages  # noqa: E402

PROBE_KEY = b"floor-probe"


def percentiles(values_ms: list) -> dict:
    ordered = sorted(values_ms)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1], 2)}


def child(topic: str, seconds: float, rate: float) -> None:
    """Where the worker stands: probes out through an API-like producer, everything in through a
    worker-like consumer. Prints one JSON line: the two latency lists' percentiles."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"floor-{os.getpid()}",
                         "enable.auto.commit": False, "enable.auto.offset.store": False,
                         "check.crcs": True, "isolation.level": "read_uncommitted"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "linger.ms": 0, "enable.idempotence": True})
    acked: list = []
    returned: list = []
    sent = [0]
    probing = threading.Event()

    def on_delivery(error, message) -> None:
        if error is None:
            acked.append((time.time_ns() - int(message.value().split()[1])) / 1e6)

    def probe() -> None:
        probing.wait()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            if int(elapsed * rate) >= sent[0]:
                producer.produce(topic, f"{sent[0]} {time.time_ns()}".encode(), PROBE_KEY, on_delivery=on_delivery)
                sent[0] += 1
            producer.poll(0.0005)
        producer.flush(10)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    consumer.consume(num_messages=1, timeout=2.0)   # the assignment is live before the first probe
    print("ready", flush=True)
    probing.set()
    deadline = time.monotonic() + seconds + 10.0
    records = 0
    probed = False
    while time.monotonic() < deadline and (thread.is_alive() or len(returned) < sent[0]):
        if not probed and not thread.is_alive():
            probed = True
            print("probed", flush=True)   # the parent reads the feed's count here: its rate while probing
        # The worker's poll (confluent_clients.py): what is fetched already, else wait for the first record
        # only (``consume(1000, t)`` would wait for a thousand).
        messages = consumer.consume(1000, 0)
        if not messages:
            first = consumer.poll(0.2)
            messages = [] if first is None else [first] + consumer.consume(999, 0)
        for message in messages:
            if message.error():
                continue
            records += 1
            if message.key() == PROBE_KEY:
                returned.append((time.time_ns() - int(message.value().split()[1])) / 1e6)
    if not probed:
        print("probed", flush=True)
    consumer.close()
    print(json.dumps({"sent": sent[0], "records_read": records, "ack_ms": percentiles(acked),
                      "returned_ms": percentiles(returned)}), flush=True)


def measure(feed_rate: float, seconds: float, rate: float, pin: int) -> dict:
    from serving import PacedFeed

    topics = Topics()
    proc = feed = None
    try:
        topic = topics.new("floor", 1)
        command = ["taskset", "-c", str(pin), sys.executable, str(Path(__file__).resolve()), "--child", topic,
                   "--seconds", str(seconds), "--rate", str(rate)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line.strip()) for line in proc.stdout], daemon=True).start()

        def next_line(timeout: float, expected: str = "") -> str:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"the probe child said nothing for {timeout:.0f} s") from None
            if expected and line != expected:
                raise RuntimeError(f"the probe child said {line!r}, not {expected!r}")
            return line

        if feed_rate > 0:
            feed = PacedFeed(topic, make_messages(int(feed_rate * (seconds + 15))), feed_rate)
            feed.start()
        load_start = round(os.getloadavg()[0], 2)
        next_line(60, "ready")
        fed_from, since = (feed.sent if feed else 0), time.monotonic()
        next_line(seconds + 30, "probed")
        fed = ((feed.sent if feed else 0) - fed_from) / (time.monotonic() - since)
        result = json.loads(next_line(30))
        result.update({"feed_rate": feed_rate, "fed_per_s": round(fed), "load_start": load_start,
                       "load_end": round(os.getloadavg()[0], 2)})
        proc.wait(30)
        return result
    finally:
        if feed is not None:
            feed.stop.set()
            feed.join(30)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        topics.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", default="0,8600", help="feed rates, events/s (0: no feed)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of probes per feed rate")
    parser.add_argument("--rate", type=float, default=200.0, help="probes per second (a recorded request's event)")
    parser.add_argument("--pin", type=int, default=1, help="the core the probe child has to itself")
    parser.add_argument("--child", metavar="TOPIC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.seconds, args.rate)
        return 0
    ensure_kafka()
    from serving import pin_others

    pinned = pin_others(args.pin)
    try:
        print("| feed events/s (fed while probing) | probes | ack p50 / p99 / max ms "
              "| returned by poll p50 / p90 / p99 / max ms | load start / end |")
        print("|---:|---:|---|---|---|")
        for feed_rate in (float(f) for f in args.feeds.split(",")):
            r = measure(feed_rate, args.seconds, args.rate, args.pin)
            a, b = r["ack_ms"], r["returned_ms"]
            print(f"| {feed_rate:,.0f} ({r['fed_per_s']:,}) | {r['sent']:,} | {a.get('p50')} / {a.get('p99')} / "
                  f"{a.get('max')} | {b.get('p50')} / {b.get('p90')} / {b.get('p99')} / {b.get('max')} | "
                  f"{r['load_start']} / {r['load_end']} |", flush=True)
    finally:
        for pid in pinned["broker"]:
            subprocess.run(["taskset", "-a", "-p", "-c", pinned["all"], str(pid)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
