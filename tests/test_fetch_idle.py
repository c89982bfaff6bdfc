"""kafka-python's fetcher, mended so that a poll never sleeps on records it has buffered (stream/fetch_idle.py)."""

from collections import deque

from kafka import KafkaConsumer

from stream.fetch_idle import mend_idle_fetch


class RacingFetcher:
    """kafka-python's Fetcher as the race leaves it: `fetch_records` drained nothing, and a response
    was buffered on the IO thread before its send found nothing to fetch, so it answers idle."""

    def __init__(self, buffered_during_the_call=None):
        self._completed_fetches: deque = deque()
        self.buffered_during_the_call = buffered_during_the_call
        self.drains = 0

    def fetch_records(self, max_records=None, update_offsets=True, timeout_ms=None):
        if self.buffered_during_the_call is not None:
            self._completed_fetches.append(self.buffered_during_the_call)
        return {}, True

    def fetched_records(self, max_records=None, update_offsets=True):
        self.drains += 1
        records = {"tp": list(self._completed_fetches)} if self._completed_fetches else {}
        self._completed_fetches.clear()
        return records, False


class Consumer:
    def __init__(self, fetcher):
        self._fetcher = fetcher


def test_an_idle_answer_with_a_response_buffered_returns_its_records_instead_of_a_sleep():
    fetcher = RacingFetcher(buffered_during_the_call="record at offset 7")
    assert mend_idle_fetch(Consumer(fetcher))
    records, idle = fetcher.fetch_records(500, update_offsets=True, timeout_ms=200)
    assert (records, idle) == ({"tp": ["record at offset 7"]}, False)   # the consumer does not sleep
    assert not fetcher._completed_fetches


def test_an_idle_answer_with_nothing_buffered_stays_idle():
    fetcher = RacingFetcher()
    mend_idle_fetch(Consumer(fetcher))
    assert fetcher.fetch_records(500) == ({}, True) and fetcher.drains == 0   # nothing to fetch: it sleeps, as before


def test_a_kafka_python_consumer_is_mended_and_another_client_is_left_as_it_is():
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8))
    try:
        assert mend_idle_fetch(consumer)
        assert consumer._fetcher.fetch_records.__name__ == "fetch_records_unless_buffered"
    finally:
        consumer.close()
    assert not mend_idle_fetch(object())   # e.g. librdkafka's adapter: nothing to mend
