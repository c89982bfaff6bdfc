"""Where a corrupt record batch ends (stream/corrupt.py), without a broker: readability is a
batch's, so the probes are stood in for by which offsets sit in corrupt batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from stream import corrupt
from stream.corrupt import CorruptBatchSkipper


class Probed(CorruptBatchSkipper):
    """The skipper over a partition of `end` offsets whose `bad` ones sit in corrupt batches."""

    def __init__(self, bad: set, end: int):
        super().__init__({}, SimpleNamespace(dead_letter_range=lambda *args: self.letters.append(args[2:4])))
        self.bad, self.end, self.letters, self.probes = bad, end, [], 0

    def readable(self, tp, offset: int) -> bool:
        self.probes += 1
        return offset not in self.bad

    def _consumer(self):
        return SimpleNamespace(end_offsets=lambda tps: {tps[0]: self.end})


@pytest.mark.parametrize("bad, end, skipped", [
    ({0} | set(range(5, 10)), 10, (0, 0)),   # a good batch between two bad ones: the binary search skipped 0..9
    (set(range(0, 4)), 10, (0, 3)),
    (set(range(0, 10)), 10, (0, 9)),         # to the end
    ({0, 1, 3}, 10, (0, 1)),
])
def test_a_corrupt_batch_ends_at_the_first_readable_offset_after_it(bad, end, skipped):
    skipper = Probed(bad, end)
    state = SimpleNamespace(next_offset=0, skipped=lambda count, next_offset: moved.append((count, next_offset)))
    moved: list = []
    seeks: list = []
    skipper.skip(SimpleNamespace(seek=lambda tp, offset: seeks.append(offset)), {TopicPartition("e", 0): state},
                 Exception("crc"))
    assert skipper.letters == [skipped] and seeks == [skipped[1] + 1]
    assert moved == [(skipped[1] + 1, skipped[1] + 1)]


def test_a_long_unreadable_run_is_searched_past_the_scan_limit(monkeypatch):
    monkeypatch.setattr(corrupt, "SCAN_LIMIT", 8)
    skipper = Probed(set(range(0, 1000)), 5000)
    assert skipper._first_readable(TopicPartition("e", 0), 0, 5000) == 1000
    assert skipper.probes < 30   # 8 one by one, then a binary search
