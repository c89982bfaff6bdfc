"""Workers on the real Kafka broker: equality with River, exactly-once learning across
rebalances and kill -9, dead letters, and the metrics endpoint."""

import re
import signal
import subprocess
import time
import urllib.request

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import CollectorRegistry
from river import datasets, evaluate, metrics

from conftest import WORKER_ENV, LoggedProcess, free_port, worker_command
from helpers import (Scraper, wait_for, assert_same_engine, checkpointed_engines, read_predictions, read_topic,
                     reference_engines, send, send_records, send_unreadable)
from shopstream.events import decode_event
from shopstream.generator import generate
from shopstream.models import build_model
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.settings import WorkerSettings
from stream.worker import Worker

pytestmark = pytest.mark.kafka
encode = msgspec.json.Encoder().encode


def run_in_process(kafka, topic, tmp_path, **options) -> dict:
    """Run a worker until the topic is idle; return its final states by partition."""
    settings = WorkerSettings.from_options(bootstrap_servers=kafka, topic=topic, group=f"g-{topic}",
                              predictions_topic=f"{topic}-predictions", dead_letter_topic=f"{topic}-dlq",
                              checkpoints=str(tmp_path / "ckpt"), until_idle=3.0, metrics_port=-1,
                              session_timeout_ms=6000, **options)
    worker = Worker(settings, CollectorRegistry())
    worker.run()
    return DirectoryCheckpointStore(settings.checkpoints.directory).load_all()


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_labelled_stream_equals_river_progressive_val_score(kafka, new_topic, tmp_path, client):
    topic = new_topic(1)
    dataset = datasets.Phishing()
    rows = [{"event_id": str(i), "event_time": 1.7e9 + i, "event_type": "view", "product_id": str(i),
             "user_id": "u", "user_session": "s", "features": x, "label": y} for i, (x, y) in enumerate(dataset)]
    send(kafka, topic, ((b"u", encode(row)) for row in rows))

    [state] = run_in_process(kafka, topic, tmp_path, features="raw", model="logreg", metric_window=100,
                             kafka_client=client).values()
    ours = state.engine.champion_slot.scores.cumulative.values()
    for name, metric in [("accuracy", metrics.Accuracy), ("precision", metrics.Precision),
                         ("recall", metrics.Recall), ("f1", metrics.F1), ("roc_auc", metrics.ROCAUC),
                         ("log_loss", metrics.LogLoss)]:
        assert ours[name] == evaluate.progressive_val_score(dataset, build_model("logreg"), metric()).get(), name

    published = read_predictions(kafka, f"{topic}-predictions", expected=len(rows))
    scores = [p["score"] for p in published]
    river_scores = [step["Prediction"][True] for step in evaluate.iter_progressive_val_score(
        dataset, build_model("logreg"), metrics.ROCAUC(), step=1, yield_predictions=True)]
    assert scores == river_scores
    assert state.next_offset == len(rows) and state.engine.counts["learned"] == len(rows)


def test_malformed_messages_go_to_dead_letters_and_change_nothing_else(kafka, new_topic, tmp_path):
    topic = new_topic(1)
    good = list(generate(3000, seed=21))
    bad = [
        b"", b"\x00\x01\x02garbage", b"{\"event_time\": 1", b"[1,2,3]", b"null", b"\xff\xfe\xfd",
        encode({**good[0], "event_type": "teleport"}), encode({**good[0], "price": -3}),
        encode({**good[0], "event_time": "yesterday"}), encode({**good[0], "user_id": None}),
        b'{"a":' * 5000, encode({**good[0], "brand": "x" * 100_000}),
        encode({**good[0], "features": {"f": [1, 2]}}), encode({**good[0], "event_time": 1e15}),
        None,
    ]
    messages, n_bad = [], 0
    for i, record in enumerate(good):
        messages.append((str(record["user_id"]).encode(), encode(record)))
        if i % 200 == 100:
            messages.append((None if n_bad % 2 else b"k", bad[n_bad % len(bad)]))
            n_bad += 1
    send(kafka, topic, messages)

    [state] = run_in_process(kafka, topic, tmp_path).values()
    assert state.dead_lettered == n_bad
    dead = read_topic(kafka, f"{topic}-dlq", expected=n_bad)
    assert len(dead) == n_bad
    for letter in dead:
        headers = dict(letter.headers)
        assert headers["shopstream.reason"].startswith(b"invalid event: ")
        assert headers["shopstream.source.topic"] == topic.encode()
        source_offset = int(headers["shopstream.source.offset"])
        original = messages[source_offset][1]
        # byte for byte; a null value stays null unless the key is null too (Kafka needs one)
        assert letter.value == (b"" if original is None and letter.key is None else original)

    # The same worker on the good events alone ends in exactly the same state.
    clean_topic = new_topic(1)
    send_records(kafka, clean_topic, good)
    [clean_state] = run_in_process(kafka, clean_topic, tmp_path / "clean").values()
    probes = [clean_state.engine.features.transform(decode_event(encode(r))) for r in good[-100:]]
    assert_same_engine(state.engine, clean_state.engine, probes)




@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_second_worker_joining_mid_stream_learns_every_event_exactly_once(kafka, new_topic, tmp_path, client):
    topic = new_topic(4)
    records = list(generate(60_000, seed=31))
    send_records(kafka, topic, records)
    checkpoints = tmp_path / "ckpt"
    common = ["--until-idle", "8", "--metrics-port", "-1", "--checkpoint-every", "2000", "--kafka-client", client]
    first = LoggedProcess(worker_command(kafka, topic, checkpoints, *common), tmp_path / "first.log", WORKER_ENV)
    wait_for(lambda: any(checkpoints.glob("*.ckpt")), 60, "first checkpoint")
    second = LoggedProcess(worker_command(kafka, topic, checkpoints, *common), tmp_path / "second.log", WORKER_ENV)
    first_log = first.finish(timeout=300)
    second_log = second.finish(timeout=300)
    assert first.proc.returncode == 0 and second.proc.returncode == 0, first_log[-2000:] + second_log[-2000:]
    assert "revoked" in first_log and "assigned partition" in second_log, "no rebalance happened"
    # The joiner resumed every partition it got from the first worker's checkpoints, none afresh
    # (each line reads "assigned partition N: <checkpoint|fresh|artifact:...>, next offset K").
    resumed = re.findall(r"assigned partition (\d+): (\S+), next offset (\d+)", second_log)
    assert resumed and all(origin == "checkpoint" for _, origin, _ in resumed), resumed or second_log[-2000:]

    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(checkpoints)
    assert sorted(actual) == sorted(expected) == [0, 1, 2, 3]
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-200:]]
    for partition in expected:
        assert actual[partition].counts["learned"] == expected[partition].counts["resolved"] > 0
        assert_same_engine(actual[partition], expected[partition], probes)


@pytest.mark.parametrize("store,client", [("dir", "kafka-python"), ("kafka", "kafka-python"), ("dir", "confluent")])
def test_kill_9_and_restart_ends_identical_to_an_uninterrupted_run(kafka, new_topic, tmp_path, store, client):
    topic = new_topic(2)
    records = list(generate(60_000, seed=41))
    send_records(kafka, topic, records)
    checkpoints = tmp_path / "ckpt"
    where = {"checkpoints": checkpoints} if store == "dir" else {"kafka": kafka, "checkpoint_topic": f"{topic}-ckpt",
                                                                   "group": f"g-{topic}"}
    # The Kafka store's run writes every periodic checkpoint from a forked copy; the directory
    # store's in the loop (auto, on a state this small): kill -9 may hit either mid-write.
    common = ["--until-idle", "8", "--checkpoint-every", "1500",
              "--checkpoint-store", store, "--checkpoint-topic", f"{topic}-ckpt",
              "--checkpoint-background", "on" if store == "kafka" else "auto", "--kafka-client", client]
    with Scraper() as scraper:  # both workers' /metrics scraped without pause: scrapes must change nothing
        victim = subprocess.Popen(worker_command(kafka, topic, checkpoints, *common, "--metrics-port",
                                                 str(scraper.add(free_port()))),
                                  env=WORKER_ENV, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(checkpointed_engines(**where)) == 2, 120, "checkpoints of both partitions")
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        at_kill = {p: e.counts["consumed"] for p, e in checkpointed_engines(**where).items()}
        assert 0 < sum(at_kill.values()) < len(records), "the kill did not land mid-stream"

        survivor = subprocess.run(worker_command(kafka, topic, checkpoints, *common, "--metrics-port",
                                                 str(scraper.add(free_port()))),
                                  env=WORKER_ENV, capture_output=True, text=True, timeout=300)
    print(f"\n{scraper.scrapes} scrapes during the run")
    assert scraper.scrapes > 10  # scraped throughout (hundreds to thousands; fewer on a loaded machine)
    assert survivor.returncode == 0, survivor.stderr[-2000:]
    assert "checkpoint, next offset" in survivor.stderr

    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(**where)
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-200:]]
    for partition in expected:
        assert_same_engine(actual[partition], expected[partition], probes)
    if store == "kafka":
        assert not list(checkpoints.glob("*.ckpt"))


def test_metrics_endpoint_serves_real_values(kafka, new_topic, tmp_path):
    topic = new_topic(2)
    send_records(kafka, topic, generate(20_000, seed=51))
    port = free_port()
    worker = LoggedProcess(worker_command(kafka, topic, tmp_path / "ckpt", "--metrics-port", str(port),
                                          "--checkpoint-seconds", "1"), tmp_path / "worker.log", WORKER_ENV)
    url = f"http://127.0.0.1:{port}"

    def scrape():
        try:
            return urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
        except OSError:
            return ""

    def learned_all():
        text = scrape()
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith('shopstream_events_total{') and 'outcome="consumed"' in line)
        return total >= 20_000

    try:
        wait_for(learned_all, 120, "worker consumed every event")
        text = scrape()
        assert urllib.request.urlopen(url + "/healthz").status == 200
        assert urllib.request.urlopen(url + "/readyz").status == 200
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        log = worker.finish(timeout=60)
    assert worker.proc.returncode == 0, log[-2000:]
    samples = {(sample.name, frozenset(sample.labels.items())): sample.value
               for family in text_string_to_metric_families(text) for sample in family.samples}

    def value(name, **labels):
        return samples[(name, frozenset(labels.items()))]

    for partition in ("0", "1"):
        labels = {"model": "logreg", "partition": partition}
        slot = {**labels, "role": "champion"}
        for metric in ("accuracy", "recall", "f1", "precision", "roc_auc", "log_loss"):
            assert (f"shopstream_rolling_{metric}", frozenset(slot.items())) in samples
        assert 0.5 < value("shopstream_rolling_accuracy", **slot) < 1.0
        assert 0.5 < value("shopstream_rolling_roc_auc", **slot) < 1.0
        assert value("shopstream_events_total", outcome="learned", **labels) > 1000
        cells = [value("shopstream_confusion_total", cell=c, **slot) for c in ("tp", "fp", "tn", "fn")]
        assert sum(cells) == value("shopstream_events_total", outcome="resolved", **labels)
        assert value("shopstream_consumer_lag", partition=partition) == 0
        assert value("shopstream_checkpoint_age_seconds", partition=partition) < 30
        assert value("shopstream_model_info", version="fresh", **slot) == 1
    assert value("shopstream_process_seconds_count") > 0
    assert value("shopstream_assigned_partitions") == 2
    assert "signal 15: checkpointing" in log
    assert len(list((tmp_path / "ckpt").glob("*.ckpt"))) == 2


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_partitions_added_to_the_events_topic_are_consumed_within_a_minute_and_reported(kafka, new_topic, tmp_path,
                                                                                       kafka_client):
    """The topic grows from 2 to 4 partitions under a running worker: the new partitions' events
    are consumed within about the consumers' metadata refresh (30 s; Kafka's default, 5 min,
    left them unread that long), the worker warns once with the share of keys moved, and
    `shopstream_topic_partitions` says 4."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewPartitions

    from helpers import scrape

    topic = new_topic(2)
    records = list(generate(3000, seed=83))
    send_records(kafka, topic, records[:1500])
    port = free_port()
    command = worker_command(kafka, topic, tmp_path / "ckpt", "--metrics-port", str(port), "--kafka-client",
                             kafka_client)
    worker = LoggedProcess(command, tmp_path / "worker.log", WORKER_ENV)

    def consumed() -> dict:
        return {dict(labels)["partition"]: value for (name, labels), value in scrape(port).items()
                if name == "shopstream_events_total" and ("outcome", "consumed") in labels}

    try:
        wait_for(lambda: sum(consumed().values()) == 1500, 120, "the first 1,500 events consumed")
        assert scrape(port)[("shopstream_topic_partitions", ())] == 2
        admin = KafkaAdminClient(bootstrap_servers=kafka)
        try:
            admin.create_partitions({topic: NewPartitions(4)})
        finally:
            admin.close()
        grown = time.monotonic()
        send_records(kafka, topic, records[1500:])   # keyed by user: some now go to partitions 2 and 3
        wait_for(lambda: sum(consumed().values()) == 3000, 120, "every event consumed, the new partitions' too")
        seconds = time.monotonic() - grown
        by_partition = consumed()
        assert set(by_partition) == {"0", "1", "2", "3"} and by_partition["2"] > 0 and by_partition["3"] > 0
        assert seconds < 60, f"the new partitions were consumed {seconds:.0f} s after they were added"
        assert scrape(port)[("shopstream_topic_partitions", ())] == 4
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        stderr = worker.finish(timeout=60)
    warnings = [line for line in stderr.splitlines() if "now has 4 partitions" in line]
    assert len(warnings) == 1 and "(2 before): about 50% of keys now map to another partition" in warnings[0], \
        stderr[-3000:]


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_a_partition_resumed_past_the_log_says_what_was_never_read_and_a_recreated_topic_is_read(
        kafka, new_topic, tmp_path, kafka_client, caplog):
    """A worker stopped while the log moved on: records deleted before the group read them (as
    retention does to a worker stopped too long) are counted and logged, not passed over in
    silence; and a topic deleted and made again (its offsets start at 0 below the checkpoint's)
    is read from its start, not skipped as "already in the restored state"."""
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import NewTopic

    topic = new_topic(1)
    records = list(generate(450, seed=89))
    settings = WorkerSettings.from_options(bootstrap_servers=kafka, topic=topic, group=f"g-{topic}",
                                           predictions_topic=f"{topic}-predictions", dead_letter_topic=f"{topic}-dlq",
                                           checkpoints=str(tmp_path / "ckpt"), until_idle=3.0, metrics_port=-1,
                                           session_timeout_ms=6000, kafka_client=kafka_client)

    def run() -> Worker:
        worker = Worker(settings, CollectorRegistry())
        assert worker.run() == 0
        return worker

    def saved_offset() -> int:
        return DirectoryCheckpointStore(settings.checkpoints.directory).load_all()[(topic, 0)].next_offset

    send_records(kafka, topic, records[:200])
    assert run().handled == 200 and saved_offset() == 200
    send_records(kafka, topic, records[200:400])
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        admin.delete_records({TopicPartition(topic, 0): 300})   # 200..299: gone before the worker is back
        with caplog.at_level("WARNING", logger="stream.worker"):
            second = run()
        assert second.handled == 100 and saved_offset() == 400
        assert second.offsets_gone == {0: 100}
        assert any("offsets 200 to 299 are no longer in the log" in r.getMessage() and "100 record(s) never read"
                   in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert second.registry.get_sample_value("shopstream_offsets_gone_total", {"partition": "0"}) == 100

        admin.delete_topics([topic])
        wait_for(lambda: topic not in admin.list_topics(), 60, "the topic deleted")
        made = False

        def make_again() -> bool:
            nonlocal made
            if not made:
                try:
                    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"retention.ms": "-1"})])
                    made = True
                except Exception:   # the deletion is still being finished: try again
                    return False
            [described] = admin.describe_topics([topic])
            return described["error_code"] == 0 and all(p["leader_id"] >= 0 for p in described["partitions"])
        wait_for(make_again, 60, "the topic made again")
    finally:
        admin.close()
    send_records(kafka, topic, records[400:450])
    caplog.clear()
    with caplog.at_level("ERROR", logger="stream.worker"):
        third = run()
    assert third.handled == 50 and saved_offset() == 50, "the new log's records were read, none skipped"
    assert any("was deleted and created again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_events_sent_without_a_key_are_counted_and_warned_about(kafka, new_topic, tmp_path, kafka_client, caplog):
    """A shop's producer that sends no key spreads a session's events over the partitions, and
    purchases then never meet their predictions: the worker samples the keys it reads and says so."""
    topic = new_topic(2)
    records = [msgspec.json.encode(r) for r in generate(640, seed=97)]
    send(kafka, topic, ((None, value) for value in records[:320]), partition=0)
    send(kafka, topic, ((None, value) for value in records[320:]), partition=1)
    settings = WorkerSettings.from_options(bootstrap_servers=kafka, topic=topic, group=f"g-{topic}",
                                           predictions_topic=f"{topic}-predictions", dead_letter_topic=f"{topic}-dlq",
                                           checkpoints=str(tmp_path / "ckpt"), until_idle=3.0, metrics_port=-1,
                                           session_timeout_ms=6000, kafka_client=kafka_client)
    worker = Worker(settings, CollectorRegistry())
    with caplog.at_level("WARNING", logger="stream.worker"):
        assert worker.run() == 0
    assert worker.handled == 640
    assert set(worker.record_keys) == {(0, "none"), (1, "none")} and sum(worker.record_keys.values()) == 40
    said = [r.getMessage() for r in caplog.records if "events arrive without a key" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def test_shopstream_topics_says_when_an_existing_topic_has_other_partitions_and_grows_it_on_request(kafka, capsys):
    """`shopstream topics` with more partitions than an existing topic has: it used to say "none
    (all existed)" and change nothing (a SHOPSTREAM_PARTITIONS raised before a compose start did
    nothing, silently); now it says so, and --grow-partitions adds them."""
    import uuid

    from kafka import KafkaAdminClient

    from stream.settings import TopicsSettings
    from stream.topics import topics_command

    name = f"t-grow-{uuid.uuid4().hex[:8]}"
    base = dict(bootstrap_servers=kafka, topic=name, predictions_topic=f"{name}-predictions",
                dead_letter_topic=f"{name}-dlq", control_topic=f"{name}-control")
    admin = KafkaAdminClient(bootstrap_servers=kafka)

    def partitions() -> dict:
        return {d["name"]: len(d["partitions"]) for d in admin.describe_topics([name, f"{name}-predictions"])}

    try:
        assert topics_command(TopicsSettings.from_options(**base, partitions=2)) == 0
        assert partitions() == {name: 2, f"{name}-predictions": 2}
        capsys.readouterr()
        assert topics_command(TopicsSettings.from_options(**base, partitions=4)) == 0
        said = capsys.readouterr().out
        assert partitions() == {name: 2, f"{name}-predictions": 2}
        assert f"{name} has 2 partitions, not the 4 asked: an existing topic is left as it is. --grow-partitions " \
               "adds them (about 50% of keys" in said, said
        assert topics_command(TopicsSettings.from_options(**base, partitions=4, grow_partitions=True)) == 0
        said = capsys.readouterr().out
        assert partitions() == {name: 4, f"{name}-predictions": 4}
        assert f"{name}: 2 -> 4 partitions; about 50% of keys now map to another partition" in said, said
        assert topics_command(TopicsSettings.from_options(**base, partitions=3)) == 0
        assert "has 4 partitions, more than the 3 asked: Kafka cannot remove partitions" in capsys.readouterr().out
    finally:
        admin.delete_topics([t for t in admin.list_topics() if t.startswith(name)])
        admin.close()


def test_an_unreadable_record_in_the_checkpoint_topic_stops_no_worker(kafka, new_topic, tmp_path):
    """Anyone who may write to the Kafka store's manifest topic could put there a record no client can
    read. Before: the restart failed on the first partition (an error --force-fresh-start does not pass)
    and hung on the second, inside the rebalance callback. Now the batch is passed over; each partition
    whose newest checkpoint it might have held is held against the committed offset, which agrees, and
    the run ends as an uninterrupted one."""
    topic = new_topic(2)
    records = list(generate(8_000, seed=43))
    send_records(kafka, topic, records[:5_000])
    where = {"kafka": kafka, "checkpoint_topic": f"{topic}-ckpt", "group": f"g-{topic}"}
    command = worker_command(kafka, topic, tmp_path / "ckpt", "--until-idle", "3", "--checkpoint-store", "kafka",
                             "--checkpoint-topic", f"{topic}-ckpt")
    first = subprocess.run(command, env=WORKER_ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    hidden = send_unreadable(kafka, f"{topic}-ckpt", key=f"g-{topic}/{topic}-0".encode())
    send_records(kafka, topic, records[5_000:])
    second = subprocess.run(command, env=WORKER_ENV, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"offsets {hidden}..{hidden} of {topic}-ckpt cannot be read" in second.stderr
    assert "starting from its checkpoint at offset" in second.stderr   # partition 0, held to the commit
    assert len(re.findall(r"assigned partition \d+: checkpoint", second.stderr)) == 2
    expected = reference_engines(kafka, topic)
    actual = checkpointed_engines(**where)
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-200:]]
    assert sorted(actual) == [0, 1]
    for partition in expected:
        assert_same_engine(actual[partition], expected[partition], probes)
