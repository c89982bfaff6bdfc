"""Which worker owns which partition, and at which scoring-API address: known to every
worker of the group, from the group's own rebalance.

As Kafka Streams does for its interactive queries (``application.server``), each worker
puts its API address in its group subscription; the group leader, which assigns the
partitions, sends every member the whole map partition -> owner's address with its
assignment. So after each rebalance every worker knows where any user's partition is
served, without asking anyone, and a request for another worker's partition is forwarded
there. The assignment itself is Kafka's range assignment, unchanged, under its usual
name ("range"): a worker without the map (or an older one) still joins the same group.

>>> owners = Owners()
>>> assignor = OwnersAssignor("10.0.0.5:8080", owners)
>>> assignor.metadata({"events"}).user_data
b'10.0.0.5:8080'
>>> owners.update(encode_map("events", 3, {0: "a:1", 2: "b:2"}))
>>> owners.address(0), owners.address(1), owners.partitions
('a:1', None, 3)
>>> partition_for("541312140", 4)  # where Kafka's default partitioner (Java's, kafka-python's) puts this key
2

librdkafka (``--kafka-client confluent``) runs no assignor written in Python, so there the
address rides in the member's client id instead (`client_id_with_address`), and each worker
reads the group's members and their partitions from the broker after every rebalance
(`stream/group_owners.py`):

>>> client_id_with_address("worker-1", "10.0.0.5:8080")
'worker-1|api=10.0.0.5:8080'
>>> address_in_client_id('worker-1|api=10.0.0.5:8080'), address_in_client_id("a-shop-tool")
('10.0.0.5:8080', '')
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Optional

from kafka.coordinator.assignors.abstract import ConsumerProtocolAssignment, ConsumerProtocolSubscription
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.partitioner.default import murmur2

log = logging.getLogger(__name__)
MAX_ADDRESS = 255
API_MARK = "|api="   # in a client id: what follows is where that member serves the scoring API


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and kafka-python's) gives a key."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def client_id_with_address(name: str, address: str) -> str:
    """The client id a librdkafka worker joins with: its name, then its API address."""
    return f"{name}{API_MARK}{address[:MAX_ADDRESS]}" if address else name


def address_in_client_id(client_id: str) -> str:
    """The API address a member's client id carries ('' for one that serves none)."""
    _, mark, address = (client_id or "").rpartition(API_MARK)
    return address if mark else ""


def encode_map(topic: str, partitions: int, owners: dict[int, str]) -> bytes:
    return json.dumps({"topic": topic, "partitions": partitions,
                       "owners": {str(p): address for p, address in sorted(owners.items())}}).encode()


class Owners:
    """The latest map, replaced whole on each rebalance (the HTTP thread reads it, the
    consumer's thread writes it)."""

    def __init__(self):
        self._known: tuple[int, dict[int, str]] = (0, {})   # (partitions, map): replaced in one store
        self.updated = threading.Event()

    @property
    def partitions(self) -> int:
        return self._known[0]

    def update(self, user_data: bytes) -> None:
        if not user_data:
            return  # a leader without the map (an older worker): keep what we knew
        try:
            data = json.loads(user_data)
            owners = {int(p): str(a) for p, a in data["owners"].items() if a}
            partitions = int(data["partitions"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("unreadable owners map in the assignment (%s): keeping the previous one", exc)
            return
        self.replace(partitions, owners)

    def replace(self, partitions: int, owners: dict[int, str]) -> None:
        """The whole map at once (one assignment: a reader never sees half of two)."""
        self._known = (partitions, {p: a for p, a in owners.items() if a})
        self.updated.set()

    def address(self, partition: int) -> Optional[str]:
        return self._known[1].get(partition)


class OwnersAssignor(RangePartitionAssignor):
    """Kafka's range assignment, plus the owners map in every member's assignment."""

    name = "range"

    def __init__(self, address: str, owners: Owners):
        self.address = address.encode()[:MAX_ADDRESS]
        self.owners = owners

    def metadata(self, topics):
        return ConsumerProtocolSubscription(self.version, list(topics), self.address)

    def assign(self, cluster, members):
        assignment = RangePartitionAssignor.assign(cluster, members)
        addresses = {m.member_id: bytes(m.metadata.user_data or b"").decode("utf-8", "replace") for m in members}
        topics: dict[str, dict[int, str]] = {}
        for member_id, given in assignment.items():
            for topic, partitions in given.assigned_partitions:
                for partition in partitions:
                    topics.setdefault(topic, {})[partition] = addresses.get(member_id, "")
        if len(topics) != 1:  # a worker subscribes to its one events topic
            return assignment
        [(topic, owners)] = topics.items()
        counted = cluster.partitions_for_topic(topic)
        user_data = encode_map(topic, len(counted) if counted else len(owners), owners)
        return {member_id: ConsumerProtocolAssignment(given.version, given.assigned_partitions, user_data)
                for member_id, given in assignment.items()}

    def on_assignment(self, assignment, generation):
        self.owners.update(bytes(assignment.user_data or b""))
