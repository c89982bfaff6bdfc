#!/usr/bin/env python3
"""The engine's own cost per event, over the model's own calls, in process.

    python benchmarks/overhead.py [--events 50000] [--repeat 3]

For raw features (labelled events, `common.make_raw_messages`) and shop features
(`common.make_messages`): the engine is run once with a recorder to get its model calls
(`common.record_model_calls`); then, best of `repeat` round-robin passes, in CPU seconds of
this process (`time.process_time`, less disturbed by other work on a shared machine than
wall time): River's calls alone in the engine's order (`predict_proba_one`, `learn_one`),
the engine on decoded events with one slot (`logreg`), and with two (`logreg` and a
challenger `logreg`). Overhead = engine - model calls; an extra slot costs engine(2) -
engine(1), against its model's calls.

The ceiling's model is built fresh and never pickled, and so are the engine's: a slot runs a
copy made by `shopstream.model_state` (CPython 3.11-3.12 slow every attribute load of an object
whose ``__dict__`` was asked for, which pickling does). "pickled model calls" times the same
calls on a model after one plain pickle round trip, what every slot ran before that copy: the
difference is what the fast path is worth.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages, record_model_calls  # noqa: E402


def measure(events: int, repeat: int) -> dict:
    from common import make_raw_messages

    from shopstream.engine import Engine
    from shopstream.events import decode_event
    from shopstream.models import build_model

    def model_calls(xs, ys, ops, pickled=False):
        model = build_model("logreg")
        if pickled:   # a plain round trip, as a checkpoint or a kept last good state used to leave it
            model = pickle.loads(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        started = time.process_time()
        for op in ops:
            if op >= 0:
                model.predict_proba_one(xs[op])
            else:
                model.learn_one(xs[~op], ys[~op])
        return time.process_time() - started

    def engine(decoded, features, slots):
        e = Engine.fresh("logreg", features)
        for i in range(1, slots):
            e.add_slot(f"logreg_{i}", build_model("logreg"))
        started = time.process_time()
        for event in decoded:
            e.process(event)
        return time.process_time() - started

    out = {}
    for features, messages in (("raw", make_raw_messages(events, width=12)), ("shop", make_messages(events))):
        decoded = [decode_event(v) for _, v in messages]
        xs, ys, ops, _ = record_model_calls(decoded, features=features)
        runs = {"model": (model_calls, (xs, ys, ops)), "model_pickled": (model_calls, (xs, ys, ops, True)),
                "engine_1": (engine, (decoded, features, 1)),
                "engine_2": (engine, (decoded, features, 2))}
        best: dict = {}
        for _ in range(repeat):
            for name, (fn, args) in runs.items():
                gc.collect()
                seconds = fn(*args)
                best[name] = min(best.get(name, seconds), seconds)
        us = {name: seconds / events * 1e6 for name, seconds in best.items()}
        out[features] = {"events": events, "predictions": len(xs), "model_us": us["model"],
                         "engine_us": us["engine_1"], "overhead_us": us["engine_1"] - us["model"],
                         "extra_slot_us": us["engine_2"] - us["engine_1"], "model_pickled_us": us["model_pickled"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(args.events, args.repeat)
    for features, r in result.items():
        print(f"{features:>4}: model calls {r['model_us']:.1f} us/event, engine {r['engine_us']:.1f}, overhead "
              f"{r['overhead_us']:.1f}; an extra logreg slot {r['extra_slot_us']:.1f} (its model's calls "
              f"{r['model_us']:.1f}); pickled model calls {r['model_pickled_us']:.1f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
