#!/usr/bin/env python3
"""Measure proposed worker changes without making them: row 3 of run.py (one worker,
pre-filled 1-partition topic) under benchmark-local variants, one after the other on the
same events, plus in-process estimates of engine-side costs.

    python benchmarks/experiments.py [--events 100000] [--only NAME,NAME] [--out FILE.md]

Worker variants run `benchmarks/worker_variant.py` (monkeypatched kafka-python settings,
batched publishing) or the CLI with other flags. The `crc32c` variants put the C `crc32c`
package on PYTHONPATH from a private directory (pip install --target, nothing is installed
into the environment): kafka-python uses it instead of its pure-Python CRC-32C when it
can import it.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_kafka, make_messages, worker_env  # noqa: E402
from run import run_latency, run_workers  # noqa: E402

HERE = Path(__file__).resolve().parent
CRC_DIR = Path(os.environ.get("SHOPSTREAM_BENCH_CRC32C", "/tmp/shopstream-bench-crc32c"))
VARIANT = [sys.executable, str(HERE / "worker_variant.py")]

BIG_PRODUCER = ["--producer", "batch_size=1048576"]
BIG_FETCH = ["--consumer", "max_partition_fetch_bytes=8388608", "--consumer", "max_poll_records=5000"]
NO_CHECKPOINTS = ["--checkpoint-every", "100000000", "--checkpoint-seconds", "100000"]

# name -> (python prefix or None for the plain CLI, worker flags, needs crc32c, what it shows)
WORKER_VARIANTS = {
    "baseline": (None, [], False, "the worker as it is (same as row 3)"),
    "no-control": (None, ["--control-topic", ""], False, "control channel off (its own consumer, polled each second)"),
    "no-publish": (None, ["--predictions-topic", ""], False, "upper bound of what publishing costs"),
    "no-checkpoints": (None, NO_CHECKPOINTS, False, "upper bound of what periodic checkpoints cost"),
    "crc32c": (None, [], True, "C CRC-32C for kafka-python (pip install crc32c), nothing else"),
    "crc32c+producer-1MB+no-control": (VARIANT + BIG_PRODUCER, ["--control-topic", ""], True,
                                       "C CRC and 1 MB producer batches, the control channel off"),
    "producer-batch-1MB": (VARIANT + BIG_PRODUCER, [], False, "worker producer batch_size 16 KB -> 1 MB"),
    "crc32c+producer-batch-1MB": (VARIANT + BIG_PRODUCER, [], True, "both"),
    "crc32c+producer+fetch": (VARIANT + BIG_PRODUCER + BIG_FETCH, [], True,
                              "and max_partition_fetch_bytes 8 MB, max_poll_records 5000"),
    "crc32c+per-event-predictions": (None, ["--prediction-format", "event"], True,
                                     "one record per prediction instead of one per polled batch (the default)"),
    "crc32c+producer+no-checkpoints": (VARIANT + BIG_PRODUCER, NO_CHECKPOINTS, True,
                                       "C CRC, 1 MB batches, checkpoints out of the way"),
    "crc32c+batched+no-checkpoints": (None, NO_CHECKPOINTS, True,
                                      "what is left: consume + decode + engine"),
}


def ensure_crc32c() -> Path:
    if not (CRC_DIR / "crc32c").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", str(CRC_DIR), "crc32c"], check=True)
    return CRC_DIR


def env_for(crc: bool) -> dict:
    env = worker_env()
    if crc:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ensure_crc32c()), env.get("PYTHONPATH")]))
    return env


def engine_costs(messages, repeat: int = 3) -> dict:
    """In-process: the engine with one part switched off at a time (monkeypatched), to price
    the parts the profile points at. Medians of `repeat` runs; events/s over all events."""
    from shopstream.engine import Engine
    from shopstream.events import decode_event

    values = [v for _, v in messages]
    events = [decode_event(v) for v in values]

    def run(decoded: bool):
        engine = Engine.fresh("logreg", "shop")
        if decoded:
            for offset, e in enumerate(events):
                engine.process(e, offset)
        else:
            for offset, v in enumerate(values):
                engine.process(decode_event(v), offset)

    def timed(fn) -> float:
        runs = []
        for _ in range(repeat):
            gc.collect()
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return sorted(runs)[len(runs) // 2]

    out = {"engine (decode+process)": timed(lambda: run(False)), "engine (pre-decoded)": timed(lambda: run(True))}

    import shopstream.scoring as scoring_module
    original_update = scoring_module.Scoreboard.update
    scoring_module.Scoreboard.update = lambda self, *a: None
    try:
        out["engine (pre-decoded), no scoreboard"] = timed(lambda: run(True))
    finally:
        scoring_module.Scoreboard.update = original_update

    gc.disable()
    try:
        out["engine (pre-decoded), gc disabled"] = timed(lambda: run(True))
    finally:
        gc.enable()
    n = len(messages)
    return {name: {"seconds": s, "events_per_s": n / s, "us_per_event": 1e6 * s / n} for name, s in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--only", help="comma-separated variant names (default: all; '' for none); "
                                       "'engine' for the in-process parts")
    parser.add_argument("--latency", action="store_true",
                        help="also latency at a fixed rate under a few variants")
    parser.add_argument("--latency-rate", type=float, default=2000.0)
    parser.add_argument("--out", help="write the results table (Markdown) here too")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only is not None \
        else [*WORKER_VARIANTS, "engine"]
    unknown = set(names) - set(WORKER_VARIANTS) - {"engine"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {[*WORKER_VARIANTS, 'engine']}")
    messages = make_messages(args.events)
    lines = [f"# Worker experiments: {args.events:,} events, one worker, 1 partition", "",
             "| variant | events/s | vs baseline | worker CPU s | what |", "|---|---:|---:|---:|---|"]
    workdir = Path(tempfile.mkdtemp(prefix="shopstream-exp-"))
    base = None
    results = {}
    for name in names:
        if name == "engine":
            continue
        python, flags, crc, what = WORKER_VARIANTS[name]
        ensure_kafka()
        print(f"[exp] {name}", file=sys.stderr, flush=True)
        r = run_workers(messages, 1, 1, workdir, extra=flags, prefix="exp", python=python, env=env_for(crc))
        results[name] = r
        if name == "baseline":
            base = r["events_per_s"]
        vs = f"{r['events_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {name} | {r['events_per_s']:,.0f} | {vs} | {r['workers_cpu_s']:.1f} | {what} |")
        print(lines[-1], flush=True)
    if "engine" in names:
        lines += ["", "In-process engine parts (median of 3):", "", "| run | events/s | us/event |", "|---|---:|---:|"]
        for name, r in engine_costs(messages).items():
            lines.append(f"| {name} | {r['events_per_s']:,.0f} | {r['us_per_event']:.1f} |")
            print(lines[-1], flush=True)
    if args.latency:
        lines += ["", f"Latency at {args.latency_rate:,.0f} events/s, 15 s:", "",
                  "| variant | p50 ms | p99 ms | p99.9 ms | max ms | prediction timestamp |",
                  "|---|---:|---:|---:|---:|---|"]
        off = ["--control-topic", ""]
        quick_control = ["--control-consumer", "fetch_max_wait_ms=5"]
        cases = [
            ("baseline", None, [], False, False),
            ("control channel off (--control-topic '')", None, off, False, False),
            ("control consumer fetch_max_wait_ms=5", VARIANT + quick_control, [], False, False),
            ("crc32c + producer 1 MB + control fetch 5 ms", VARIANT + quick_control + BIG_PRODUCER, [], True, False),
            ("  same, no periodic checkpoints", VARIANT + quick_control + BIG_PRODUCER, NO_CHECKPOINTS, True, False),
            ("  same, prediction timestamp = broker LogAppendTime", VARIANT + quick_control + BIG_PRODUCER, [], True,
             True),
            ("  same + producer linger_ms 2, LogAppendTime",
             VARIANT + quick_control + BIG_PRODUCER + ["--producer", "linger_ms=2"], [], True, True),
        ]
        for label, python, flags, crc, append in cases:
            print(f"[exp] latency {label}", file=sys.stderr, flush=True)
            extra = flags
            r = _latency(messages, args.latency_rate, workdir, python, extra, env_for(crc), append)
            lines.append(f"| {label} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['p999_ms']:.0f} | "
                         f"{r['max_ms']:.0f} | "
                         f"{r['prediction_timestamp']} |")
            print(lines[-1], flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _latency(messages, rate, workdir, python, extra, env, append):
    import common

    original = common.worker_command
    original_proc = common.WorkerProcess

    def command(*a, **kw):
        kw["python"] = python
        return original(*a, **kw)

    class Proc(original_proc):
        def __init__(self, cmd, log_path, env=None, _env=env):
            super().__init__(cmd, log_path, env=_env)

    import run as run_module
    run_module.worker_command, run_module.WorkerProcess = command, Proc
    try:
        return run_latency(messages, rate, 15.0, workdir, extra=extra, append_time=append)
    finally:
        run_module.worker_command, run_module.WorkerProcess = original, original_proc


if __name__ == "__main__":
    sys.exit(main())
