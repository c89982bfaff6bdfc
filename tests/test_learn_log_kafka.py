"""`--learning shared` on the real broker: 4 partitions, 2 workers, one of them killed -9
mid-stream and started again. Every partition's models end identical to a model that
applied the learn log without interruption, and the learn log holds every example the
partitions resolve exactly once (replays publish copies, which no model learns)."""

import signal
import subprocess

import msgspec
import pytest

from conftest import WORKER_ENV, free_port, worker_command
from helpers import checkpointed_engines, read_topic, scrape, send_records, send_unreadable, wait_for
from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.events import decode_event
from shopstream.generator import generate
from shopstream.shared_learning import CatalogEvents, Example, LearnOutbox, LogReplica
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.learn_log import decode, schema_of

pytestmark = pytest.mark.kafka
encode = msgspec.json.Encoder().encode


def resolved_labels(kafka: str, topic: str) -> dict:
    """What an uninterrupted run resolves: {(partition, seq): label}, one engine per partition."""
    engines: dict = {}
    out = {}
    for record in read_topic(kafka, topic):
        engine = engines.get(record.partition)
        if engine is None:
            engine = engines[record.partition] = Engine.fresh("logreg", "shop")
            engine.learn_sink = LearnOutbox(record.partition)
        engine.process(decode_event(record.value), record.offset)
        for example in engine.learn_sink.drain():
            out[(example.source, example.seq)] = example.y
    return out


def test_shared_learning_4_partitions_2_workers_kill_9(kafka, new_topic, tmp_path):
    topic, learn_topic = new_topic(4), new_topic(1, "-learn")
    group = f"g-{topic}"
    schema = schema_of(EngineConfig(features="shop"))
    records = list(generate(40_000, seed=131))
    send_records(kafka, topic, records)
    checkpoints = tmp_path / "ckpt"
    command = worker_command(kafka, topic, checkpoints, "--learning", "shared", "--learn-topic", learn_topic,
                             "--until-idle", "8", "--checkpoint-every", "4000", "--checkpoint-seconds", "20",
                             "--metrics-port", "-1")
    port, other_port = free_port(), free_port()
    victim_log = tmp_path / "victim.log"
    victim = subprocess.Popen(command[:-1] + [str(port)], env=WORKER_ENV, stderr=victim_log.open("w"))
    other_log = tmp_path / "other.log"
    other = subprocess.Popen(command[:-1] + [str(other_port)], env=WORKER_ENV, stderr=other_log.open("w"))

    def victim_published_past_its_checkpoint() -> bool:
        """The group is settled (two partitions each: no rebalance can move a partition between this
        check and the kill) and the victim published 100+ examples of a partition it owns past that
        partition's checkpoint: a restart must publish them again."""
        assert victim.poll() is None, f"the victim exited: {victim_log.read_text()[-2000:]}"
        assert other.poll() is None, f"the other worker exited: {other_log.read_text()[-2000:]}"
        metrics = scrape(port)
        if ("shopstream_learn_log_published_total", ()) not in metrics:
            return False  # not our worker's metrics (yet)
        if metrics.get(("shopstream_assigned_partitions", ())) != 2 or \
                scrape(other_port).get(("shopstream_assigned_partitions", ())) != 2:
            return False  # the group is still forming
        owned = {int(dict(labels)["partition"]) for (name, labels) in metrics if name == "shopstream_next_offset"}
        saved = {p: s.engine.learn_sink.seq for (_, p), s in DirectoryCheckpointStore(checkpoints).load_all().items()
                 if s.engine.learn_sink is not None}
        newest: dict = {}
        for record in read_topic(kafka, learn_topic, timeout=10):
            example = decode(record.value, group, topic, schema)
            if isinstance(example, Example):
                newest[example.source] = max(newest.get(example.source, 0), example.seq)
        return any(newest.get(p, 0) - saved.get(p, 0) >= 100 for p in owned)

    try:
        wait_for(victim_published_past_its_checkpoint, 300, "the victim publishing past a checkpoint")
    except TimeoutError:
        victim.kill(), other.kill()
        raise
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    at_kill = {p: e.counts["consumed"] for p, e in checkpointed_engines(checkpoints).items()}
    assert sum(at_kill.values()) < len(records), "the kill did not land mid-stream"
    print(f"\nevents consumed by the checkpoints at the kill: {at_kill}")
    restarted = subprocess.run(command, env=WORKER_ENV, capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert other.wait(timeout=600) == 0, other_log.read_text()[-2000:]

    # The learn log: every example the partitions resolve, each at least once, under one number
    # with one label. (Its features may differ between copies: a replay sees shop-wide tables
    # that took in more of the other partitions' events meanwhile. A model learns the first copy.)
    log = [(r.offset, decode(r.value, group, topic, schema)) for r in read_topic(kafka, learn_topic)]
    examples = [e for _, e in log if isinstance(e, Example)]
    expected = resolved_labels(kafka, topic)
    published: dict = {}
    for example in examples:
        label = published.setdefault((example.source, example.seq), example.y)
        assert label == example.y, "a replay published another label under the same number"
    assert published == expected, "an example lost, or one that an uninterrupted run does not resolve"
    copies = len(examples) - len(published)
    assert copies > 0, "the killed worker had published nothing past its checkpoints: no replay was tested"
    assert any(isinstance(e, CatalogEvents) for _, e in log)

    # The uninterrupted model: a fresh replica applying the whole log in its order.
    reference, reference_replica = Engine.fresh("logreg", "shop"), LogReplica()
    for offset, example in log:
        reference_replica.apply(reference, offset, example)
    assert reference_replica.learned == len(expected) and reference_replica.duplicates == copies

    states = DirectoryCheckpointStore(checkpoints).load_all()
    probes = [reference.features.transform(decode_event(encode(r))) for r in records[-300:]]
    sizes: dict = {}
    for record in read_topic(kafka, topic):
        sizes[record.partition] = sizes.get(record.partition, 0) + 1
    print(f"\nshared learning: {len(records)} events, {len(expected)} examples, {copies} copies republished "
          f"after the kill, learn log {len(log)} records ({len(log) - len(examples)} of catalog events)")
    assert sorted(p for _, p in states) == [0, 1, 2, 3]
    for (_, partition), state in sorted(states.items()):
        engine, replica = state.engine, state.learn_log
        assert engine.counts["consumed"] == sizes[partition], "an event skipped or consumed twice"
        behind = replica.next_offset
        for offset, example in log[behind:]:  # a worker stops on idle events, maybe before the log's last records
            replica.apply(engine, offset, example)
        print(f"  partition {partition}: consumed {engine.counts['consumed']}, resolved {engine.counts['resolved']}, "
              f"log position at its checkpoint {behind}/{len(log)}, learned {replica.learned}, "
              f"duplicates skipped {replica.duplicates}")
        assert replica.learned == len(expected), "an example learned twice or never"
        assert replica.duplicates == copies
        assert engine.champion_slot.model["LogisticRegression"].weights == \
            reference.champion_slot.model["LogisticRegression"].weights
        assert [engine.champion_slot.model.predict_proba_one(x) for x in probes] == \
            [reference.champion_slot.model.predict_proba_one(x) for x in probes]


def shared_worker(kafka: str, topic: str, learn_topic: str, tmp_path):
    """An in-process worker with `--learning shared` that stops once idle for 3 s."""
    from prometheus_client import CollectorRegistry

    from stream.settings import WorkerSettings
    from stream.worker import Worker

    settings = WorkerSettings.from_options(bootstrap_servers=kafka, topic=topic, group=f"g-{topic}",
                                           predictions_topic=f"{topic}-predictions", dead_letter_topic=f"{topic}-dlq",
                                           checkpoints=str(tmp_path / "ckpt"), until_idle=3.0, metrics_port=-1,
                                           session_timeout_ms=6000, learning="shared", learn_topic=learn_topic)
    return Worker(settings, CollectorRegistry())


def test_a_learn_topic_made_with_several_partitions_still_carries_every_example(kafka, new_topic, tmp_path, caplog):
    """The learn log is read from partition 0 (one order for the group). Publishing by key spread
    the records of a learn topic made with more partitions (by hand, or by a topic template) over
    all of them, and every record off partition 0 was never learned, silently. Now every record
    goes to partition 0, and the worker says the others stay unused."""
    topic, learn_topic = new_topic(2), new_topic(3, "-learn")
    send_records(kafka, topic, list(generate(3000, seed=101)))
    worker = shared_worker(kafka, topic, learn_topic, tmp_path)
    settings = worker.settings
    with caplog.at_level("WARNING", logger="stream.learn_log"):
        assert worker.run() == 0
    records = read_topic(kafka, learn_topic, timeout=10)
    sources = {decode(r.value, f"g-{topic}", topic, schema_of(EngineConfig(features="shop"))).source for r in records}
    assert records and sources == {0, 1}, "both partitions published"
    assert {r.partition for r in records} == {0}, "every learn record on the partition the log is read from"
    assert any("has 3 partitions: the learn log uses partition 0 only" in r.getMessage() for r in caplog.records)
    saved = DirectoryCheckpointStore(settings.checkpoints.directory).load_all()
    assert {key[1]: state.learn_log.next_offset for key, state in saved.items()} == {0: len(records), 1: len(records)}


def test_a_learn_log_batch_no_client_can_read_is_passed_over_and_counted(kafka, new_topic, tmp_path):
    """Every worker of a group reads the learn topic: one batch kafka-python cannot parse stopped them all,
    at every restart. Now its records are passed over, counted as refused (`unreadable`), and the rest of
    the log is learned."""
    from kafka import KafkaConsumer, TopicPartition

    topic, learn_topic = new_topic(1), new_topic(1, "-learn")
    assert send_unreadable(kafka, learn_topic) == 0
    send_records(kafka, topic, list(generate(3000, seed=102)))
    worker = shared_worker(kafka, topic, learn_topic, tmp_path)
    settings = worker.settings
    assert worker.run() == 0
    assert worker.learn_log.refused == {"unreadable": 1}
    ends = KafkaConsumer(bootstrap_servers=kafka)
    end = ends.end_offsets([TopicPartition(learn_topic, 0)])[TopicPartition(learn_topic, 0)]
    ends.close()
    [state] = DirectoryCheckpointStore(settings.checkpoints.directory).load_all().values()
    assert end > 1 and state.learn_log.next_offset == end   # past the bad batch, and through everything after it
    assert state.learn_log.learned + state.learn_log.duplicates > 0
