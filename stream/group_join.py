"""kafka-python 3.0.12's group join, mended so that a join it has begun is collected once done.

Its ``BaseCoordinator.join_group_async`` runs each JoinGroup/SyncGroup round trip as a task and
awaits it only while a poll lasts; a task still running when the poll's time is up is left in
flight for the next poll. Two flaws follow, both seen on this project's broker:

1. The next poll asks ``need_rejoin()`` first, and that answer forgets the flight. A join begun
   for new metadata alone (partitions added, or a first join made before the topic's metadata
   came) ends that mismatch with the leader's own assignment: ``need_rejoin()`` turns False,
   the join is never collected, heartbeats stay off, the group drops the member and it idles
   for good while the others hold every partition (a CI run: one worker with all four for
   minutes, the other with none). Java's client asks ``rejoinNeededOrPending()``; the mended
   ``need_rejoin`` counts a join in flight too.
2. A task that finished between two polls is thrown away: the next poll sees it done and sends
   a new JoinGroup, one more rebalance for the whole group, and another each time the member
   misses the moment again. The mended round trip hands that next attempt the finished one's
   assignment instead, unless the member's generation changed since (then it joins afresh).

A third flaw costs a whole rebalance at every start: the leader keeps the metadata it assigned
against (``_assignment_snapshot``) and rejoins when the next metadata differs, but its snapshot
of the subscribed topics is rebuilt only when a metadata response arrives. A consumer that
learned the topic's partitions before subscribing (as `membership.py` does) joins with a
snapshot of no topics, assigns every partition anyway (the assignor reads the cluster's
metadata), and rejoins when the next response brings the same partitions: each partition
assigned, revoked (checkpointed) and restored again a moment later. Java's client brings its
snapshot up to date before it joins; `snapshot_subscription`, called after `subscribe`, does
that.

`mend_group_join` patches one consumer's coordinator (instance attributes, nothing global) and
says whether it could; a client without these internals (another version, librdkafka's) is
left as it is. So does `snapshot_subscription`.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NEEDED = ("need_rejoin", "_join_task", "_generation", "_do_join_and_sync_async", "_on_join_complete_async")


def mend_group_join(consumer) -> bool:
    """Mend `consumer`'s group join (module docstring). Returns whether it applied."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not all(hasattr(coordinator, name) for name in NEEDED):
        log.debug("group join left as it is: %s has no kafka-python 3.0.12 coordinator", type(consumer).__name__)
        return False
    need_rejoin = coordinator.need_rejoin
    join_and_sync = coordinator._do_join_and_sync_async
    join_complete = coordinator._on_join_complete_async
    uncollected: list = []   # (generation id, assignment) of a round trip not yet collected

    def need_rejoin_or_pending() -> bool:
        return need_rejoin() or coordinator._join_task is not None

    async def join_and_sync_once():
        if uncollected:
            generation, assignment = uncollected.pop()
            if generation == coordinator._generation.generation_id:
                log.debug("group join: collecting the round trip finished between polls (generation %d)", generation)
                return assignment
        assignment = await join_and_sync()
        uncollected[:] = [(coordinator._generation.generation_id, assignment)]
        return assignment

    async def on_join_complete(*args, **kwargs):
        uncollected.clear()
        return await join_complete(*args, **kwargs)

    coordinator.need_rejoin = need_rejoin_or_pending
    coordinator._do_join_and_sync_async = join_and_sync_once
    coordinator._on_join_complete_async = on_join_complete
    return True


def snapshot_subscription(consumer) -> bool:
    """Bring `consumer`'s snapshot of its subscribed topics' partitions up to date from the
    metadata it holds (the third flaw in the module docstring). Returns whether it could."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not all(hasattr(coordinator, name) for name in (
            "_build_metadata_snapshot", "_metadata_snapshot", "_subscription", "_cluster")):
        return False
    build = coordinator._build_metadata_snapshot
    coordinator._metadata_snapshot = build(coordinator._subscription, coordinator._cluster)
    return True
