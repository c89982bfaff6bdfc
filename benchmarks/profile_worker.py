#!/usr/bin/env python3
"""Profile one worker end-to-end (row 3 of run.py) with py-spy, and summarise where the
time goes per event.

    pip install py-spy        # a profiling tool, not a project dependency
    python benchmarks/profile_worker.py [--events 200000] [--mode gil,idle] [-- extra worker flags]

A fresh 1-partition topic is pre-filled, then the real `python -m cli worker`
runs under `py-spy record --threads`:

- mode `gil`: only samples that hold the GIL. A worker is one Python process, so the GIL
  is the resource every thread (main loop, kafka-python's IO thread, producer sender)
  competes for: this mode says who spends it on what.
- mode `idle`: every thread, waiting or not: how long the main loop blocks (in poll, in
  producer.flush, in fsync) instead of working.

Raw stacks are kept in --out; the summary prints inclusive shares, per-event costs in
microseconds, and the main loop's top functions.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (ROOT, Topics, ensure_kafka, make_messages, make_raw_messages, prediction_refs, prefill, read_all,  # noqa: E402
                    worker_command, worker_env)

# Functions whose inclusive time answers "what does the per-event path cost".
KEY_FUNCTIONS = [
    ("Worker.run", "the main loop, total"),
    ("KafkaConsumer.poll", "consumer.poll (fetch, decompress, parse records)"),
    ("Worker.handle", "handle(): one record"),
    ("decode_event", "  decode + validate"),
    ("Engine.process", "  engine: predict, join, learn"),
    ("Engine._resolve", "    resolve + score + learn"),
    ("Pipeline.learn_one", "      River learn_one"),
    ("Engine._predict", "    features + predict"),
    ("Pipeline.predict_proba_one", "      River predict_proba_one"),
    ("ShopFeatures.transform", "      features.transform"),
    ("ShopFeatures.learn", "    features.learn"),
    ("Scoreboard.update", "    scoreboard"),
    ("Outputs.prediction", "  publish a prediction"),
    ("KafkaProducer.send", "    KafkaProducer.send"),
    ("Histogram.observe", "  Prometheus histograms (sampled)"),
    ("Worker._maybe_checkpoint", "periodic checkpoint"),
    ("Outputs.confirm", "  outputs acknowledged (producer.flush)"),
    ("CheckpointStore.save", "  save: encode + atomic write + fsync"),
    ("encode_state", "    pickle + sha256/HMAC"),
    ("KafkaConsumer.commit", "  offset commit"),
]

_FRAME = re.compile(r"^(.*?) \((.*?):(\d+)\)$")


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    name, path, _ = match.groups()
    return f"{name} [{path.split('site-packages/')[-1].split(str(ROOT) + '/')[-1]}]"


def load_raw(path: Path):
    """py-spy raw: 'frame;frame;... count' lines, root first; with --threads the first
    frame is the thread."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        stacks.append((frames[0], [frame_name(f) for f in frames[1:]], int(count)))
    return stacks


def thread_label(thread: str) -> str:
    """'thread (16345): MainThread' -> 'main thread'; other threads keep their name with
    the pid digits dropped (kafka-python 3 names its threads after the process)."""
    name = thread.split(": ", 1)[-1]
    return "main thread" if name == "MainThread" else "thread " + re.sub(r"\d+", "N", name)


def summarise(path: Path, rate: float, events: int, mode: str) -> str:
    stacks = load_raw(path)
    by_thread = defaultdict(int)
    labels = {}
    for thread, _frames, count in stacks:
        labels.setdefault(thread, thread_label(thread))
        by_thread[thread] += count
    total = sum(by_thread.values())
    out = [f"## {mode}: {path.name}  ({total} samples at {rate:.0f} Hz = {total / rate:.1f} s"
           f" of {'GIL-holding' if mode == 'gil' else 'thread'} time; {events:,} events)", ""]
    out.append("| thread | samples | share | seconds | us/event |")
    out.append("|---|---:|---:|---:|---:|")
    merged = Counter()
    for thread, n in by_thread.items():
        merged[labels[thread]] += n
    for label, n in merged.most_common():
        out.append(f"| {label} | {n} | {100 * n / total:.1f}% | {n / rate:.2f} | {1e6 * n / rate / events:.1f} |")
    out.append("")

    main_stacks = [(frames, count) for thread, frames, count in stacks if labels[thread] == "main thread"]
    main_total = sum(c for _, c in main_stacks)
    inclusive = Counter()
    self_time = Counter()
    for frames, count in main_stacks:
        for name in set(frames):
            inclusive[name] += count
        self_time[frames[-1] if frames else "(no Python frame)"] += count
    short = Counter()
    for name, n in inclusive.items():
        short[name.split(" [")[0]] += n  # same function name in one stack is counted once per stack above
    out.append("Main thread, inclusive (samples in which the function is on the stack):")
    out.append("")
    out.append("| function | what | share of main thread | us/event |")
    out.append("|---|---|---:|---:|")
    for name, what in KEY_FUNCTIONS:
        n = short.get(name, 0)
        out.append(f"| `{name}` | {what} | {100 * n / max(1, main_total):.1f}% | {1e6 * n / rate / events:.1f} |")
    out.append("")
    out.append("Main thread, top 35 inclusive:")
    out.append("")
    for name, n in inclusive.most_common(35):
        out.append(f"    {100 * n / main_total:5.1f}%  {1e6 * n / rate / events:7.1f} us/ev  {name}")
    out.append("")
    out.append("Main thread, top 25 self (leaf):")
    out.append("")
    for name, n in self_time.most_common(25):
        out.append(f"    {100 * n / main_total:5.1f}%  {1e6 * n / rate / events:7.1f} us/ev  {name}")
    for label in sorted(set(merged) - {"main thread"}):
        leaf = Counter()
        for thread, frames, count in stacks:
            if labels[thread] == label:
                leaf[frames[-1] if frames else "(no Python frame)"] += count
        n = merged[label]
        out.append("")
        out.append(f"{label}: top leaves")
        out.append("")
        for name, c in leaf.most_common(8):
            out.append(f"    {100 * c / n:5.1f}%  {1e6 * c / rate / events:7.1f} us/ev  {name}")
    out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--mode", default="gil,idle", help="comma-separated: gil, idle, cpu")
    parser.add_argument("--out", default="/tmp/shopstream-profile", help="directory for raw stacks and logs")
    parser.add_argument("extra", nargs="*", help="extra worker flags (after --)")
    args = parser.parse_args(argv)
    if not shutil.which("py-spy"):
        parser.error("py-spy is not installed: pip install py-spy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_kafka()
    # `-- --features raw`: labelled events with 12 raw features (rows 1r-3r, the peers' job)
    raw_features = "raw" in args.extra and args.extra[args.extra.index("raw") - 1] == "--features"
    messages = make_raw_messages(args.events, width=12) if raw_features else make_messages(args.events)
    report = [f"# Worker profile: {args.events:,} events, worker flags {args.extra or '(defaults)'}", ""]
    for mode in [m.strip() for m in args.mode.split(",") if m.strip()]:
        topics = Topics()
        try:
            topic = topics.for_worker(f"prof-{mode}", 1)
            prefill(topic, messages)
            raw = out / f"worker-{mode}.raw"
            flags = {"gil": ["--gil"], "idle": ["--idle"], "cpu": []}[mode]
            command = ["py-spy", "record", "-r", str(args.rate), "-f", "raw", "-t", *flags, "-o", str(raw), "--",
                       *worker_command(topic, f"g-{topic}", out / f"{topic}-ckpt", "--until-idle", "1",
                                       *args.extra)]
            print(f"[profile] {mode}: {' '.join(command)}", file=sys.stderr, flush=True)
            started = time.time()
            with open(out / f"worker-{mode}.log", "wb") as log:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                      env=worker_env()).returncode
            if code:
                print(f"[profile] worker under py-spy exited {code}; see {out / f'worker-{mode}.log'}", file=sys.stderr)
                return 1
            refs = prediction_refs(read_all(f"{topic}-predictions"))
            span = (refs[-1][2] - refs[0][2]) / 1000.0
            rate = (refs[-1][1] - refs[0][1]) / span
            report.append(f"Under py-spy ({mode}): {rate:,.0f} events/s over {span:.1f} s "
                          f"(whole process {time.time() - started:.1f} s).")
            report.append("")
            report.append(summarise(raw, args.rate, args.events, mode))
        finally:
            topics.close()
    text = "\n".join(report)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
