#!/usr/bin/env python3
"""shopstream benchmark: one run, one machine, the same generated events for every row.

    python benchmarks/run.py                 # full run (minutes), writes BENCHMARKS.md
    python benchmarks/run.py --quick --out /tmp/bench.md   # CI smoke: small sizes, seconds

Rows (events/s is always "input events of the stream / seconds", see BENCHMARKS.md):

 1  ceiling: River's predict_proba_one / learn_one loop (+ a River metric update) on the
    exact feature dicts and labels the engine produces, progressive_val_score style;
 1b the same model calls replayed in the engine's own order (labels arrive later);
 2  the engine in-process: JSON bytes -> decode_event -> Engine.process (no Kafka);
 2a the engine alone on already decoded events;
 3  one worker subprocess end-to-end from a pre-filled 1-partition topic;
 4  two worker subprocesses, one group, a pre-filled 2-partition topic (aggregate);
 5  event-to-prediction latency p50/p99 at half of row 3's rate;
 6  offline bootstrap of a 1M-event history (logreg only);
 7  peak RSS of an engine holding 1M open predictions, and of its checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (BOOTSTRAP, ROOT, Topics, WorkerProcess, ensure_kafka, handled_count, history_file,  # noqa: E402
                    log_events, machine, make_messages, make_raw_messages, prediction_refs, prefill, producer,
                    read_all, record_model_calls, rss_mb, say, worker_command)

PHASES = ("ceiling", "engine", "raw", "worker1", "worker1c", "worker2", "latency", "bootstrap", "rss", "overhead",
          "peers")
QUICK_SKIPS = ("overhead", "peers")   # --quick (the CI smoke) runs these only when named in --phases
FULL = {"events": 200_000, "bootstrap_events": 1_000_000, "open_predictions": 1_000_000, "latency_seconds": 20.0,
        "repeat": 5, "latency_state": 300_000, "peers_events": 100_000}
QUICK = {"events": 20_000, "bootstrap_events": 50_000, "open_predictions": 50_000, "latency_seconds": 4.0,
         "repeat": 1, "latency_state": 5_000, "peers_events": 5_000}
KEPT_HEADING = "## Analysis"  # from this heading on, BENCHMARKS.md is hand-written and kept by re-runs
# Issue 12's targets (the row that measures each is named in build_table).
TARGETS = {"worker_vs_ceiling": 0.5, "engine_vs_ceiling": 0.7, "two_vs_one": 1.6, "p99_ms": 50.0,
           "latency_rate": 2000.0, "latency_state": 300_000, "loop_stop_ms": 50.0, "bytes_per_open": 1000.0,
           "rss_1m_mib": 1536.0, "bootstrap_vs_ceiling": 0.5}


def timed_rounds(fns: dict, repeat: int) -> dict:
    """Run every fn once per round, `repeat` rounds, round-robin (garbage collected before
    each run), so that a change of machine load hits all rows alike. The fastest run of
    each counts (the one least disturbed by other work); the median is kept too."""
    seconds = {name: [] for name in fns}
    for round_ in range(1, repeat + 1):
        say(f"in-process: round {round_}/{repeat}")
        for name, fn in fns.items():
            gc.collect()
            started = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - started)
    return {name: {"runs_s": [round(x, 3) for x in runs], "seconds": min(runs), "median_s": statistics.median(runs)}
            for name, runs in seconds.items()}


# -- rows 1, 1b, 2, 2a: in-process -----------------------------------------------------------

def bench_in_process(messages, repeat: int) -> dict:
    from river import metrics

    from shopstream.engine import Engine
    from shopstream.events import decode_event
    from shopstream.models import build_model

    n = len(messages)
    values = [value for _, value in messages]
    events = [decode_event(v) for v in values]
    xs, ys, ops, recorded = record_model_calls(events)
    predicted, learned = len(xs), sum(y is not None for y in ys)
    assert recorded.counts["predicted"] == predicted and recorded.counts["learned"] == learned
    pairs = list(zip(xs, ys))

    def ceiling():
        model, metric = build_model("logreg"), metrics.LogLoss()
        for x, y in pairs:
            p = model.predict_proba_one(x)
            if y is not None:
                model.learn_one(x, y)
                metric.update(y, p)

    def replay():
        model, metric = build_model("logreg"), metrics.LogLoss()
        probas = [None] * len(xs)
        for op in ops:
            if op >= 0:
                probas[op] = model.predict_proba_one(xs[op])
            else:
                i = ~op
                model.learn_one(xs[i], ys[i])
                metric.update(ys[i], probas[i])

    def engine_from_bytes():
        engine = Engine.fresh("logreg", "shop")
        for offset, value in enumerate(values):
            engine.process(decode_event(value), offset)
        assert engine.counts["predicted"] == predicted

    def engine_decoded():
        engine = Engine.fresh("logreg", "shop")
        for offset, event in enumerate(events):
            engine.process(event, offset)

    def decode_only():
        for value in values:
            decode_event(value)

    out = {}
    fns = {"ceiling": ceiling, "ceiling_replay": replay, "engine": engine_from_bytes,
           "engine_decoded": engine_decoded, "decode": decode_only}
    for name, r in timed_rounds(fns, repeat).items():
        r.update(events=n, events_per_s=n / r["seconds"], predictions=predicted, learned=learned,
                 predictions_per_s=predicted / r["seconds"])
        out[name] = r
    return out


def bench_raw_in_process(messages, repeat: int) -> dict:
    """Rows 1r and 2r: labelled events with raw features. 1r is River's own
    progressive-validation loop (predict_proba_one, learn_one, LogLoss) on the events'
    (features, label); 2r the engine on the same JSON bytes (decode + Engine.process)."""
    from river import metrics

    from shopstream.engine import Engine
    from shopstream.events import decode_event
    from shopstream.models import build_model

    values = [value for _, value in messages]
    pairs = [(e.features, e.label) for e in map(decode_event, values)]

    def ceiling_raw():
        model, metric = build_model("logreg"), metrics.LogLoss()
        for x, y in pairs:
            p = model.predict_proba_one(x)
            model.learn_one(x, y)
            metric.update(y, p)

    def engine_raw():
        engine = Engine.fresh("logreg", "raw")
        for offset, value in enumerate(values):
            engine.process(decode_event(value), offset)
        assert engine.counts["learned"] == len(values)

    out = {}
    for name, r in timed_rounds({"ceiling_raw": ceiling_raw, "engine_raw": engine_raw}, repeat).items():
        r.update(events=len(values), events_per_s=len(values) / r["seconds"])
        out[name] = r
    return out


# -- rows 3, 4: workers on a pre-filled topic -------------------------------------------------

def _children_usage():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run_workers(messages, partitions: int, workers: int, workdir: Path, extra=(), timeout: float = 1800.0,
                prefix: str = "w", python=None, env=None, attempts: int = 2) -> dict:
    """Pre-fill a fresh topic, run `workers` worker subprocesses in one group until idle,
    and measure throughput from the published predictions' timestamps. A run in which the
    workers did not handle every event (e.g. a group join slower than the idle timeout on
    a busy broker) is retried on a fresh topic."""
    for attempt in range(1, attempts + 1):
        try:
            return _run_workers(messages, partitions, workers, workdir, extra, timeout, prefix, python, env)
        except IncompleteRun as exc:
            say(f"attempt {attempt}: {exc}")
            if attempt == attempts:
                raise


class IncompleteRun(RuntimeError):
    pass


def _run_workers(messages, partitions, workers, workdir, extra, timeout, prefix, python, env) -> dict:
    topics = Topics()
    procs: list[WorkerProcess] = []
    try:
        topic = topics.for_worker(f"{prefix}{workers}", partitions)
        say(f"{topic}: pre-filling {len(messages)} events on {partitions} partition(s)")
        prefill_s = prefill(topic, messages)
        cpu_before = _children_usage()
        started = time.time()
        for i in range(workers):
            command = worker_command(topic, f"g-{topic}", workdir / f"{topic}-ckpt", "--until-idle", "8",
                                     "--client-id", f"bench-{i}", *extra, python=python)
            procs.append(WorkerProcess(command, workdir / f"{topic}-worker{i}.log", env=env))
        codes = [p.wait(timeout) for p in procs]
        wall = time.time() - started
        cpu = _children_usage() - cpu_before
        logs = [p.log() for p in procs]
        if any(codes):
            raise RuntimeError(f"worker exit codes {codes}; logs in {workdir}")
        handled = sum(handled_count(text) or 0 for text in logs)
        if handled < len(messages):
            raise IncompleteRun(f"workers handled {handled} of {len(messages)} events (logs in {workdir})")
        refs = prediction_refs(read_all(f"{topic}-predictions"))
        result = {"events": len(messages), "handled": handled, "predictions": len(refs), "prefill_s": prefill_s,
                  "process_wall_s": wall, "workers_cpu_s": cpu, "command": shlex.join(procs[0].command)}
        if workers == 1 and not refs:  # nothing published (--predictions-topic ''): fall back on the log
            result.update(_log_rate(log_events(logs[0]), handled))
        elif workers == 1:
            result.update(_single_rate(refs))
        else:
            result.update(_group_rate(refs, [log_events(text) for text in logs], partitions))
        return result
    finally:
        for p in procs:
            p.kill()
        topics.close()


def _single_rate(refs) -> dict:
    """Events from the first published prediction to the last, over that time: start-up,
    group join and the idle wait at the end are outside; periodic checkpoints are inside."""
    (_, first_offset, first_ms), (_, last_offset, last_ms) = refs[0], refs[-1]
    span = (last_ms - first_ms) / 1000.0
    events = last_offset - first_offset
    return {"span_s": span, "events_measured": events, "events_per_s": events / span}


def _log_rate(events, handled: int) -> dict:
    """Without predictions: from the worker's 'assigned partition' log line to its 'idle for
    X s, at the end of ...: stopping' line minus X (log timestamps have millisecond resolution; this includes
    the first fetch, so it slightly underestimates the rate)."""
    start = max(t for t, m in events if m.startswith("assigned partition"))
    stop, message = next((t, m) for t, m in events if m.startswith("idle for"))
    span = stop - float(message.split()[2]) - start
    return {"span_s": span, "events_measured": handled, "events_per_s": handled / span, "measured_from": "worker log"}


def _group_rate(refs, logs, partitions: int) -> dict:
    """Aggregate rate while each worker owns exactly one partition: from the last
    assignment (after the start-up rebalance) until the first partition runs dry."""
    last_ms = {}
    for p, _, ms in refs:
        last_ms[p] = max(last_ms.get(p, 0), ms)
    end = min(last_ms.values()) / 1000.0
    starts = [t for log in logs for t, message in log if message.startswith("assigned partition") and t < end]
    start = max(starts)
    owners = []
    for log in logs:
        owned = set()
        for t, message in log:
            if t > start:
                break
            if message.startswith("assigned partition"):
                owned.add(int(message.split()[2].rstrip(":")))
            elif message.startswith("revoked"):
                owned -= set(json.loads(message.split(" ", 1)[1]))
        owners.append(sorted(owned))
    valid = sorted(p for o in owners for p in o) == list(range(partitions)) and all(len(o) == 1 for o in owners)
    per_partition = {}
    for p in range(partitions):
        inside = [(o, ms) for q, o, ms in refs if q == p and start * 1000 <= ms <= end * 1000]
        if len(inside) < 2:
            continue
        (o1, t1), (o2, t2) = inside[0], inside[-1]
        if t2 <= t1:  # a tiny run can publish a partition's predictions within one millisecond
            continue
        per_partition[p] = {"events": o2 - o1, "span_s": (t2 - t1) / 1000.0,
                            "events_per_s": (o2 - o1) / ((t2 - t1) / 1000.0)}
    first_ms = min(ms for _, _, ms in refs)
    total_span = (max(last_ms.values()) - first_ms) / 1000.0
    return {"window_s": end - start, "owners_in_window": owners, "valid": valid,
            "per_partition": per_partition,
            "events_per_s": sum(v["events_per_s"] for v in per_partition.values()),
            "whole_run_span_s": total_span,
            "whole_run_events_per_s": sum(max(o for q, o, _ in refs if q == p) - min(o for q, o, _ in refs if q == p)
                                          for p in last_ms) / total_span}


# -- row 5: latency at a fixed rate -------------------------------------------------------------

def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[k]


def _wait_until_settled(topic: str, timeout: float = 1800.0, quiet_s: float = 4.0) -> int:
    """Wait until the end offset of `topic` stops growing for `quiet_s` (the worker has
    worked off its backlog); return it."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP)
    tp = TopicPartition(topic, 0)
    try:
        last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            end = consumer.end_offsets([tp])[tp]
            if end != last:
                last, since = end, time.monotonic()
            elif end > 0 and time.monotonic() - since >= quiet_s:
                return end
            time.sleep(0.5)
        raise RuntimeError(f"{topic} still growing after {timeout:.0f} s")
    finally:
        consumer.close()


def run_latency(messages, rate: float, seconds: float, workdir: Path, extra=(), append_time: bool = False,
                producer_linger_ms: int = 0, state_events: int = 0, python: Optional[list[str]] = None) -> dict:
    """Start a worker, feed it at `rate` events/s, then compare each input record's timestamp
    with the timestamp of the prediction made from it (predictions name partition+offset).
    With `state_events`, the topic is first pre-filled with that many events, the worker
    works them off (its state grows, checkpoints as configured), and only the events
    produced afterwards, at `rate`, are measured."""
    from stream.produce import send_all

    count = min(len(messages) - state_events, max(1, int(rate * seconds)))
    topics = Topics()
    proc = None
    try:
        configs = {"message.timestamp.type": "LogAppendTime"} if append_time else None
        topic = topics.for_worker("lat", 1, predictions_configs=configs)
        if state_events:
            say(f"{topic}: pre-filling {state_events} events of state")
            prefill(topic, messages[:state_events])
        command = worker_command(topic, f"g-{topic}", workdir / f"{topic}-ckpt", "--until-idle", "8", *extra,
                                 python=python)
        proc = WorkerProcess(command, workdir / f"{topic}-worker.log")
        if not proc.wait_for(r"assigned partition", 60):
            raise RuntimeError(f"latency worker never got its partition:\n{proc.log()}")
        if state_events:
            settled = _wait_until_settled(f"{topic}-predictions")
            say(f"{topic}: state of {state_events} events worked off ({settled} predictions)")
        say(f"{topic}: producing {count} events at {rate:.0f}/s")
        p = producer(linger_ms=producer_linger_ms, batch_size=16384)
        started = time.perf_counter()
        try:
            send_all(p, topic, messages[state_events:state_events + count], rate=rate)
        finally:
            p.close()
        produce_s = time.perf_counter() - started
        if proc.wait(600):
            raise RuntimeError(f"latency worker failed:\n{proc.log()}")
        sent_ms = {r.offset: r.timestamp for r in read_all(topic) if r.offset >= state_events}
        refs = [ref for ref in prediction_refs(read_all(f"{topic}-predictions")) if ref[1] >= state_events]
        latencies = [ms - sent_ms[o] for _, o, ms in refs]
        first = min(sent_ms.values())
        by_second: dict = {}
        for _, o, ms in refs:
            by_second.setdefault((sent_ms[o] - first) // 1000, []).append(ms - sent_ms[o])
        timeline = [(int(sec), len(v), percentile(v, 50), max(v)) for sec, v in sorted(by_second.items())]
        return {"timeline_s_count_p50_max": timeline, "state_events": state_events, "target_rate": rate,
                "achieved_rate": count / produce_s, "events": count,
                "predictions": len(latencies), "p50_ms": percentile(latencies, 50),
                "p90_ms": percentile(latencies, 90), "p99_ms": percentile(latencies, 99),
                "p999_ms": percentile(latencies, 99.9), "max_ms": max(latencies),
                "mean_ms": statistics.fmean(latencies), "prediction_timestamp": "LogAppendTime" if append_time
                else "CreateTime", "command": shlex.join(command)}
    finally:
        if proc is not None:
            proc.kill()
        topics.close()


# -- rows 6, 7: child processes (own memory, own timings) --------------------------------------

def run_child(kind: str, **params) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-params", json.dumps(params)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"child {kind} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def child_bootstrap(events: int, workdir: str) -> dict:
    """offline.bootstrap.bootstrap on a generated JSONL history, logreg only, no progress bar;
    phases timed by wrapping the module's own functions."""
    import offline.bootstrap as ob
    import offline.report as report

    path = history_file(events)
    phases = {"load_history": 0.0, "train_candidate": 0.0, "save_artifact": 0.0, "write_report": 0.0}

    def timer(name, fn):
        def wrapped(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - t
        return wrapped

    ob.load_history = timer("load_history", ob.load_history)
    ob.train_candidate = timer("train_candidate", ob.train_candidate)
    ob.save_artifact = timer("save_artifact", ob.save_artifact)
    report.write_report = timer("write_report", report.write_report)
    out = Path(workdir) / "bootstrap-artifacts"
    started = time.perf_counter()
    result = ob.bootstrap(path, out, models=["logreg"], progress=False)
    seconds = time.perf_counter() - started
    n = result["data"]["events"]
    holdout = result["data"]["holdout_events"]
    shutil.rmtree(out, ignore_errors=True)
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds, "phases_s": phases,
            "engine_process_calls": n + holdout,
            "train_events_per_s": n / phases["train_candidate"] if phases["train_candidate"] else None,
            "history": str(path), "history_mb": path.stat().st_size / 2**20}


def child_rss(open_predictions: int, workdir: str, during: int = 20_000) -> dict:
    """An engine as a worker runs it (logreg, shop features) fed `open_predictions` views of
    distinct sessions with a window so long that none expires; then one checkpoint of it
    written with the worker's own store, streamed (`save`, the loop waits), and one written
    in the background (`begin_save`: a forked child) while `during` more events are
    processed, timing every event: the longest of those is the longest stop of the loop."""
    import random

    from shopstream.engine import Engine
    from shopstream.events import Event
    from shopstream.generator import CATEGORIES, CHANNELS, PLATFORMS, START
    from stream.checkpointing.stores import DirectoryCheckpointStore
    from stream.partition import Partition

    base_rss, _ = rss_mb()
    engine = Engine.fresh("logreg", "shop", window=10 * 365 * 86400.0, max_open=max(1_000_000, open_predictions))
    rng = random.Random(1)
    products = [(str(100000 + i), rng.choice(CATEGORIES), f"brand{rng.randrange(40)}", round(rng.uniform(5, 500), 2))
                for i in range(10_000)]

    def view(i):
        product_id, category, brand, price = products[rng.randrange(len(products))]
        return Event(START + i * 0.5, "view", product_id, str(500000 + i % 50_000), f"s{i}",
                     event_id=f"e{i}", category_code=category, brand=brand, price=price,
                     platform=PLATFORMS[i % 3], channel=CHANNELS[i % 4])

    started = time.perf_counter()
    for i in range(open_predictions):
        engine.process(view(i))
    fill_s = time.perf_counter() - started
    gc.collect()
    filled_rss, filled_hwm = rss_mb()
    store = DirectoryCheckpointStore(Path(workdir) / "rss-ckpt")
    state = Partition("bench", 0, engine, next_offset=open_predictions)
    started = time.perf_counter()
    store.save(state)
    checkpoint_s = time.perf_counter() - started
    path = store.path("bench", 0)
    _, peak = rss_mb()
    size = path.stat().st_size
    path.unlink()
    result = {"open_predictions": engine.open_predictions, "baseline_rss_mib": base_rss, "rss_mib": filled_rss,
              "peak_before_checkpoint_mib": filled_hwm, "peak_mib": peak,
              "bytes_per_open_prediction": (filled_rss - base_rss) * 2**20 / max(1, engine.open_predictions),
              "bytes_per_open_prediction_at_peak": (peak - base_rss) * 2**20 / max(1, engine.open_predictions),
              "fill_s": fill_s, "checkpoint_s": checkpoint_s, "checkpoint_mib": size / 2**20}
    if not hasattr(store, "begin_save"):
        return result
    # The same checkpoint in the background while the loop goes on; every event timed.
    store.spool_dir = Path(workdir)
    gc_pauses, gc_started = [], [0.0]

    def gc_timer(phase, info):  # how much of the slowest event is a collection
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(gc_timer)
    slowest, n, started = 0.0, open_predictions, time.perf_counter()
    pending = store.begin_save(state)
    fork_s = time.perf_counter() - started
    while not pending.done() or n < open_predictions + during:
        t = time.perf_counter()
        engine.process(view(n))
        n += 1
        slowest = max(slowest, time.perf_counter() - t)
    background_s = time.perf_counter() - started
    gc.callbacks.remove(gc_timer)
    pending.finish()
    _, peak_after = rss_mb()
    result.update({"background_fork_ms": fork_s * 1e3, "background_events": n - open_predictions,
                   "background_s": background_s, "slowest_event_during_ms": slowest * 1e3,
                   "longest_loop_stop_ms": max(fork_s, slowest) * 1e3,
                   "gc_passes_during": len(gc_pauses),
                   "longest_gc_pass_ms": max((d for _, d in gc_pauses), default=0.0) * 1e3,
                   "longest_gc_pass_generation": max(gc_pauses, key=lambda g: g[1], default=(None, 0))[0],
                   "background_child_peak_mib": pending.child_maxrss_kib / 1024,
                   "peak_after_background_mib": peak_after})
    path.unlink()
    return result


def configured_cap_mib(explicit):
    """The memory cap to compare with: --rss-cap-mb, else SHOPSTREAM_WORKER_MEMORY_MB, else a
    `mem_limit`/`memory` on the worker service of a compose file in the repo, else None."""
    if explicit:
        return float(explicit), "--rss-cap-mb"
    if os.environ.get("SHOPSTREAM_WORKER_MEMORY_MB"):
        return float(os.environ["SHOPSTREAM_WORKER_MEMORY_MB"]), "SHOPSTREAM_WORKER_MEMORY_MB"
    units = {"": 1 / 2**20, "b": 1 / 2**20, "k": 1 / 1024, "m": 1.0, "g": 1024.0}
    for name in ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"):
        path = ROOT / name
        if not path.exists():
            continue
        text = path.read_text()
        at = text.find("worker")
        found = re.search(r"(?:mem_limit|memory):\s*['\"]?(\d+(?:\.\d+)?)\s*([bkmg]?)i?b?['\"]?",
                          text[max(0, at):], re.I)
        if found:
            return float(found.group(1)) * units[found.group(2).lower()], f"{name} ({found.group(0).strip()})"
    return None, "none configured"


# -- report ----------------------------------------------------------------------------------------

def fmt_rate(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def ratio(a, b):
    return None if not a or not b else a / b


def fmt_ratio(x, target=None) -> str:
    if x is None:
        return "-"
    text = f"{x:.2f}x"
    if target is not None and x < target <= round(x, 2):
        text = f"{x:.3f}x"  # do not print 1.60x next to "below target 1.6x"
    if target is not None:
        text += f" ({'meets' if x >= target else 'below'} target {target}x)"
    return text


def build_table(res: dict) -> list[str]:
    ip = res.get("in_process", {})
    ceil = ip.get("ceiling", {}).get("events_per_s")
    eng = ip.get("engine", {}).get("events_per_s")
    w1 = res.get("worker1", {}).get("events_per_s")
    w2 = res.get("worker2", {}).get("events_per_s")
    boot = res.get("bootstrap", {}).get("events_per_s")
    raw = res.get("raw", {})
    ceil_raw = raw.get("ceiling_raw", {}).get("events_per_s")
    eng_raw = raw.get("engine_raw", {}).get("events_per_s")
    w_raw = raw.get("worker", {}).get("events_per_s")
    rows = []
    if raw:
        rows.append(("1r", "raw features, labelled: River's progressive-validation loop (ceiling)", ceil_raw, "-"))
        rows.append(("2r", "  engine in-process on the same bytes (decode + Engine.process)", eng_raw,
                     fmt_ratio(ratio(eng_raw, ceil_raw), TARGETS["engine_vs_ceiling"]) + " = 2r/1r"))
        if w_raw:
            rows.append(("3r", "  one worker e2e, 1 partition, --features raw", w_raw,
                         fmt_ratio(ratio(w_raw, ceil_raw), TARGETS["worker_vs_ceiling"]) + " = 3r/1r"))
    rows.append(("1", "ceiling: River predict_proba_one+learn_one+LogLoss on the engine's (x, y)", ceil, "-"))
    if "ceiling_replay" in ip:
        replay = ip["ceiling_replay"]["events_per_s"]
        rows.append(("1b", "  same calls in the engine's order (delayed labels)", replay,
                     fmt_ratio(ratio(replay, ceil)) + " of 1"))
    rows.append(("2", "engine in-process: bytes -> decode_event -> Engine.process", eng,
                 fmt_ratio(ratio(eng, ceil), TARGETS["engine_vs_ceiling"]) + " = 2/1" if eng else "-"))
    if "engine_decoded" in ip:
        decoded = ip["engine_decoded"]["events_per_s"]
        rows.append(("2a", "  engine alone on decoded events", decoded, fmt_ratio(ratio(decoded, ceil)) + " of 1"))
    rows.append(("3", "one worker e2e, 1 partition (Kafka in, predictions out)", w1,
                 fmt_ratio(ratio(w1, ceil), TARGETS["worker_vs_ceiling"]) + " = 3/1" if w1 else "-"))
    w1c = res.get("worker1c", {}).get("events_per_s")
    if w1c:
        rows.append(("3c", "  the same on librdkafka (--kafka-client confluent)", w1c,
                     fmt_ratio(ratio(w1c, ceil), TARGETS["worker_vs_ceiling"]) + " = 3c/1"))
    if w1 and eng:
        rows.append(("", "  (3/2: what Kafka + publishing + checkpoints leave of the engine)", None,
                     fmt_ratio(ratio(w1, eng)) + " = 3/2"))
    rows.append(("4", "two workers e2e, 2 partitions, one group (aggregate)", w2,
                 fmt_ratio(ratio(w2, w1), TARGETS["two_vs_one"]) + " = 4/3" if w2 else "-"))
    lines = ["| row | what | events/s | ratio |", "|---|---|---:|---|"]
    for key, what, rate, rat in rows:
        lines.append(f"| {key} | {what} | {fmt_rate(rate)} | {rat} |")
    lat = res.get("latency")
    if lat:
        ok = "meets" if lat["p99_ms"] <= TARGETS["p99_ms"] else "above"
        lines.append(f"| 5 | latency at {lat['achieved_rate']:,.0f} events/s after {lat.get('state_events', 0):,} "
                     f"events of state (shop, default checkpoints): p50 / p99 | "
                     f"{lat['p50_ms']:.0f} ms / {lat['p99_ms']:.0f} ms | "
                     f"p99 {ok} target <= {TARGETS['p99_ms']:.0f} ms (max {lat['max_ms']:.0f} ms) |")
    if boot:
        lines.append(f"| 6 | bootstrap, logreg, history of {res['bootstrap']['events']:,} events (whole command) | "
                     f"{fmt_rate(boot)} | {fmt_ratio(ratio(boot, ceil), TARGETS['bootstrap_vs_ceiling'])} = 6/1 |")
    rss = res.get("rss")
    if rss:
        n = rss["open_predictions"]
        per = rss.get("bytes_per_open_prediction_at_peak")
        per_ok = "meets" if per is not None and per <= TARGETS["bytes_per_open"] else "above"
        lines.append(f"| 7 | peak RSS, {n:,} open predictions (+1 streamed checkpoint) | "
                     f"{rss['peak_mib']:,.0f} MiB (steady {rss['rss_mib']:,.0f}) | "
                     f"{per:,.0f} B per open prediction at the peak: {per_ok} target <= "
                     f"{TARGETS['bytes_per_open']:,.0f}; " + ("within" if rss["peak_mib"] <= TARGETS["rss_1m_mib"]
                                                            else "above") + f" {TARGETS['rss_1m_mib']:,.0f} MiB |")
        lines.append(f"| 7b | loop stop of that checkpoint: streamed save / background (fork, then events) | "
                     f"{rss['checkpoint_s'] * 1e3:,.0f} ms / "
                     + (f"{rss['longest_loop_stop_ms']:,.0f} ms" if "longest_loop_stop_ms" in rss else "-")
                     + f" | target <= {TARGETS['loop_stop_ms']:.0f} ms |")
        cap, source = res.get("rss_cap_mib"), res.get("rss_cap_source")
        if cap:
            lines.append(f"| 7c | peak RSS against the configured cap | {rss['peak_mib']:,.0f} MiB | "
                         + ("within" if rss["peak_mib"] <= cap else "ABOVE") + f" cap {cap:,.0f} MiB ({source}) |")
    return lines


def overhead_rows(res: dict) -> list[str]:
    rows = []
    for features, target in (("raw", 10.0), ("shop", 20.0)):
        r = res.get("overhead", {}).get(features)
        if r:
            slot = "meets" if r["extra_slot_us"] <= r["model_us"] else "above"
            rows.append(f"| E{features[0]} | engine overhead over its model's calls, {features} features "
                        f"(CPU us per event; model calls {r['model_us']:.1f}) | {r['overhead_us']:.1f} us | "
                        f"{'meets' if r['overhead_us'] <= target else 'above'} target <= {target:.0f} us; an extra "
                        f"slot {r['extra_slot_us']:.1f} us ({slot} its model's {r['model_us']:.1f}) |")
    return rows


def _compiled_line(compiled) -> str:
    if compiled is None:
        return "not recorded"
    if not compiled:
        return "the sources (pure Python)"
    return f"compiled by scripts/compile.py ({', '.join(compiled)})"


def write_markdown(path: Path, res: dict, command: str, table: list[str]) -> None:
    m = res["machine"]
    ip = res.get("in_process", {})
    lines = [
        "# Benchmarks",
        "",
        "Measured in one run of the command below, on one machine, with the same generated events "
        f"(`shopstream.generator.generate(n, seed={res['seed']})`) for every row. The machine has "
        f"{m['nproc']} cores shared with the Kafka broker (and possibly other work): absolute numbers are "
        "noisy, the ratios within one run are what the targets are about.",
        "",
        "```",
        command,
        "```",
        "",
        f"Run at {res['started']} ({res['duration_s'] / 60:.1f} min), load average {res['load_before']} before, "
        f"{res['load_after']} after. Sizes: {res['sizes']}.",
        "",
        f"Engine modules: {_compiled_line(res['machine'].get('compiled'))}.",
        "",
        *table,
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        "",
        "## What each row counts",
        "",
        "**events/s** is always *input events of the generated stream / seconds*, including purchases and "
        "removals that open no prediction. The stream of N events opens P predictions (views and carts) "
        "and resolves L of them (learned); all rows over the same N do the same P predictions and L "
        "learnings, so ratios of events/s are ratios of the same work.",
        "",
        "1. **Ceiling**: the engine is run once with a recorder that keeps, for each of its P predictions, "
        "the feature dict `x` it predicted on and the label `y` it was later resolved with. The timed loop "
        "is River alone, `p = model.predict_proba_one(x)`, then (if resolved) `model.learn_one(x, y)` and "
        "`metrics.LogLoss().update(y, p)`, in prediction order, like `progressive_val_score`, on a fresh "
        "`StandardScaler | LogisticRegression` (catalog `logreg`). No decoding, no features, no join. "
        "Row 1b replays the same calls in the order the engine makes them (learning when the label arrives, "
        "up to the 30-minute window later): it separates the cost of delayed labels from the engine's own.",
        "2. **Engine in-process**: a fresh `Engine.fresh('logreg', 'shop')` over the JSON bytes a worker "
        "receives: `decode_event` (msgspec decode + validation) then `Engine.process` (dedupe, label join, "
        "features, predict, resolve, score, learn). Row 2a is the engine alone on pre-decoded events.",
        "3. **One worker**: a fresh 1-partition topic is pre-filled with the N events (keyed by user_id, as "
        "`shopstream produce` does), then the real command runs as a subprocess: "
        f"`{res.get('worker1', {}).get('command', 'shopstream worker ...')}`. "
        "Throughput is measured from Kafka record timestamps of the published predictions (CreateTime, "
        "set when the worker hands a prediction to its producer): (offset of the last predicted event - "
        "offset of the first) / (time of the last prediction - time of the first). Start-up, group join, "
        "the first fetch and the idle wait at the end are outside; decode, engine, publishing, the "
        "sampled Prometheus histograms and the periodic checkpoints (every 10,000 events: producer flush, "
        "pickle, fsync, offset commit) are inside. Row 3c is the same command with `--kafka-client confluent` "
        "(the data path on librdkafka; issue 21's target for shop features: >= 0.5x row 1).",
        "4. **Two workers**: the same on a 2-partition topic with two worker subprocesses in one group. "
        "The first to join briefly owns both partitions; the rate is summed over the partitions within "
        "the window where each worker owns exactly one (from the last `assigned partition` log line to "
        "the moment the first partition runs dry), each partition measured as in row 3.",
        "5. **Latency** (issue 12: p99 <= 50 ms at 2,000 events/s with shop features, default checkpoints "
        "and 300k events of state): a fresh topic is pre-filled with the first `latency_state` events and a "
        "worker (default options: checkpoints every 10,000 events or 30 s) works them off; once its "
        "predictions topic stops growing, the next events are produced at 2,000 events/s (kafka-python "
        "producer, linger_ms=0) and only those are measured. Latency of each prediction = its record "
        "timestamp - the timestamp of the input record it names (partition + offset); both are CreateTime, "
        "i.e. producer `send()` time on the same clock. It includes the input's trip through the broker, the "
        "worker's fetch wait, queueing behind earlier events, processing, and any checkpoint pause, but not "
        "the worker producer's linger (5 ms) before the prediction reaches the broker.",
        "1r-3r. **Raw features** (issue 12's first figure): labelled events with 8 raw float features "
        "(`common.make_raw_messages`), each predicted and learned at once. 1r is River's own "
        "progressive-validation loop (`predict_proba_one`, `learn_one`, `LogLoss.update`) on the decoded "
        "(features, label) pairs; 2r the engine (`--features raw`) on the same JSON bytes; 3r one worker "
        "with `--features raw` on a pre-filled 1-partition topic, measured as row 3.",
        "6. **Bootstrap**: `offline.bootstrap.bootstrap(history, out, models=['logreg'], progress=False)` "
        "on a JSONL history written by the generator (generation not timed). events/s = history events / "
        "whole call (read + validate + sort, progressive training, frozen holdout pass, artifact, report "
        "and plot). The ratio uses row 1's ceiling (measured on the first N events of the same generator).",
        "7. **Memory**: a child process builds `Engine.fresh('logreg', 'shop')` and feeds it views of "
        "distinct sessions with a 10-year window (so nothing expires) until it holds the open predictions "
        "shown, then writes one checkpoint with the worker's own `DirectoryCheckpointStore.save` (streamed, "
        "the loop waits for it). Peak RSS is `VmHWM` from /proc/self/status; MiB = 2^20 bytes; bytes per "
        "open prediction = (peak - RSS before the engine) / open predictions, so the feature state (capped "
        "at 200,000 sessions) and the dedupe window are in it. A worker adds its Kafka clients (tens of MiB). "
        "Row 7b: the same checkpoint again with `begin_save` (a forked child writes it from a copy-on-write "
        "snapshot) while the parent goes on processing events, each one timed: the longest loop stop is the "
        "larger of the fork and the slowest event while the child wrote.",
        "",
        "E. **Engine overhead** (`benchmarks/overhead.py`, issue 21: <= 10 us per event with raw features, "
        "<= 20 with shop features; an extra slot no more than its model's calls): CPU time of this process "
        "(`time.process_time`, best of the rounds), per input event: River's calls alone in the engine's "
        "order, the engine on decoded events with `logreg`, and with a second `logreg` slot. Overhead = "
        "engine - model calls; the extra slot's cost = engine(2 slots) - engine(1).",
        "",
        "Peers (`benchmarks/peers.py`, issue 21): the same River job (`logreg`, predict_proba_one, Accuracy + "
        "Recall + F1, learn_one; 12 raw features, labelled) by each system from one pre-filled 1-partition "
        "topic, each publishing every prediction; events/s from the output records' CreateTime and the "
        "source offsets they cover, from the record that covers 5% of the offsets to the last. River's loop "
        "is in process, without Kafka (best of 3 passes). The peers' packages are in the `bench` extra.",
        "",
        "## Details",
        "",
    ]
    if ip:
        lines += ["In-process rows run round-robin (one run of each row per round); the fastest run counts.", "",
                  "| in-process row | best s | median s | runs (s) | events/s | predictions/s |",
                  "|---|---:|---:|---|---:|---:|"]
        for name, r in ip.items():
            lines.append(f"| {name} | {r['seconds']:.2f} | {r['median_s']:.2f} | {r['runs_s']} | "
                         f"{r['events_per_s']:,.0f} | {r['predictions_per_s']:,.0f} |")
        any_row = next(iter(ip.values()))
        lines += ["", f"N = {any_row['events']:,} events, P = {any_row['predictions']:,} predictions, "
                      f"L = {any_row['learned']:,} learned.", ""]
    for key in ("raw", "worker1", "worker1c", "worker2", "latency", "bootstrap", "rss"):
        if key in res:
            shown = {k: v for k, v in res[key].items() if k != "timeline_s_count_p50_max"}
            lines += [f"**{key}**", "", "```", json.dumps(shown, indent=1, default=str), "```", ""]
            if key == "latency" and res[key].get("timeline_s_count_p50_max"):
                lines += ["Latency by second of the run (second, predictions, p50 ms, max ms): " + ", ".join(
                    f"({s} {n} {p50:.0f} {mx:.0f})" for s, n, p50, mx in res[key]["timeline_s_count_p50_max"]), ""]
    notes = res.get("notes")
    if notes:
        lines += ["## Notes", "", *notes, ""]
    kept = ""
    if path.exists():  # a hand-written analysis at the end of the file survives re-runs
        old = path.read_text()
        at = old.find(KEPT_HEADING)
        if at >= 0:
            kept = old[at:]
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


# -- main --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run for CI (seconds)")
    parser.add_argument("--events", type=int, help="events for rows 1-5 (default 200000, quick 20000)")
    parser.add_argument("--bootstrap-events", type=int, help="history size for row 6 (default 1000000)")
    parser.add_argument("--open-predictions", type=int, help="open predictions for row 7 (default 1000000)")
    parser.add_argument("--latency-seconds", type=float, help="how long row 5 produces (default 20)")
    parser.add_argument("--latency-rate", type=float, help="row 5 input rate (default 2000 events/s, issue 12)")
    parser.add_argument("--latency-state", type=int, help="events worked off before row 5 measures (default 300000)")
    parser.add_argument("--repeat", type=int, help="round-robin rounds of the in-process rows; the fastest run of "
                                                   "each counts (default 5)")
    parser.add_argument("--phases", default=None, help=f"comma-separated subset of {','.join(PHASES)} (default: all; "
                        f"with --quick all but {','.join(QUICK_SKIPS)})")
    parser.add_argument("--rss-cap-mb", type=float, help="memory cap to compare row 7 with (MiB)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="Markdown report ('' for none)")
    parser.add_argument("--json", help="also write the raw results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    parser.add_argument("--workdir", help="work directory for worker logs and checkpoints (kept; default: a "
                                          "fresh temporary one, removed unless --keep)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        params = json.loads(args.child_params)
        result = {"bootstrap": child_bootstrap, "rss": child_rss}[args.child](**params)
        print("RESULT " + json.dumps(result))
        return 0

    sizes = dict(QUICK if args.quick else FULL)
    for key in ("events", "bootstrap_events", "open_predictions", "latency_seconds", "repeat", "latency_state"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    default_phases = [p for p in PHASES if not (args.quick and p in QUICK_SKIPS)]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()] if args.phases else default_phases
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}")
    command = "python " + shlex.join(["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])

    res = {"seed": 7, "sizes": sizes, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "load_before": os.getloadavg(), "machine": machine(), "notes": []}
    began = time.perf_counter()
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="shopstream-bench-"))
    say(f"work directory {workdir}; sizes {sizes}")
    try:
        messages = make_messages(sizes["events"])
        if "ceiling" in phases or "engine" in phases:
            res["in_process"] = bench_in_process(messages, sizes["repeat"])
        if {"worker1", "worker1c", "worker2", "latency", "raw"} & set(phases):
            ensure_kafka()
        if "raw" in phases:
            say("rows 1r, 2r, 3r: raw features, labelled events")
            raw_messages = make_raw_messages(sizes["events"])
            res["raw"] = bench_raw_in_process(raw_messages, sizes["repeat"])
            res["raw"]["worker"] = run_workers(raw_messages, 1, 1, workdir, extra=("--features", "raw"),
                                               prefix="raw")
        if "worker1" in phases:
            say("row 3: one worker")
            res["worker1"] = run_workers(messages, 1, 1, workdir)
            res["worker1"]["load_average_after"] = round(os.getloadavg()[0], 2)
        if "worker1c" in phases:
            say("row 3c: one worker on librdkafka (--kafka-client confluent)")
            res["worker1c"] = run_workers(messages, 1, 1, workdir, extra=("--kafka-client", "confluent"),
                                          prefix="c")
            res["worker1c"]["load_average_after"] = round(os.getloadavg()[0], 2)
        if "worker2" in phases:
            say("row 4: two workers")
            res["worker2"] = run_workers(messages, 2, 2, workdir)
            res["worker2"]["load_average_after"] = round(os.getloadavg()[0], 2)
            if not res["worker2"]["valid"]:
                res["notes"].append(f"row 4: the workers did not each own one partition in the window: "
                                    f"{res['worker2']['owners_in_window']}")
        if "latency" in phases:
            rate = args.latency_rate or TARGETS["latency_rate"]
            state = sizes["latency_state"]
            say("row 5: latency")
            needed = state + int(rate * sizes["latency_seconds"]) + 1
            lat_messages = messages if len(messages) >= needed else make_messages(needed)
            res["latency"] = run_latency(lat_messages, rate, sizes["latency_seconds"], workdir, state_events=state)
            res["latency"]["load_average_after"] = round(os.getloadavg()[0], 2)
        if "bootstrap" in phases:
            say(f"row 6: bootstrap on {sizes['bootstrap_events']} events")
            res["bootstrap"] = run_child("bootstrap", events=sizes["bootstrap_events"], workdir=str(workdir))
        if "rss" in phases:
            say(f"row 7: memory with {sizes['open_predictions']} open predictions")
            res["rss"] = run_child("rss", open_predictions=sizes["open_predictions"], workdir=str(workdir))
            res["rss_cap_mib"], res["rss_cap_source"] = configured_cap_mib(args.rss_cap_mb)
        if "overhead" in phases:
            import overhead

            say("row E: the engine's overhead over its model's calls")
            res["overhead"] = overhead.measure(min(sizes["events"], 50_000), max(1, min(sizes["repeat"], 3)))
        if "peers" in phases:
            import peers

            say(f"peers: the same River job by each system, {sizes['peers_events']} events")
            res["peers"] = peers.run_peers(sizes["peers_events"], workdir=workdir / "peers")
    finally:
        if args.keep or args.workdir:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    res["duration_s"] = time.perf_counter() - began
    res["load_after"] = os.getloadavg()
    res["load_before"] = " ".join(f"{x:.2f}" for x in res["load_before"])
    res["load_after"] = " ".join(f"{x:.2f}" for x in res["load_after"])
    table = build_table(res) + overhead_rows(res)
    if "peers" in res:
        import peers

        table += ["", f"Peers (`benchmarks/peers.py`, {res['peers']['events']:,} events, 12 raw features, load "
                  f"{res['peers']['load_before']} before, {res['peers']['load_after']} after):", "",
                  *peers.table(res["peers"])]
    print("\n".join(table))
    if args.out:
        write_markdown(Path(args.out), res, command, table)
        say(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
