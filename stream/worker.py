"""`shopstream worker`: one consumer in a group, predict-then-learn on every event.

The loop, per polled record of an owned partition:

    bytes --decode_event--> Event --check_future_skew--> engine.process --> score --> predictions topic
      \\--InvalidEvent or engine error--> dead-letter topic (the worker carries on)

Every record ends as exactly one of: processed, or dead-lettered with a reason. A
record batch the client cannot even parse is skipped with one dead letter naming its
partition and offsets (`CorruptBatchSkipper`).

Each partition is a `Partition` (stream/partition.py: engine, next offset and its
bookkeeping; everything asks it). It is restored
from its checkpoint on assignment (else the bootstrap artifact, else a fresh model)
and the consumer seeks to its next offset. Checkpoints are written every N events
or T seconds, on revocation and on SIGTERM/SIGINT; outputs are flushed first and
Kafka offsets committed after, so Kafka's committed offsets never run ahead of a
durable model. After kill -9, the events since the last checkpoint are replayed
onto the state that had not seen them: none learned twice, none skipped.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CorruptRecordError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram

from shopstream.artifacts import ArtifactError
from shopstream.compiled import describe as describe_engine
from shopstream.events import Event, InvalidEvent, check_future_skew, decode_event
from shopstream.exporter import EngineCollector, EngineSnapshot, MetricsServer
from shopstream.lineup import build_engine
from shopstream.signing import SignatureError

from .broker_watch import BrokerWatch
from .checkpointer import Checkpointer
from .checkpointing.format import CheckpointError
from .clients import KafkaClients, SlowStepFilter
from .gc_mode import GcControl, GcMode
from .membership import GroupMembership, moved_share
from .outputs import Outputs
from .partition import Partition
from .rebalance_listener import OffLoopNote
from .restore import CheckpointUnreadable, PartitionRestorer
from .served import check_signed, decode_served, served_header
from .serving import EngineGate, ScoreDesk, ScoreServer
from .settings import WorkerSettings
from .switch_interval import interval_for
from .telemetry import WorkerCollector, WorkerSnapshot

log = logging.getLogger(__name__)
# Latency is timed on one event in this many: timing every event would cost more than it tells.
TIMING_SAMPLE = 16
SNAPSHOT_SECONDS = 1.0  # how stale a scrape's numbers may be


class IdleClock:
    """Seconds spent able to read yet reading nothing: what `--until-idle` compares.

    The clock runs only while the worker owns partitions, the broker answers and no
    checkpoint failure has paused it. Everything else (an outage, a group join, a
    fresh assignment) restarts it. When it reaches `--until-idle`, the worker still
    asks the broker for the end offsets (`BrokerWatch.caught_up`) before it stops, so a
    stop on idleness means "caught up", never "could not read".

    Examples
    --------
    >>> clock = IdleClock(now=0.0)
    >>> clock.tick(5.0, got_data=False, can_read=True)
    5.0
    >>> clock.tick(60.0, got_data=False, can_read=False)  # broker away: not idle
    0.0
    >>> clock.tick(61.0, got_data=False, can_read=True)
    1.0
    """

    def __init__(self, now: float):
        self.since = now

    def restart(self, now: float) -> None:
        self.since = now

    def tick(self, now: float, got_data: bool, can_read: bool) -> float:
        if got_data or not can_read:
            self.since = now
        return now - self.since


class Worker(ConsumerRebalanceListener):
    """The poll loop and the partitions it owns; the parts do the rest: `Checkpointer`
    (durability), `BrokerWatch` (is the broker there), `GroupMembership` (the consumer and
    its joins), `Outputs` (predictions and dead letters), all from one `KafkaClients`."""

    def __init__(self, settings: WorkerSettings, registry: Optional[CollectorRegistry] = None,
                 clients: Optional[KafkaClients] = None, desk: Optional[ScoreDesk] = None,
                 collector: Optional[GcControl] = None):
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        clients = clients if clients is not None else KafkaClients(settings)
        # The scoring API's requests (stream/serving.py): taken in after each poll and between events,
        # or by the desk's clerk while the loop waits in poll.
        self.desk = desk
        self.collector = collector   # promotes between polls (--gc latency); run_worker applies it to the process
        self.awaited = desk.awaited if desk is not None else {}
        # Held by the loop except while it waits in poll, when the desk's clerk answers requests.
        self.gate = desk.gate if desk is not None else EngineGate()
        if desk is not None:
            clients.assignor = desk.assignor  # tells the group where this worker serves
        self.partitions: dict[TopicPartition, Partition] = {}   # the checkpointer saves, pauses and releases them
        self.stopping = False
        self.handled = 0
        self.last_poll = 0.0
        self.fatal: Optional[str] = None
        self.control = clients.control()
        if self.control is not None:
            self.control.open()  # reads the commands sent so far: partitions get them before any event
        self._last_control_poll = 0.0
        self.idle = IdleClock(time.monotonic())
        self.membership = GroupMembership(clients.consumer, settings.topic, self, settings.rejoin_deadline,
                                          on_rebuild=self._release_all).open()
        self.broker = BrokerWatch(settings.topic, probe=clients.broker_probe)
        self.outputs = Outputs(clients.producer, settings.predictions_topic, settings.dead_letter_topic,
                               settings.prediction_format).open()
        self.store = clients.checkpoint_store().open()
        self.checkpointer = Checkpointer(self.store, self.outputs, settings.checkpoints, self.registry,
                                         self.partitions, lambda: self.membership.consumer)
        self.restorer = PartitionRestorer(self.store, lambda: new_engine(settings), self.control, settings.group,
                                          settings.force_fresh_start, settings.engine, settings.caps,
                                          settings.adopt_artifact_settings)
        self.skipper = clients.corrupt_skipper(self.outputs)
        self.learn_log = learn_log_for(settings, self.outputs, self.registry)  # --learning shared, else None
        self.snapshots: list = []   # what a scrape reads: copied from the engines on this thread
        self.worker_snapshot = WorkerSnapshot.empty()  # and from the worker's own parts
        self._last_snapshot = 0.0
        self._unverified: set = set()  # restored partitions not yet checked against the committed offset
        self._count_partitions = False   # an assignment came: the topic's partition count may have changed
        self._resumed: dict = {}   # partition -> the offset its first record read should have (just assigned)
        self.offsets_gone: dict[int, int] = {}   # partition -> offsets resumed past: the log no longer held them
        self.record_keys: dict[tuple[int, str], int] = {}   # (partition, user_id|none|other) -> sampled records
        self._warned_keys: set = set()   # the kinds of wrong keys already logged
        self.decode_seconds = Histogram("shopstream_decode_seconds", "Decode and validate one message (sampled)",
                                        registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.process_seconds = Histogram("shopstream_process_seconds",
                                         "Engine time for one event: predict, resolve, learn (sampled)",
                                         registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.consumer_rebuilds = Counter("shopstream_consumer_rebuilds",
                                         "Kafka consumers rebuilt after a group join that did not finish",
                                         registry=self.registry)
        self.registry.register(EngineCollector(lambda: self.snapshots))
        self.registry.register(WorkerCollector(lambda: self.worker_snapshot))

    # What telemetry, readiness and the tests read, kept where it is decided.
    @property
    def consumer(self):
        return self.membership.consumer

    @property
    def blocked(self) -> dict:
        return self.checkpointer.blocked

    @property
    def outputs_blocked(self) -> bool:
        return self.checkpointer.outputs_blocked

    @property
    def broker_ok(self) -> bool:
        return self.broker.ok

    @property
    def end_offsets(self) -> dict:
        return self.broker.end_offsets

    def _release_all(self) -> None:
        """Before the consumer is replaced: checkpoint and let go of everything owned."""
        self.consumer_rebuilds.inc()
        self.checkpointer.release([*self.partitions, *self.checkpointer.held])

    # -- partition lifecycle (called inside poll: by kafka-python in a thread of its own, its event loop
    #    heartbeating meanwhile (stream/rebalance_listener.py); by librdkafka on this thread) ------------

    def on_partitions_revoked(self, revoked):
        with self.gate.callback():  # never beside the scoring API's clerk
            self._partitions_revoked(revoked)

    def _partitions_revoked(self, revoked):
        owned = [tp for tp in revoked if tp in self.partitions or tp in self.checkpointer.held]
        for tp in revoked:
            self._resumed.pop(tp, None)
        # The commit is sent before this member rejoins, not waited for (its offsets serve monitoring and
        # the restore witness; the checkpoint is durable already): kafka-python queues it on its loop
        # before this callback's end lets the join go on (stream/rebalance_listener.py).
        self.checkpointer.release(owned, commit_async=True)
        self.membership.join_started()
        log.info("revoked %s", sorted(tp.partition for tp in owned))

    def on_partitions_assigned(self, assigned):
        with self.gate.callback():
            self._partitions_assigned(assigned)

    def _partitions_assigned(self, assigned):
        self.membership.join_finished()
        self._count_partitions = True   # after this poll, by the loop (no metadata waits inside the join)
        self.idle.restart(time.monotonic())  # the first fetch of a partition takes a moment
        for tp in assigned:
            self._take(tp)

    def _take(self, tp) -> None:
        """Restore an assigned partition and read it from its next offset: at its assignment, and at each
        retry while its checkpoint cannot be read (`Checkpointer.hold`)."""
        try:
            state = self.restorer.restore(tp)
        except CheckpointUnreadable as exc:
            # The disk, not what the file holds: this partition waits, paused, tried again; the others go on.
            self.checkpointer.hold(tp, str(exc), again=lambda: self._take(tp))
            return
        except (CheckpointError, SignatureError, ArtifactError) as exc:
            # Never guess past an untrusted file: stop, and say which and why.
            log.error("partition %d: %s", tp.partition, exc)
            self.fatal = f"partition {tp.partition}: {exc}"
            self.stopping = True
            return
        except Exception as exc:  # noqa: BLE001 - a store timeout, an artifact path: a clean stop
            # Raised out of this callback, it would kill the worker inside poll: no checkpoint of
            # the other partitions, no close, the group waiting a session timeout for it.
            log.error("partition %d: restoring failed: %s: %s; stopping (its other partitions are "
                      "checkpointed, the group is left)", tp.partition, type(exc).__name__, exc)
            self.fatal = f"partition {tp.partition}: restoring failed: {type(exc).__name__}: {exc}"
            self.stopping = True
            return
        state.engine.mark_good()
        if self.learn_log is not None:
            self.learn_log.attach(state)
        if self.settings.signing_key is not None or tp in self.restorer.doubted:
            self._unverified.add(tp)  # checked against the committed offset after this poll
        self.partitions[tp] = state
        self.consumer.seek(tp, state.next_offset)
        self._resumed[tp] = state.next_offset
        log.info("assigned partition %d: %s, next offset %d", tp.partition, state.origin, state.next_offset)

    def _verify_restored(self, batches: dict) -> None:
        """Check newly restored partitions against the group's committed offsets. Here, after
        the poll, not in the rebalance callback: the group join waits for that callback, and
        librdkafka runs it inside its own consume. No record of theirs is handled before this check."""
        for tp in list(self._unverified):
            self._unverified.discard(tp)
            state = self.partitions.get(tp)
            if state is None:
                continue
            try:
                self.restorer.witness(self.consumer, tp, state)
            except CheckpointError as exc:
                batches.pop(tp, None)
                if not self.settings.force_fresh_start:
                    log.error("%s", exc)
                    self.fatal = str(exc)
                    self.stopping = True
                    del self.partitions[tp]  # nothing of it may be checkpointed on the way out
                    continue
                log.warning("%s; --force-fresh-start: starting it over", exc)
                self.partitions[tp] = self.restorer.fresh_after_refusal(tp)
                self.consumer.seek(tp, 0)

    def _first_records(self, tp, state: Partition, first: int) -> None:
        """The first record read of a partition just assigned: does the log still continue where its
        state stops? When the consumer's position was no longer in the log, the client went on from
        the log's start (auto_offset_reset), which alone would say nothing."""
        expected = self._resumed.pop(tp)
        if first > expected:   # retention or deleted records outran this group
            gone = first - expected
            self.offsets_gone[tp.partition] = self.offsets_gone.get(tp.partition, 0) + gone
            log.warning("partition %d: offsets %d to %d are no longer in the log (deleted by retention or by "
                        "delete-records before this group read them; transaction markers count too): %d "
                        "record(s) never read, going on at %d", tp.partition, expected, first - 1, gone, first)
            return
        end = self.consumer.highwater(tp)
        if first < expected and end is not None and end < expected:
            # A log that ends below the state's next offset is not the log the state read: the topic
            # was deleted and made again. Its records are new, not "already in the restored state".
            log.error("partition %d: its log now ends at offset %d, below the %d its state has read: the topic "
                      "was deleted and created again. Its records are read from offset %d, on the state that "
                      "read the old log", tp.partition, end, expected, first)
            state.next_offset = first

    def _note_topic_partitions(self) -> None:
        """Say so when the events topic's partition count changed (`GroupMembership.note_partitions`):
        keys then map to other partitions, and what that costs is not visible anywhere else."""
        change = self.membership.note_partitions()
        if change is None:
            return
        before, now = change
        self.broker.topic_partitions = self.membership.topic_partitions
        if before == 0:   # unknown at subscribe (the topic was being created): nothing moved
            return
        share = moved_share(before, now)
        moved = f"about {share:.0%} of keys" if share is not None else "keys"
        log.warning("events topic %s now has %d partitions (%d before): %s now map to another partition (Kafka's "
                    "default partitioner, keyed by user). A moved user's session features start over on its new "
                    "partition, and a purchase of a prediction opened before now lands there, so that prediction "
                    "resolves as a non-purchase at its deadline: one attribution window of wrong labels on the "
                    "old partitions (README, 'Adding partitions')", self.settings.topic, now, before, moved)

    def take_snapshots(self) -> None:
        """Copy every owned engine's numbers, and the worker's, for the metrics thread (which never
        reads an engine or a Kafka client)."""
        self.worker_snapshot = WorkerSnapshot.of(self)
        self.snapshots = [({"partition": str(tp.partition)},
                           EngineSnapshot.of(s.engine, {"dead_lettered": s.dead_lettered}), None)
                          for tp, s in self.partitions.items()]

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        self.membership.subscribe()
        self.broker.topic_partitions = self.membership.topic_partitions
        self.gate.hold()  # the engines are the loop's, but for the poll's wait (EngineGate)
        if self.desk is not None:
            self.desk.start_clerk(lambda: self.partitions)
        while not self.stopping:
            try:
                with self.gate.opened():  # a scoring request arriving now is answered now, not after the poll
                    batches = self.consumer.poll(timeout_ms=200)
            except CorruptRecordError as exc:  # a batch kafka-python cannot parse: skip it, never crash
                self.last_poll = time.monotonic()
                self.skipper.skip(self.consumer, self.partitions, exc)
                continue
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                # The broker went away mid-request: the client reconnects; the broker watch tells readiness.
                log.warning("poll: %s: %s; polling again", type(exc).__name__, exc)
                time.sleep(0.2)
                continue
            self.last_poll = now = time.monotonic()
            if self._unverified:
                self._verify_restored(batches)
                if self.stopping:
                    break
            if self._count_partitions:
                self._count_partitions = False
                self._note_topic_partitions()
            if self.desk is not None:
                self.desk.drain(self.partitions)
            can_read = bool(self.partitions) and self.broker_ok and not self.blocked
            idle_for = self.idle.tick(now, got_data=bool(batches), can_read=can_read)
            if settings.until_idle and idle_for >= settings.until_idle:
                if self.broker.caught_up(self.consumer, {tp: st.next_offset for tp, st in self.partitions.items()}):
                    log.info("idle for %.1f s, at the end of %d partition(s): stopping", idle_for,
                             len(self.partitions))
                    break
                self.idle.restart(now)  # records left to read, or no answer: not idle
            self._housekeeping(now)
            if self.learn_log is not None:
                self.learn_log.apply(self.partitions)
            for tp, records in batches.items():
                state = self.partitions.get(tp)
                if state is None:
                    continue  # revoked while these were in flight
                if tp in self._resumed:
                    self._first_records(tp, state, records[0].offset)
                for record in records:
                    if record.offset < state.next_offset:
                        continue  # already in the restored state
                    self.handle(state, record)
                    if self.desk is not None and self.desk.has_mail():
                        self.desk.drain(self.partitions)  # a what-if waits one event, not a whole batch
                    if settings.max_events and self.handled >= settings.max_events:
                        self.stopping = True
                        break
                self.outputs.end_batch()   # one predictions record per polled batch (batch format)
                if self.learn_log is not None:
                    self.learn_log.publish(state)
                self._maybe_checkpoint(tp)
                if self.stopping:
                    break
        self.close()
        self.gate.release()
        return 2 if self.fatal else 0

    def _housekeeping(self, now: float) -> None:
        """Between polls: snapshot metrics, finish background checkpoints, retry blocked ones,
        apply control commands, check the broker."""
        if now - self._last_snapshot >= SNAPSHOT_SECONDS:
            self._last_snapshot = now
            self.take_snapshots()
        self.checkpointer.poll()   # background checkpoints that finished: commit their offsets
        self.checkpointer.retry(now)
        if self.collector is not None:
            self.collector.tick(now)
        if self.control is not None and now - self._last_control_poll >= 1.0:
            self._last_control_poll = now
            if self._poll_control():
                for tp, state in self.partitions.items():
                    if self.control.apply(state.engine, tp.partition):
                        state.mark_changed()
        if self.membership.maybe_rebuild(now, self.broker.ok):
            self.broker.topic_partitions = self.membership.topic_partitions
        owned = list(self.partitions)
        with self.gate.opened():  # a Kafka round trip (on the watch's own connection; up to 3 s if the broker is away)
            self.broker.maybe_check(self.consumer, owned, now)

    def handle(self, state: Partition, record) -> None:
        """One Kafka record: decode, predict-then-learn, publish. Never raises for bad input."""
        settings = self.settings
        self.handled += 1
        state.handled(record.offset)
        timed = self.handled % TIMING_SAMPLE == 0
        started = time.perf_counter() if timed else 0.0
        event: Optional[Event] = None   # (decoded, then refused: a scoring request may wait for it)
        served = None
        try:
            event = decode_event(record.value)
            if record.headers:   # a recorded score answered when written carries it (served.py)
                carried = served_header(record.headers)
                if carried is not None:
                    if settings.signing_key is not None:
                        check_signed(record.value, carried, record.headers, settings.signing_key)
                    served = decode_served(carried)
            # The record's time, but never later than ours: producers set it too.
            wall, stamp = time.time(), record.timestamp
            check_future_skew(event, min(stamp / 1000.0, wall) if stamp and stamp > 0 else wall,
                              settings.max_future_skew)
        except InvalidEvent as exc:
            self._dead_letter(state, record, f"invalid event: {exc}")
            if self.awaited and event is not None:
                self.desk.dead_lettered(record, event, str(exc))  # type: ignore[union-attr]
            return
        except Exception as exc:  # a decoder bug must not take the worker down with it
            self._dead_letter(state, record, f"decode error: {type(exc).__name__}: {exc}")
            return
        if timed:
            decoded = time.perf_counter()
            self.decode_seconds.observe(decoded - started)
        engine = state.engine
        try:
            score = engine.process(event, record.offset, served)
        except Exception as exc:  # e.g. a raw feature the model cannot take: the event, not the worker, fails
            self._dead_letter(state, record, f"engine error: {type(exc).__name__}: {exc}")
            if self.awaited:  # a request waiting for this event is answered now, not at its deadline
                self.desk.dead_lettered(record, event, f"{type(exc).__name__}: {exc}")  # type: ignore[union-attr]
            return
        if timed:
            self.process_seconds.observe(time.perf_counter() - decoded)
            self._sample_key(record, event)
        if self.learn_log is not None:
            self.learn_log.observe(state, record.offset, event)
        if score is not None:
            champion = engine.champion_slot
            self.outputs.prediction(record, event, score, champion.name, champion.version)
        if self.awaited:  # scoring requests wait for their event
            self.desk.processed(state, record, event, score)  # type: ignore[union-attr]

    def _sample_key(self, record, event: Event) -> None:
        """One record in TIMING_SAMPLE: is it keyed by its user_id? A purchase resolves only the
        predictions of its own partition, so a producer that does not key events by user splits a
        session's views and its purchase across partitions, and nothing else would show it."""
        if len(self.membership.topic_partitions) < 2:
            return   # one partition: nothing to split
        key = record.key
        kind = "user_id" if key == str(event.user_id).encode() else "none" if key is None else "other"
        counted = (record.partition, kind)
        self.record_keys[counted] = self.record_keys.get(counted, 0) + 1
        if kind == "user_id" or kind in self._warned_keys:
            return
        self._warned_keys.add(kind)
        how = "without a key" if kind == "none" else f"keyed by something else than user_id (e.g. {key[:40]!r})"
        log.warning("events arrive %s (partition %d, offset %d; sampled, counted in "
                    "shopstream_record_keys_sampled_total): a session's views and its purchase can land on "
                    "different partitions, where the purchase never resolves their predictions (they expire as "
                    "non-purchases) and a user's features split. Key each event by its user_id (README, 'Events')",
                    how, record.partition, record.offset)

    def _dead_letter(self, state: Partition, record, reason: str) -> None:
        state.dead_lettered += 1
        log.debug("dead letter %s-%d@%d: %s", record.topic, record.partition, record.offset, reason)
        self.outputs.dead_letter(record, reason)

    # -- durability ------------------------------------------------------------------

    def _poll_control(self) -> bool:
        if self.control is None:
            return False
        try:
            return self.control.poll()
        except Exception as exc:  # an outage: the commands wait in their topic, the worker goes on
            log.warning("control topic: %s: %s; reading it again in a second", type(exc).__name__, exc)
            return False

    def _maybe_checkpoint(self, tp: TopicPartition) -> None:
        if self.checkpointer.due(tp):
            self.checkpointer.periodic(tp)

    def checkpoint(self, tps, commit_async: bool = False) -> None:
        """Outputs acknowledged, then state saved, then offsets committed (`Checkpointer`);
        partitions with nothing new since their last checkpoint are skipped."""
        self.checkpointer.save(tps, commit_async)

    def close(self) -> None:
        if self.desk is not None:
            self.desk.close()
        self.checkpoint(list(self.partitions))
        self.take_snapshots()
        self.consumer.close(autocommit=False)
        self.broker.close()
        self.outputs.close()
        self.skipper.close()
        if self.control is not None:
            self.control.close()
        if self.learn_log is not None:
            self.learn_log.close()
        self.store.close()   # the Kafka store holds a producer and a consumer

    def ready(self) -> bool:
        """Owns partitions, can checkpoint them, and its loop polled recently."""
        now = time.monotonic()
        return (bool(self.partitions) and not self.blocked and not self.stopping and self.broker.fresh(now)
                and now - self.last_poll < 15.0)


_LATENCY_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)


def preflight(settings: WorkerSettings) -> None:
    """Check every setting, path and artifact before contacting the group: a worker that
    would crash in its rebalance callback would first take partitions from healthy ones.
    Raises ValueError, FileNotFoundError or an ArtifactError/SignatureError: one line."""
    s = settings  # each settings object checked its own ranges when it was built
    if s.artifacts and not Path(s.artifacts).is_dir():
        raise FileNotFoundError(f"--artifacts {s.artifacts}: no such directory")
    directory = Path(s.checkpoints.directory)
    if s.checkpoints.store == "dir":
        _check_writable(str(s.checkpoints.directory), directory)
    # What a new partition would start from, built once: the window, lateness, caps, catalog
    # names and the artifacts (loaded and verified) all checked here.
    try:
        new_engine(s)
    except ValueError as exc:
        raise ValueError(f"invalid engine settings: {exc}") from None


def _check_writable(given: str, directory: Path) -> None:
    """The checkpoint directory, made if missing and written to once: a path that cannot be made
    failed only after the Kafka clients connected, one that cannot be written paused every
    partition at its first checkpoint, and an empty one was the current directory."""
    if not given.strip():
        raise ValueError("--checkpoints '' names no directory: name one")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--checkpoints {directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise ValueError(f"--checkpoints {directory}: cannot write there: {exc.strerror or exc}") from None


def learn_log_for(s: WorkerSettings, outputs, registry):
    """The learn log of `--learning shared` (stream/learn_log.py), else None."""
    if s.learning != "shared":
        return None
    from .connection import kafka_options
    from .learn_log import LearnLog

    if s.signing_key is None:   # (README: the learn topic is then as trusted as whoever may write to it)
        log.warning("--learning shared without a signing key: every worker learns what anyone who may write to "
                    "%s puts there; set one (--signing-key-file) where that is not only this group", s.learn_topic)
    return LearnLog(kafka_options(s.kafka), s.learn_topic, s.group, s.topic, s.engine, outputs, registry,
                    signing_key=s.signing_key).open()


def new_engine(s: WorkerSettings):
    """A new partition's engine (from the artifacts, else fresh) and where it came from."""
    return build_engine(s.artifacts, s.engine, s.lineup, s.caps, s.adopt_artifact_settings, s.signing_key)


def run_worker(settings: WorkerSettings) -> int:
    logging.basicConfig(level=getattr(logging, settings.log_level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # the Kafka client's INFO lines (about 100 per start) drown ours
        logging.getLogger("kafka").setLevel(logging.WARNING)
        logging.getLogger("kafka.net.selector").addFilter(SlowStepFilter())
    coordinator_log = logging.getLogger("kafka.coordinator.consumer")
    if not any(isinstance(f, OffLoopNote) for f in coordinator_log.filters):   # once per process
        coordinator_log.addFilter(OffLoopNote())   # its text, not our case
    preflight(settings)
    registry = CollectorRegistry()
    collector = GcControl(GcMode.choose(settings.gc, settings.serve.enabled, settings.kafka_client), registry)
    holder: list = []
    server = None
    if settings.metrics_port >= 0:  # bound before joining: a port in use stops nobody else
        try:
            server = MetricsServer(registry, settings.metrics_host, settings.metrics_port,
                                   lambda: bool(holder) and holder[0].ready())
        except OSError as exc:
            raise ValueError(f"metrics port {settings.metrics_host}:{settings.metrics_port} cannot be used "
                             f"({exc.strerror}): choose another with --metrics-port (SHOPSTREAM_METRICS_PORT), "
                             "0 for any free port, -1 for none") from None
    api = desk = None
    if settings.serve.enabled:
        try:
            api = ScoreServer(settings.serve)
        except OSError as exc:
            raise ValueError(f"scoring API port {settings.serve.host}:{settings.serve.port} cannot be used "
                             f"({exc.strerror}): choose another with --serve-port (SHOPSTREAM_SERVE_PORT)") from None
        desk = ScoreDesk(settings.topic, api.address, settings.name, settings.serve.max_pending,
                         settings.max_future_skew, settings.serve.recorded, settings.signing_key)
    worker = Worker(settings, registry, desk=desk, collector=collector)
    holder.append(worker)
    if server is not None:
        server.start()
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, server.port)
    if api is not None and desk is not None:
        api.start(desk, KafkaClients(settings).score_producer(), registry)
        log.info("scoring API on http://%s:%d/score (others forward to %s)", settings.serve.host, api.port,
                 api.address)

    def stop(signum, _frame):
        log.info("signal %d: checkpointing and stopping", signum)
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    collector.start()   # here: whatever raised above left the process's collector as it was
    log.info("garbage collector: %s (--gc %s)", collector.mode.name, settings.gc)
    log.info("engine: %s", describe_engine())
    log.info("kafka client: %s", settings.kafka_client)
    switch_before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(interval_for(settings.switch_interval, api is not None, settings.kafka_client))
        log.info("GIL switch interval: %g s (--switch-interval %s)", sys.getswitchinterval(),
                 settings.switch_interval or "auto")
        return worker.run()
    finally:
        sys.setswitchinterval(switch_before)   # first: run_worker may run in a test's or a benchmark's process
        if server is not None:
            server.stop()
        if api is not None:
            api.stop()
        collector.stop()
        log.info("handled %d events", worker.handled)
