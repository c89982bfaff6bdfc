"""The mended group join (stream/group_join.py) on a stand-in for kafka-python 3.0.12's coordinator:
the flow of its `join_group_async` around a poll, and its metadata snapshot, without a broker (the
broker tests are in test_faults_kafka.py)."""

import asyncio
from types import SimpleNamespace

import pytest

from stream.group_join import mend_group_join, snapshot_subscription

pytestmark = pytest.mark.fast


class Coordinator:
    """What `join_group_async` touches: a flag, a task, a generation, one round trip."""

    def __init__(self):
        self.rejoin_needed = False
        self._join_task = None
        self._generation = SimpleNamespace(generation_id=1)
        self.round_trips = 0
        self.completed = []

    def need_rejoin(self):
        return self.rejoin_needed

    async def _do_join_and_sync_async(self):
        self.round_trips += 1
        self._generation = SimpleNamespace(generation_id=self._generation.generation_id + 1)
        return f"assignment {self.round_trips}"

    async def _on_join_complete_async(self, generation, member_id, protocol, assignment):
        self.completed.append((generation, assignment))


def run(coroutine):
    return asyncio.new_event_loop().run_until_complete(coroutine)


def test_a_join_in_flight_is_a_reason_to_rejoin():
    coordinator = Coordinator()
    assert mend_group_join(SimpleNamespace(_coordinator=coordinator))
    assert not coordinator.need_rejoin()
    coordinator._join_task = object()   # a poll's time ran out with the round trip still out
    assert coordinator.need_rejoin(), "the flag is down (the leader's assignment matched the metadata)"
    coordinator._join_task = None
    coordinator.rejoin_needed = True
    assert coordinator.need_rejoin()


def test_a_round_trip_finished_between_polls_is_handed_to_the_next_attempt():
    coordinator = Coordinator()
    mend_group_join(SimpleNamespace(_coordinator=coordinator))
    first = run(coordinator._do_join_and_sync_async())          # finished, nobody awaiting it
    again = run(coordinator._do_join_and_sync_async())          # what the next poll starts instead
    assert first == again == "assignment 1" and coordinator.round_trips == 1
    run(coordinator._on_join_complete_async(2, "m", "range", again))
    assert coordinator.completed == [(2, "assignment 1")]
    assert run(coordinator._do_join_and_sync_async()) == "assignment 2", "once collected, a new join is a new join"


def test_a_finished_round_trip_of_an_older_generation_is_not_reused():
    coordinator = Coordinator()
    mend_group_join(SimpleNamespace(_coordinator=coordinator))
    run(coordinator._do_join_and_sync_async())
    coordinator._generation = SimpleNamespace(generation_id=-1)   # dropped meanwhile (a failed heartbeat)
    assert run(coordinator._do_join_and_sync_async()) == "assignment 2" and coordinator.round_trips == 2


def test_a_client_without_that_coordinator_is_left_alone():
    assert not mend_group_join(SimpleNamespace())                      # librdkafka's wrapper
    assert not mend_group_join(SimpleNamespace(_coordinator=SimpleNamespace(need_rejoin=lambda: False)))
    assert not snapshot_subscription(SimpleNamespace())


def test_the_snapshot_of_the_subscribed_topics_is_taken_from_the_metadata_already_held():
    """The leader assigns against `_metadata_snapshot` and rejoins when the next one differs: it
    must hold the subscribed topic's partitions the cluster already knows, not the empty one of a
    consumer built before it subscribed."""
    cluster = SimpleNamespace(partitions={"events": {0, 1}})
    subscription = SimpleNamespace(topics={"events"})

    def build(subscription, cluster):   # kafka-python's `_build_metadata_snapshot`, in short
        return {topic: cluster.partitions.get(topic) or set() for topic in subscription.topics}

    coordinator = SimpleNamespace(_metadata_snapshot={}, _subscription=subscription, _cluster=cluster,
                                  _build_metadata_snapshot=build)
    assert snapshot_subscription(SimpleNamespace(_coordinator=coordinator))
    assert coordinator._metadata_snapshot == {"events": {0, 1}}
