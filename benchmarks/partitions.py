#!/usr/bin/env python3
"""What scaling out does to learning: a partition-count sweep, per-partition against shared learning.

    python benchmarks/partitions.py [--events 200000] [--partitions 1,4,16,64] [--shops stable,incident]

In process, with the engine the workers run (champion `logreg`, features `shop`, no
challengers), events keyed by user id and spread over N partitions by kafka-python's own
partitioner (murmur2 of the key), one engine (feature state, label joiner) per partition,
events handled in their event-time order. Learning designs, side by side:

- ``partition``: each partition's model learns its own labels only (the workers today);
- ``log:D``: the learn log (`shopstream/shared_learning.py`): every resolved example is
  appended to one log, and every partition's model applies the log in its order, an
  example becoming visible D seconds of event time after its label resolved (the Kafka
  hop, or a partition that lags);
- ``learner:V``: one learner trains on the log and publishes a model version every V
  seconds of event time; partitions predict with the newest published version (what a
  compacted model topic and hot-swapping workers would do);
- a ``+catalog`` suffix (``log+catalog:5``, what `--learning shared` runs): every partition
  also folds the other partitions' events into its shop-wide feature tables (products,
  brands, category prices, vocabularies: `ShopFeatures.learn_catalog`), through the same log
  with the same delay.

All partitions' predictions are pooled and scored on the labels they resolved to: exact
ROC AUC (rank statistic, ties averaged) and log loss. Every shared replica applying the
same log prefix holds the same model, so the simulation keeps one model per design and
hands it to every partition's engine (what each replica would hold at that delay).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
from kafka.partitioner.default import murmur2

from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import Drift, generate
from shopstream.models import build_model
from shopstream.shared_learning import LearnOutbox, LogReplica

SHOPS = {"stable": None, "incident": "checkout_incident@0.5-0.65:web"}


def partition_of(user_id, n: int) -> int:
    """kafka-python's DefaultPartitioner for key = the user id (as `shopstream produce` keys)."""
    return (murmur2(str(user_id).encode()) & 0x7FFFFFFF) % n


class ScoredEngine(Engine):
    """The engine, recording the published P(True) and the label of every resolved prediction."""

    scored: list

    def _resolve(self, prediction, y_true, now):
        p_true, y_pred = prediction.outputs[prediction.champion]
        if y_pred is not None:
            self.scored.append((p_true, y_true))
        super()._resolve(prediction, y_true, now)


def new_engine(model, scored: list) -> ScoredEngine:
    engine = Engine.fresh("logreg", "shop", config=EngineConfig(features="shop"))
    engine.__class__ = ScoredEngine
    engine.scored = scored
    if model is not None:
        engine.slots[0].model = model
    return engine


def run(records: list, n: int, design: str, param: float) -> dict:
    """One run: `design` is partition, log (param: delay) or learner (param: seconds per version); a
    trailing ``+catalog`` shares the shop-wide feature tables through the log too."""
    design, _, catalog = design.partition("+")
    scored: list = []
    shared = None if design == "partition" else build_model("logreg")
    engines = [new_engine(shared, scored) for _ in range(n)]
    outboxes = []
    if shared is not None:
        for i, engine in enumerate(engines):
            engine.learn_sink = LearnOutbox(source=i)
            outboxes.append(engine.learn_sink)
    learner_engine = new_engine(shared, []) if design == "learner" else None
    replica = LogReplica()
    in_flight: deque = deque()    # (event time it becomes visible, example), in log order
    log_offset = 0
    next_version = -math.inf
    started = time.perf_counter()
    delay = param if design == "log" else 0.0
    for record in records:
        event = event_from_record(record)
        t = event.event_time
        while in_flight and in_flight[0][0] <= t:
            _, example = in_flight.popleft()
            if isinstance(example, tuple):  # an event's catalog part, from partition `source`
                source, folded = example
                for q, engine in enumerate(engines):
                    if q != source:
                        engine.features.learn_catalog(folded)
                continue
            target = learner_engine if learner_engine is not None else engines[0]  # one model, shared
            replica.apply(target, log_offset, example)
            log_offset += 1
        if learner_engine is not None and t >= next_version:  # publish a version: every partition swaps to it
            next_version = t + param
            version = copy.deepcopy(learner_engine.slots[0].model)
            for engine in engines:
                engine.slots[0].model = version
        p = partition_of(record["user_id"], n)
        engines[p].process(event)
        if outboxes:
            for example in outboxes[p].drain():
                in_flight.append((example.resolved_at + delay, example))
            if catalog:
                in_flight.append((t + delay, (p, event)))
    seconds = time.perf_counter() - started
    p_true = np.array([s[0] for s in scored])
    y = np.array([s[1] for s in scored], dtype=bool)
    out = {"auc": exact_auc(y, p_true), "log_loss": log_loss(y, p_true), "n": len(scored), "seconds": seconds}
    if design != "partition":
        out["learned"] = replica.learned
    return out


def exact_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic, tied scores sharing their average rank."""
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    boundaries = np.flatnonzero(np.diff(sorted_p)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(p)]))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    pos = int(y.sum())
    neg = len(y) - pos
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(np.where(y, np.log(q), np.log(1 - q))))


DESIGNS = (("partition", 0), ("log", 5), ("log+catalog", 5), ("log+catalog", 600), ("learner+catalog", 60),
           ("learner+catalog", 3600))


def label(design: str, param: int) -> str:
    shared, _, catalog = design.partition("+")
    also = ", shop-wide feature tables" if catalog else ""
    if shared == "partition":
        return "per partition (today)"
    if shared == "log":
        return f"learn log, applied {param:g} s after the label{also}"
    return f"learner, a version every {param:g} s{also}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", default="1,4,16,64")
    parser.add_argument("--shops", default=",".join(SHOPS))
    parser.add_argument("--designs", default=",".join(f"{d}:{p}" for d, p in DESIGNS),
                        help="design:param pairs (partition:0, log:DELAY_SECONDS, learner:SECONDS_PER_VERSION)")
    parser.add_argument("--out", help="write the Markdown table here too")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.partitions.split(",")]
    designs = [(d, float(p)) for d, p in (item.split(":") for item in args.designs.split(","))]
    started = time.perf_counter()
    lines = [f"Generated with `python benchmarks/partitions.py --events {args.events} --seed {args.seed} "
             f"--partitions {args.partitions}` on {platform.machine()}, Python {platform.python_version()}, "
             f"`nproc` = {__import__('os').cpu_count()} (shared with other work).", ""]
    for shop in [s.strip() for s in args.shops.split(",") if s.strip()]:
        drift = SHOPS[shop]
        records = list(generate(args.events, seed=args.seed, drifts=(Drift.parse(drift),) if drift else ()))
        results = {}
        for design, param in designs:
            for n in counts:
                r = run(records, n, design, param)
                results[(design, param, n)] = r
                print(f"[{shop}] {label(design, param)}, {n} partitions: ROC AUC {r['auc']:.4f}, "
                      f"log loss {r['log_loss']:.4f}, {r['n']:,} scored, {r['seconds']:.0f} s", flush=True)
        lines += [f"### {shop}" + (f" (`{drift}`)" if drift else ""), "",
                  "Pooled ROC AUC / log loss of every partition's published predictions:", "",
                  "| design | " + " | ".join(f"{n} partition{'s' if n > 1 else ''}" for n in counts)
                  + f" | {counts[-1]} minus 1 |",
                  "|---|" + "---:|" * (len(counts) + 1)]
        for design, param in designs:
            row = [results[(design, param, n)] for n in counts]
            cells = [f"{r['auc']:.4f} / {r['log_loss']:.4f}" for r in row]
            lines.append(f"| {label(design, param)} | " + " | ".join(cells)
                         + f" | {row[-1]['auc'] - row[0]['auc']:+.4f} |")
        lines.append("")
    lines.append(f"{(time.perf_counter() - started) / 60:.0f} min in all.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
