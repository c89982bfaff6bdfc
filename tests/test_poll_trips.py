"""kafka-python's poll without the trips to its IO thread that have nothing to do (stream/poll_trips.py)."""

from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, KafkaProducer

from stream.poll_trips import skip_idle_trips


class Fetcher:
    def __init__(self, buffered: bool, fetchable: list):
        self._next_partition_records = "records left" if buffered else None
        self.fetchable = fetchable
        self.sends = 0

    def send_fetches(self):
        self.sends += 1
        return ["future"]

    def _fetchable_partitions(self):
        return self.fetchable


class Coordinator:
    def __init__(self, coordinator_id, connected: bool):
        self.coordinator_id = coordinator_id
        self._client = SimpleNamespace(is_disconnected=lambda node: not connected)
        self.trips = []

    def ensure_coordinator_ready(self, timeout_ms=None):
        self.trips.append(timeout_ms)
        return False


def mended(fetcher, coordinator):
    assert skip_idle_trips(SimpleNamespace(_fetcher=fetcher, _coordinator=coordinator))
    return fetcher, coordinator


def test_a_partition_still_buffered_with_nothing_else_to_fetch_sends_nothing():
    fetcher, _ = mended(Fetcher(buffered=True, fetchable=[]), Coordinator(1, True))
    assert fetcher.send_fetches() == [] and fetcher.sends == 0


@pytest.mark.parametrize("buffered, fetchable", [(False, []), (False, ["p0"]), (True, ["p1"])])
def test_a_fetch_goes_to_the_io_thread_when_there_may_be_one_to_send(buffered, fetchable):
    fetcher, _ = mended(Fetcher(buffered, fetchable), Coordinator(1, True))
    assert fetcher.send_fetches() == ["future"] and fetcher.sends == 1


def test_a_known_connected_coordinator_is_ready_without_a_trip():
    _, coordinator = mended(Fetcher(False, []), Coordinator(3, connected=True))
    assert coordinator.ensure_coordinator_ready(timeout_ms=200) is True and coordinator.trips == []


@pytest.mark.parametrize("known, connected", [(None, True), (3, False)])
def test_an_unknown_or_disconnected_coordinator_is_left_to_the_io_thread(known, connected):
    _, coordinator = mended(Fetcher(False, []), Coordinator(known, connected))
    assert coordinator.ensure_coordinator_ready(timeout_ms=200) is False and coordinator.trips == [200]


def test_a_kafka_python_consumer_is_mended_and_another_client_is_left_as_it_is():
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8))
    try:
        assert skip_idle_trips(consumer)
        assert consumer._fetcher.send_fetches.__name__ == "send_fetches_unless_buffered"
        assert consumer._coordinator.ensure_coordinator_ready.__name__ == "ensure_coordinator_ready_unless_known"
    finally:
        consumer.close()
    assert not skip_idle_trips(object())   # e.g. librdkafka's adapter: nothing to mend


@pytest.mark.kafka
def test_a_mended_consumer_reads_every_record_once_in_order_with_far_fewer_trips(kafka, new_topic):
    """On the real broker: 20,000 records read in polls of 500 (several fetches' worth each while
    buffered). Every record comes once and in order, and the trips to the IO thread that remain are
    the fetches kafka-python sends (one per drained fetch) and the coordinator's first lookups."""
    topic = new_topic()
    producer = KafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    for i in range(20_000):
        producer.send(topic, value=b"%06d" % i + b"." * 200)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka, group_id=f"g-{topic}", auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=500)
    try:
        trips = {"fetch": 0, "coordinator": 0}
        fetcher, coordinator = consumer._fetcher, consumer._coordinator
        for name, owner, method in (("fetch", fetcher, "send_fetches"),
                                    ("coordinator", coordinator, "ensure_coordinator_ready")):
            original = getattr(owner, method)

            def counted(*args, _original=original, _name=name, **kwargs):
                trips[_name] += 1
                return _original(*args, **kwargs)
            setattr(owner, method, counted)   # counts the trips the mend lets through
        assert skip_idle_trips(consumer)
        seen, polls = [], 0
        while len(seen) < 20_000 and polls < 2_000:
            polls += 1
            for records in consumer.poll(timeout_ms=1000).values():
                seen.extend(int(r.value[:6]) for r in records)
        assert seen == list(range(20_000))
        # 4.2 MB in fetches of at most 1 MiB: a handful of fetches, against one trip of each kind per poll before
        assert polls >= 40 and trips["fetch"] < polls / 2 and trips["coordinator"] <= 3, (polls, trips)
    finally:
        consumer.close()
