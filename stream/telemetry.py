"""Worker-level metrics: consumer lag, checkpoint age, assignment, outputs, control commands.

The per-model metrics (rolling accuracy/recall/F1, confusion counters, outcomes)
come from `shopstream.exporter.EngineCollector`; this adds what only the Kafka side
knows. Both follow one threading rule: the poll loop copies its numbers into a frozen
snapshot (`WorkerSnapshot.of`, once a second and on close), and a scrape reads only that
snapshot, never the worker's live collaborators. Lag uses the high watermark of the
consumer's last fetch and the end offsets the worker checks every few seconds, so
neither the snapshot nor a scrape calls the broker.

>>> snapshot = WorkerSnapshot((PartitionGauges(0, lag=3, unsaved_since=None, next_offset=7, blocked=False),),
...                           handled=7, broker_ok=True, outputs={}, corrupt_skipped=0, outputs_blocked=False,
...                           control_commands={})
>>> families = {f.name: f for f in WorkerCollector(lambda: snapshot).collect()}
>>> families["shopstream_consumer_lag"].samples[0].value, families["shopstream_next_offset"].samples[0].value
(3, 7)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


@dataclass(frozen=True)
class PartitionGauges:
    """One owned partition's numbers at snapshot time."""

    partition: int
    lag: Optional[int]              # None: no high watermark or end offset known yet
    unsaved_since: Optional[float]  # wall time of the oldest change no checkpoint holds; None: all saved
    next_offset: int
    blocked: bool                   # paused because its checkpoint cannot be written


@dataclass(frozen=True)
class WorkerSnapshot:
    """Every worker-level number a scrape shows, copied on the loop's thread."""

    partitions: tuple[PartitionGauges, ...]
    handled: int
    broker_ok: bool
    outputs: dict
    corrupt_skipped: int
    outputs_blocked: bool
    control_commands: dict
    topic_partitions: int = 0   # the events topic's, as the worker's consumer last saw it (0: not yet known)
    offsets_gone: tuple[tuple[int, int], ...] = ()   # (partition, offsets resumed past: no longer in the log)
    record_keys: tuple[tuple[tuple[int, str], int], ...] = ()   # ((partition, key kind), sampled records)

    @classmethod
    def empty(cls) -> "WorkerSnapshot":
        return cls((), 0, False, {}, 0, False, {})

    @classmethod
    def of(cls, worker) -> "WorkerSnapshot":
        """Read `worker` (a `Worker`, or anything with its attributes): call on its loop's thread."""
        gauges = []
        for tp, state in worker.partitions.items():
            # the later of the last fetch's high watermark and the last end-offset check
            ends = [end for end in (worker.consumer.highwater(tp), worker.end_offsets.get(tp)) if end is not None]
            gauges.append(PartitionGauges(tp.partition, max(0, max(ends) - state.next_offset) if ends else None,
                                          state.unsaved_since, state.next_offset, tp in worker.blocked))
        control = worker.control
        membership = getattr(worker, "membership", None)
        return cls(tuple(gauges), worker.handled, worker.broker_ok, dict(worker.outputs.counts),
                   worker.skipper.skipped_records, worker.outputs_blocked,
                   dict(control.counts) if control is not None else {},
                   len(membership.topic_partitions) if membership is not None else 0,
                   tuple(sorted(getattr(worker, "offsets_gone", {}).items())),
                   tuple(sorted(getattr(worker, "record_keys", {}).items())))


class WorkerCollector:
    """Exports the `WorkerSnapshot` that `source()` returns when scraped."""

    def __init__(self, source: Callable[[], WorkerSnapshot]):
        self.source = source

    def describe(self):
        return []

    def collect(self):
        snapshot = self.source()
        lag = GaugeMetricFamily("shopstream_consumer_lag", "Messages behind the partition's end",
                                labels=["partition"])
        age = GaugeMetricFamily("shopstream_checkpoint_age_seconds",
                                "Seconds since the oldest change no checkpoint holds yet (0: nothing unsaved)",
                                labels=["partition"])
        offset = GaugeMetricFamily("shopstream_next_offset", "Next offset to process", labels=["partition"])
        blocked = GaugeMetricFamily("shopstream_checkpoint_blocked",
                                    "1 while a partition is paused because its checkpoint cannot be written",
                                    labels=["partition"])
        now = time.time()  # the age grows between snapshots, as the unsaved progress does
        for gauges in snapshot.partitions:
            label = [str(gauges.partition)]
            if gauges.lag is not None:
                lag.add_metric(label, gauges.lag)
            unsaved = gauges.unsaved_since
            age.add_metric(label, 0.0 if unsaved is None else max(0.0, now - unsaved))
            offset.add_metric(label, gauges.next_offset)
            blocked.add_metric(label, 1.0 if gauges.blocked else 0.0)
        assigned = GaugeMetricFamily("shopstream_assigned_partitions", "Partitions this worker owns")
        assigned.add_metric([], len(snapshot.partitions))
        # A change means keys moved to other partitions (README, "Adding partitions"): worth an alert.
        topic = GaugeMetricFamily("shopstream_topic_partitions", "Partitions of the events topic, as this worker's "
                                  "consumer last saw them (0: not yet known)")
        topic.add_metric([], snapshot.topic_partitions)
        gone = CounterMetricFamily("shopstream_offsets_gone", "Offsets a partition was resumed past because the log "
                                   "no longer held them (retention or delete-records outran the group; transaction "
                                   "markers count too): records never read", labels=["partition"])
        for partition, count in snapshot.offsets_gone:
            gone.add_metric([str(partition)], count)
        keys = CounterMetricFamily("shopstream_record_keys_sampled", "Records (one in 16) by their Kafka key: user_id "
                                   "(as the label join needs), none or other (a session's events may then land "
                                   "on different partitions); only with more than one partition",
                                   labels=["partition", "key"])
        for (partition, kind), count in snapshot.record_keys:
            keys.add_metric([str(partition), kind], count)
        handled = GaugeMetricFamily("shopstream_worker_handled_events", "Events handled since this process started")
        handled.add_metric([], snapshot.handled)
        broker = GaugeMetricFamily("shopstream_broker_up",
                                   "1 if the broker answered the worker's last check (every 5 s), else 0")
        broker.add_metric([], 1.0 if snapshot.broker_ok else 0.0)
        outputs = CounterMetricFamily("shopstream_outputs", "Predictions and dead letters that needed more than "
                                      "one try: failed (not acknowledged), resent, truncated (a dead letter cut "
                                      "to fit), producer_rebuilds, send_timeouts (a topic without metadata: "
                                      "its outputs held unsent)", labels=["outcome"])
        for outcome, count in snapshot.outputs.items():
            outputs.add_metric([outcome], count)
        corrupt = CounterMetricFamily("shopstream_corrupt_records_skipped",
                                      "Records in batches the Kafka client could not parse, skipped and dead-lettered")
        corrupt.add_metric([], snapshot.corrupt_skipped)
        unacked = GaugeMetricFamily("shopstream_outputs_blocked",
                                    "1 while checkpoints wait for outputs the broker has not acknowledged")
        unacked.add_metric([], 1.0 if snapshot.outputs_blocked else 0.0)
        commands = CounterMetricFamily("shopstream_control_commands", "Control commands by action and outcome "
                                       "(applied or rejected), counted per partition", labels=["action", "outcome"])
        for (action, outcome), count in snapshot.control_commands.items():
            commands.add_metric([action, outcome], count)
        yield from (lag, age, offset, blocked, assigned, topic, gone, keys, handled, broker, outputs, corrupt,
                    unacked, commands)
