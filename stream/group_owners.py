"""Which worker owns which partition, for workers on librdkafka (``--kafka-client confluent``).

kafka-python workers learn the owners map inside the rebalance itself (`owners.py`: a
Python assignor). librdkafka cannot run one, so a librdkafka worker joins with its API
address in its client id (`owners.client_id_with_address`) and, after each rebalance it
takes part in (the eager range assignment revokes and assigns every member each time),
asks the broker for the group's members and their partitions, on a thread of its own:
the poll loop never waits for it. Until the group is stable again (every member synced),
the previous map stays, and a request for a partition on the move is forwarded to its old
owner, which answers 503 ``not_owner`` ("retry in a moment"). It also reads the group every
`REFRESH_SECONDS`, so a map missed (the broker away through a whole rebalance) is mended.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from .owners import Owners, address_in_client_id

log = logging.getLogger(__name__)
#: How long one refresh keeps asking for a stable group, and how often.
SETTLE_SECONDS = 60.0
RETRY_SECONDS = 0.1
#: And once in a while anyway: a rebalance's map may have been missed (the broker away meanwhile).
REFRESH_SECONDS = 30.0


def owners_of(description, topic: str) -> dict[int, str]:
    """partition -> API address, from a ConsumerGroupDescription (members without an address: absent)."""
    owners: dict[int, str] = {}
    for member in description.members:
        address = address_in_client_id(member.client_id)
        assignment = getattr(member, "assignment", None)
        for tp in getattr(assignment, "topic_partitions", None) or ():
            if tp.topic == topic and address:
                owners[tp.partition] = address
    return owners


class GroupOwnersWatch:
    """Fills `owners` from the broker's view of `group` after each `refresh()` (the consumer's
    rebalance callback rings it)."""

    def __init__(self, config: dict, group: str, topic: str, owners: Owners, admin=None):
        self.admin = admin if admin is not None else AdminClient(config)
        self.group, self.topic, self.owners = group, topic, owners
        self.refreshes = 0                    # maps taken from a stable group
        self.last_error = ""                  # why the latest read took no map
        self._ring = threading.Event()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def refresh(self) -> None:
        """A rebalance happened: read the group again (soon, on the watch's thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="group-owners", daemon=True)
            self._thread.start()
        self._ring.set()

    def close(self) -> None:
        self._closed = True
        self._ring.set()

    def _run(self) -> None:
        while not self._closed:
            self._ring.wait(REFRESH_SECONDS)
            self._ring.clear()
            deadline = time.monotonic() + SETTLE_SECONDS
            while not self._closed and not self._ring.is_set():
                if self._read_once():
                    break
                if time.monotonic() >= deadline:
                    log.warning("group %s: no stable view of its owners after %.0f s (%s): keeping the previous "
                                "map, trying again in %.0f s", self.group, SETTLE_SECONDS, self.last_error,
                                REFRESH_SECONDS)
                    break
                time.sleep(RETRY_SECONDS)

    def _read_once(self) -> bool:
        """True once a stable group's map is taken."""
        try:
            description = self.admin.describe_consumer_groups([self.group], request_timeout=5)[self.group].result()
            partitions = len(self.admin.list_topics(self.topic, timeout=5).topics[self.topic].partitions)
        except (KafkaException, KeyError, AttributeError) as exc:   # the broker away, a topic being made
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if description.state != ConsumerGroupState.STABLE:
            self.last_error = f"the group is {description.state.name}"
            return False   # a rebalance is not finished: its members' partitions are not final
        self.owners.replace(partitions, owners_of(description, self.topic))
        self.refreshes += 1
        return True
