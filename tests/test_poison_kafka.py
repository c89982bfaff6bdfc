"""Data plane on the real broker: no message, timestamp or output failure stops, stalls
or poisons a partition. Every record a worker reads ends processed or dead-lettered
with a reason, once."""

import subprocess
import time
from types import SimpleNamespace

import msgspec
import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from conftest import WORKER_ENV, free_port, worker_command
from helpers import NotUtf8, assert_same_engine, read_predictions, read_topic, send
from shopstream.engine import Engine
from shopstream.events import decode_event, event_from_record
from shopstream.generator import generate
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.partition import Partition as PartitionState
from stream.outputs import ORIGINAL_SIZE_HEADER, REASON_HEADER, TRUNCATED_HEADER
from stream.settings import WorkerSettings
from stream.worker import Worker

pytestmark = pytest.mark.kafka
encode = msgspec.json.Encoder().encode


class NullValueHeaders(list):
    """Headers with a null value, as other clients send. kafka-python 3.0.12's send()
    cannot: it checks each value is bytes, and sums their lengths after writing the
    record. This list shows bytes to those and None to the record encoder
    (kafka.record), which writes a null header as the protocol allows."""

    def __init__(self, key: str):
        super().__init__([(key, b"")])
        self.key = key

    def __iter__(self):
        import sys

        caller = sys._getframe(1).f_globals.get("__name__", "")
        return iter([(self.key, None if caller.startswith("kafka.record") else b"")])


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_poison_messages_leave_the_worker_running_and_every_message_accounted(kafka, new_topic, tmp_path, client):
    topic = new_topic(1)
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    # A dead-letter topic whose broker limit is lower than the events topic's: a broker-rejected output.
    admin.create_topics([NewTopic(f"{topic}-dlq", 1, 1, topic_configs={"max.message.bytes": "200000"})])
    admin.close()
    good = list(generate(3000, seed=201))
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all", max_request_size=4_000_000)

    def send(value, headers=None):
        producer.send(topic, key=b"k", value=value, headers=headers).get(timeout=30)  # one batch each

    for record in good[:1500]:
        producer.send(topic, key=b"k", value=encode(record))
    producer.flush()
    poison = [
        (b"x" * 1_048_400, None),                                   # near the broker's limit, invalid
        (encode(good[1500]) + b"{", NullValueHeaders("trace")),             # invalid, a null header value
        (encode(good[1501]), [(NotUtf8("k"), b"v")]),               # a batch the client cannot parse
        (b"{" + b"y" * 300_000, [("big", b"z" * 1000)]),            # refused by the dead-letter topic
    ]
    for value, headers in poison:
        send(value, headers)
    for record in good[1502:]:
        producer.send(topic, key=b"k", value=encode(record))
    producer.flush()
    producer.close()
    sent = len(good) - 2 + len(poison)

    port = free_port()
    worker = subprocess.run(worker_command(kafka, topic, tmp_path / "ckpt", "--until-idle", "5",
                                           "--metrics-port", str(port), "--checkpoint-every", "1000",
                                           "--kafka-client", client),
                            env=WORKER_ENV, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-3000:]
    [state] = DirectoryCheckpointStore(tmp_path / "ckpt").load_all().values()
    print(f"\nsent {sent}: consumed {state.engine.counts['consumed']}, dead-lettered {state.dead_lettered}, "
          f"next offset {state.next_offset}")
    assert state.next_offset == sent
    assert state.engine.counts["consumed"] + state.dead_lettered == sent
    assert state.dead_lettered == len(poison)

    letters = read_topic(kafka, f"{topic}-dlq", expected=len(poison))
    assert len(letters) == len(poison)
    by_offset = {int(dict(r.headers)["shopstream.source.offset"]): r for r in letters}
    first = 1500
    near_limit, null_header, unparsable, refused = (by_offset[first + i] for i in range(4))
    assert dict(near_limit.headers)[TRUNCATED_HEADER] == b"1"
    assert dict(near_limit.headers)[ORIGINAL_SIZE_HEADER] == b"1048400"
    assert dict(null_header.headers)["trace"] == b"" and null_header.value.endswith(b"{")
    # kafka-python cannot parse the batch; librdkafka reads it, but its binding cannot decode the header key
    assert b"unreadable record" in dict(unparsable.headers)[REASON_HEADER]
    assert dict(unparsable.headers)["shopstream.source.last_offset"] == str(first + 2).encode()
    assert dict(refused.headers)[ORIGINAL_SIZE_HEADER] == b"300001" and len(refused.value) < 200_000
    assert "cannot be parsed" in worker.stderr and "sending them again with a new producer" in worker.stderr

    # Nothing else lost: the same state as one clean engine over the good events.
    expected = Engine.fresh("logreg", "shop")
    for record in good[:1500] + good[1502:]:
        expected.process(event_from_record(record))
    probes = [expected.features.transform(event_from_record(r)) for r in good[-100:]]
    assert_same_engine(state.engine, expected, probes)


def live(records, now):
    """Generated history moved to end `now`, each event with its arrival time as the record time."""
    shift = now - decode_event(encode(records[-1])).event_time
    for record in records:
        t = decode_event(encode(record)).event_time + shift
        yield {**record, "event_time": t}, int(t * 1000)


def send_timed(bootstrap, topic, timed):
    send(bootstrap, topic, ((str(record["user_id"]).encode(), encode(record), timestamp_ms)
                            for record, timestamp_ms in timed))


def test_future_event_times_cannot_drag_the_watermark(kafka, new_topic, tmp_path):
    """A view dated 2099 and a client clock one hour fast, among 30k live events."""
    topic = new_topic(1)
    clean = list(live(list(generate(30_000, seed=202)), now=time.time() - 60))
    skewed = []
    for i, (record, ts) in enumerate(clean):
        if i == 10_000:
            skewed.append(({**record, "event_time": "2099-12-31T00:00:00Z", "user_session": "s-2099"}, ts))
        if i % 1000 == 500:  # a phone whose clock runs an hour fast
            skewed.append(({**record, "event_time": record["event_time"] + 3600, "user_session": f"fast{i}"}, ts))
        skewed.append((record, ts))
    send_timed(kafka, topic, skewed)
    worker = subprocess.run(worker_command(kafka, topic, tmp_path / "ckpt", "--until-idle", "5",
                                           "--metrics-port", "-1"),
                            env=WORKER_ENV, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-3000:]
    [state] = DirectoryCheckpointStore(tmp_path / "ckpt").load_all().values()
    assert state.next_offset == len(skewed), "the worker stopped before the end of the topic"
    assert state.engine.counts["consumed"] + state.dead_lettered == len(skewed), \
        "the worker did not read every record: the topic lost some (the broker's retention?)"

    reference = Engine.fresh("logreg", "shop")
    for record, _ in clean:
        reference.process(event_from_record(record))
    # What the same stream did before the check: the engine's own jump guard (--max-time-jump,
    # which alone holds back the 2099 view but not the hour-fast phones) off too.
    unguarded = Engine.fresh("logreg", "shop", max_time_jump=0)
    for record, _ in skewed:
        unguarded.process(event_from_record(record))
    got, want = state.engine.counts["resolved"], reference.counts["resolved"]
    auc, want_auc = (e.champion_slot.scores.cumulative.values()["roc_auc"] for e in (state.engine, reference))
    print(f"\nresolved: guarded {got}, clean {want}, unguarded {unguarded.counts['resolved']}; "
          f"ROC AUC guarded {auc:.4f}, clean {want_auc:.4f}, "
          f"unguarded {unguarded.champion_slot.scores.cumulative.values()['roc_auc']:.4f}; "
          f"dead-lettered {state.dead_lettered}")
    assert state.dead_lettered == len(skewed) - len(clean) == 31
    assert abs(got - want) <= 0.01 * want
    assert abs(auc - want_auc) <= 0.01
    assert unguarded.counts["resolved"] < 0.9 * want  # the check is what makes the difference
    letters = read_topic(kafka, f"{topic}-dlq", expected=31)
    reasons = [dict(r.headers)[REASON_HEADER].decode() for r in letters]
    assert any("2099-12-31T00:00:00Z is 7" in r and "years ahead of the record time" in r for r in reasons)
    assert sum("60 minutes ahead" in r for r in reasons) == 30


class RefusingProducer:
    """A stand-in producer whose sends the broker never acknowledges (expired in flight)."""

    def __init__(self):
        from kafka.future import Future

        self.Future = Future
        self.pending = []

    def send(self, topic, **message):
        future = self.Future()
        self.pending.append(future)
        return future

    def flush(self, timeout=None):
        from kafka.errors import KafkaTimeoutError

        for future in self.pending:
            future.failure(KafkaTimeoutError("expired in flight"))
        self.pending = []

    def close(self, timeout=None):
        pass


def test_unacknowledged_outputs_hold_the_checkpoint_back_until_they_are_resent(kafka, new_topic, tmp_path):
    topic = new_topic(1)
    settings = WorkerSettings.from_options(bootstrap_servers=kafka, topic=topic, group=f"g-{topic}",
                              predictions_topic=f"{topic}-predictions", dead_letter_topic=f"{topic}-dlq",
                              checkpoints=str(tmp_path / "ckpt"), control_topic="", metrics_port=-1)
    worker = Worker(settings)
    tp = TopicPartition(topic, 0)
    worker.consumer.assign([tp])
    state = PartitionState(topic, 0, Engine.fresh("logreg", "shop"))
    worker.partitions[tp] = state
    real_producer = worker.outputs._make_producer
    broken = [True]
    worker.outputs._make_producer = lambda: RefusingProducer() if broken[0] else real_producer()
    worker.outputs.rebuild()

    events = [event_from_record(r) for r in generate(50, seed=203)]
    for offset, event in enumerate(events):
        worker.handle(state, SimpleNamespace(topic=topic, partition=0, key=b"k", headers=[], timestamp=0,
                                             offset=offset, value=encode(event)))
    worker.checkpoint([tp])
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))        # no checkpoint past lost outputs
    assert tp in worker.blocked and tp in worker.consumer.paused() and not worker.ready()
    broken[0] = False                                          # the broker takes writes again
    worker.checkpoint(list(worker.blocked))
    assert list((tmp_path / "ckpt").glob("*.ckpt")) and not worker.blocked
    assert tp not in worker.consumer.paused()
    reference = Engine.fresh("logreg", "shop")
    scored = {offset for offset, event in enumerate(events)
              if reference.process(event_from_record(msgspec.to_builtins(event))) is not None}
    published = read_predictions(kafka, f"{topic}-predictions", expected=len(scored))
    assert len(published) == len(scored) > 10
    assert {p["offset"] for p in published} == scored
    worker.consumer.close()
    worker.outputs.close()
