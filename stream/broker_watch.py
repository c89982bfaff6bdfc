"""Is the broker answering? The worker's readiness and its stop on idleness ask here.

Every `CHECK_SECONDS` the watch asks the broker for the end offsets of the owned
partitions (owning none, of the topic's): it answers (up, and the exact lag is known) or
it does not (down until it answers). A quiet poll alone proves nothing: a blocked flush,
an outage and a fenced fetch all look the same from the loop.

It asks on a connection of its own (`probe`, opened at the first check): on the consumer's,
the request queues behind any fetch the broker is holding open for new records, up to the
consumer's `fetch_max_wait_ms` (500 ms by default), and the loop waits with it (measured
about 450 ms per check on a quiet partition; BENCHMARKS.md, "Latency: what stops the loop").

>>> class Down:
...     def end_offsets(self, partitions, timeout_ms):
...         raise TimeoutError("no broker")
>>> watch = BrokerWatch("events", topic_partitions=[0, 1])
>>> watch.check(Down(), owned=[])
False
>>> watch.ok
False
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Optional, Sequence

from kafka import TopicPartition

log = logging.getLogger(__name__)
CHECK_SECONDS = 5.0


class BrokerWatch:
    def __init__(self, topic: str, topic_partitions: Sequence[int] = (), check_seconds: float = CHECK_SECONDS,
                 probe: Optional[Callable[[], Any]] = None):
        self.topic = topic
        self._open_probe = probe   # makes the client that asks; None: ask on the consumer handed in
        self._probe: Any = None
        self.topic_partitions = list(topic_partitions)  # learned when the worker subscribes
        self.check_seconds = check_seconds
        self.ok = True
        self.seen = time.monotonic()   # when the broker last answered
        self.end_offsets: dict = {}
        self._last_check = 0.0

    def maybe_check(self, consumer, owned: Iterable, now: float) -> None:
        if now - self._last_check >= self.check_seconds:
            self._last_check = now
            self.check(consumer, owned)

    def check(self, consumer, owned: Iterable) -> bool:
        """Ask now. Checked with or without partitions: a worker that lost its partitions in an
        outage must still see the broker return, or its rejoin deadline stays disarmed."""
        probe = list(owned) or [TopicPartition(self.topic, p) for p in self.topic_partitions]
        if not probe:
            return self.ok
        try:
            if self._open_probe is not None and self._probe is None:
                self._probe = self._open_probe()   # here, not in __init__: no I/O when built
            asker = self._probe if self._probe is not None else consumer
            self.end_offsets = asker.end_offsets(probe, timeout_ms=3000)
        except Exception as exc:  # KafkaTimeoutError and friends: the broker is away
            if self.ok:
                log.warning("broker not answering (%s): not ready until it does", type(exc).__name__)
            self.ok = False
            return False
        if not self.ok:
            log.info("broker answering again")
        self.ok = True
        self.seen = time.monotonic()
        return True

    def caught_up(self, consumer, next_offsets: dict) -> bool:
        """The broker answers now and every owned partition was read to its end offset."""
        self.check(consumer, list(next_offsets))
        return self.ok and all(offset >= self.end_offsets.get(tp, float("inf")) for tp, offset in next_offsets.items())

    def fresh(self, now: float) -> bool:
        """Up, and heard from within three checks."""
        return self.ok and now - self.seen < 3 * self.check_seconds

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
