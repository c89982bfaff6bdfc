"""The scoring API on the real broker: a worker answers POST /score with the engine's
prediction for the request's event, the predictions topic holds that same number for that
event id, the open prediction that the label join will score holds it too, and one event
id is one prediction however often it is sent (API retries, the shop's own tracking)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from conftest import free_port
from helpers import read_predictions, read_topic, send_records, wait_for
from shopstream.generator import generate
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.clients import KafkaClients
from stream.serving import ScoreDesk, ScoreServer
from stream.settings import WorkerSettings
from stream.worker import Worker

pytestmark = pytest.mark.kafka


def post(port, path, payload):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", path, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    body = json.loads(answer.read())
    connection.close()
    return answer.status, body


class ServingWorker:
    """A worker with its scoring API, in this process (the loop on a thread, as run_worker wires it)."""

    def __init__(self, kafka, topic, tmp_path, events, partitions=2, kafka_client="kafka-python", name="",
                  wait=True, recorded="processed"):
        self.settings = WorkerSettings.from_options(
            bootstrap_servers=kafka, topic=topic, group=f"g-{topic}", predictions_topic=f"{topic}-predictions",
            dead_letter_topic=f"{topic}-dlq", control_topic="", checkpoints=str(tmp_path / "ckpt"), metrics_port=-1,
            session_timeout_ms=6000, serve_port=free_port(), client_id=f"serving-{topic}{name}",
            kafka_client=kafka_client, serve_recorded=recorded)
        self.registry = CollectorRegistry()
        self.api = ScoreServer(self.settings.serve)
        self.desk = ScoreDesk(topic, self.api.address, self.settings.name, recorded=recorded)
        self.worker = Worker(self.settings, self.registry, desk=self.desk)
        self.api.start(self.desk, KafkaClients(self.settings).score_producer(), self.registry)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        if not wait:
            return
        wait_for(lambda: self.worker.handled >= events and len(self.desk.owned) == partitions, 120,
                 "worker caught up")
        # and the loop polled since: requests are dated at each partition's clock as the loop last published it
        wait_for(lambda: all(self.desk.clock.get(tp.partition) == state.engine.joiner.max_time
                             for tp, state in list(self.worker.partitions.items())), 30, "clocks published")

    @property
    def port(self) -> int:
        return self.api.port

    def stop(self):
        self.worker.stopping = True
        self.thread.join(60)
        self.api.stop()


#: (client, --serve-recorded): answered once the loop processed the event, or once it is written carrying its score
MODES = [("kafka-python", "processed"), ("confluent", "processed"), ("kafka-python", "written"),
         ("confluent", "written")]


@pytest.mark.parametrize("kafka_client, recorded", MODES)
def test_a_served_score_is_the_streams_prediction_exactly_once(kafka, new_topic, tmp_path, kafka_client, recorded):
    topic = new_topic(2)
    records = list(generate(3000, seed=61))
    send_records(kafka, topic, records)
    served = ServingWorker(kafka, topic, tmp_path, len(records), kafka_client=kafka_client, recorded=recorded)
    last = records[-1]
    request = {"user_id": str(last["user_id"]), "user_session": str(last["user_session"]), "product_id": "p-api",
               "event_type": "view", "price": 19.99, "category_code": "electronics.phone", "event_id": "api-view-1"}
    try:
        status, first = post(served.port, "/score", request)
        assert status == 200, first
        # written mode answers "written", not "recorded": the loop may still find the event late (serving.py)
        assert first["recorded"] is (recorded == "processed") and first.get("written", False) is (recorded == "written")
        assert first["duplicate"] is False and 0 < first["score"] < 1
        assert first["event_id"] == first["prediction_id"] == "api-view-1" and first["model"] == "logreg"
        # the same request again (a client retry): the same prediction, not a second one
        status, again = post(served.port, "/score", request)
        assert status == 200 and again["duplicate"] is True and again["score"] == first["score"], again
        # the shop's tracking sends the same event too: the engine drops it as a duplicate
        tracked = {**request, "event_time": served.desk.clock[first["partition"]]}
        send_records(kafka, topic, [tracked])
        # the other order: tracking first, then the API asked about the same event id
        shop_event = {**request, "event_id": "track-1", "product_id": "p-tracked",
                      "event_time": served.desk.clock[first["partition"]]}
        send_records(kafka, topic, [shop_event])
        # processed: the request and its retry (two events; written: the retry is not written again), the
        # tracked copy, the shop's event
        written = 3 if recorded == "written" else 4
        wait_for(lambda: served.worker.handled >= len(records) + written, 60, "tracked events processed")
        status, asked = post(served.port, "/score", {k: v for k, v in shop_event.items() if k != "event_time"})
        assert status == 200 and asked["duplicate"] is True, asked
        # a what-if records nothing
        handled = served.worker.handled
        status, whatif = post(served.port, "/score/whatif", {**request, "event_id": "whatif-1"})
        assert status == 200 and whatif["recorded"] is False, whatif
        time.sleep(1.0)
        assert served.worker.handled == handled
    finally:
        served.stop()

    predictions = read_predictions(kafka, f"{topic}-predictions")
    by_id: dict = {}
    for prediction in predictions:
        by_id.setdefault(prediction["event_id"], []).append(prediction)
    [api_prediction] = by_id["api-view-1"]              # one prediction for the event, sent three times
    assert api_prediction["score"] == first["score"]   # the same number, bit for bit
    assert (api_prediction["partition"], api_prediction["offset"]) == (first["partition"], first["offset"])
    [tracked_prediction] = by_id["track-1"]
    assert tracked_prediction["score"] == asked["score"]
    assert "whatif-1" not in by_id

    # the request is an event on the events topic, keyed by user like the shop's own
    [event_record] = [r for r in read_topic(kafka, topic) if r.partition == first["partition"]
                      and r.offset == first["offset"]]
    assert event_record.key == request["user_id"].encode()
    assert json.loads(event_record.value)["event_id"] == "api-view-1"
    # and the open prediction the label join will score holds the served number
    states = DirectoryCheckpointStore(served.settings.checkpoints.directory, served.settings.group).load_all()
    engine = next(state.engine for (_, partition), state in states.items() if partition == first["partition"])
    [opened] = [p for p in engine.joiner.open_predictions() if p.ref == first["offset"]]
    assert opened.outputs[opened.champion][0] == first["score"]
    assert engine.recorded("api-view-1", request["user_id"]) == (True, first["score"])
    requests = served.registry.get_sample_value("shopstream_score_requests_total", {"mode": "record", "code": "200"})
    assert requests == 3


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_a_request_for_another_workers_partition_is_forwarded_to_its_owner(kafka, new_topic, tmp_path,
                                                                         kafka_client):
    """Two workers in one group: each learns from the group where the other serves (kafka-python:
    the assignment carries the map; librdkafka: client ids read from the broker), and either
    answers for any user, the other's through a forward; after one leaves, the other owns all."""
    from stream.owners import partition_for

    topic = new_topic(2)
    records = list(generate(2000, seed=63))
    send_records(kafka, topic, records)
    first = ServingWorker(kafka, topic, tmp_path / "a", len(records), kafka_client=kafka_client, name="-a")
    second = ServingWorker(kafka, topic, tmp_path / "b", 0, kafka_client=kafka_client, name="-b", wait=False)
    workers = (first, second)
    try:
        wait_for(lambda: len(first.desk.owned) == len(second.desk.owned) == 1, 120, "one partition each")
        wait_for(lambda: all(w.desk.owners.address(p) == owner.api.address for w in workers
                             for owner in workers for p in owner.desk.owned), 60, "both know the owners")
        # The second worker has no checkpoint of the partition it took (its own directory): it
        # replays it from the start, and knows none of its users until it has.
        held = Counter(partition_for(str(r["user_id"]), 2) for r in records)
        wait_for(lambda: second.worker.handled >= sum(held[p] for p in second.desk.owned), 120,
                 "the second worker replayed the partition it took")
        users = {partition_for(str(r["user_id"]), 2): r for r in records}   # a known user of each partition
        for asked in workers:
            for partition, record in sorted(users.items()):
                request = {"user_id": str(record["user_id"]), "user_session": str(record["user_session"]),
                           "product_id": "p-fwd", "event_type": "view", "price": 4.0}
                status, answer = post(asked.port, "/score/whatif", request)
                assert status == 200 and answer["partition"] == partition, answer
        forwarded = sum(w.registry.get_sample_value("shopstream_score_forwarded_total", {"outcome": "answered"})
                        or 0 for w in workers)
        assert forwarded == 2   # each worker forwarded the user of the partition it does not own
    finally:
        second.stop()
    wait_for(lambda: len(first.desk.owned) == 2, 120, "the first worker took both partitions back")
    wait_for(lambda: all(first.desk.owners.address(p) == first.api.address for p in (0, 1)), 60, "owners updated")
    first.stop()


@pytest.mark.parametrize("kafka_client, recorded", MODES)
def test_served_scores_survive_kill_9_exactly_once(kafka, new_topic, tmp_path, kafka_client, recorded):
    """Served, then kill -9 before any checkpoint holds the served events: the next worker
    replays them from Kafka to the same numbers, learns each once, and answers a retry of the
    same request with the score served before the crash."""
    import signal

    from conftest import WORKER_ENV, LoggedProcess, worker_command
    from helpers import assert_same_engine, checkpointed_engines, reference_engines, scrape
    from shopstream.events import decode_event

    topic = new_topic(2)
    records = list(generate(6000, seed=71))
    send_records(kafka, topic, records)
    checkpoints = tmp_path / "ckpt"

    def start(name):
        api, metrics = free_port(), free_port()
        command = worker_command(kafka, topic, checkpoints, "--metrics-port", str(metrics), "--serve-port", str(api),
                                 "--checkpoint-every", "100000", "--checkpoint-seconds", "600",
                                 "--kafka-client", kafka_client, "--serve-recorded", recorded)
        return LoggedProcess(command, tmp_path / f"{name}.log", WORKER_ENV), api, metrics

    def consumed(metrics) -> float:
        return sum(v for (name, labels), v in scrape(metrics).items()
                   if name == "shopstream_events_total" and ("outcome", "consumed") in labels)

    requests = [{"user_id": str(r["user_id"]), "user_session": str(r["user_session"]), "product_id": f"p-k{i}",
                 "event_type": "cart" if i % 2 else "view", "price": 5.0 + i, "event_id": f"kill-{i}"}
                for i, r in enumerate(records[-400::50])]
    victim, api, metrics = start("victim")
    try:
        wait_for(lambda: consumed(metrics) >= len(records), 120, "first worker caught up")
        samples = scrape(metrics)   # --gc auto: the latency mode for a worker serving on librdkafka
        mode = "latency" if kafka_client == "confluent" else "throughput"
        assert samples[("shopstream_gc_info", (("mode", mode),))] == 1
        if mode == "latency":   # young collections every 5,000 allocations: 6,000 events made some
            assert samples[("shopstream_gc_pause_seconds_count", (("generation", "0"),))] > 0
        served, owners = {}, {}
        for request in requests:
            status, answer = post(api, "/score", request)
            assert status == 200 and not answer["duplicate"], answer
            served[request["event_id"]] = answer["score"]
            owners[request["event_id"]] = str(request["user_id"])
    finally:
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
    before_crash = {p: e.counts["consumed"] for p, e in checkpointed_engines(checkpoints).items()}
    assert sum(before_crash.values()) <= len(records)  # no checkpoint holds a served event: all replayed

    survivor, api, metrics = start("survivor")
    total = len(records) + len(requests)
    try:
        wait_for(lambda: consumed(metrics) >= total, 120, "second worker replayed the served events")
        for request in requests:  # a client retrying after the crash gets the score it was served
            status, answer = post(api, "/score", request)
            assert status == 200 and answer["duplicate"] is True, answer
            assert answer["score"] == served[request["event_id"]]
    finally:
        survivor.proc.send_signal(signal.SIGTERM)
        log = survivor.finish(timeout=60)
    assert survivor.proc.returncode == 0, log[-2000:]

    published: dict = {}
    for prediction in read_predictions(kafka, f"{topic}-predictions"):
        published.setdefault(prediction["event_id"], set()).add(prediction["score"])
    for event_id, score in served.items():
        assert published[event_id] == {score}  # published again by the replay, never another number
    expected = reference_engines(kafka, topic)   # one uninterrupted run over every event, the served included
    actual = checkpointed_engines(checkpoints)
    probes = [expected[0].features.transform(decode_event(msgspec.json.encode(r))) for r in records[-100:]]
    for partition in expected:
        assert_same_engine(actual[partition], expected[partition], probes)
    for event_id, score in served.items():
        assert any(engine.recorded(event_id, owners[event_id]) == (True, score) for engine in actual.values())


def test_requests_are_answered_while_the_loop_waits_in_a_long_poll(kafka, new_topic, tmp_path):
    """On an idle stream the loop sits in consumer.poll until its timeout (made 30 s here): a
    what-if is answered by the desk's clerk inside that wait, and a recorded request's own event
    ends the wait (the broker answers the fetch as soon as it is written)."""
    topic = new_topic(2)
    records = list(generate(1000, seed=67))
    send_records(kafka, topic, records)
    served = ServingWorker(kafka, topic, tmp_path, len(records))
    consumer = served.worker.consumer
    real_poll = consumer.poll
    waiting, returned = threading.Event(), []

    def long_poll(timeout_ms):
        waiting.set()
        try:
            return real_poll(timeout_ms=30_000)
        finally:
            returned.append(time.monotonic())

    last = records[-1]
    request = {"user_id": str(last["user_id"]), "user_session": str(last["user_session"]), "product_id": "p-long",
               "event_type": "cart", "price": 9.5}
    try:
        consumer.poll = long_poll
        assert waiting.wait(10)  # the loop is in the long poll; `returned` counts only long polls
        for i in range(3):
            status, answer = post(served.port, "/score/whatif", {**request, "event_id": f"long-whatif-{i}"})
            assert status == 200 and answer["recorded"] is False, answer
        assert not returned and served.desk.clerk_drains >= 3  # all answered inside the one poll
        status, answer = post(served.port, "/score", {**request, "event_id": "long-record"})
        assert status == 200 and answer["recorded"] is True and not answer["duplicate"], answer
        assert returned  # the poll returned with the request's event, which was then scored
    finally:
        consumer.poll = real_poll
        send_records(kafka, topic, [{**records[-1], "event_id": "wake-up"}])  # ends a poll still waiting
        served.stop()


def test_a_what_if_is_answered_while_the_loop_asks_the_broker_for_end_offsets(kafka, new_topic, tmp_path):
    """The broker check between polls (end offsets) queues behind the fetch in flight, so it can
    take up to the fetch's max wait: the loop opens the gate for it, and the clerk answers."""
    topic = new_topic(1)
    records = list(generate(500, seed=69))
    send_records(kafka, topic, records)
    served = ServingWorker(kafka, topic, tmp_path, len(records), partitions=1)
    broker = served.worker.broker
    real_check = broker.maybe_check
    inside, may_return = threading.Event(), threading.Event()

    def slow_check(consumer, owned, now):
        inside.set()
        may_return.wait(30)
        return real_check(consumer, owned, now)

    last = records[-1]
    request = {"user_id": str(last["user_id"]), "user_session": str(last["user_session"]), "product_id": "p-check",
               "event_type": "view", "price": 3.0}
    try:
        broker.maybe_check = slow_check
        assert inside.wait(10)
        status, answer = post(served.port, "/score/whatif", request)
        assert status == 200 and answer["recorded"] is False, answer
        assert not may_return.is_set()  # answered while the loop still waited for the broker
    finally:
        may_return.set()
        broker.maybe_check = real_check
        served.stop()
