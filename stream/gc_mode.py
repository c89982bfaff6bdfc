"""The garbage collector of a worker process: tuned for throughput, or for a scoring API's latency.

A collection stops every thread for as long as it walks its generation. At the throughput
thresholds (`shopstream.engine.GC_THRESHOLDS`, young objects every 50,000 allocations) a young
collection takes about 20 ms in a live worker, and every 50th one walks the middle generation: up to
1.6 s when no forked checkpoint promoted it lately (BENCHMARKS.md, "The API on librdkafka", 10-11).
A scoring request that arrives then waits that long.

`latency` collects young objects every 5,000 allocations (about 2 ms each) and, every
`PROMOTE_SECONDS`, moves every tracked object to the oldest generation without walking it
(`gc.freeze()` then `gc.unfreeze()`, O(1)): the middle generation never holds more than a few
seconds of survivors. Each forked checkpoint already does the same to the whole heap
(stream/checkpointing/background.py); promotion waits while a checkpoint child shares it.

The price: young collections ten times as often (the kafka-python worker lost about a quarter of its
throughput, the librdkafka worker nothing measurable: BENCHMARKS.md), so `auto` chooses it only for a
serving worker on librdkafka. And reference cycles promoted before a collection found them wait for a
full collection, which promotion makes rare (CPython starts one when a quarter more objects survived
the middle generation, and promoted ones never pass through it). The engine makes none
(tests/test_gc_mode.py); cycles made elsewhere (the clients, the HTTP front) are not measured.
`shopstream_gc_pause_seconds` shows every collection's pause by generation, `shopstream_gc_info`
the mode.

>>> GcMode.choose("auto", serving=True, client="confluent").name
'latency'
>>> GcMode.choose("auto", serving=True, client="kafka-python").name, GcMode.choose("auto", serving=False).name
('throughput', 'throughput')
>>> GcMode.choose("latency", serving=False).thresholds
(5000, 500, 100)
"""

from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from shopstream.engine import GC_THRESHOLDS

from .checkpointing.background import heap_frozen
from .settings import GC_MODES  # auto: latency for a worker serving the scoring API on librdkafka

LATENCY_THRESHOLDS = (5_000, 500, 100)
#: How often the latency mode promotes every tracked object: the middle generation then holds at most
#: this long's survivors (a worker whose state grows by 100,000 objects a second: a 20-40 ms walk).
PROMOTE_SECONDS = 5.0
_PAUSE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class GcMode:
    """A collector mode: its thresholds, and whether it promotes (`GcMode.choose`)."""

    name: str
    thresholds: tuple[int, int, int]
    promote_seconds: float   # 0: never

    @classmethod
    def choose(cls, setting: str, serving: bool, client: str = "kafka-python") -> "GcMode":
        """The mode `--gc setting` means for a worker that serves the API (`serving`) or not, on
        `client` (`--kafka-client`)."""
        if setting not in GC_MODES:
            raise ValueError(f"gc: {setting!r} must be one of {GC_MODES}")
        if setting == "latency" or (setting == "auto" and serving and client == "confluent"):
            return cls("latency", LATENCY_THRESHOLDS, PROMOTE_SECONDS)
        return cls("throughput", GC_THRESHOLDS, 0.0)


class GcControl:
    """Applies a `GcMode` to this process (`start`/`stop`), promotes on the loop's `tick`, and
    times every collection's pause into `shopstream_gc_pause_seconds` (by generation)."""

    def __init__(self, mode: GcMode, registry: CollectorRegistry,
                 frozen: Callable[[], bool] = heap_frozen, clock: Callable[[], float] = time.monotonic):
        self.mode = mode
        self._frozen = frozen
        self._next_promotion = clock() + mode.promote_seconds
        self._previous: Optional[tuple[int, int, int]] = None
        self._started_at = 0.0
        # (generation, seconds) of collections not yet observed: a collection can start in any thread, inside
        # any code, even code holding a metric's lock, so the callback only appends (a collection in
        # progress starts no other) and `tick` observes them.
        self._pauses: deque = deque(maxlen=10_000)
        self.pauses = Histogram("shopstream_gc_pause_seconds", "Garbage-collector pauses, by generation (every "
                                "thread stops meanwhile)", ["generation"], registry=registry,
                                buckets=_PAUSE_BUCKETS)
        self.promotions = Counter("shopstream_gc_promotions", "Every tracked object moved to the oldest "
                                  "generation without a walk (--gc latency)", registry=registry)
        self._by_generation = [self.pauses.labels(generation=str(g)) for g in range(3)]
        Info("shopstream_gc", "The garbage collector's mode (--gc)", registry=registry).info({"mode": mode.name})

    def start(self) -> "GcControl":
        self._previous = gc.get_threshold()
        gc.set_threshold(*self.mode.thresholds)
        gc.callbacks.append(self._on_collection)
        return self

    def stop(self) -> None:
        """Undo `start`: the thresholds from before, unless something set others since."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if self._previous is not None and gc.get_threshold() == self.mode.thresholds:
            gc.set_threshold(*self._previous)
        self._previous = None

    def tick(self, now: float) -> bool:
        """Between polls: observe the pauses since the last tick; promote if the mode does and it is
        time, and say so. Never while a checkpoint child shares the frozen heap (an unfreeze then
        would let collections write its pages)."""
        while self._pauses:
            generation, seconds = self._pauses.popleft()
            self._by_generation[generation].observe(seconds)
        if not self.mode.promote_seconds or now < self._next_promotion or self._frozen():
            return False
        gc.freeze()
        gc.unfreeze()
        self._next_promotion = now + self.mode.promote_seconds
        self.promotions.inc()
        return True

    def _on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":   # collections never overlap: one start time is enough
            self._started_at = time.perf_counter()
        else:
            self._pauses.append((info["generation"], time.perf_counter() - self._started_at))
