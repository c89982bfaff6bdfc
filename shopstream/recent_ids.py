"""The engine's dedupe window: the last handled event ids, oldest first, each with the
champion's P(purchase) that was recorded for it (None if the event was not predicted).

A dict keeps the ids in the order they were handled (an id is added only when it is
not there) and a deque finds the oldest in O(1) (a dict's own first key slows down as
its head fills with deleted slots).

A checkpoint must hold the whole window, and the worker's loop waits for it. Pickled
item by item (an `OrderedDict`), 100,000 ids took 65 ms of an 80 ms checkpoint; joined
at checkpoint time, still 34-42 ms in a worker after 300,000 events, because each id
string sits somewhere else in a large heap (BENCHMARKS.md, "The dedupe window in a
checkpoint"). So the window also keeps itself packed as it grows: every `CHUNK` ids
are joined (NUL between them) into one string, their scores into one array (NaN for
None; a recorded score is never NaN), while they are fresh in the cache. A checkpoint
joins a hundred chunks, not a hundred thousand strings. An id that is not a string or
holds a NUL (neither passes `events.validate`) makes the window pickle as pairs.

>>> import pickle
>>> ids = RecentIds()
>>> for event_id, p_true in (("e1", 0.25), ("e-2", None), ("e3", 0.5)):
...     ids.add(event_id, p_true, cap=2)
>>> copy = pickle.loads(pickle.dumps(ids))
>>> list(copy.items()), "e1" in copy, copy.get("e3"), len(copy)
([('e-2', None), ('e3', 0.5)], False, 0.5, 2)
>>> list(pickle.loads(pickle.dumps(RecentIds([(7, 0.5), ("e", 0.1)]))).items())
[(7, 0.5), ('e', 0.1)]
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import Iterable, Optional

#: Ids joined per packed chunk.
CHUNK = 1024
_SEPARATOR = "\x00"
_NONE = math.nan   # a score of None, in the packed arrays


class RecentIds(dict):
    """Event id -> recorded P(purchase) or None, oldest first; `add` evicts past `cap`.
    A dict itself, so the engine's `in` and `get` on every event are the dict's own."""

    __slots__ = ("_order", "_fresh", "_fresh_scores", "_packed", "_dropped", "_packable")

    def __init__(self, items: Iterable[tuple] = ()):
        super().__init__()
        self._order: deque = deque()
        self._fresh: list = []              # ids added since the last chunk was packed
        self._fresh_scores = array("d")
        self._packed: deque = deque()       # [ids joined, their scores, how many], oldest first
        self._dropped = 0                   # ids evicted from the head of the oldest chunk (or of _fresh)
        self._packable = True
        for event_id, p_true in items:
            if event_id not in self:
                self.add(event_id, p_true, cap=len(self) + 1)

    def add(self, event_id, p_true: Optional[float], cap: int) -> None:
        """Remember a handled event's id (not already here: the engine drops repeats)."""
        self[event_id] = p_true
        self._order.append(event_id)
        if self._packable:
            if event_id.__class__ is not str or _SEPARATOR in event_id:
                self._packable = False
                self._fresh, self._fresh_scores, self._packed = [], array("d"), deque()
            else:
                self._fresh.append(event_id)
                self._fresh_scores.append(_NONE if p_true is None else p_true)
                if len(self._fresh) >= CHUNK:
                    self._pack_fresh()
        order = self._order
        while len(order) > cap:
            del self[order.popleft()]
            if self._packable:
                self._drop_oldest()

    def _pack_fresh(self) -> None:
        self._packed.append([_SEPARATOR.join(self._fresh), self._fresh_scores, len(self._fresh)])
        self._fresh, self._fresh_scores = [], array("d")

    def _drop_oldest(self) -> None:
        self._dropped += 1
        packed = self._packed
        if packed and self._dropped == packed[0][2]:
            packed.popleft()
            self._dropped = 0
        elif not packed and self._dropped:   # the window is smaller than a chunk: trim _fresh itself
            del self._fresh[:self._dropped], self._fresh_scores[:self._dropped]
            self._dropped = 0

    def __reduce__(self):
        if not self._packable or not self:
            return (self.__class__, (list(self.items()),))
        chunks = [[text, scores] for text, scores, _ in self._packed]
        if self._fresh:
            chunks.append([_SEPARATOR.join(self._fresh), self._fresh_scores])
        if self._dropped:   # the oldest chunk's first ids were evicted
            text, scores = chunks[0]
            cut = -1
            for _ in range(self._dropped):
                cut = text.index(_SEPARATOR, cut + 1)
            chunks[0] = [text[cut + 1:], scores[self._dropped:]]
        scores = array("d")
        for _, part in chunks:
            scores.extend(part)
        return (_unpack, (_SEPARATOR.join(text for text, _ in chunks), None, scores))


def _unpack(text: str, lengths: Optional[array], scores) -> RecentIds:
    """The window a checkpoint holds: ids split on NUL (or cut by `lengths`, as written on
    2026-12-03 before the window was packed as it grew) and their scores."""
    if not len(scores):
        return RecentIds()
    if lengths is None:
        ids = text.split(_SEPARATOR)
    else:
        ids, start = [], 0
        for length in lengths:
            ids.append(text[start:start + length])
            start += length + 1
    if isinstance(scores, array):
        scores = [None if score != score else score for score in scores]   # NaN: None
    return RecentIds(zip(ids, scores))
