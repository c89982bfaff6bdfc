"""The worker's place in its consumer group: subscribe, time each join, rebuild a stuck client.

kafka-python 3.0.12 has been seen to start a group join that never finishes. One cause is
known and mended (`stream/group_join.py`); for any other, a join that outlives every
legitimate rebalance (bounded by the 300 s rebalance timeout) is a stuck client:
`GroupMembership.maybe_rebuild` replaces the consumer with a new one from the factory, after
the worker released whatever it still owned.

Partitions added to the events topic reach the group within the consumers' metadata refresh
(`PARTITION_DISCOVERY_MS`) and a rebalance; `note_partitions`, called after each assignment,
says when the count changed, since keys then map to other partitions (`moved_share`).

The constructor only keeps the settings: `open()` builds the first consumer (the worker
calls it; the first use opens it otherwise).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional, Protocol, cast

from .group_join import snapshot_subscription
from .rebalance_listener import for_consumer

log = logging.getLogger(__name__)

#: How often the consumers refresh the topic's metadata, so a partition added to the events
#: topic is consumed within about this long. Kafka's default (5 min) left a new partition's
#: events unread, and its users unanswered by the scoring API, for up to 5 minutes.
PARTITION_DISCOVERY_MS = 30_000


class Consumer(Protocol):
    """What the membership needs of a consumer (kafka-python's, or a test's stand-in)."""

    def partitions_for_topic(self, topic: str): ...

    def subscribe(self, topics, listener=None): ...

    def close(self, autocommit: bool = True, timeout_ms: Optional[int] = None): ...


class GroupMembership:
    def __init__(self, new_consumer: Callable[[], Consumer], topic: str, listener, rejoin_deadline: float,
                 on_rebuild: Callable[[], None] = lambda: None):
        self.new_consumer = new_consumer
        self.topic = topic
        self.listener = listener
        self.rejoin_deadline = rejoin_deadline
        self.on_rebuild = on_rebuild
        self._consumer: Optional[Consumer] = None
        self.joining_since: Optional[float] = None  # a join started and has not finished
        self.topic_partitions: list[int] = []
        self.rebuilds = 0

    def open(self) -> "GroupMembership":
        """Build the consumer (kafka-python's connects to the broker here)."""
        if self._consumer is None:
            self._consumer = self.new_consumer()
        return self

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self.open()
        return cast(Consumer, self._consumer)

    def subscribe(self) -> None:
        # Learn the topic's partitions before joining: kafka-python 3.0.12 otherwise assigns
        # nothing and rejoins at once (that second join was the one lost: group_join.py).
        self.topic_partitions = sorted(self.consumer.partitions_for_topic(self.topic) or ())
        self.joining_since = time.monotonic()
        # kafka-python's consumer runs the callbacks in a thread, not on the loop that heartbeats
        consumer = self.consumer
        consumer.subscribe([self.topic], listener=for_consumer(consumer, self.listener))
        snapshot_subscription(consumer)   # else kafka-python assigns, then rejoins at once (group_join.py)

    def note_partitions(self) -> Optional[tuple[int, int]]:
        """The events topic's partition count from the consumer's metadata: (before, now) when it
        differs from the count known so far (at subscribe, or the last change noted), else None
        (None too when the metadata does not say)."""
        try:
            found = self.consumer.partitions_for_topic(self.topic)
        except Exception as exc:  # an outage: asked again after the next assignment
            log.debug("partitions of %s unknown: %s: %s", self.topic, type(exc).__name__, exc)
            return None
        if not found:
            return None
        now, before = sorted(found), self.topic_partitions
        if now == before:
            return None
        self.topic_partitions = now
        return len(before), len(now)

    def join_started(self) -> None:
        self.joining_since = time.monotonic()  # kafka-python revokes when a join begins

    def join_finished(self) -> None:
        self.joining_since = None

    def maybe_rebuild(self, now: float, broker_up: bool) -> bool:
        """Rebuild the consumer when a join outlived the deadline while the broker answers
        (an outage explains a slow join). Returns whether it did."""
        joining = self.joining_since
        if joining is None or not self.rejoin_deadline or not broker_up or now - joining < self.rejoin_deadline:
            return False
        log.warning("group join unfinished after %.0f s: rebuilding the Kafka consumer", now - joining)
        try:
            fresh = self.new_consumer()
        except Exception as exc:  # e.g. NoBrokersAvailable: keep the old one and try again later
            log.warning("could not build a new consumer (%s: %s): retrying later", type(exc).__name__, exc)
            self.joining_since = time.monotonic()
            return False
        self.rebuilds += 1
        self.on_rebuild()  # the worker checkpoints and releases what it still owns
        old, self._consumer = self.consumer, fresh
        try:
            old.close(autocommit=False, timeout_ms=5000)
        except Exception as exc:  # a stuck client may not close cleanly either
            log.warning("closing the old consumer: %s: %s", type(exc).__name__, exc)
        self.subscribe()
        return True


def moved_share(before: int, now: int) -> Optional[float]:
    """The share of keys that Kafka's default partitioner (hash mod partitions) places on another
    partition once the topic has `now` partitions instead of `before`, for uniform hashes; None
    when either count is 0 or the period of the two moduli is too long to count.

    >>> moved_share(2, 4), moved_share(4, 6), moved_share(3, 3)
    (0.5, 0.6666666666666666, 0.0)
    """
    if before <= 0 or now <= 0:
        return None
    period = math.lcm(before, now)   # hash mod before and mod now repeat together with this period
    if period > 100_000:   # counted in the loop thread, once: a few ms at most
        return None
    return sum(1 for h in range(period) if h % before != h % now) / period
