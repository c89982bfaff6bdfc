#!/usr/bin/env python3
"""What makes prediction latency worse: the latency row (a paced producer feeds one worker,
latency = the prediction record's CreateTime minus its input record's) for variants of the
same worker, round-robin in one run, so that the machine's load hits every variant alike.

    python benchmarks/latency_ab.py [--state 100000] [--seconds 20] [--rate 2000] [--rounds 2]
        [--only as_is,no_checkpoints,...]

Variants: the worker as deployed (`as_is`); without periodic checkpoints (`no_checkpoints`:
neither the wait for acknowledged outputs nor the save); without the per-second metrics
snapshot of the engines (`no_snapshots`); with the cyclic garbage collector off (`gc_off`,
an upper bound of what collections cost), or walking the middle generation every 5 young
collections, not every 50 (`gc_middle_5`: shorter walks, ten times as many); the worker on
librdkafka (`librdkafka`); its kafka-python producer batching at most 16 KiB per partition
and request, the client's default (`producer_batch_16k`: the worker before 2026-12-07, 256
KiB since); its consumer's fetches held at most 50 ms by the broker, not 500 (`fetch_wait_50`),
or its retry backoff at 10 ms, not 100 (`retry_backoff_10`), or its fetcher not mended
(`fetch_unmended`: stream/fetch_idle.py, the worker before 2026-12-07); checkpoints written in the
loop, never forked (`ckpt_in_loop`), or always forked (`ckpt_forked`); the broker watch
asking on the consumer's connection (`probe_on_consumer`); one predictions record per polled
batch (`batch_per_poll`); and both of the last two (`before_1203`: the worker before the
2026-12-03 changes). Each variant is `benchmarks/worker_variant.py` around the real command.

--trace splits each event's latency into where it went, and times the loop's stops by cause.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages  # noqa: E402
from common import say  # noqa: E402
from run import percentile, run_latency  # noqa: E402

VARIANT = str(Path(__file__).resolve().parent / "worker_variant.py")
NO_CHECKPOINTS = ("--checkpoint-every", "1000000000", "--checkpoint-seconds", "1000000000")
VARIANTS = {
    "as_is": ((), ()),
    "no_checkpoints": ((), NO_CHECKPOINTS),
    "no_snapshots": (("--snapshot-seconds", "1e9"), ()),
    "gc_off": (("--gc-off",), ()),
    "gc_middle_5": (("--gc-thresholds", "50000,5,1000"), ()),
    "librdkafka": ((), ("--kafka-client", "confluent")),   # (--trace times kafka-python's polls only)
    "producer_batch_16k": (("--producer", "batch_size=16384"), ()),   # before 2026-12-07
    "fetch_wait_50": (("--consumer", "fetch_max_wait_ms=50"), ()),
    "retry_backoff_10": (("--consumer", "retry_backoff_ms=10"), ()),
    "fetch_unmended": (("--fetch-unmended",), ()),   # before 2026-12-07
    "ckpt_in_loop": ((), ("--checkpoint-background", "off")),
    "ckpt_forked": ((), ("--checkpoint-background", "on")),
    "probe_on_consumer": (("--broker-check-on-consumer",), ()),
    "batch_per_poll": (("--batch-predictions", "1e9"), ()),
    "before_1203": (("--broker-check-on-consumer", "--batch-predictions", "1e9"), ()),
    "save_holds_gil": (("--save-switch-interval", "0.1"), ()),
}


def trace_summary(trace: dict, first_offset: int) -> dict:
    """p50/p99/max of each part of the measured events' latency (offsets from `first_offset`),
    and of the loop's housekeeping stops and poll sizes while they were handled."""
    def summary(values) -> dict:
        values = sorted(values)
        if not values:
            return {}
        return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99), "max": values[-1]}

    rows = [row for row in trace["events"] if row[0] >= first_offset and row[4] is not None]
    began = min((row[5] for row in rows), default=float("inf"))   # the first measured event's handling
    ended = max((row[5] for row in rows), default=float("-inf"))   # the last (not the idle seconds after)
    parts = {name: summary(row[i] * 1e3 for row in rows)
             for i, name in ((1, "fetch"), (2, "queued"), (3, "handle"), (4, "publish"))}
    parts["housekeeping"] = summary(s * 1e3 for start, s in trace["housekeeping"] if began <= start <= ended)
    for label, spent in trace.get("stops", {}).items():
        parts[label] = summary(s * 1e3 for start, s in spent if began <= start <= ended)
    parts["records_per_poll"] = summary(n for at, n in trace["polls"] if began <= at <= ended)
    return parts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=int, default=100_000, help="events worked off before measuring")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--extra", default="", help="worker flags for every variant, e.g. '--features raw'")
    parser.add_argument("--json", default="")
    parser.add_argument("--trace", action="store_true",
                        help="also split each variant's latency into fetch / queued / handle / publish "
                             "(worker_variant.py --trace-loop) and print it")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    messages = make_messages(args.state + int(args.rate * args.seconds) + 1)
    workdir = Path(tempfile.mkdtemp(prefix="latency-ab-"))
    results: dict = {name: [] for name in names}
    for round_ in range(1, args.rounds + 1):
        for name in names:
            wrapper, flags = VARIANTS[name]
            say(f"latency A/B round {round_}: {name}")
            trace = workdir / f"trace-{name}-{round_}.json"
            tracing = ("--trace-loop", str(trace)) if args.trace else ()
            r = run_latency(messages, args.rate, args.seconds, workdir, extra=(*flags, *args.extra.split()),
                            state_events=args.state, python=[sys.executable, VARIANT, *wrapper, *tracing])
            row = {k: r[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "achieved_rate")}
            row["load"] = round(os.getloadavg()[0], 2)
            results[name].append(row)
            print(f"{name:>15} round {round_}: p50 {row['p50_ms']:.0f} ms  p90 {row['p90_ms']:.0f}  "
                  f"p99 {row['p99_ms']:.0f}  max {row['max_ms']:.0f}  (load {row['load']})", flush=True)
            if args.trace and trace.exists():
                row["trace"] = parts = trace_summary(json.loads(trace.read_text()), args.state)
                for part, s in parts.items():
                    if s:
                        print(f"{'':>15}   {part:>32}: p50 {s['p50']:.2f}  p99 {s['p99']:.2f}  max {s['max']:.1f}"
                              f"  (n {s['n']}{'' if part == 'records_per_poll' else ', ms'})", flush=True)
    print(f"at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, state {args.state}, "
          f"{args.rate:.0f} events/s for {args.seconds:.0f} s, extra {args.extra!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
