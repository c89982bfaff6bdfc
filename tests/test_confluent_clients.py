"""`--kafka-client confluent` (stream/confluent_clients.py): the settings that refuse it, and the
adapter's own logic on a stand-in for librdkafka's consumer. The real-broker proofs (exactness,
kill -9, a rebalance, poison messages) are the kafka tests parametrized over the client in
test_worker_kafka.py and test_poison_kafka.py."""

from __future__ import annotations

import os
import sys
import time

import pytest
from confluent_kafka import KafkaError as ConfluentError
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata

from cli.commands import main
from shopstream.config import ConfigError
from stream.clients import KafkaClients
from stream.confluent_clients import (ConfluentConsumer, ConfluentCorruptSkipper, ConfluentProducer,
                                      UnreadableRecord, librdkafka_options, _as_kafka_error)
from stream.connection import KafkaConnection, kafka_options
from stream.partition import Partition
from stream.settings import WorkerSettings

TOPIC = "events"


@pytest.fixture(autouse=True)
def no_shopstream_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SHOPSTREAM_"):
            monkeypatch.delenv(name)


# -- settings -----------------------------------------------------------------------------------------

def test_confluent_serves_the_scoring_api_with_its_address_in_the_client_id_and_librdkafka_producer():
    from types import SimpleNamespace

    from confluent_kafka import TopicPartition as ConfluentTopicPartition

    from stream.group_owners import GroupOwnersWatch, owners_of
    from stream.owners import OwnersAssignor, Owners

    settings = WorkerSettings.from_options(kafka_client="confluent", bootstrap_servers="127.0.0.1:9",
                                           client_id="w1", serve_port=0)
    assert settings.serve.enabled and settings.kafka_client == "confluent"
    clients = KafkaClients(settings)
    owners = Owners()
    clients.assignor = OwnersAssignor("10.0.0.5:8080", owners)   # what the worker does when it serves
    consumer, producer = clients.consumer(), clients.score_producer()
    try:
        assert isinstance(producer, ConfluentProducer)
        assert isinstance(consumer.owners_watch, GroupOwnersWatch) and consumer.owners_watch.owners is owners
    finally:
        consumer.close()
        producer.close(0)
    assert KafkaClients(WorkerSettings.from_options(kafka_client="confluent", bootstrap_servers="127.0.0.1:9")
                        ).consumer().owners_watch is None   # not serving: no watch, no admin client

    # the broker's view of the group -> partition -> where its owner serves
    def member(client_id, *partitions):
        return SimpleNamespace(client_id=client_id, assignment=SimpleNamespace(
            topic_partitions=[ConfluentTopicPartition(topic, p) for topic, p in partitions]))
    group = SimpleNamespace(members=[member("w1|api=a:1", ("events", 0), ("events", 1), ("other", 2)),
                                     member("w2|api=b:2", ("events", 2)),
                                     member("a-tool-without-api", ("events", 3))])
    assert owners_of(group, "events") == {0: "a:1", 1: "a:1", 2: "b:2"}


def test_confluent_without_its_package_is_refused_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)   # as if not installed
    with pytest.raises(ConfigError, match=r"needs the confluent-kafka package.*shopstream\[confluent\]"):
        WorkerSettings.from_options(kafka_client="confluent")
    monkeypatch.setenv("SHOPSTREAM_KAFKA_CLIENT", "confluent")   # the variable is the option too
    assert main(["worker"]) == 2
    assert "error: --kafka-client 'confluent' needs the confluent-kafka package" in capsys.readouterr().err
    assert WorkerSettings.from_options().kafka_client == "kafka-python"   # the default never needs it


def test_an_unknown_client_is_refused():
    with pytest.raises(ConfigError, match="kafka_client 'rdkafka' must be one of"):
        WorkerSettings.from_options(kafka_client="rdkafka")


def test_connection_settings_map_to_librdkafka_names():
    connection = KafkaConnection("a:1,b:2", "SASL_SSL", "SCRAM-SHA-512", "u", "p", "ca.pem", "c.pem", "k.pem")
    assert librdkafka_options(kafka_options(connection)) == {
        "bootstrap.servers": "a:1,b:2", "security.protocol": "SASL_SSL", "reconnect.backoff.max.ms": 1000,
        "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": "p",
        "ssl.ca.location": "ca.pem", "ssl.certificate.location": "c.pem", "ssl.key.location": "k.pem"}
    with pytest.raises(ConfigError, match="cannot take the connection option api_version"):
        librdkafka_options({"api_version": (2, 8)})


def test_the_setting_picks_the_data_path_clients():
    settings = WorkerSettings.from_options(kafka_client="confluent", bootstrap_servers="127.0.0.1:9",
                                           client_id="picks")
    clients = KafkaClients(settings)
    consumer, producer = clients.consumer(), clients.producer()
    try:
        assert isinstance(consumer, ConfluentConsumer) and isinstance(producer, ConfluentProducer)
        assert isinstance(clients.corrupt_skipper(None), ConfluentCorruptSkipper)
    finally:
        consumer.close()


# -- the consumer adapter, on a stand-in for librdkafka's ---------------------------------------------

class Message:
    """What confluent_kafka.Message offers."""

    def __init__(self, partition, offset, value=b"{}", error=None, headers=None):
        self._partition, self._offset, self._value, self._error, self._headers = (partition, offset, value, error,
                                                                                  headers)

    def error(self):
        return self._error

    def topic(self):
        return TOPIC

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def headers(self):
        if isinstance(self._headers, Exception):
            raise self._headers
        return self._headers

    def key(self):
        return b"k"

    def value(self):
        return self._value

    def timestamp(self):
        return (1, 1_700_000_000_000)


class Librdkafka:
    """A librdkafka consumer that hands out queued messages and records what it was told."""

    def __init__(self):
        self.queue: list = []
        self.calls: list = []
        self.seek_fails = 0

    def consume(self, limit, timeout):
        out, self.queue = self.queue[:limit], self.queue[limit:]
        return out

    def poll(self, timeout):
        return None

    def assign(self, partitions):
        self.calls.append(("assign", [(p.partition, p.offset) for p in partitions]))

    def unassign(self):
        self.calls.append(("unassign",))

    def seek(self, tp):
        if self.seek_fails:
            self.seek_fails -= 1
            from confluent_kafka import KafkaException
            raise KafkaException(ConfluentError(ConfluentError._STATE))
        self.calls.append(("seek", tp.partition, tp.offset))

    def pause(self, partitions):
        self.calls.append(("pause", [p.partition for p in partitions]))

    def resume(self, partitions):
        self.calls.append(("resume", [p.partition for p in partitions]))

    def commit(self, offsets=None, asynchronous=True):
        self.calls.append(("commit", [(p.partition, p.offset) for p in offsets], asynchronous))
        return offsets


def adapter() -> tuple[ConfluentConsumer, Librdkafka]:
    consumer = ConfluentConsumer.__new__(ConfluentConsumer)
    ConfluentConsumer.__init__(consumer, {"bootstrap.servers": "127.0.0.1:9", "group.id": "unit"}, 100)
    consumer._consumer.close()
    fake = consumer._consumer = Librdkafka()
    return consumer, fake


def offsets(batches) -> dict:
    return {tp.partition: [r.offset for r in records] for tp, records in batches.items()}


def test_seeks_made_while_partitions_are_assigned_become_their_assigned_offsets():
    consumer, fake = adapter()

    class Listener:
        def on_partitions_assigned(self, assigned):
            for tp in assigned:
                if tp.partition == 0:
                    consumer.seek(tp, 42)   # what the worker does with each restored partition

        def on_partitions_revoked(self, revoked):
            pass

    consumer.listener = Listener()
    from confluent_kafka import TopicPartition as CTP
    consumer._on_assign(fake, [CTP(TOPIC, 0), CTP(TOPIC, 1)])
    assert fake.calls == [("assign", [(0, 42), (1, -1000)])]   # 1: not sought, the group's committed offset


def test_an_unreadable_record_is_raised_after_the_records_before_it_and_nothing_after_it_is_lost():
    consumer, fake = adapter()
    fake.queue = [Message(0, 5), Message(1, 7), Message(0, 6, headers=SystemError("not UTF-8")),
                  Message(1, 8), Message(0, 7)]
    assert offsets(consumer.poll(200)) == {0: [5], 1: [7]}
    with pytest.raises(UnreadableRecord) as raised:
        consumer.poll(200)
    assert (raised.value.tp, raised.value.offset) == (TopicPartition(TOPIC, 0), 6)
    assert "headers cannot be decoded" in raised.value.reason
    assert offsets(consumer.poll(200)) == {1: [8], 0: [7]}   # held back, not dropped


def test_a_corrupt_message_reported_by_librdkafka_is_located_and_client_errors_are_not_records():
    consumer, fake = adapter()
    fake.queue = [Message(0, None, error=ConfluentError(ConfluentError._TRANSPORT)),
                  Message(0, 3, error=ConfluentError(ConfluentError._BAD_MSG))]
    with pytest.raises(UnreadableRecord) as raised:
        consumer.poll(200)
    assert raised.value.offset == 3


def test_the_skipper_dead_letters_exactly_the_unreadable_offset_and_reads_on_after_it():
    consumer, fake = adapter()
    letters = []

    class Outputs:
        def dead_letter_range(self, *args):
            letters.append(args)

    tp = TopicPartition(TOPIC, 0)
    state = Partition(TOPIC, 0, engine=None, next_offset=6)
    skipper = ConfluentCorruptSkipper({}, Outputs())
    skipper.skip(consumer, {tp: state}, UnreadableRecord(tp, 6, "headers cannot be decoded"))
    assert letters == [(TOPIC, 0, 6, 6, "unreadable record: headers cannot be decoded")]
    assert (state.next_offset, state.dead_lettered, skipper.skipped_records) == (7, 1, 1)
    assert fake.calls == [("seek", 0, 7)]
    skipper.skip(consumer, {tp: state}, UnreadableRecord(tp, 6, "again"))   # behind the reader: nothing
    assert len(letters) == 1


def test_a_paused_partition_returns_nothing_and_resumes_where_the_worker_stopped_reading():
    consumer, fake = adapter()
    tp0 = TopicPartition(TOPIC, 0)
    consumer.pause(tp0)
    fake.queue = [Message(0, 10), Message(1, 4), Message(0, 11)]
    assert offsets(consumer.poll(200)) == {1: [4]}
    consumer.resume(tp0)
    assert fake.calls[-2:] == [("resume", [0]), ("seek", 0, 10)]


def test_a_seek_librdkafka_refuses_yet_is_retried_and_what_it_would_skip_is_not_returned():
    consumer, fake = adapter()
    tp0 = TopicPartition(TOPIC, 0)
    fake.seek_fails = 2
    consumer.seek(tp0, 0)   # just assigned: librdkafka says "erroneous state", and again at the next poll
    fake.queue = [Message(0, 50), Message(1, 4)]
    assert offsets(consumer.poll(200)) == {1: [4]}   # 50 is from before the seek the worker asked for
    assert ("seek", 0, 0) not in fake.calls
    consumer.poll(200)
    assert ("seek", 0, 0) in fake.calls   # librdkafka drops what it fetched before a seek itself


def test_commits_carry_the_checkpointed_offsets():
    consumer, fake = adapter()
    tp = TopicPartition(TOPIC, 2)
    consumer.commit({tp: OffsetAndMetadata(9, "", -1)})
    consumer.commit_async({tp: OffsetAndMetadata(10, "", -1)})
    assert fake.calls == [("commit", [(2, 9)], False), ("commit", [(2, 10)], True)]


def test_delivery_errors_become_the_errors_the_outputs_handle():
    assert isinstance(_as_kafka_error(ConfluentError(ConfluentError.MSG_SIZE_TOO_LARGE)), MessageSizeTooLargeError)
    assert isinstance(_as_kafka_error(ConfluentError(ConfluentError._MSG_TIMED_OUT)), KafkaTimeoutError)


def test_the_owners_watch_takes_only_a_stable_groups_map_and_retries_through_errors(monkeypatch):
    """After a rebalance rings it, the watch reads the group until it is stable (a map read
    mid-rebalance would hold partitions that are moving), through broker errors, and then
    replaces the map whole; the poll loop never waits for it."""
    import threading
    from types import SimpleNamespace

    from confluent_kafka import ConsumerGroupState, KafkaException
    from confluent_kafka import TopicPartition as ConfluentTopicPartition

    import stream.group_owners as group_owners
    from stream.owners import Owners

    monkeypatch.setattr(group_owners, "RETRY_SECONDS", 0.01)

    class Done:
        def __init__(self, value):
            self.value = value

        def result(self):
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    def group(state, *members):
        return SimpleNamespace(state=state, members=[SimpleNamespace(client_id=cid, assignment=SimpleNamespace(
            topic_partitions=[ConfluentTopicPartition("events", p) for p in parts])) for cid, parts in members])

    answers = [KafkaException("broker away"), group(ConsumerGroupState.COMPLETING_REBALANCING, ("w1|api=a:1", [0, 1])),
               group(ConsumerGroupState.STABLE, ("w1|api=a:1", [0]), ("w2|api=b:2", [1, 2]))]
    taken = threading.Event()

    class Admin:
        asked = 0

        def describe_consumer_groups(self, groups, request_timeout):
            assert groups == ["g"]
            Admin.asked += 1
            answer = answers.pop(0) if answers else answers_done()
            return {"g": Done(answer)}

        def list_topics(self, topic, timeout):
            return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None, 2: None})})

    def answers_done():
        taken.set()
        return group(ConsumerGroupState.STABLE, ("w1|api=a:1", [0, 1, 2]))

    owners = Owners()
    owners.replace(3, {0: "old:1"})
    watch = group_owners.GroupOwnersWatch({}, "g", "events", owners, admin=Admin())
    watch.refresh()
    deadline = time.monotonic() + 5
    while watch.refreshes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.close()
    # the error and the unstable group were passed over; the stable group's map replaced the old one whole
    assert Admin.asked == 3 and watch.refreshes == 1 and not taken.is_set()
    assert (owners.partitions, owners.address(0), owners.address(1), owners.address(2)) == (3, "a:1", "b:2", "b:2")


def test_an_errback_added_after_the_send_failed_is_called_at_once():
    """The API's producer serves its delivery reports on a thread of its own, which can report a
    failure before the sender adds its errback: kafka-python calls a late errback at once, so must we
    (else the request waits for its timeout instead of a 503)."""
    from stream.confluent_clients import DeliveryFuture

    future = DeliveryFuture(None)
    early: list = []
    future.add_errback(early.append)
    future._delivered(ConfluentError(ConfluentError._MSG_TIMED_OUT), None)
    late: list = []
    future.add_errback(late.append)
    assert len(early) == len(late) == 1 and isinstance(late[0], KafkaTimeoutError) and late[0] is early[0]
    future._delivered(None, None)   # a success report changes nothing
    assert len(early) == len(late) == 1


def test_a_client_id_with_the_api_mark_is_refused():
    with pytest.raises(ConfigError, match=r"client_id .*must not contain '\|api='"):
        WorkerSettings.from_options(client_id="x|api=10.0.0.9:80")


def test_the_kafka_python_producer_batches_outputs_in_large_batches_that_the_broker_still_takes(monkeypatch):
    """At the client's default 16 KiB a request carried a few predictions records, and a worker working off a
    backlog outran its producer's sender thread until a checkpoint's wait for acknowledged outputs failed
    (BENCHMARKS.md, stop 47). A batch must still fit the broker's default limit on one (message.max.bytes)."""
    import stream.clients as clients_module

    built: list[dict] = []

    class RecordingProducer:
        def __init__(self, **config):
            built.append(config)

    monkeypatch.setattr(clients_module, "KafkaProducer", RecordingProducer)
    settings = WorkerSettings.from_options(bootstrap_servers="127.0.0.1:9", client_id="batches")
    KafkaClients(settings).producer()
    assert built[0]["batch_size"] == clients_module.OUTPUT_BATCH_BYTES >= 16 * 16_384
    record_batch_header = 61
    assert clients_module.OUTPUT_BATCH_BYTES + record_batch_header <= 1_048_588   # Kafka's message.max.bytes
