"""Making partitions durable, in the one order that keeps exactly-once.

For the partitions due, `Checkpointer.save`:

1. waits (at most `CONFIRM_SECONDS`) until the broker acknowledged every prediction and
   dead letter sent so far: a checkpoint may only cover outputs that exist;
2. saves each partition's state to the store (a model gone non-finite goes back to its
   last good state first, never into a checkpoint);
3. commits the saved offsets to the consumer group, after the state is durable, so the
   group's offsets never run ahead of a model.

A step that fails pauses the partitions it concerns (`blocked`) instead of learning
further than the last durable state; `retry` tries again every `RETRY_SECONDS`, and a
success resumes them. Nothing here raises for a broker or a disk that fails.

Periodic checkpoints (`periodic`) of a large state are written from a forked copy of the
process (`CheckpointStore.begin_save`): the loop stops only for the fork and goes on
learning. A fork is not free either (page tables, then copy-on-write faults while the copy
writes): measured at 300k events of state, forked checkpoints raised p99 latency from 46-48
ms to 100-220 ms, while at 1M open predictions one written in the loop stops it 7.6 s
against 72 ms forked. So `auto` forks only once a checkpoint written in the loop took more
than `FORK_ABOVE_SECONDS`. Such a checkpoint counts, and its offset is committed, once `poll` sees it
finished; until then its partition takes no other checkpoint. A revocation or a shutdown
first waits for it (`settle`), then saves what was learned since, in the loop.
"""

from __future__ import annotations

import logging
import time

from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .checkpoints import CheckpointStore, PartitionState
from .settings import CheckpointSettings

log = logging.getLogger(__name__)
RETRY_SECONDS = 2.0
FORK_ABOVE_SECONDS = 0.2  # auto: a checkpoint in the loop this slow is worth a fork
# Long enough for a busy broker, short enough that an outage does not hold the loop (its
# broker checks, readiness and control commands) for the whole outage.
CONFIRM_SECONDS = 5.0
# A revocation or a stop waits this long for a background checkpoint before it kills the writer
# and saves in the loop (within compose's 60 s stop grace and the group's rebalance timeout).
SETTLE_SECONDS = 20.0


class Checkpointer:
    def __init__(self, store: CheckpointStore, outputs, settings: CheckpointSettings, registry: CollectorRegistry,
                 confirm_seconds: float = CONFIRM_SECONDS, retry_seconds: float = RETRY_SECONDS):
        self.store = store
        self.outputs = outputs
        self.settings = settings
        self.confirm_seconds = confirm_seconds
        self.retry_seconds = retry_seconds
        self.blocked: dict = {}        # partition -> why it is paused
        self.pending: dict = {}        # partition -> PendingSave being written in the background
        self.fork_above = FORK_ABOVE_SECONDS
        self.settle_seconds = SETTLE_SECONDS
        self._checkpoint_seen: dict = {}  # partition -> (its checkpointed_at, monotonic time it counts from)
        self._in_loop_seconds: dict = {}  # partition -> how long its last checkpoint in the loop took
        self.outputs_blocked = False   # the last save waited for outputs the broker did not acknowledge
        self._last_retry = 0.0
        self.written = Counter("shopstream_checkpoints", "Checkpoints written", registry=registry)
        self.failures = Counter("shopstream_checkpoint_failures", "Checkpoints that failed", registry=registry)
        registry.register(_StoreCollector(store))

    def due(self, tp, state: PartitionState) -> bool:
        """N events or T seconds since the partition's last checkpoint, none being written."""
        return tp not in self.pending and bool(state.events_since_checkpoint) and (
            state.events_since_checkpoint >= self.settings.every
            or self._age(tp, state) >= self.settings.seconds)

    def _age(self, tp, state: PartitionState) -> float:
        """Seconds since the partition's last checkpoint, on this worker's monotonic clock, from
        when it first saw that checkpoint: `checkpointed_at` may come from a previous owner whose
        clock ran ahead (an hour ahead postponed every time-based checkpoint by an hour)."""
        now = time.monotonic()
        seen = self._checkpoint_seen.get(tp)
        if seen is None or seen[0] != state.checkpointed_at:
            # A checkpoint new to this worker: its wall-clock age, if that is believable.
            age = min(max(time.time() - state.checkpointed_at, 0.0), self.settings.seconds)
            seen = self._checkpoint_seen[tp] = (state.checkpointed_at, now - age)
        return now - seen[1]

    def periodic(self, consumer, partitions: dict, tp) -> None:
        """A checkpoint because one is `due`: forked or in the loop, as `settings.background` says."""
        mode = self.settings.background
        forked = mode == "on" or (mode == "auto" and self._in_loop_seconds.get(tp, 0.0) > self.fork_above)
        self.save(consumer, partitions, [tp], background=forked)

    def retry(self, consumer, partitions: dict, now: float) -> None:
        """Try the paused partitions again, at most every `retry_seconds`."""
        if self.blocked and now - self._last_retry >= self.retry_seconds:
            self._last_retry = now
            self.save(consumer, partitions, list(self.blocked))

    def forget(self, tp) -> None:
        """A partition no longer owned is nobody's to retry."""
        self.blocked.pop(tp, None)
        self._checkpoint_seen.pop(tp, None)

    def save(self, consumer, partitions: dict, tps, commit_async: bool = False, background: bool = False) -> None:
        """Outputs, then state, then offsets, for the partitions of `tps` with anything unsaved.
        `commit_async` on kafka-python's IO thread (a rebalance), which must not block;
        `background`: begin the writes in forked copies, made durable by a later `poll`."""
        if not background:
            self.settle(consumer, tps, commit_async)
        tps = [tp for tp in tps if tp in partitions and tp not in self.pending and partitions[tp].needs_checkpoint]
        if not tps or not self._outputs_confirmed(consumer, tps):
            return
        offsets = {}
        for tp in tps:
            state = partitions[tp]
            state.engine.mark_good()
            try:
                if background:
                    self.pending[tp] = self.store.begin_save(state)
                    continue
                started = time.perf_counter()
                self.store.save(state)
                self._in_loop_seconds[tp] = time.perf_counter() - started
            except OSError as exc:
                self._failed(consumer, tp, exc)
                continue
            self._succeeded(consumer, tp)
            offsets[tp] = OffsetAndMetadata(state.next_offset, "", -1)
        self._commit(consumer, offsets, commit_async)

    def poll(self, consumer) -> None:
        """Make the background checkpoints that finished count: commit their offsets, or pause
        their partitions if they failed (a writer past `settings.timeout` is killed: failed).
        Never waits."""
        now = time.monotonic()
        finished = [tp for tp, pending in self.pending.items()
                    if pending.done() or now - pending.started >= self.settings.timeout]
        self._finish(consumer, finished, commit_async=False)

    def settle(self, consumer, tps, commit_async: bool = False) -> None:
        """Wait for the background checkpoints of `tps` (before a revocation, a shutdown or a
        blocking save of the same partitions), at most `settle_seconds`: the blocking save that
        follows writes everything the writer had, so a stalled writer never holds up a stop."""
        self._finish(consumer, [tp for tp in tps if tp in self.pending], commit_async, self.settle_seconds)

    def _finish(self, consumer, tps, commit_async: bool, wait_at_most: float = float("inf")) -> None:
        offsets = {}
        for tp in tps:
            pending = self.pending.pop(tp)
            left = self.settings.timeout - (time.monotonic() - pending.started)
            try:
                offset = pending.finish(timeout=max(0.0, min(left, wait_at_most)))
            except OSError as exc:
                self._failed(consumer, tp, exc)
                continue
            self._succeeded(consumer, tp)
            offsets[tp] = OffsetAndMetadata(offset, "", -1)
        self._commit(consumer, offsets, commit_async)

    def _failed(self, consumer, tp, exc: OSError) -> None:
        # Learning further than the last durable checkpoint would risk more than it gains.
        self.failures.inc()
        if tp not in self.blocked:
            log.error("checkpoint of partition %d failed: %s; partition paused until a checkpoint "
                      "succeeds (the last good checkpoint is untouched)", tp.partition, exc)
            consumer.pause(tp)
        self.blocked[tp] = str(exc)

    def _succeeded(self, consumer, tp) -> None:
        self.written.inc()
        if self.blocked.pop(tp, None) is not None:
            consumer.resume(tp)
            log.info("checkpoint of partition %d succeeded again: resumed", tp.partition)

    @staticmethod
    def _commit(consumer, offsets: dict, commit_async: bool) -> None:
        if not offsets:
            return
        try:
            if commit_async:
                consumer.commit_async(offsets)
            else:
                consumer.commit(offsets)
        except Exception as exc:  # committed offsets only serve monitoring and the restore witness
            log.warning("offset commit failed (checkpoints are safe): %s", exc)

    def _outputs_confirmed(self, consumer, tps) -> bool:
        try:
            confirmed = self.outputs.confirm(timeout=self.confirm_seconds)
        except Exception as exc:  # never let an output failure take the worker down
            log.warning("confirming outputs: %s: %s", type(exc).__name__, exc)
            confirmed = False
        if not confirmed:
            self.failures.inc()
            if not self.outputs_blocked:
                log.error("outputs not acknowledged by the broker: checkpoint of %s postponed, partitions "
                          "paused until they are", sorted(tp.partition for tp in tps))
            self.outputs_blocked = True
            for tp in tps:
                if tp not in self.blocked:
                    consumer.pause(tp)
                self.blocked[tp] = "outputs not acknowledged"
            return False
        if self.outputs_blocked:
            self.outputs_blocked = False
            log.info("outputs acknowledged again")
        return True


class _StoreCollector:
    """What a store holds that no checkpoint counts yet: the Kafka store's unacknowledged
    chunk bytes (bounded during an outage) and the writes it abandoned to keep them so."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        yield GaugeMetricFamily("shopstream_checkpoint_store_unacked_bytes",
                                "Checkpoint bytes sent to the store and not yet acknowledged",
                                value=getattr(self.store, "unacked_bytes", 0))
        yield CounterMetricFamily("shopstream_checkpoint_store_abandoned_writes",
                                  "Checkpoint writes whose unacknowledged records were dropped (the store did "
                                  "not acknowledge them in time)", value=getattr(self.store, "abandoned_writes", 0))
