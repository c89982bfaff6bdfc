"""The worker's parts with in-memory clients (tests/fakes.py): milliseconds, no broker.

Checkpoint ordering (outputs, then state, then offsets), pause and resume on a failing
store or unacknowledged outputs, the broker watch, the consumer rebuild, the idle clock,
and a crash mid-stream resumed exactly from the checkpoint. tests/test_worker_kafka.py and
the fault tests show the same on the real broker."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from kafka.errors import KafkaTimeoutError
from fakes import ABORT, Aborted, FakeClients, FakeConsumer
from stream.broker_watch import BrokerWatch
from stream.checkpointing.format import CheckpointError
from stream.membership import GroupMembership
from stream.settings import WorkerSettings
from stream.worker import Worker

T0 = 1.7e9


def events(n: int, partition: int = 0, start: int = 0) -> list[bytes]:
    """Labelled raw-feature events: each is predicted, scored and learned at once."""
    return [json.dumps({"event_time": T0 + i, "event_type": "view", "product_id": f"p{i % 7}",
                        "user_id": "u", "user_session": f"s{partition}", "event_id": f"{partition}-{i}",
                        "features": {"x": (i % 10) / 10}, "label": i % 3 == 0}).encode()
            for i in range(start, start + n)]


def make_worker(tmp_path, partitions, **options):
    """A worker on in-memory clients; checkpoints in the loop unless `checkpoint_background="on"`."""
    options.setdefault("checkpoint_background", "off")
    settings = WorkerSettings.from_options(topic="events", group="g", features="raw", control_topic="",
                                           metrics_port=-1, until_idle=0.01, checkpoints=str(tmp_path / "ckpt"),
                                           **options)
    clients = FakeClients(settings, partitions, tmp_path / "ckpt")
    return Worker(settings, CollectorRegistry(), clients), clients


def test_a_checkpoint_flushes_outputs_then_saves_state_then_commits(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(250)}, checkpoint_every=100)
    assert worker.run() == 0
    steps = [c for c in clients.calls if c[0] in ("flush", "save", "commit")]
    # every 100 events (a poll hands 100 at a time), then the rest on close
    assert steps == [("flush", 100), ("save", 0, 100), ("commit", {0: 100}),
                     ("flush", 100), ("save", 0, 200), ("commit", {0: 200}),
                     ("flush", 50), ("save", 0, 250), ("commit", {0: 250})]
    assert len(clients.producers[0].sent) == 250
    assert clients.store.load("events", 0).next_offset == 250


def test_a_failing_store_pauses_the_partition_until_a_save_succeeds(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(300)}, checkpoint_every=100)
    worker.membership.subscribe()
    clients.store.broken = True
    consumer = worker.consumer
    tp = consumer.tp(0)
    batches = consumer.poll()
    for record in batches[tp]:
        worker.handle(worker.partitions[tp], record)
    worker.checkpoint([tp])
    assert tp in worker.blocked and consumer.paused() == {tp} and not worker.ready()
    assert not [c for c in clients.calls if c[0] == "commit"], "no offset may run ahead of a durable state"
    assert consumer.poll() == {}, "a paused partition reads nothing further"
    worker.checkpointer.retry(now=1e9)
    assert tp in worker.blocked and clients.calls[-1] == ("save_failed", 0)
    clients.store.broken = False
    worker.checkpointer.retry(now=1e9)  # within the retry interval: nothing
    assert tp in worker.blocked
    worker.checkpointer.retry(now=1e9 + 5)
    assert not worker.blocked and consumer.paused() == set()
    assert clients.calls[-3:] == [("save", 0, 100), ("resume", [0]), ("commit", {0: 100})]


@pytest.mark.parametrize("background", ["off", "auto"])
def test_a_state_that_cannot_be_pickled_pauses_its_partition_and_takes_nothing_else_down(tmp_path, background):
    """A checkpoint that fails other than by the disk (pickling raises: an object a bug left in the
    state) fails as a full disk does: counted, the partition paused, its last good checkpoint
    untouched, the worker alive (it stopped the worker, whose restart met the same record)."""
    worker, clients = make_worker(tmp_path, {0: events(300)}, checkpoint_every=100,
                                  checkpoint_background=background)
    worker.membership.subscribe()
    consumer = worker.consumer
    tp = consumer.tp(0)
    clients.store.writers_finish_at_once = True
    for bug in (None, {"kind": "a bug's", "lock": threading.Lock()}):
        for record in consumer.poll()[tp]:
            worker.handle(worker.partitions[tp], record)
        if bug is not None:
            worker.partitions[tp].engine.history.append(bug)
        worker._maybe_checkpoint(tp)   # off: in the loop; auto: pickled in the loop, synced by a thread
        worker.checkpointer.poll()
    assert tp in worker.blocked and "cannot pickle" in worker.blocked[tp], worker.blocked
    assert consumer.paused() == {tp} and worker.checkpointer.failures._value.get() == 1
    assert clients.store.load("events", 0).next_offset == 100
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["events-0.ckpt"]
    # What it learned since is still counted unsaved: once the state pickles again, the retry saves it.
    assert worker.partitions[tp].events_since_checkpoint == 100
    worker.partitions[tp].engine.history.pop()
    worker.checkpointer.retry(now=1e9)
    worker.checkpointer.poll()
    assert not worker.blocked and consumer.paused() == set()
    assert clients.store.load("events", 0).next_offset == 200


def test_unacknowledged_outputs_hold_back_state_and_offsets(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(100), 1: events(100, 1)})
    worker.checkpointer.confirm_seconds = 0.01
    worker.membership.subscribe()
    consumer = worker.consumer
    for tp, records in consumer.poll().items():
        for record in records:
            worker.handle(worker.partitions[tp], record)
    clients.producers[0].fail_flush = True
    worker.checkpoint(list(worker.partitions))
    assert worker.outputs_blocked and set(worker.blocked) == set(worker.partitions)
    assert not [c for c in clients.calls if c[0] in ("save", "commit")]
    clients.producers[0].fail_flush = False
    worker.checkpoint(list(worker.blocked))
    assert not worker.outputs_blocked and not worker.blocked and consumer.paused() == set()
    assert [c[:2] for c in clients.calls if c[0] == "save"] == [("save", 0), ("save", 1)]


def test_a_crash_resumes_from_the_checkpoint_and_ends_where_an_uninterrupted_run_does(tmp_path):
    stream = events(500)
    crashing, _ = make_worker(tmp_path / "a", {0: stream[:320] + [ABORT] + stream[320:]}, checkpoint_every=100)
    with pytest.raises(Aborted):
        crashing.run()  # died at offset 320: the checkpoint at 300 holds, nothing after it
    resumed, clients = make_worker(tmp_path / "a", {0: stream[:320] + [b"{}"] + stream[320:]}, checkpoint_every=100)
    assert resumed.run() == 0
    uninterrupted, _ = make_worker(tmp_path / "b", {0: stream[:320] + [b"{}"] + stream[320:]})
    assert uninterrupted.run() == 0
    a = clients.store.load("events", 0)
    b = uninterrupted.store.load("events", 0)
    assert a.next_offset == b.next_offset == 501 and a.dead_lettered == b.dead_lettered == 1
    assert a.engine.counts == b.engine.counts
    assert a.engine.champion_slot.scores.cumulative.values() == b.engine.champion_slot.scores.cumulative.values()
    first_save = next(c for c in clients.calls if c[0] == "save")
    assert first_save == ("save", 0, 400), "the resumed worker started from offset 300"


def test_the_broker_watch_asks_on_its_own_connection_opened_at_the_first_check():
    """On the consumer's connection, end_offsets waits behind a fetch the broker holds open
    (about 450 ms on a quiet partition): the watch opens its own client, lazily, and closes it."""
    consumer = FakeConsumer("events", {0: [b"a"] * 5}, calls=[])
    asked, opened = [], []

    class Probe:
        closed = False

        def end_offsets(self, partitions, timeout_ms):
            asked.append(sorted(tp.partition for tp in partitions))
            return {tp: 7 for tp in partitions}

        def close(self):
            self.closed = True

    def open_probe():
        if len(opened) == 0:
            opened.append("refused")
            raise KafkaTimeoutError("no broker yet")
        opened.append(Probe())
        return opened[-1]

    watch = BrokerWatch("events", topic_partitions=[0], check_seconds=5, probe=open_probe)
    assert opened == [], "no I/O when built"
    assert not watch.check(consumer, owned=[]), "a probe that cannot open is a broker that does not answer"
    assert watch.check(consumer, owned=[]) and asked == [[0]] and watch.end_offsets[consumer.tp(0)] == 7
    assert watch.check(consumer, owned=[]) and len(opened) == 2, "opened once, then reused"
    assert consumer.calls == [], "the consumer's connection is never asked"
    watch.close()
    assert opened[1].closed


def test_the_broker_watch_tracks_answers_and_the_end_of_each_partition():
    consumer = FakeConsumer("events", {0: [b"a"] * 5, 1: [b"b"] * 3}, calls=[])
    watch = BrokerWatch("events", topic_partitions=[0, 1], check_seconds=5)
    watch.maybe_check(consumer, owned=[], now=100.0)
    assert watch.ok and consumer.calls == [("end_offsets", [0, 1])]
    watch.maybe_check(consumer, owned=[], now=102.0)   # not due yet
    assert len(consumer.calls) == 1
    tp0, tp1 = consumer.tp(0), consumer.tp(1)
    assert watch.caught_up(consumer, {tp0: 5, tp1: 3}) and not watch.caught_up(consumer, {tp0: 5, tp1: 2})
    consumer.broker_down = True
    assert not watch.caught_up(consumer, {tp0: 5, tp1: 3}), "no answer is never 'caught up'"
    assert not watch.ok and not watch.fresh(now=watch.seen)
    consumer.broker_down = False
    watch.maybe_check(consumer, owned=[tp1], now=106.0)
    assert watch.ok and consumer.calls[-1] == ("end_offsets", [1])


def test_a_join_past_the_deadline_rebuilds_the_consumer_only_while_the_broker_answers():
    consumers = []

    def new_consumer():
        if fail[0]:
            raise OSError("no broker")
        consumers.append(FakeConsumer("events", {0: []}, calls=[]))
        return consumers[-1]

    fail = [False]
    released = []
    membership = GroupMembership(new_consumer, "events", listener=None, rejoin_deadline=60,
                                 on_rebuild=lambda: released.append(True))
    membership.subscribe()
    started = membership.joining_since
    assert not membership.maybe_rebuild(started + 59, broker_up=True)
    assert not membership.maybe_rebuild(started + 600, broker_up=False), "an outage explains a slow join"
    fail[0] = True
    assert not membership.maybe_rebuild(started + 61, broker_up=True) and len(consumers) == 1
    fail[0] = False
    assert not membership.maybe_rebuild(membership.joining_since + 59, broker_up=True), "the clock restarted"
    assert membership.maybe_rebuild(membership.joining_since + 61, broker_up=True)
    assert len(consumers) == 2 and consumers[0].closed and membership.consumer is consumers[1]
    assert released == [True] and membership.rebuilds == 1
    membership.join_finished()
    assert not membership.maybe_rebuild(1e12, broker_up=True)


def test_until_idle_stops_only_once_every_partition_is_read_to_its_end(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(30), 1: events(20, 1)})
    worker.broker.check_seconds = 0.0
    assert worker.run() == 0
    saved = clients.store.load_all()
    assert {key[1]: state.next_offset for key, state in saved.items()} == {0: 30, 1: 20}
    assert worker.handled == 50


def test_with_a_signing_key_the_committed_offset_witnesses_the_newest_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPSTREAM_SIGNING_KEY", "k" * 32)
    worker, clients = make_worker(tmp_path, {0: events(150)}, checkpoint_every=100)
    assert worker.run() == 0
    consumer = FakeConsumer("events", {0: events(150)}, calls=[])
    tp = consumer.tp(0)
    restorer = worker.restorer
    state = restorer.restore(tp)
    assert (state.origin, state.next_offset) == ("checkpoint", 150)
    consumer.committed_offsets[tp] = 150
    restorer.witness(consumer, tp, state)  # agrees: no error
    consumer.committed_offsets[tp] = 151
    with pytest.raises(CheckpointError, match="checkpoint at offset 150 is older than the offset 151"):
        restorer.witness(consumer, tp, state)
    with pytest.raises(CheckpointError, match="no checkpoint, but group 'g' committed offset 151"):
        restorer.witness(consumer, tp, restorer.start_over(tp))
    monkeypatch.delenv("SHOPSTREAM_SIGNING_KEY")
    restorer.witness(consumer, tp, state)  # without a key, no claim is made


def test_a_partition_in_doubt_is_held_against_the_committed_offset_without_a_signing_key(tmp_path, monkeypatch):
    """A store that could not read a record that may have been the partition's newest checkpoint (a batch
    of the Kafka store's manifest topic): the start it gives is checked against the group's committed
    offset, signing key or not, and only for that partition."""
    monkeypatch.delenv("SHOPSTREAM_SIGNING_KEY", raising=False)
    worker, clients = make_worker(tmp_path, {0: events(150)}, checkpoint_every=100)
    assert worker.run() == 0
    consumer = FakeConsumer("events", {0: events(150)}, calls=[])
    tp = consumer.tp(0)
    restorer = worker.restorer
    unread = "offsets 7..7 of ckpt cannot be read, and no record of checkpoint g/events-0 is readable after them"
    monkeypatch.setattr(restorer.store, "doubt", lambda topic, partition: unread)
    consumer.committed_offsets[tp] = 151
    state = restorer.restore(tp)
    assert (state.origin, state.next_offset) == ("checkpoint", 150) and tp in restorer.doubted
    with pytest.raises(CheckpointError, match=f"older than the offset 151 .* committed after a newer one .{unread}: "
                                              "the newer one was among them.: refusing it"):
        restorer.witness(consumer, tp, state)
    assert tp not in restorer.doubted              # held once, by the poll after the assignment
    restorer.witness(consumer, tp, state)          # not in doubt, no key: no claim is made
    restorer.restore(tp)
    with pytest.raises(CheckpointError, match="no checkpoint, but group 'g' committed offset 151 .offsets 7..7"):
        restorer.witness(consumer, tp, restorer.start_over(tp))
    for committed in (150, None):                  # the group committed no further, or nothing
        consumer.committed_offsets[tp] = committed
        restorer.witness(consumer, tp, restorer.restore(tp))
    consumer.committed_offsets[tp] = None
    restorer.restore(tp)
    restorer.witness(consumer, tp, restorer.start_over(tp))   # nothing committed: a new start is right
    monkeypatch.setattr(restorer.store, "doubt", lambda topic, partition: None)
    restorer.restore(tp)
    assert tp not in restorer.doubted


def test_a_worker_refuses_to_start_a_partition_whose_checkpoint_was_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPSTREAM_SIGNING_KEY", "k" * 32)
    worker, clients = make_worker(tmp_path, {0: events(150)}, checkpoint_every=100)
    original_consumer = clients.consumer

    def consumer_that_remembers_commits():
        consumer = original_consumer()
        consumer.committed_offsets[consumer.tp(0)] = 150  # the group committed after a checkpoint
        return consumer

    clients.consumer = consumer_that_remembers_commits
    keyed = replace(worker.settings, signing_key=b"k" * 32)   # the key is a setting (the store's: the env's)
    worker = Worker(keyed, CollectorRegistry(), clients)  # no checkpoint in the store yet
    assert worker.run() == 2 and "no checkpoint, but group 'g' committed offset 150" in worker.fatal
    assert worker.handled == 0 and not [c for c in clients.calls if c[0] == "save"]


def test_a_poll_that_fails_while_the_broker_is_away_is_retried_not_fatal(tmp_path):
    from kafka.errors import KafkaConnectionError, UnsupportedVersionError

    worker, clients = make_worker(tmp_path, {0: events(40)})
    worker.membership.subscribe()
    worker.consumer.poll_errors = [KafkaConnectionError("111 ECONNREFUSED"), KafkaConnectionError("again")]
    assert worker.run() == 0 and worker.handled == 40
    worker, clients = make_worker(tmp_path / "other", {0: events(40)})
    worker.membership.subscribe()
    worker.consumer.poll_errors = [UnsupportedVersionError("not retriable")]
    with pytest.raises(UnsupportedVersionError):
        worker.run()  # a client that cannot work at all stops with its reason (one line from the CLI)


def handle_one_poll(worker, tp) -> None:
    for record in worker.consumer.poll()[tp]:
        worker.handle(worker.partitions[tp], record)


def test_a_background_checkpoint_lets_the_loop_go_on_and_commits_only_once_it_is_durable(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(300)}, checkpoint_background="on")
    worker.membership.subscribe()
    consumer, checkpointer = worker.consumer, worker.checkpointer
    tp = consumer.tp(0)
    handle_one_poll(worker, tp)
    checkpointer.save([tp], background=True)
    assert clients.calls[-2:] == [("flush", 100), ("begin_save", 0, 100)] and tp in checkpointer.pending
    handle_one_poll(worker, tp)        # the loop learns on while the copy is written
    assert not checkpointer.due(tp), "one checkpoint of a partition at a time"
    assert not [c for c in clients.calls if c[0] == "commit"], "nothing committed before the write is durable"
    checkpointer.settle([tp])
    assert clients.calls[-1] == ("commit", {0: 100}) and not checkpointer.pending
    assert clients.store.load("events", 0).next_offset == 100, "the checkpoint holds the state as it was forked"
    assert worker.partitions[tp].events_since_checkpoint == 100 and worker.partitions[tp].next_offset == 200


def test_a_background_checkpoint_that_fails_pauses_its_partition_and_loses_nothing(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(300)}, checkpoint_background="on")
    worker.membership.subscribe()
    consumer, checkpointer = worker.consumer, worker.checkpointer
    tp = consumer.tp(0)
    handle_one_poll(worker, tp)
    clients.store.broken = True
    checkpointer.save([tp], background=True)
    handle_one_poll(worker, tp)
    checkpointer.settle([tp])
    state = worker.partitions[tp]
    assert tp in worker.blocked and consumer.paused() == {tp} and "No space left" in worker.blocked[tp]
    assert state.events_since_checkpoint == 200, "what the failed checkpoint covered still counts as unsaved"
    assert clients.store.load("events", 0) is None and not [c for c in clients.calls if c[0] == "commit"]
    clients.store.broken = False
    checkpointer.retry(now=1e9)
    assert not worker.blocked and clients.calls[-1] == ("commit", {0: 200})
    assert clients.store.load("events", 0).next_offset == 200


def test_a_worker_with_background_checkpoints_ends_like_one_without(tmp_path):
    stream = events(2000)
    background, clients = make_worker(tmp_path / "bg", {0: stream}, checkpoint_every=300,
                                      checkpoint_background="on")
    clients.store.writers_finish_at_once = True  # as many forks on a slow machine as on a fast one
    background.checkpointer.fork_rest_factor = 0.0   # no rest after a copy: one every 300 events
    assert background.run() == 0
    begun = [c[2] for c in clients.calls if c[0] == "begin_save"]
    assert begun == [300, 600, 900, 1200, 1500, 1800], "one forked checkpoint every 300 events"
    ends = [c for c in clients.calls if c[0] in ("save", "commit")][-2:]
    assert ends == [("save", 0, 2000), ("commit", {0: 2000})], "the last one, on close, in the loop"
    in_loop, _ = make_worker(tmp_path / "loop", {0: stream}, checkpoint_every=300)
    assert in_loop.run() == 0
    a, b = clients.store.load("events", 0), in_loop.store.load("events", 0)
    assert a.next_offset == b.next_offset == 2000 and a.engine.counts == b.engine.counts
    assert a.engine.champion_slot.scores.cumulative.values() == b.engine.champion_slot.scores.cumulative.values()


def test_after_a_forked_copy_the_next_one_rests_nine_times_the_cpu_it_used(tmp_path):
    """Forked copies take CPU while they pickle: the next fork counted in events waits until
    FORK_REST_FACTOR x the last copy's CPU seconds have passed (checkpoint-seconds still applies).
    CPU, not duration: a copy slowed by its lower priority costs no more."""
    worker, clients = make_worker(tmp_path, {0: events(100)}, checkpoint_every=10, checkpoint_background="on",
                                  checkpoint_seconds=3600)
    worker.membership.subscribe()
    checkpointer, tp = worker.checkpointer, worker.consumer.tp(0)
    worker.consumer.poll(timeout_ms=0)   # the fake group assigns partition 0
    partition = worker.partitions[tp]
    clients.store.writers_finish_at_once = True
    partition.events_since_checkpoint = 10
    assert checkpointer.due(tp)
    checkpointer.periodic(tp)
    pending = checkpointer.pending[tp]
    assert pending.done() and pending.child_cpu_s > 0   # the child's own CPU, from its exit status
    pending.started -= 3600   # as if it had run an hour at its low priority: its duration must not count
    pending.child_cpu_s = 0.5   # ...only its CPU: as if it had used 0.5 s
    before = time.monotonic()
    checkpointer.poll()
    after = time.monotonic()
    assert tp not in checkpointer.pending and [c[0] for c in clients.calls].count("begin_save") == 1
    assert before + 9 * 0.5 <= checkpointer._rest_until[tp] <= after + 9 * 0.5
    partition.events_since_checkpoint = 10
    assert not checkpointer.due(tp)           # enough events, but the copy's rest is not over
    checkpointer._rest_until[tp] = time.monotonic() - 0.001
    assert checkpointer.due(tp)
    checkpointer._rest_until[tp] = time.monotonic() + 100
    assert not checkpointer.due(tp)
    partition.checkpointed_at, partition.age_origin = time.time() - 7200, None
    assert checkpointer.due(tp)               # ...but --checkpoint-seconds still applies through a rest
    checkpointer.release([tp])
    assert tp not in checkpointer._rest_until   # its next owner starts without a rest


def test_auto_pickles_in_the_loop_syncs_in_a_thread_and_forks_only_once_pickling_was_slow(tmp_path, monkeypatch):
    worker, clients = make_worker(tmp_path, {0: events(400)}, checkpoint_background="auto")
    worker.membership.subscribe()
    consumer, checkpointer = worker.consumer, worker.checkpointer
    tp = consumer.tp(0)

    def learn_and_checkpoint():
        handle_one_poll(worker, tp)
        checkpointer.periodic(tp)
        checkpointer.settle([tp])

    learn_and_checkpoint()
    assert [c[0] for c in clients.calls[-3:]] == ["flush", "begin_synced_save", "commit"], "a small state"
    assert clients.store.load("events", 0).next_offset == 100
    # A machine that makes the pickle slow in wall time (the loop waits for a core) costs it no CPU: no fork.
    import stream.checkpointing.stores as stores
    write_file = stores.write_file
    monkeypatch.setattr(stores, "write_file", lambda *args: (time.sleep(0.3), write_file(*args)))
    learn_and_checkpoint()
    assert [c[0] for c in clients.calls[-3:]] == ["flush", "begin_synced_save", "commit"]
    monkeypatch.undo()
    learn_and_checkpoint()
    assert clients.calls[-2][0] == "begin_synced_save"
    checkpointer.fork_above = 0.0   # as if pickling the last one had taken the loop long
    learn_and_checkpoint()
    assert [c[0] for c in clients.calls[-3:]] == ["flush", "begin_save", "commit"]
    assert clients.store.load("events", 0).next_offset == 400


def test_auto_forks_the_first_checkpoint_of_a_large_state_and_scales_a_measured_cost_with_the_state(
        tmp_path, monkeypatch):
    """A partition checkpointed rarely (a serving worker's --checkpoint-seconds 120) reached its first
    checkpoint with 1.3M events of state: pickled in the loop, it stopped the loop 8 s."""
    import stream.checkpointer as checkpointer_module

    worker, clients = make_worker(tmp_path, {0: events(400)}, checkpoint_background="auto")
    worker.membership.subscribe()
    checkpointer, tp = worker.checkpointer, worker.consumer.tp(0)
    size = lambda: worker.partitions[tp].engine.state_size()   # noqa: E731
    handle_one_poll(worker, tp)
    assert size() > 100
    monkeypatch.setattr(checkpointer_module, "UNMEASURED_FORK_SIZE", size())
    checkpointer.periodic(tp)
    assert [c[0] for c in clients.calls[-2:]] == ["flush", "begin_save"], "never timed, large: forked"
    checkpointer.settle([tp])
    assert clients.store.load("events", 0).next_offset == 100
    cost, at = checkpointer._last_cost[tp]
    assert cost > 0 and at == size(), "the copy's CPU is the next choice's measure"

    monkeypatch.setattr(checkpointer_module, "SCALE_FROM_SIZE", 1)
    checkpointer._last_cost[tp] = (0.001, size())   # as if that copy had pickled it in 1 ms: small
    handle_one_poll(worker, tp)
    checkpointer.periodic(tp)
    checkpointer.settle([tp])
    assert clients.calls[-2][0] == "begin_synced_save", "a small state goes back to the loop"
    at = checkpointer._last_cost[tp][1]
    assert at == size()

    def as_if_measured(expected_now: float) -> None:   # the last one cost what scales to `expected_now`
        checkpointer._last_cost[tp] = (expected_now * at / size(), at)

    handle_one_poll(worker, tp)
    as_if_measured(checkpointer.fork_above * 0.99)
    checkpointer.periodic(tp)
    checkpointer.settle([tp])
    assert clients.calls[-2][0] == "begin_synced_save", "expected under fork_above: in the loop"
    handle_one_poll(worker, tp)
    at = checkpointer._last_cost[tp][1]
    as_if_measured(checkpointer.fork_above * 1.01)
    checkpointer.periodic(tp)
    assert [c[0] for c in clients.calls[-2:]] == ["flush", "begin_save"], "expected over fork_above: forked"
    checkpointer.settle([tp])
    assert clients.store.load("events", 0).next_offset == 400


def test_a_cost_measured_on_a_tiny_state_is_not_scaled_as_if_it_were_all_per_entry(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(200)}, checkpoint_background="auto")
    worker.membership.subscribe()
    checkpointer, tp = worker.checkpointer, worker.consumer.tp(0)
    handle_one_poll(worker, tp)
    checkpointer._last_cost[tp] = (0.15, 5)   # 0.15 s at 5 entries: the models and the acks, not the entries
    checkpointer.periodic(tp)
    checkpointer.settle([tp])
    assert clients.calls[-2][0] == "begin_synced_save"


@pytest.mark.parametrize("background", ["auto", "off"])
def test_after_a_checkpoint_in_the_loop_the_partition_runs_a_shell_of_its_engine_with_the_same_state(tmp_path,
                                                                                                  background):
    from test_model_state import _attributes_on_fast_path

    worker, clients = make_worker(tmp_path, {0: events(300)}, checkpoint_background=background)
    worker.membership.subscribe()
    tp = worker.consumer.tp(0)
    handle_one_poll(worker, tp)
    pickled = worker.partitions[tp].engine
    worker.checkpointer.periodic(tp)
    worker.checkpointer.settle([tp])
    engine = worker.partitions[tp].engine
    assert engine is not pickled and engine.counts is pickled.counts and engine.joiner is pickled.joiner
    assert not _attributes_on_fast_path(pickled) and _attributes_on_fast_path(engine)
    handle_one_poll(worker, tp)
    assert engine.counts["consumed"] == 200 and clients.store.load("events", 0).next_offset == 100
    assert all(_attributes_on_fast_path(obj) for obj in (engine.joiner, engine.features, *engine.slots))


def test_a_synced_checkpoint_waits_for_acknowledgements_on_its_thread_and_a_refusal_loses_nothing(tmp_path):
    worker, clients = make_worker(tmp_path, {0: events(300)}, checkpoint_background="auto")
    clients.waitable_futures = True   # kafka-python's futures: the checkpoint's thread can wait for them
    worker.outputs.rebuild()
    worker.membership.subscribe()
    consumer, checkpointer = worker.consumer, worker.checkpointer
    tp = consumer.tp(0)
    handle_one_poll(worker, tp)
    before = len(clients.calls)
    checkpointer.periodic(tp)
    assert clients.calls[before:] == [("begin_synced_save", 0, 100)], "the loop did not wait for the broker"
    producer = clients.producers[-1]
    time.sleep(0.05)
    checkpointer.poll()
    assert tp in checkpointer.pending and clients.store.load("events", 0) is None, "not acknowledged: not published"
    producer.answer()
    checkpointer.settle([tp])
    assert clients.calls[-1] == ("commit", {0: 100}) and clients.store.load("events", 0).next_offset == 100

    handle_one_poll(worker, tp)
    checkpointer.periodic(tp)
    producer.answer(KafkaTimeoutError("fake: batch expired"))   # the broker never took the batch
    checkpointer.settle([tp])
    assert worker.blocked == {tp: "outputs not acknowledged: KafkaTimeoutError: fake: batch expired"}
    assert clients.store.load("events", 0).next_offset == 100, "the last good checkpoint stands"
    checkpointer.retry(time.monotonic() + 10)   # the loop's confirm: a new producer sends the batch again
    assert [c[0] for c in clients.calls[-6:]] == ["flush", "close_producer", "flush", "save", "resume", "commit"]
    assert not worker.blocked
    assert clients.store.load("events", 0).next_offset == 200
    resent = [p for p in clients.producers[-1].sent]
    assert [json.loads(v)["offset"] for _, _, v in resent] == list(range(100, 200)), "each prediction once more"

    checkpointer.fork_above = 0.0   # a forked writer cannot wait for the futures: the loop confirms first
    handle_one_poll(worker, tp)
    checkpointer.periodic(tp)
    assert [c[0] for c in clients.calls[-2:]] == ["flush", "begin_save"]
    checkpointer.settle([tp])
    assert clients.store.load("events", 0).next_offset == 300


def test_a_partition_that_cannot_be_restored_stops_the_worker_cleanly(tmp_path):
    """Not a checkpoint error (those stop with their own message) nor an unreadable checkpoint
    (tests/test_restore_oserror.py) but, say, a store that times out: it used to escape the rebalance
    callback and kill the worker inside poll, with no checkpoint of its other partitions, no close and
    the group left waiting."""
    worker, clients = make_worker(tmp_path, {0: events(150), 1: events(150, 1)}, checkpoint_every=100)
    load = clients.store.load

    def load_failing_for_1(topic, partition):
        if partition == 1:
            raise KafkaTimeoutError("checkpoint events-1 not read in 30 s")
        return load(topic, partition)

    clients.store.load = load_failing_for_1
    assert worker.run() == 2
    assert worker.fatal.startswith("partition 1: restoring failed: KafkaTimeoutError") and "events-1" in worker.fatal
    assert not [c for c in clients.calls if c[0] == "save" and c[1] == 1], "nothing of partition 1 is saved"
    saved = [c for c in clients.calls if c[0] == "save"]
    assert saved and saved[-1][1] == 0 and load("events", 0).next_offset == saved[-1][2], "the other one is"
    assert clients.consumers[0].closed, "the group is left, not made to wait for a session timeout"


def test_a_stalled_background_writer_is_killed_counted_and_never_holds_up_a_stop(tmp_path):
    """A forked writer that hangs used to leave no checkpoint, no failure counted, the worker
    ready, and a stop waiting for it. Past --checkpoint-timeout it is killed: a failed checkpoint."""
    import os

    worker, clients = make_worker(tmp_path, {0: events(300)}, checkpoint_background="on", checkpoint_timeout=60)
    worker.membership.subscribe()
    consumer, checkpointer = worker.consumer, worker.checkpointer
    tp = consumer.tp(0)
    handle_one_poll(worker, tp)
    worker.last_poll = __import__("time").monotonic()
    worker.broker.ok, worker.broker.seen = True, worker.last_poll
    assert worker.ready()
    clients.store.stalled = True
    checkpointer.save([tp], background=True)
    pending = checkpointer.pending[tp]
    checkpointer.poll()
    assert tp in checkpointer.pending, "within its timeout a writer is waited for"
    loop = os.getpriority(os.PRIO_PROCESS, 0)
    assert loop == 19 or os.getpriority(os.PRIO_PROCESS, pending.pid) > loop   # CHILD_NICENESS
    pending.started -= checkpointer.settings.timeout * 0.6   # past half its timeout: the worker's priority
    checkpointer.poll()
    assert tp in checkpointer.pending and pending.hurried
    from conftest import may_raise_priority

    if may_raise_priority():   # lowering a nice value takes CAP_SYS_NICE (or an RLIMIT_NICE for it)
        assert os.getpriority(os.PRIO_PROCESS, pending.pid) == loop
    pending.started -= 60   # as if it had hung for a minute
    checkpointer.poll()
    assert not checkpointer.pending and "stalled" in worker.blocked[tp] and not worker.ready()
    assert checkpointer.failures._value.get() == 1 and consumer.paused() == {tp}
    with pytest.raises(ProcessLookupError):
        os.kill(pending.pid, 0)   # killed and reaped
    assert worker.partitions[tp].events_since_checkpoint == 100, "nothing counted as saved"

    clients.store.stalled = False
    checkpointer.retry(now=1e9)
    assert not worker.blocked and clients.store.load("events", 0).next_offset == 100
    handle_one_poll(worker, tp)
    clients.store.stalled = True
    checkpointer.save([tp], background=True)
    stalled = checkpointer.pending[tp]
    checkpointer.settle_seconds = 0.0   # a stop does not wait for a writer that hangs ...
    worker.close()
    with pytest.raises(ProcessLookupError):
        os.kill(stalled.pid, 0)
    assert clients.store.load("events", 0).next_offset == 200, "... and saves everything in the loop"


def test_a_stop_waits_a_bounded_time_for_unacknowledged_outputs(tmp_path):
    """kafka-python's close() without a timeout waits for the delivery timeout (120 s) during an
    outage: past compose's 60 s grace, so the worker was killed instead of stopping."""
    worker, clients = make_worker(tmp_path, {0: events(50)})
    assert worker.run() == 0
    [(_, timeout)] = [c for c in clients.calls if c[0] == "close_producer"]
    assert timeout is not None and timeout <= 10


def test_a_previous_owner_s_fast_clock_does_not_postpone_time_based_checkpoints(tmp_path, monkeypatch):
    """checkpointed_at is wall time on the worker that wrote it; from one an hour fast, due()
    read -3,540 s and no time-based checkpoint came for an hour. Now the age is counted on this
    worker's own clock from when it first saw that checkpoint."""
    import time

    worker, clients = make_worker(tmp_path, {0: events(10)}, checkpoint_seconds=30)
    checkpointer, tp = worker.checkpointer, clients.consumer().tp(0)
    state = worker.restorer.start_over(tp)
    state.checkpointed_at, state.events_since_checkpoint = time.time() + 3600, 1
    worker.partitions[tp] = state   # the partitions the checkpointer checkpoints
    assert not checkpointer.due(tp)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 31)   # 31 s later on this worker
    assert checkpointer.due(tp)
    honest = worker.restorer.start_over(tp)   # an honest clock's checkpoint 40 s old: due at once
    honest.checkpointed_at, honest.events_since_checkpoint = time.time() - 40, 1
    worker.partitions[tp] = honest
    assert checkpointer.due(tp)


def test_a_dead_letter_topic_that_never_appears_holds_the_checkpoint_not_the_worker(tmp_path):
    """A send to a topic without metadata retried for ever inside send(): the worker hung. Now
    the letter is held unsent, the partition's checkpoint waits for it, the rest goes on."""
    worker, clients = make_worker(tmp_path, {0: events(3) + [b"not json"] + events(6, start=3)},
                                  checkpoint_every=100, dead_letter_topic="dlq")
    worker.checkpointer.confirm_seconds = 0.01
    worker.membership.subscribe()
    consumer, tp = worker.consumer, worker.consumer.tp(0)
    clients.missing_topics.add("dlq")
    for record in consumer.poll()[tp]:
        worker.handle(worker.partitions[tp], record)
    worker.checkpoint([tp])
    assert [c for c in clients.calls if c[0] == "send_timeout"] == [("send_timeout", "dlq")] * 6
    assert worker.outputs.counts["send_timeouts"] == 2 and worker.outputs_blocked and tp in worker.blocked
    assert not [c for c in clients.calls if c[0] in ("save", "commit")], "no checkpoint past the letter"
    assert len(clients.producers[0].sent) == 9   # every prediction went out
    clients.missing_topics.clear()               # the topic is created
    worker.checkpointer.retry(now=1e12)
    assert not worker.blocked and ("save", 0, 10) in clients.calls
    assert [v for p in clients.producers for t, _, v in p.sent if t == "dlq"] == [b"not json"]


def test_partitions_added_to_the_topic_are_reported_with_the_share_of_keys_moved(tmp_path, caplog, monkeypatch):
    """The events topic grows from 2 to 3 partitions while the worker runs (its consumer's
    metadata refresh, then a rebalance): one warning saying how many keys moved, and the
    gauge shows the new count."""
    class GrowingConsumer(FakeConsumer):
        polls = 0

        def poll(self, timeout_ms=0):
            self.polls += 1
            if self.polls == 3:   # the metadata now says 3: the group rebalances
                self.listener.on_partitions_revoked([self.tp(p) for p in sorted(self.log)])
                self.log[2] = events(30, 2)
                self.pending_assignment = True
            return super().poll(timeout_ms)

    def growing(clients):
        clients.consumers.append(GrowingConsumer("events", clients.partitions, clients.calls, max_poll=10))
        return clients.consumers[-1]

    monkeypatch.setattr(FakeClients, "consumer", growing)
    worker, clients = make_worker(tmp_path, {0: events(30), 1: events(30, 1)})
    with caplog.at_level("WARNING", logger="stream.worker"):
        assert worker.run() == 0
    grew = [r.getMessage() for r in caplog.records if "now has" in r.getMessage()]
    assert len(grew) == 1, grew
    assert grew[0].startswith("events topic events now has 3 partitions (2 before): about 67% of keys now map to "
                              "another partition"), grew[0]
    assert worker.registry.get_sample_value("shopstream_topic_partitions") == 3
    assert sorted(tp.partition for tp in worker.partitions) == [0, 1, 2]


def test_the_partition_count_is_noted_only_when_the_metadata_says_something_new():
    class Metadata:
        answer: object = {0, 1}

        def partitions_for_topic(self, topic):
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    metadata = Metadata()
    membership = GroupMembership(lambda: metadata, "events", listener=None, rejoin_deadline=60)
    membership.topic_partitions = [0, 1]
    assert membership.note_partitions() is None
    for unknown in (set(), None, KafkaTimeoutError("no metadata")):
        metadata.answer = unknown
        assert membership.note_partitions() is None and membership.topic_partitions == [0, 1]
    metadata.answer = {0, 1, 2, 3}
    assert membership.note_partitions() == (2, 4) and membership.topic_partitions == [0, 1, 2, 3]
    assert membership.note_partitions() is None, "noted once"


@pytest.mark.parametrize("key, kind", [(b"u", "user_id"), (None, "none"), (b"k", "other")])
def test_records_not_keyed_by_user_are_counted_by_sample_and_warned_about_once(tmp_path, caplog, monkeypatch, key,
                                                                             kind):
    """One record in 16 is checked: a purchase resolves only its own partition's predictions, so
    events must be keyed by user_id; anything else is counted and said once. (events(): user "u".)"""
    class KeyedConsumer(FakeConsumer):
        def poll(self, timeout_ms=0):
            return {tp: [r._replace(key=key) for r in records] for tp, records in super().poll(timeout_ms).items()}

    def keyed(clients):
        clients.consumers.append(KeyedConsumer("events", clients.partitions, clients.calls))
        return clients.consumers[-1]

    monkeypatch.setattr(FakeClients, "consumer", keyed)
    worker, _ = make_worker(tmp_path, {0: events(160), 1: events(160, 1)})
    with caplog.at_level("WARNING", logger="stream.worker"):
        assert worker.run() == 0
    assert worker.record_keys == {(0, kind): 10, (1, kind): 10}
    assert worker.registry.get_sample_value("shopstream_record_keys_sampled_total",
                                            {"partition": "0", "key": kind}) == 10
    said = [r.getMessage() for r in caplog.records if "events arrive" in r.getMessage()]
    if kind == "user_id":
        assert said == []
    else:
        assert len(said) == 1 and ("without a key" if kind == "none" else "(e.g. b'k')") in said[0], said


def test_one_partition_needs_no_key(tmp_path):
    worker, _ = make_worker(tmp_path, {0: events(160)})
    assert worker.run() == 0
    assert worker.record_keys == {}
