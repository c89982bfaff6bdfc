"""The worker's place in its consumer group: subscribe, time each join, rebuild a stuck client.

kafka-python 3.0.12 has been seen to start a group join that never finishes. A join that
outlives every legitimate rebalance (bounded by the 300 s rebalance timeout) is a stuck
client: `GroupMembership.maybe_rebuild` replaces the consumer with a new one from the
factory, after the worker released whatever it still owned.

The constructor only keeps the settings: `open()` builds the first consumer (the worker
calls it; the first use opens it otherwise).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Protocol, cast

log = logging.getLogger(__name__)


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
        # nothing, rejoins at once, and that second join has been seen to hang for good.
        self.topic_partitions = sorted(self.consumer.partitions_for_topic(self.topic) or ())
        self.joining_since = time.monotonic()
        self.consumer.subscribe([self.topic], listener=self.listener)

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
