"""`shopstream worker`: one consumer in a group, predict-then-learn on every event.

The loop, per polled record of an owned partition:

    bytes --decode_event--> Event --check_future_skew--> engine.process --> score --> predictions topic
      \\--InvalidEvent or engine error--> dead-letter topic (the worker carries on)

Every record ends as exactly one of: processed, or dead-lettered with a reason. A
record batch the client cannot even parse is skipped with one dead letter naming its
partition and offsets (`CorruptBatchSkipper`).

Each partition has its own `PartitionState` (engine + next offset). It is restored
from its checkpoint on assignment (else the bootstrap artifact, else a fresh model)
and the consumer seeks to its next offset. Checkpoints are written every N events
or T seconds, on revocation and on SIGTERM/SIGINT; outputs are flushed first and
Kafka offsets committed after, so Kafka's committed offsets never run ahead of a
durable model. After kill -9, the events since the last checkpoint are replayed
onto the state that had not seen them: none learned twice, none skipped.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from pathlib import Path
from typing import Optional

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CorruptRecordError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Histogram

from shopstream.artifacts import ArtifactError
from shopstream.events import InvalidEvent, check_future_skew, decode_event
from shopstream.exporter import EngineCollector, EngineSnapshot, MetricsServer
from shopstream.lineup import build_engine
from shopstream.signing import SignatureError, signing_key

from .connection import kafka_options
from .checkpoints import CheckpointError, DirectoryCheckpointStore, PartitionState
from .control import ControlChannel
from .kafka_store import KafkaCheckpointStore
from .corrupt import CorruptBatchSkipper
from .outputs import Outputs
from .settings import WorkerSettings
from .telemetry import WorkerCollector

log = logging.getLogger(__name__)
# Latency is timed on one event in this many: timing every event would cost more than it tells.
TIMING_SAMPLE = 16
CHECKPOINT_RETRY_SECONDS = 2.0
BROKER_CHECK_SECONDS = 5.0
SNAPSHOT_SECONDS = 1.0  # how stale a scrape's numbers may be
# How long a checkpoint waits for outputs to be acknowledged before it pauses the partitions
# and retries: long enough for a busy broker, short enough that an outage does not hold the
# loop (its broker checks, readiness and control commands) for the whole outage.
CONFIRM_SECONDS = 5.0


class IdleClock:
    """Seconds spent able to read yet reading nothing: what `--until-idle` compares.

    The clock runs only while the worker owns partitions, the broker answers and no
    checkpoint failure has paused it. Everything else (an outage, a group join, a
    fresh assignment) restarts it. When it reaches `--until-idle`, the worker still
    asks the broker for the end offsets (`Worker._caught_up`) before it stops, so a
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
    def __init__(self, settings: WorkerSettings, registry: Optional[CollectorRegistry] = None):
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        options = kafka_options(settings.kafka)
        self.store = KafkaCheckpointStore(options, settings.checkpoints.topic, group=settings.group) \
            if settings.checkpoints.store == "kafka" \
            else DirectoryCheckpointStore(settings.checkpoints.directory, settings.group)
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.stopping = False
        self.handled = 0
        self.last_poll = 0.0
        self.fatal: Optional[str] = None
        self.blocked: dict[TopicPartition, str] = {}  # partitions paused by a failing checkpoint store
        self.control = ControlChannel(options, settings.control_topic, settings.artifacts, settings.name) \
            if settings.control_topic else None
        self._last_control_poll = 0.0
        self._last_retry = 0.0
        self._last_broker_check = 0.0
        self.broker_ok = True
        self._broker_seen = time.monotonic()
        self.end_offsets: dict = {}
        self._options = options
        self._joining_since: Optional[float] = None  # a group join started and has not finished
        self._topic_partitions: list[int] = []
        self.idle = IdleClock(time.monotonic())
        self.consumer = self._new_consumer()
        # A short linger: predictions are for acting on now (20 ms added ~25 ms to p50 in BENCHMARKS.md).
        self.outputs = Outputs(lambda: KafkaProducer(client_id=settings.name, linger_ms=5, acks="all", **options),
                               settings.predictions_topic, settings.dead_letter_topic)
        self.skipper = CorruptBatchSkipper(options, self.outputs)
        self.snapshots: list = []   # what a scrape reads: copied from the engines on this thread
        self._last_snapshot = 0.0
        self.outputs_blocked = False  # a checkpoint waits for outputs the broker has not acknowledged
        self._unverified: set = set()  # restored partitions not yet checked against the committed offset
        self.decode_seconds = Histogram("shopstream_decode_seconds", "Decode and validate one message (sampled)",
                                        registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.process_seconds = Histogram("shopstream_process_seconds",
                                         "Engine time for one event: predict, resolve, learn (sampled)",
                                         registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.checkpoints_written = Counter("shopstream_checkpoints", "Checkpoints written", registry=self.registry)
        self.checkpoint_failures = Counter("shopstream_checkpoint_failures", "Checkpoints that failed",
                                           registry=self.registry)
        self.consumer_rebuilds = Counter("shopstream_consumer_rebuilds",
                                         "Kafka consumers rebuilt after a group join that did not finish",
                                         registry=self.registry)
        self.registry.register(EngineCollector(lambda: self.snapshots))
        self.registry.register(WorkerCollector(self))

    def _new_consumer(self) -> KafkaConsumer:
        s = self.settings
        return KafkaConsumer(
            group_id=s.group,
            client_id=s.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_poll_records,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(500, s.session_timeout_ms // 5),
            **self._options,
        )

    def _subscribe(self) -> None:
        # Learn the topic's partitions before joining: kafka-python 3.0.12 otherwise assigns
        # nothing, rejoins at once, and that second join has been seen to hang for good.
        self._topic_partitions = sorted(self.consumer.partitions_for_topic(self.settings.topic) or ())
        self._joining_since = time.monotonic()
        self.consumer.subscribe([self.settings.topic], listener=self)

    def _rebuild_consumer(self, waited: float) -> None:
        """A join that outlived every legitimate rebalance is a stuck client: replace it.
        kafka-python revokes (and we checkpoint) when a join begins, so usually nothing is
        owned here; anything still owned is checkpointed and released first."""
        log.warning("group join unfinished after %.0f s: rebuilding the Kafka consumer", waited)
        try:
            fresh = self._new_consumer()
        except Exception as exc:  # e.g. NoBrokersAvailable: keep the old one and try again later
            log.warning("could not build a new consumer (%s: %s): retrying later", type(exc).__name__, exc)
            self._joining_since = time.monotonic()
            return
        self.consumer_rebuilds.inc()
        if self.partitions:
            self.checkpoint(list(self.partitions))
            self.partitions.clear()
            self.blocked.clear()
        old, self.consumer = self.consumer, fresh
        try:
            old.close(autocommit=False, timeout_ms=5000)
        except Exception as exc:  # a stuck client may not close cleanly either
            log.warning("closing the old consumer: %s: %s", type(exc).__name__, exc)
        self._subscribe()

    # -- partition lifecycle (called by kafka-python inside poll) -------------------

    def on_partitions_revoked(self, revoked):
        owned = [tp for tp in revoked if tp in self.partitions]
        if owned:
            # This runs on kafka-python's IO thread: the offset commit must not block it.
            self.checkpoint(owned, commit_async=True)
        for tp in owned:
            del self.partitions[tp]
            self.blocked.pop(tp, None)
        self._joining_since = time.monotonic()  # kafka-python revokes when a join begins
        log.info("revoked %s", sorted(tp.partition for tp in owned))

    def on_partitions_assigned(self, assigned):
        self._joining_since = None
        self.idle.restart(time.monotonic())  # the first fetch of a partition takes a moment
        for tp in assigned:
            try:
                state = self._restore(tp)
            except (CheckpointError, SignatureError, ArtifactError) as exc:
                # Never guess past an untrusted file: stop, and say which and why.
                log.error("partition %d: %s", tp.partition, exc)
                self.fatal = f"partition {tp.partition}: {exc}"
                self.stopping = True
                continue
            state.engine.mark_good()
            if signing_key() is not None:
                self._unverified.add(tp)  # checked against the committed offset after this poll
            if state.needs_checkpoint and state.unsaved_since is None:
                state.unsaved_since = time.time()  # new, or changed by a command: not yet durable
            self.partitions[tp] = state
            self.consumer.seek(tp, state.next_offset)
            log.info("assigned partition %d: %s, next offset %d", tp.partition, state.origin, state.next_offset)

    def _restore(self, tp: TopicPartition) -> PartitionState:
        try:
            state = self.store.load(tp.topic, tp.partition)
        except (CheckpointError, SignatureError) as exc:
            if not self.settings.force_fresh_start:
                raise
            log.warning("partition %d: %s; --force-fresh-start: starting it over", tp.partition, exc)
            state = None
        if state is None:
            engine, origin = new_engine(self.settings)
            state = PartitionState(tp.topic, tp.partition, engine, next_offset=0, origin=origin,
                                   started_from=origin)
        if self.control is not None and self.control.apply(state.engine, tp.partition):
            state.changed = True
        return state

    def _verify_restored(self, batches: dict) -> None:
        """Check newly restored partitions against the group's committed offsets. Here, not
        in the rebalance callback: that runs on kafka-python's IO thread, which cannot wait
        for the coordinator. No record of theirs is handled before this check."""
        for tp in list(self._unverified):
            self._unverified.discard(tp)
            state = self.partitions.get(tp)
            if state is None:
                continue
            try:
                self._check_against_committed(tp, state if state.origin == "checkpoint" else None)
            except CheckpointError as exc:
                batches.pop(tp, None)
                if not self.settings.force_fresh_start:
                    log.error("%s", exc)
                    self.fatal = str(exc)
                    self.stopping = True
                    del self.partitions[tp]  # nothing of it may be checkpointed on the way out
                    continue
                log.warning("%s; --force-fresh-start: starting it over", exc)
                engine, origin = new_engine(self.settings)
                fresh = PartitionState(tp.topic, tp.partition, engine, next_offset=0, origin=origin,
                                       started_from=origin, unsaved_since=time.time())
                if self.control is not None:
                    self.control.apply(engine, tp.partition)
                self.partitions[tp] = fresh
                self.consumer.seek(tp, 0)

    def _check_against_committed(self, tp: TopicPartition, state: Optional[PartitionState]) -> None:
        """With a signing key, the group's committed offset witnesses the newest checkpoint
        (offsets are committed only after a checkpoint is durable, and live in Kafka, not
        beside the checkpoints): a checkpoint behind it, or none at all while the group has
        committed, means an old checkpoint was put back or the checkpoint was deleted."""
        if signing_key() is None:
            return
        try:
            committed = self.consumer.committed(tp)
        except Exception as exc:  # the broker is slow to answer: the other checks still hold
            log.warning("partition %d: committed offset unknown (%s): restoring without that check",
                        tp.partition, type(exc).__name__)
            return
        if not committed:
            return
        if state is None:
            raise CheckpointError(f"partition {tp.partition}: no checkpoint, but group {self.settings.group!r} "
                                  f"committed offset {committed}: refusing to start it over from offset 0 "
                                  "(--force-fresh-start does that on purpose)")
        if state.next_offset < committed:
            raise CheckpointError(f"partition {tp.partition}: checkpoint at offset {state.next_offset} is older "
                                  f"than the offset {committed} group {self.settings.group!r} committed after a "
                                  "newer one (an old checkpoint put back?): refusing it")

    def take_snapshots(self) -> None:
        """Copy every owned engine's numbers for the metrics thread (which never reads an engine)."""
        self.snapshots = [({"partition": str(tp.partition)},
                           EngineSnapshot.of(s.engine, {"dead_lettered": s.dead_lettered}), None)
                          for tp, s in self.partitions.items()]

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        self._subscribe()
        while not self.stopping:
            try:
                batches = self.consumer.poll(timeout_ms=200)
            except CorruptRecordError as exc:  # a batch kafka-python cannot parse: skip it, never crash
                self.last_poll = time.monotonic()
                self.skipper.skip(self.consumer, self.partitions, exc)
                continue
            self.last_poll = now = time.monotonic()
            if self._unverified:
                self._verify_restored(batches)
                if self.stopping:
                    break
            can_read = bool(self.partitions) and self.broker_ok and not self.blocked
            idle_for = self.idle.tick(now, got_data=bool(batches), can_read=can_read)
            if settings.until_idle and idle_for >= settings.until_idle:
                if self._caught_up():
                    log.info("idle for %.1f s, at the end of %d partition(s): stopping", idle_for,
                             len(self.partitions))
                    break
                self.idle.restart(now)  # records left to read, or no answer: not idle
            self._housekeeping(now)
            for tp, records in batches.items():
                state = self.partitions.get(tp)
                if state is None:
                    continue  # revoked while these were in flight
                for record in records:
                    if record.offset < state.next_offset:
                        continue  # already in the restored state
                    self.handle(state, record)
                    if settings.max_events and self.handled >= settings.max_events:
                        self.stopping = True
                        break
                self._maybe_checkpoint(tp, state)
                if self.stopping:
                    break
        self.close()
        return 2 if self.fatal else 0

    def _housekeeping(self, now: float) -> None:
        """Between polls: snapshot metrics, retry blocked checkpoints, apply control commands,
        check the broker."""
        if now - self._last_snapshot >= SNAPSHOT_SECONDS:
            self._last_snapshot = now
            self.take_snapshots()
        if self.blocked and now - self._last_retry >= CHECKPOINT_RETRY_SECONDS:
            self._last_retry = now
            self.checkpoint(list(self.blocked))
        if self.control is not None and now - self._last_control_poll >= 1.0:
            self._last_control_poll = now
            if self.control.poll():
                for tp, state in self.partitions.items():
                    if self.control.apply(state.engine, tp.partition):
                        state.changed = True
                        if state.unsaved_since is None:
                            state.unsaved_since = time.time()
        joining = self._joining_since
        if (joining is not None and self.settings.rejoin_deadline and self.broker_ok
                and now - joining >= self.settings.rejoin_deadline):
            self._rebuild_consumer(now - joining)
        if now - self._last_broker_check >= BROKER_CHECK_SECONDS:
            self._last_broker_check = now
            self._check_broker()

    def _check_broker(self) -> None:
        """Ask the broker for the end offsets of the owned partitions (or, owning none, of
        the topic's): it answers (ready, exact lag) or it does not (not ready until it does).
        Checked with or without partitions: a worker that lost its partitions in an outage
        must still see the broker return, or its rejoin deadline stays disarmed."""
        probe = list(self.partitions) or [TopicPartition(self.settings.topic, p) for p in self._topic_partitions]
        if not probe:
            return
        try:
            self.end_offsets = self.consumer.end_offsets(probe, timeout_ms=3000)
        except Exception as exc:  # KafkaTimeoutError and friends: the broker is away
            if self.broker_ok:
                log.warning("broker not answering (%s): not ready until it does", type(exc).__name__)
            self.broker_ok = False
            return
        if not self.broker_ok:
            log.info("broker answering again")
        self.broker_ok = True
        self._broker_seen = time.monotonic()

    def _caught_up(self) -> bool:
        """The broker answers and every owned partition has been read to its end offset.
        A quiet poll alone is no proof: a blocked flush, an outage or a fenced fetch look
        the same from here."""
        self._check_broker()
        return self.broker_ok and all(state.next_offset >= self.end_offsets.get(tp, float("inf"))
                                      for tp, state in self.partitions.items())

    def handle(self, state: PartitionState, record) -> None:
        """One Kafka record: decode, predict-then-learn, publish. Never raises for bad input."""
        settings = self.settings
        self.handled += 1
        if not state.events_since_checkpoint and state.unsaved_since is None:
            state.unsaved_since = time.time()
        state.events_since_checkpoint += 1
        state.next_offset = record.offset + 1
        timed = self.handled % TIMING_SAMPLE == 0
        started = time.perf_counter() if timed else 0.0
        try:
            event = decode_event(record.value)
            # The record's time, but never later than ours: producers set it too.
            wall, stamp = time.time(), record.timestamp
            check_future_skew(event, min(stamp / 1000.0, wall) if stamp and stamp > 0 else wall,
                              settings.max_future_skew)
        except InvalidEvent as exc:
            self._dead_letter(state, record, f"invalid event: {exc}")
            return
        except Exception as exc:  # a decoder bug must not take the worker down with it
            self._dead_letter(state, record, f"decode error: {type(exc).__name__}: {exc}")
            return
        if timed:
            decoded = time.perf_counter()
            self.decode_seconds.observe(decoded - started)
        engine = state.engine
        try:
            score = engine.process(event, record.offset)
        except Exception as exc:  # e.g. a raw feature the model cannot take: the event, not the worker, fails
            self._dead_letter(state, record, f"engine error: {type(exc).__name__}: {exc}")
            return
        if timed:
            self.process_seconds.observe(time.perf_counter() - decoded)
        if score is not None:
            self.outputs.prediction(record, event, score, engine.model_name, engine.model_version)

    def _dead_letter(self, state: PartitionState, record, reason: str) -> None:
        state.dead_lettered += 1
        log.debug("dead letter %s-%d@%d: %s", record.topic, record.partition, record.offset, reason)
        self.outputs.dead_letter(record, reason)

    # -- durability ------------------------------------------------------------------

    def _maybe_checkpoint(self, tp: TopicPartition, state: PartitionState) -> None:
        settings = self.settings
        if state.events_since_checkpoint and (
            state.events_since_checkpoint >= settings.checkpoints.every
            or time.time() - state.checkpointed_at >= settings.checkpoints.seconds
        ):
            self.checkpoint([tp])

    def checkpoint(self, tps, commit_async: bool = False) -> None:
        """Flush outputs, write checkpoints durably, then commit their offsets to Kafka.

        Partitions with nothing new since their last checkpoint are skipped."""
        tps = [tp for tp in tps if tp in self.partitions and self.partitions[tp].needs_checkpoint]
        if not tps:
            return
        # Predictions and dead letters before the state that made them: a checkpoint may
        # only cover outputs the broker acknowledged. Otherwise pause and retry.
        try:
            confirmed = self.outputs.confirm(timeout=CONFIRM_SECONDS)
        except Exception as exc:  # never let an output failure take the worker down
            log.warning("confirming outputs: %s: %s", type(exc).__name__, exc)
            confirmed = False
        if not confirmed:
            self.checkpoint_failures.inc()
            if not self.outputs_blocked:
                log.error("outputs not acknowledged by the broker: checkpoint of %s postponed, partitions "
                          "paused until they are", sorted(tp.partition for tp in tps))
            self.outputs_blocked = True
            for tp in tps:
                if tp not in self.blocked:
                    self.consumer.pause(tp)
                self.blocked[tp] = "outputs not acknowledged"
            return
        if self.outputs_blocked:
            self.outputs_blocked = False
            log.info("outputs acknowledged again")
        offsets = {}
        for tp in tps:
            state = self.partitions[tp]
            state.engine.mark_good()  # a model gone non-finite goes back, never into a checkpoint
            try:
                self.store.save(state)
            except OSError as exc:
                # Learning further than the last durable checkpoint would risk more than it
                # gains: pause the partition and retry until the store takes writes again.
                self.checkpoint_failures.inc()
                if tp not in self.blocked:
                    log.error("checkpoint of partition %d failed: %s; partition paused until a checkpoint "
                              "succeeds (the last good checkpoint is untouched)", tp.partition, exc)
                    self.consumer.pause(tp)
                self.blocked[tp] = str(exc)
                continue
            self.checkpoints_written.inc()
            if self.blocked.pop(tp, None) is not None:
                self.consumer.resume(tp)
                log.info("checkpoint of partition %d succeeded again: resumed", tp.partition)
            offsets[tp] = OffsetAndMetadata(state.next_offset, "", -1)
        if offsets:
            try:
                if commit_async:
                    self.consumer.commit_async(offsets)
                else:
                    self.consumer.commit(offsets)
            except Exception as exc:  # committed offsets only serve monitoring: never fatal
                log.warning("offset commit failed (checkpoints are safe): %s", exc)

    def close(self) -> None:
        self.checkpoint(list(self.partitions))
        self.take_snapshots()
        self.consumer.close(autocommit=False)
        self.outputs.close()
        self.skipper.close()
        if self.control is not None:
            self.control.close()
        if isinstance(self.store, KafkaCheckpointStore):
            self.store.close()

    def ready(self) -> bool:
        """Owns partitions, can checkpoint them, and its loop polled recently."""
        now = time.monotonic()
        return (bool(self.partitions) and not self.blocked and not self.stopping and self.broker_ok
                and now - self._broker_seen < 3 * BROKER_CHECK_SECONDS and now - self.last_poll < 15.0)


_LATENCY_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)


def preflight(settings: WorkerSettings) -> None:
    """Check every setting, path and artifact before contacting the group: a worker that
    would crash in its rebalance callback would first take partitions from healthy ones.
    Raises ValueError, FileNotFoundError or an ArtifactError/SignatureError: one line."""
    s = settings  # each settings object checked its own ranges when it was built
    if s.artifacts and not Path(s.artifacts).is_dir():
        raise FileNotFoundError(f"--artifacts {s.artifacts}: no such directory")
    directory = Path(s.checkpoints.directory)
    if s.checkpoints.store == "dir" and directory.exists() and not directory.is_dir():
        raise ValueError(f"--checkpoints {directory} is not a directory")
    # What a new partition would start from, built once: the window, lateness, caps, catalog
    # names and the artifacts (loaded and verified) all checked here.
    try:
        new_engine(s)
    except ValueError as exc:
        raise ValueError(f"invalid engine settings: {exc}") from None


def new_engine(s: WorkerSettings):
    """A new partition's engine (from the artifacts, else fresh) and where it came from."""
    return build_engine(s.artifacts, s.engine, s.lineup, s.caps, s.adopt_artifact_settings)


def run_worker(settings: WorkerSettings) -> int:
    logging.basicConfig(level=getattr(logging, settings.log_level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # the Kafka client's INFO lines (about 100 per start) drown ours
        logging.getLogger("kafka").setLevel(logging.WARNING)
    preflight(settings)
    # Every prediction allocates a feature dict, and full collections walk the whole feature
    # state: collect young objects less often (BENCHMARKS.md measured up to +21% with gc off).
    gc.set_threshold(50_000, 50, 100)
    registry = CollectorRegistry()
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
    worker = Worker(settings, registry)
    holder.append(worker)
    if server is not None:
        server.start()
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, server.port)

    def stop(signum, _frame):
        log.info("signal %d: checkpointing and stopping", signum)
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.stop()
        log.info("handled %d events", worker.handled)
