"""Skip a record batch that kafka-python cannot parse, instead of crashing on it forever.

kafka-python raises `CorruptRecordError` from poll() for a batch it cannot read (a
failed CRC, a header key that is not UTF-8, ...; stream/record_reader.py adds the batches it
cannot decompress), names neither partition nor offset, and the position does not move: the
reader raises it again at every poll until a seek (kafka-python's own spun in poll instead). A worker that let it
through would crash-loop at that offset. `CorruptBatchSkipper` finds the partition and
the batch with a consumer of its own (assigned, not in the group): the partition whose
next offset cannot be read is the one, and the batch ends at the first later offset that
can be read (a fetch from inside a batch parses the batch from its start: every offset of
it is unreadable; found offset by offset, as a good batch may lie between two bad ones).
The worker's consumer then seeks past it, and one dead letter names the partition and the
offsets skipped; the partition's state counts each as dead-lettered.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer
from kafka.errors import CorruptRecordError

from .record_reader import read_records_in_one_pass

log = logging.getLogger(__name__)

PROBE_SECONDS = 5.0
SCAN_LIMIT = 10_000   # offsets probed one by one after an unreadable one (see `_first_readable`)


class CorruptBatchSkipper:
    def __init__(self, options: dict, outputs):
        self.options = options
        self.outputs = outputs
        self.skipped_batches = 0
        self.skipped_records = 0
        self._probe = None

    def _consumer(self) -> KafkaConsumer:
        if self._probe is None:
            self._probe = KafkaConsumer(group_id=None, enable_auto_commit=False, max_poll_records=1,
                                        **self.options)
            read_records_in_one_pass(self._probe)   # read as the worker reads: the two agree on what cannot be
        return self._probe

    def readable(self, tp, offset: int) -> bool:
        """True if a fetch from `offset` parses (or there is nothing left to read)."""
        probe = self._consumer()
        probe.assign([tp])
        probe.seek(tp, offset)
        deadline = time.monotonic() + PROBE_SECONDS
        while time.monotonic() < deadline:
            try:
                if probe.poll(timeout_ms=200, max_records=1):
                    return True
            except CorruptRecordError:
                return False
            if probe.position(tp) >= probe.end_offsets([tp])[tp]:
                return True
        return True  # nothing came back in time: treat as readable, poll() will say otherwise

    def pass_over(self, consumer, tp, start: int):
        """None if a fetch from `start` parses; else seek `consumer` to the first later offset that
        does (or the end) and return it."""
        if self.readable(tp, start):
            return None
        end = self._first_readable(tp, start, self._consumer().end_offsets([tp])[tp])
        consumer.seek(tp, end)
        return end

    def skip(self, consumer, partitions: dict, exc: Exception) -> None:
        """`partitions`: TopicPartition -> `Partition` of the worker's owned partitions."""
        for tp, state in list(partitions.items()):
            start = state.next_offset
            high = self.pass_over(consumer, tp, start)
            if high is None:
                continue
            reason = f"unreadable record batch: {type(exc).__name__}: {exc}"
            log.error("partition %d: offsets %d..%d cannot be parsed (%s): skipped, one dead letter",
                      tp.partition, start, high - 1, exc)
            self.outputs.dead_letter_range(tp.topic, tp.partition, start, high - 1, reason)
            count = high - start
            state.skipped(count, high)
            self.skipped_batches += 1
            self.skipped_records += count
            return
        # No owned partition fails from its next offset: the error came from a batch in
        # flight for a partition that has since moved. Poll again.
        log.warning("a corrupt batch could not be located (%s): polling again", exc)
        time.sleep(0.5)

    def _first_readable(self, tp, start: int, end: int) -> int:
        """The first offset after `start` (unreadable) that can be read, or `end`. Readability is the
        batch's, and a good batch may sit between two corrupt ones: a binary search over the whole
        range found some boundary, and skipped the good records before it. So offset by offset, up to
        `SCAN_LIMIT` probes (a corrupt batch is rarely longer); past them, a binary search over the rest."""
        scan_to = min(end, start + 1 + SCAN_LIMIT)
        for offset in range(start + 1, scan_to):
            if self.readable(tp, offset):
                return offset
        low, high = scan_to - 1, end  # low unreadable, high readable (the end always is)
        while high - low > 1:
            middle = (low + high) // 2
            if self.readable(tp, middle):
                high = middle
            else:
                low = middle
        return high

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
