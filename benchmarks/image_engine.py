#!/usr/bin/env python3
"""The engine in process inside an image: decode + `Engine.process`, shop features, best of 3.

    podman run --rm -v "$PWD/benchmarks:/b:ro" IMAGE python /b/image_engine.py [--events 60000]

benchmarks/ is not in the image (.dockerignore): mounted, this runs against the image's own
shopstream, compiled or not (the first word of the output says which). Compare two images
built from one checkout, with and without `--build-arg SHOPSTREAM_COMPILED=0`, alternating.
"""

from __future__ import annotations

import argparse
import time

import msgspec

from shopstream.compiled import describe
from shopstream.engine import Engine
from shopstream.events import decode_event
from shopstream.generator import generate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    messages = [msgspec.json.encode(e) for e in generate(args.events, seed=7)]
    best = 0.0
    for _ in range(args.repeat):
        engine = Engine.fresh("logreg", "shop")
        started = time.perf_counter()
        for message in messages:
            engine.process(decode_event(message))
        best = max(best, len(messages) / (time.perf_counter() - started))
    print(f"{describe()}: {best:,.0f} events/s (best of {args.repeat}, {len(messages):,} events)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
