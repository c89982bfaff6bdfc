"""Worker-level metrics read at scrape time: consumer lag, checkpoint age, assignment.

The per-model metrics (rolling accuracy/recall/F1, confusion counters, outcomes)
come from `shopstream.exporter.EngineCollector`; this adds what only the Kafka side
knows. Lag uses the high watermark of the consumer's last fetch and the end offsets the worker
checks every few seconds, so scraping never calls the broker.
"""

from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class WorkerCollector:
    def __init__(self, worker):
        self.worker = worker

    def describe(self):
        return []

    def collect(self):
        worker = self.worker
        lag = GaugeMetricFamily("shopstream_consumer_lag", "Messages behind the partition's end",
                                labels=["partition"])
        age = GaugeMetricFamily("shopstream_checkpoint_age_seconds",
                                "Seconds since the oldest change no checkpoint holds yet (0: nothing unsaved)",
                                labels=["partition"])
        offset = GaugeMetricFamily("shopstream_next_offset", "Next offset to process", labels=["partition"])
        blocked = GaugeMetricFamily("shopstream_checkpoint_blocked",
                                    "1 while a partition is paused because its checkpoint cannot be written",
                                    labels=["partition"])
        now = time.time()
        owned = list(worker.partitions.items())  # a copy: the loop may change the dict meanwhile
        for tp, state in owned:
            label = [str(tp.partition)]
            # the later of the last fetch's high watermark and the last end-offset check
            ends = [end for end in (worker.consumer.highwater(tp), worker.end_offsets.get(tp)) if end is not None]
            if ends:
                lag.add_metric(label, max(0, max(ends) - state.next_offset))
            unsaved = state.unsaved_since
            age.add_metric(label, 0.0 if unsaved is None else max(0.0, now - unsaved))
            offset.add_metric(label, state.next_offset)
            blocked.add_metric(label, 1.0 if tp in worker.blocked else 0.0)
        assigned = GaugeMetricFamily("shopstream_assigned_partitions", "Partitions this worker owns")
        assigned.add_metric([], len(owned))
        handled = GaugeMetricFamily("shopstream_worker_handled_events", "Events handled since this process started")
        handled.add_metric([], worker.handled)
        broker = GaugeMetricFamily("shopstream_broker_up",
                                   "1 if the broker answered the worker's last check (every 5 s), else 0")
        broker.add_metric([], 1.0 if worker.broker_ok else 0.0)
        outputs = CounterMetricFamily("shopstream_outputs", "Predictions and dead letters that needed more than "
                                      "one try: failed (not acknowledged), resent, truncated (a dead letter cut "
                                      "to fit), producer_rebuilds", labels=["outcome"])
        for outcome, count in dict(worker.outputs.counts).items():
            outputs.add_metric([outcome], count)
        corrupt = CounterMetricFamily("shopstream_corrupt_records_skipped",
                                      "Records in batches the Kafka client could not parse, skipped and dead-lettered")
        corrupt.add_metric([], worker.skipper.skipped_records)
        unacked = GaugeMetricFamily("shopstream_outputs_blocked",
                                    "1 while checkpoints wait for outputs the broker has not acknowledged")
        unacked.add_metric([], 1.0 if worker.outputs_blocked else 0.0)
        commands = CounterMetricFamily("shopstream_control_commands", "Control commands by action and outcome "
                                       "(applied or rejected), counted per partition", labels=["action", "outcome"])
        if worker.control is not None:
            for (action, outcome), count in dict(worker.control.counts).items():
                commands.add_metric([action, outcome], count)
        yield from (lag, age, offset, blocked, assigned, handled, broker, outputs, corrupt, unacked, commands)
