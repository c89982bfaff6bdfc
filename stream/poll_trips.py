"""kafka-python 3.0.12's poll, without the two trips to its IO thread that have nothing to do.

Each `KafkaConsumer.poll` hands two coroutines to the client's IO thread and waits for each to
finish (`NetworkSelector.run`: a wake-up written to a socket pair, then an `Event` waited on):

- ``ensure_coordinator_ready``, which returns at once while the group's coordinator is known and
  connected;
- ``send_fetches``, which sends nothing while the partition being read still has records buffered
  (kafka-python asks for a partition again only once its buffered records are taken).

With one partition read at 40,000 events/s, that is two thread hand-offs per poll of 1,000
records, and the loop waits for each while the IO thread takes the GIL and runs whatever else it
has queued: about 60-90 ms of the loop's 2.3 s per 100,000 events (py-spy, BENCHMARKS.md,
*Analysis*, stop 52).

`skip_idle_trips` patches one consumer (instance attributes, nothing global). Each call still
goes to the IO thread whenever it may have something to do there: the coordinator is unknown or
its connection is down (the IO thread looks it up, or marks it dead), or some partition may be
fetched. It says whether it could; a client without these internals (another version,
librdkafka's) is left as it is.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NEEDED_FETCHER = ("send_fetches", "_fetchable_partitions", "_next_partition_records")
NEEDED_COORDINATOR = ("ensure_coordinator_ready", "coordinator_id", "_client")


def skip_idle_trips(consumer) -> bool:
    """Mend `consumer` (module docstring). Returns whether it applied."""
    fetcher = getattr(consumer, "_fetcher", None)
    coordinator = getattr(consumer, "_coordinator", None)
    if fetcher is None or coordinator is None or not all(hasattr(fetcher, n) for n in NEEDED_FETCHER) \
            or not all(hasattr(coordinator, n) for n in NEEDED_COORDINATOR) \
            or not hasattr(coordinator._client, "is_disconnected"):
        log.debug("poll left as it is: %s has no kafka-python 3.0.12 fetcher and coordinator", type(consumer).__name__)
        return False
    send_fetches = fetcher.send_fetches
    ensure_coordinator_ready = coordinator.ensure_coordinator_ready
    client = coordinator._client

    def send_fetches_unless_buffered():
        # Records still buffered means this poll returns them without waiting, so the fetch futures
        # kafka-python tidies on its IO thread are not waited on before the next real send.
        if fetcher._next_partition_records and not fetcher._fetchable_partitions():
            return []
        return send_fetches()

    def ensure_coordinator_ready_unless_known(timeout_ms=None):
        known = coordinator.coordinator_id
        if known is not None and not client.is_disconnected(known):
            return True   # what the IO thread would answer, without the trip
        return ensure_coordinator_ready(timeout_ms=timeout_ms)

    fetcher.send_fetches = send_fetches_unless_buffered
    coordinator.ensure_coordinator_ready = ensure_coordinator_ready_unless_known
    return True
