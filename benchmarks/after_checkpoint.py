#!/usr/bin/env python3
"""An engine's speed after a checkpoint, in process: what pickling costs the events after it.

    python benchmarks/after_checkpoint.py [--events 60000] [--warm 20000] [--features shop]

On CPython 3.11-3.12, pickling an object asks for its ``__dict__``, and from then on every
attribute load of that object takes a slower path (`shopstream/model_state.py`). Four
engines get the same `warm` events, then:

- ``never``: never checkpointed;
- ``checkpointed``: checkpointed as the worker's checkpointer does (`Engine.mark_good`, the
  partition pickled, the partition's engine swapped for `model_state.fresh_shell`);
- ``restored``: checkpointed, then restored from those bytes (a worker taking it over);
- ``unrefreshed``: checkpointed with the engine kept as is and only the slots refreshed
  (what the code did before 2026-12-04 23:00 UTC).

Then each processes the remaining events in 1,000-event chunks, interleaved (each chunk
runs on all four in a rotating order), and its CPU time per event (`time.process_time`) is
printed against ``never``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_messages, make_raw_messages  # noqa: E402


def measure(events: int, warm: int, features: str) -> dict:
    from shopstream.config import EngineConfig
    from shopstream.engine import Engine
    from shopstream.events import decode_event
    from shopstream.lineup import build_engine
    from shopstream.model_state import fresh_shell
    from stream.checkpointing.format import decode_state, encode_state
    from stream.partition import Partition

    # raw: labelled events with 12 features of their own (the peers' job); shop: the generated shop
    messages = make_raw_messages(events, width=12) if features == "raw" else make_messages(events)
    decoded = [decode_event(v) for _, v in messages]

    def warmed() -> Partition:
        built = build_engine(config=EngineConfig(features=features))
        engine = built[0] if isinstance(built, tuple) else built
        for i in range(warm):
            engine.process(decoded[i], i)
        return Partition("events", 0, engine, next_offset=warm)

    never, checkpointed, restored, unrefreshed = warmed(), warmed(), warmed(), warmed()
    checkpointed.engine.mark_good()
    encode_state(checkpointed)
    checkpointed.engine = fresh_shell(checkpointed.engine)
    restored.engine.mark_good()
    restored = decode_state(encode_state(restored), "after_checkpoint")

    def slots_only(engine: Engine) -> None:   # the refresh as it was: the models and scores only
        engine._refresh_due = False
        for slot in engine.slots:
            slot.refresh()

    unrefreshed.engine.mark_good()
    encode_state(unrefreshed)
    unrefreshed.engine._refresh = lambda: slots_only(unrefreshed.engine)   # type: ignore[method-assign]
    runs = {"never": never, "checkpointed": checkpointed, "restored": restored, "unrefreshed": unrefreshed}
    seconds = dict.fromkeys(runs, 0.0)
    names = list(runs)
    for k, start in enumerate(range(warm, events, 1000)):
        for name in names[k % 4:] + names[:k % 4]:
            partition = runs[name]
            started = time.process_time()
            for i in range(start, min(start + 1000, events)):
                partition.engine.process(decoded[i], i)
            seconds[name] += time.process_time() - started
    measured = events - warm
    return {name: s / measured * 1e6 for name, s in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--warm", type=int, default=20_000)
    parser.add_argument("--features", default="shop", choices=("shop", "raw"))
    args = parser.parse_args(argv)
    if not 0 < args.warm < args.events:
        parser.error("--warm must be between 0 and --events")
    us = measure(args.events, args.warm, args.features)
    print(f"CPU us per event over {args.events - args.warm:,} events after {args.warm:,} ({args.features} features):")
    for name, value in us.items():
        print(f"  {name:>12}: {value:6.2f} us ({value / us['never'] - 1:+.1%} against never)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
