#!/usr/bin/env python3
"""One kafka-python worker at CPython's default GIL switch interval (5 ms) against the worker's own
(`--switch-interval` auto: 50 ms for a kafka-python worker that does not serve;
stream/switch_interval.py), in alternating rounds on one pre-filled topic.

    python benchmarks/switch_interval.py [--events 100000] [--rounds 3] [--features raw|shop] [--interval S ...]

Each run is the real `python -m cli worker --until-idle 1` (through worker_variant.py --thread-stats).
Printed per run: events/s (from the prediction records' timestamps), the main thread's voluntary
context switches (each a wait: for the network, or for the GIL a Kafka client's thread took) and the
CPU seconds of kafka-python's threads (the producer's sender, `*-network-thread`; the IO loops of the
event and control consumers, `kafka-io-*`), all read when the loop ends.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (ROOT, Topics, ensure_kafka, make_messages, make_raw_messages, prediction_refs, prefill,  # noqa: E402
                    read_all, worker_command, worker_env)

MARK = "worker_variant: threads at close: "


def run_once(topic: str, name: str, features: str, interval: float, workdir: Path) -> dict:
    predictions = f"{topic}-p-{name}"
    extra = ["--until-idle", "1", "--predictions-topic", predictions, "--switch-interval", str(interval)]
    if features == "raw":
        extra += ["--model", "logreg", "--features", "raw"]
    command = worker_command(topic, f"g-{predictions}", workdir / f"{name}-ckpt", *extra,
                             python=[sys.executable, "benchmarks/worker_variant.py", "--thread-stats"])
    done = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"worker exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    threads = json.loads([line for line in done.stdout.splitlines() if line.startswith(MARK)][-1][len(MARK):])
    refs = prediction_refs(read_all(predictions))
    span = (refs[-1][2] - refs[0][2]) / 1000.0
    main = next(t for t in threads if t["name"] == "MainThread")
    kafka_threads = {t["name"]: t["cpu_s"] for t in threads if "network-thread" in t["name"]
                     or (t["name"].startswith("kafka-io-") and not t["name"].endswith("-probe"))}
    return {"events_per_s": (refs[-1][1] - refs[0][1]) / span, "main_voluntary": main["voluntary"],
            "main_cpu_s": main["cpu_s"], "kafka_threads_cpu_s": kafka_threads}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--features", choices=("raw", "shop"), default="raw")
    parser.add_argument("--interval", type=float, nargs="+", default=[0.005, 0.0],
                        help="switch intervals to alternate (0: the worker's auto)")
    parser.add_argument("--workdir", default="/tmp/shopstream-switch-interval")
    args = parser.parse_args(argv)
    ensure_kafka()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    messages = make_raw_messages(args.events, width=12) if args.features == "raw" else make_messages(args.events)
    topics = Topics()
    try:
        topic = topics.new("switch", 1)
        prefill(topic, messages)
        print(f"{args.events:,} events, {args.features} features, one kafka-python worker; intervals {args.interval}")
        for round_ in range(args.rounds):
            for interval in args.interval:
                result = run_once(topic, f"r{round_}-{interval:g}", args.features, interval, workdir)
                threads = ", ".join(f"{re.sub(r'[0-9]+', 'N', name)} {cpu:.3f} s"
                                    for name, cpu in sorted(result["kafka_threads_cpu_s"].items()))
                print(f"round {round_ + 1} interval {interval or 'auto'}: {result['events_per_s']:,.0f} events/s; "
                      f"main thread {result['main_voluntary']:,} voluntary switches, {result['main_cpu_s']:.2f} s "
                      f"CPU; kafka-python threads: {threads}", flush=True)
    finally:
        topics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
