"""Making partitions durable, in the one order that keeps exactly-once.

For the partitions due, `Checkpointer.save`:

1. waits (at most `CONFIRM_SECONDS`) until the broker acknowledged every prediction and
   dead letter sent so far: a checkpoint may only cover outputs that exist (a synced
   checkpoint's thread waits for that instead, before it publishes the file);
2. saves each partition's state to the store (a model gone non-finite goes back to its
   last good state first, never into a checkpoint);
3. commits the saved offsets to the consumer group, after the state is durable, so the
   group's offsets never run ahead of a model.

A step that fails pauses the partitions it concerns (`blocked`) instead of learning
further than the last durable state; `retry` tries again every `RETRY_SECONDS`, and a
success resumes them. Nothing here raises for a broker or a disk that fails. So with a
partition assigned whose checkpoint cannot be read (`hold`): it is paused, its restore
tried again at each retry, while the other partitions go on.

Periodic checkpoints (`periodic`) of a large state are written from a forked copy of the
process (`BackgroundCheckpoints.begin_save`): the loop stops only for the fork and goes on
learning. A fork is not free either (page tables, then copy-on-write faults while the copy
writes): measured at 300k events of state, forked checkpoints raised p99 latency from 46-48
ms to 100-220 ms, while at 1M open predictions one written in the loop stops it 7.6 s
against 72 ms forked. So `auto` pickles in the loop, and leaves the waits (the outputs'
acknowledgements with kafka-python, the fsync, the rename) to a thread (`checkpointing/syncing.py`)
when the store can (the directory store), until pickling a checkpoint would take the loop's thread
more than `FORK_ABOVE_SECONDS` of CPU; then it forks. "Would": the last checkpoint's cost (in the loop,
or a forked copy's CPU), scaled by the entries of state since (`Engine.state_size`); for a partition not
yet timed in this process, whether it holds `UNMEASURED_FORK_SIZE` entries (with a checkpoint every
120 s, a first one in the loop, at 1.3M events all within the attribution window, stopped it 8 s). A
state that shrinks, or stays small, goes back to the loop. CPU, not wall time: on a busy machine one save's
wall time can pass the bound while its work does not, and one such save used to make every later
checkpoint fork. A store that saves in the loop (the Kafka store) is judged on wall time.
A forked copy also takes a core while it pickles (about 0.3 s at 300k events of state): at 20,000
events/s, one every 10,000 events would keep a copy running most of the time, and a worker with one
core measured half its capacity (BENCHMARKS.md, "The API on librdkafka", 6). So after a forked
copy used D seconds of CPU, the partition's next one waits for `--checkpoint-every` events *and*
`FORK_REST_FACTOR` x D seconds: copies use at most a tenth of a core (`--checkpoint-seconds`
still bounds the gap). CPU, not duration: the copy runs at a lower priority
(`checkpointing/background.py` `CHILD_NICENESS`) and takes longer on a busy core without costing
more; it gets the worker's priority back past half `settings.timeout`, or when the worker waits.
A checkpoint written off the loop counts, and its offset is committed, once `poll` sees it
finished; until then its partition takes no other checkpoint. A revocation or a shutdown first
waits for it (`settle`), then saves what was learned since, in the loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shopstream.model_state import fresh_shell

from .checkpointing.background import PendingSave
from .checkpointing.stores import CheckpointStore
from .checkpointing.syncing import SyncingSave
from .partition import Partition
from .settings import CheckpointSettings

log = logging.getLogger(__name__)
RETRY_SECONDS = 2.0
FORK_ABOVE_SECONDS = 0.2  # auto: CPU seconds of a checkpoint in the loop that are worth a fork
#: auto, for a partition none of whose checkpoints was timed in this process: the entries of state
#: (`Engine.state_size`) from which pickling it in the loop could stop it past FORK_ABOVE_SECONDS. Entries
#: differ: measured in process (stop 36), 143,200 (100,000 recent ids, 43,195 feature rows) pickled in 0.047 s
#: of CPU, while 1M open predictions took 7.6 s (BENCHMARKS.md); a serving worker's first checkpoint after
#: 120 s, at 1.3M events all within the attribution window, stopped the loop 8 s. A first fork that was
#: not needed is undone at the next checkpoint (the copy's CPU is measured).
UNMEASURED_FORK_SIZE = 200_000
#: A cost measured on a state smaller than this is scaled as if measured at this size: on a tiny state the
#: fixed costs (the models, the broker's acknowledgements) would otherwise be scaled with the entries.
SCALE_FROM_SIZE = 10_000
FORK_REST_FACTOR = 9.0    # after a forked copy used D CPU s, the next waits 9 x D: copies use <= 1/10 of a core
# Long enough for a busy broker, short enough that an outage does not hold the loop (its
# broker checks, readiness and control commands) for the whole outage.
CONFIRM_SECONDS = 5.0
# A revocation or a stop waits this long for a background checkpoint before it kills the writer
# and saves in the loop (within compose's 60 s stop grace and the group's rebalance timeout).
SETTLE_SECONDS = 20.0


class Checkpointer:
    """Checkpoints the partitions of `partitions` (the worker's map, TopicPartition ->
    `Partition`), pausing and resuming them on `consumer()` (the consumer of the moment: a
    rebuilt group membership replaces it)."""

    def __init__(self, store: CheckpointStore, outputs, settings: CheckpointSettings, registry: CollectorRegistry,
                 partitions: Optional[dict[Any, Partition]] = None, consumer: Optional[Callable[[], Any]] = None,
                 confirm_seconds: float = CONFIRM_SECONDS, retry_seconds: float = RETRY_SECONDS):
        self.store = store
        self.outputs = outputs
        self.settings = settings
        self.partitions: dict[Any, Partition] = partitions if partitions is not None else {}
        self._consumer = consumer
        self.confirm_seconds = confirm_seconds
        self.retry_seconds = retry_seconds
        # partition -> its checkpoint being written off the loop (forked, or fsynced by a thread)
        self.pending: dict[Any, PendingSave | SyncingSave] = {}
        self.fork_above = FORK_ABOVE_SECONDS
        self.settle_seconds = SETTLE_SECONDS
        # partition -> (what its last checkpoint cost, the entries of state it held): in the loop, the loop
        # thread's CPU when a thread waits for the disk and the broker (synced), else wall time (the Kafka store
        # waits for acks); forked, the copy's CPU
        self._last_cost: dict = {}
        self._forking: set = set()    # partitions whose periodic checkpoints auto forks now (to log changes)
        self._forked_size: dict = {}  # partition -> the entries of state its forked copy holds
        self.fork_rest_factor = FORK_REST_FACTOR
        self._rest_until: dict = {}   # partition -> no forked copy counted in events before this (monotonic)
        self.outputs_blocked = False   # the last save waited for outputs the broker did not acknowledge
        self._last_retry = 0.0
        self.written = Counter("shopstream_checkpoints", "Checkpoints written", registry=registry)
        self.failures = Counter("shopstream_checkpoint_failures", "Checkpoints that failed", registry=registry)
        # partition -> (why its checkpoint cannot be read, what restores it): assigned, but held (`hold`)
        self.held: dict[Any, tuple[str, Callable[[], Any]]] = {}
        self.unreadable = Counter("shopstream_checkpoint_unreadable",
                                  "Restores of a partition whose checkpoint could not be read (the partition held)",
                                  registry=registry)
        Gauge("shopstream_checkpoint_held", "Partitions held, paused, because their checkpoint cannot be read",
              registry=registry).set_function(lambda: len(self.held))
        registry.register(_StoreCollector(store))

    @property
    def consumer(self):
        if self._consumer is None:
            raise RuntimeError("this Checkpointer was built without a consumer: it can save only through the store")
        return self._consumer()

    @property
    def blocked(self) -> dict:
        """Partition -> why it is paused, for the partitions paused because they cannot be checkpointed,
        or restored (`held`)."""
        blocked = {tp: p.paused_because for tp, p in self.partitions.items() if p.paused_because is not None}
        return {**blocked, **{tp: reason for tp, (reason, _) in self.held.items()}} if self.held else blocked

    def hold(self, tp, reason: str, again: Callable[[], Any]) -> None:
        """`tp` is assigned but its checkpoint cannot be read (`restore.CheckpointUnreadable`): paused,
        counted and said, and the worker's other partitions go on. Nothing of it is read, learned or
        saved meanwhile: its checkpoint stays the truth. `retry` calls `again` (the worker's restore of
        it, which takes it or holds it again); `release` lets go of it."""
        self.unreadable.inc()
        before = self.held.get(tp)
        self.held[tp] = (reason, again)
        if before is None or before[0] != reason:
            log.error("%s; partition held (paused, none of its records read) until it can be read, tried again "
                      "every %.0f s; the other partitions go on", reason, self.retry_seconds)
        self.consumer.pause(tp)

    def due(self, tp) -> bool:
        """N events (and the rest after a forked copy) or T seconds since the partition's last
        checkpoint, none being written."""
        partition = self.partitions.get(tp)
        return partition is not None and tp not in self.pending and bool(partition.events_since_checkpoint) and (
            (partition.events_since_checkpoint >= self.settings.every
             and (tp not in self._rest_until or time.monotonic() >= self._rest_until[tp]))
            or partition.checkpoint_age(at_most=self.settings.seconds) >= self.settings.seconds)

    def periodic(self, tp) -> None:
        """A checkpoint because one is `due`: forked, synced (pickled in the loop, made durable by a
        thread) or in the loop, as `settings.background` says (see the module's docstring)."""
        mode = self.settings.background
        forked = mode == "on" or (mode == "auto" and self._fork_pays(tp))
        self.save([tp], background=forked, synced=mode == "auto")

    def _fork_pays(self, tp) -> bool:
        """auto: whether pickling `tp` in the loop now would stop it longer than `fork_above`. The last
        checkpoint's cost (in the loop; or a forked copy's CPU, which pickled the same), scaled by the
        entries of state since (`Engine.state_size`); a partition not yet timed in this process (its
        first checkpoint, after a restore or a long gap): whether it has `UNMEASURED_FORK_SIZE` entries.
        A change of choice is logged."""
        size = self.partitions[tp].engine.state_size()
        measured = self._last_cost.get(tp)
        if measured is None:
            pays = size >= UNMEASURED_FORK_SIZE
            why = f"not yet timed, {size:,} entries of state"
        else:
            cost, at = measured
            estimate = cost * size / max(at, SCALE_FROM_SIZE)
            pays = estimate > self.fork_above
            why = f"{estimate:.2f} s expected in the loop ({cost:.2f} s at {at:,} entries of state, {size:,} now)"
        if pays != (tp in self._forking):
            (self._forking.add if pays else self._forking.discard)(tp)
            log.info("partition %d: %s: checkpoints %s", tp.partition, why,
                     "written by a forked copy" if pays else "pickled in the loop again")
        return pays

    def retry(self, now: float) -> None:
        """Try the paused partitions again, at most every `retry_seconds`."""
        blocked = self.blocked
        if blocked and now - self._last_retry >= self.retry_seconds:
            self._last_retry = now
            self.save(list(blocked))
            for tp, (_, again) in list(self.held.items()):
                self._restore_held(tp, again)

    def _restore_held(self, tp, again: Callable[[], Any]) -> None:
        # Resumed before the restore: a consumer that dropped records while paused seeks back on resume
        # (the librdkafka adapter), and the restore's own seek must come after that one.
        self.consumer.resume(tp)
        try:
            again()
        finally:
            if tp in self.partitions:
                self.held.pop(tp, None)
                log.info("partition %d: its checkpoint could be read: restored, resumed", tp.partition)
            else:   # held again, or refused (the worker stops): none of its records is read
                self.consumer.pause(tp)

    def release(self, tps, commit_async: bool = False) -> None:
        """Checkpoint the partitions of `tps`, then let go of them (revoked, or the consumer replaced)."""
        self.save(tps, commit_async)
        for tp in tps:
            self.partitions.pop(tp, None)
            self.held.pop(tp, None)
            self._last_cost.pop(tp, None)   # its next owner (maybe this worker) measures afresh
            self._forking.discard(tp)
            self._forked_size.pop(tp, None)
            self._rest_until.pop(tp, None)

    def save(self, tps, commit_async: bool = False, background: bool = False, synced: bool = False) -> None:
        """Outputs, then state, then offsets, for the partitions of `tps` with anything unsaved.
        `commit_async` in a rebalance callback: the commit is sent, not waited for;
        `background`: begin the writes in forked copies, made durable by a later `poll`;
        `synced` (the store permitting): pickle in the loop, fsync and rename in a thread, made
        durable by a later `poll` too."""
        if not (background or synced):
            self.settle(tps, commit_async)
        synced = synced and not background and hasattr(self.store, "begin_synced_save")
        partitions = self.partitions
        tps = [tp for tp in tps if tp in partitions and tp not in self.pending and partitions[tp].needs_checkpoint]
        if not tps:
            return
        # Synced: the thread waits for the outputs' acknowledgements, if it can (else the loop does).
        acknowledged = getattr(self.outputs, "acknowledgement", lambda: None)() if synced else None
        if acknowledged is None and not self._outputs_confirmed(tps):
            return
        offsets = {}
        for tp in tps:
            partition = partitions[tp]
            partition.engine.mark_good()
            try:
                if background:
                    self.pending[tp] = self.store.begin_save(partition)
                    self._forked_size[tp] = partition.engine.state_size()
                    continue
                if synced:
                    started = time.thread_time()
                    self.pending[tp] = self.store.begin_synced_save(  # type: ignore[attr-defined]
                        partition, acknowledged, self.confirm_seconds)
                    self._last_cost[tp] = (time.thread_time() - started, partition.engine.state_size())
                else:
                    started = time.perf_counter()
                    self.store.save(partition)
                    self._last_cost[tp] = (time.perf_counter() - started, partition.engine.state_size())
            except Exception as exc:   # the disk, or pickling (an object a bug left in the state): the same failure
                self._failed(tp, exc if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}")
                continue
            # Pickled in this process, the engine reads its attributes slowly from now on (CPython
            # 3.11-3.12, shopstream/model_state.py): the partition, its one holder, runs a shell of
            # it, the same state (the engine refreshes what it holds itself: `Engine._refresh`).
            partition.engine = fresh_shell(partition.engine)
            if synced:
                continue
            self._succeeded(tp)
            offsets[tp] = OffsetAndMetadata(partition.next_offset, "", -1)
        self._commit(offsets, commit_async)

    def poll(self) -> None:
        """Make the background checkpoints that finished count: commit their offsets, or pause
        their partitions if they failed (a writer past `settings.timeout` is killed: failed).
        Never waits: the commit is asynchronous too (committed offsets serve monitoring and the
        restore witness, and the checkpoint they follow is already durable; a commit waited for
        stopped the loop up to 15 ms under load)."""
        now = time.monotonic()
        timeout = self.settings.timeout
        finished = []
        for tp, pending in self.pending.items():
            if pending.done() or now - pending.started >= timeout:
                finished.append(tp)
            elif now - pending.started >= timeout / 2 and isinstance(pending, PendingSave):
                pending.hurry()   # a copy run long at its lower priority: before it is killed, the worker's
        self._finish(finished, commit_async=True)

    def settle(self, tps, commit_async: bool = False) -> None:
        """Wait for the background checkpoints of `tps` (before a revocation, a shutdown or a
        blocking save of the same partitions), at most `settle_seconds`: the blocking save that
        follows writes everything the writer had, so a stalled writer never holds up a stop."""
        self._finish([tp for tp in tps if tp in self.pending], commit_async, self.settle_seconds)

    def _finish(self, tps, commit_async: bool, wait_at_most: float = float("inf")) -> None:
        offsets = {}
        for tp in tps:
            pending = self.pending.pop(tp)
            left = self.settings.timeout - (time.monotonic() - pending.started)
            try:
                offset = pending.finish(timeout=max(0.0, min(left, wait_at_most)))
            except OSError as exc:
                if getattr(pending, "outputs_refused", False):   # as `_outputs_confirmed` would say
                    self.outputs_blocked = True
                self._failed(tp, exc)
                continue
            if getattr(pending, "acknowledged", False):
                self.outputs_blocked = False
            if isinstance(pending, PendingSave):   # a forked copy: the next one rests (FORK_REST_FACTOR)
                # its CPU time, not its duration: a copy that took long because it yielded the core
                # to the loop (CHILD_NICENESS) cost no more
                self._rest_until[tp] = time.monotonic() + self.fork_rest_factor * pending.child_cpu_s
                if tp in self._forked_size:   # what pickling it took: the next choice's measure
                    self._last_cost[tp] = (pending.child_cpu_s, self._forked_size.pop(tp))
            self._succeeded(tp)
            offsets[tp] = OffsetAndMetadata(offset, "", -1)
        self._commit(offsets, commit_async)

    def _pause(self, tp, reason: str) -> None:
        partition = self.partitions.get(tp)
        if partition is None:  # revoked while its checkpoint was being written
            return
        if partition.paused_because is None:
            self.consumer.pause(tp)
        partition.paused_because = reason

    def _failed(self, tp, exc: OSError | str) -> None:
        # Learning further than the last durable checkpoint would risk more than it gains.
        self.failures.inc()
        partition = self.partitions.get(tp)
        if partition is not None and partition.paused_because is None:
            log.error("checkpoint of partition %d failed: %s; partition paused until a checkpoint "
                      "succeeds (the last good checkpoint is untouched)", tp.partition, exc)
        self._pause(tp, str(exc))

    def _succeeded(self, tp) -> None:
        self.written.inc()
        partition = self.partitions.get(tp)
        if partition is not None and partition.paused_because is not None:
            partition.paused_because = None
            self.consumer.resume(tp)
            log.info("checkpoint of partition %d succeeded again: resumed", tp.partition)

    def _commit(self, offsets: dict, commit_async: bool) -> None:
        if not offsets:
            return
        try:
            if commit_async:
                self.consumer.commit_async(offsets)
            else:
                self.consumer.commit(offsets)
        except Exception as exc:  # committed offsets only serve monitoring and the restore witness
            log.warning("offset commit failed (checkpoints are safe): %s", exc)

    def _outputs_confirmed(self, tps) -> bool:
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
                self._pause(tp, "outputs not acknowledged")
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
