"""The engine's dedupe window: the last handled event ids, oldest first, each with the
champion's P(purchase) that was recorded for it (None if the event was not predicted).

A dict keeps the ids in the order they were handled (an id is added only when it is
not there) and a deque finds the oldest in O(1) (a dict's own first key slows down as
its head fills with deleted slots). It is pickled packed: the ids as one string (split on
NUL, or cut by their lengths if an id holds a NUL), the values as one list. As an
`OrderedDict` pickled item by item, 100,000 ids took 65 ms of an 80 ms checkpoint, which
the worker's loop waits for (BENCHMARKS.md, "The dedupe window in a checkpoint"). Ids
that are not all strings (an event id may be an int) are pickled as pairs.

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

from array import array
from collections import deque
from itertools import accumulate, chain
from typing import Iterable, Optional


class RecentIds(dict):
    """Event id -> recorded P(purchase) or None, oldest first; `add` evicts past `cap`.
    A dict itself, so the engine's `in` and `get` on every event are the dict's own."""

    __slots__ = ("_order",)

    def __init__(self, items: Iterable[tuple] = ()):
        super().__init__(items)
        self._order = deque(self)

    def add(self, event_id, p_true: Optional[float], cap: int) -> None:
        """Remember a handled event's id (not already here: the engine drops repeats)."""
        self[event_id] = p_true
        order = self._order
        order.append(event_id)
        while len(order) > cap:
            del self[order.popleft()]

    def __reduce__(self):
        ids = list(self)
        try:
            text = _SEPARATOR.join(ids)
        except TypeError:  # not all strings
            return (self.__class__, (list(self.items()),))
        # Split on the separator when no id holds it (a scan in C); else cut by the ids' lengths.
        lengths = None if text.count(_SEPARATOR) == len(ids) - 1 else array("I", map(len, ids))
        return (_unpack, (text, lengths, list(self.values())))


_SEPARATOR = "\x00"


def _unpack(text: str, lengths: Optional[array], values: list) -> RecentIds:
    if not values:
        return RecentIds()
    if lengths is None:
        return RecentIds(zip(text.split(_SEPARATOR), values))
    ends = list(accumulate(length + 1 for length in lengths))   # each id and the separator after it
    starts = chain((0,), ends)
    return RecentIds(zip(map(text.__getitem__, map(slice, starts, (end - 1 for end in ends))), values))
