"""The shop features' sessions, one slot per session in a few arrays (`SessionTable`).

Why not a dict of row lists: after a checkpoint forks the worker, the first write to each page
shared with the child costs the loop a copy (copy-on-write), and in CPython reading an object
writes its reference count. A session kept as [start, views, carts, carted, viewed, last seen]
in an `OrderedDict` cost a page per object read and `move_to_end` wrote three list nodes on
random pages: 3.8 of the engine's 7.4 faults per event after a fork (BENCHMARKS.md, *The API on
librdkafka*, 13). Here a session's numbers sit at its slot in one array each (512 to a page), the
dict from session id to slot holds slot ints made together (about 126 to a page), and the
recency order is a doubly linked list of slots in two arrays: a touch writes four numbers.

Order and limits are `_Capped`'s (an `OrderedDict` with a cap) exactly: a new session goes last,
a session with activity moves last (`touch`), the least recently active go first past the cap
(counted in `evicted`) and when idle past a horizon (`expire`).

>>> table = SessionTable(cap=2)
>>> a = table.add("a", 10.0); b = table.add("b", 11.0)
>>> table.views[a] += 3
>>> table.touch(a); c = table.add("c", 12.0)          # "b" is now the least recent: evicted
>>> [key for key, _ in table.items()], table.evicted, table["a"]
(['a', 'c'], 1, [10.0, 3, 0, set(), {}, 10.0])
>>> table.expire(horizon=11.0), list(table.index)      # "a" was last seen at 10.0
(1, ['c'])
"""

from __future__ import annotations

from array import array
from typing import Iterator

_NONE = -1          # no slot: the list's ends
_GROWTH = 4_096     # slots added at a time (and their ints made together)


class SessionTable:
    """Sessions as slots (see the module docstring). Read a row through `index` (session id ->
    slot) and the columns: `starts`, `views`, `carts`, `lasts` (arrays), `carted` (a set of
    products, None before the first cart) and `viewed` ({product: views}, None before the first
    view), each indexed by slot."""

    def __init__(self, cap: int):
        self.cap = cap
        self.evicted = 0
        self.index: dict = {}
        self.keys: list = []            # slot -> session id (None: a free slot)
        self.starts, self.lasts = array("d"), array("d")
        self.views, self.carts = array("q"), array("q")
        self.carted: list = []
        self.viewed: list = []
        self.older, self.newer = array("q"), array("q")   # the recency list's links
        self.oldest = self.newest = _NONE
        self._free: list = []           # free slots' ints, the lowest last

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key) -> bool:
        return key in self.index

    def __getitem__(self, key) -> list:
        """A copy of `key`'s row: [start, views, carts, carted, viewed, last seen] (for tests and
        reading; the features use the columns)."""
        return self._row(self.index[key])

    def __eq__(self, other) -> bool:
        """Equal rows in the same order, cap and evictions (as `OrderedDict`s compare), whatever the slots."""
        if not isinstance(other, SessionTable):
            return NotImplemented
        return (self.cap, self.evicted, len(self)) == (other.cap, other.evicted, len(other)) and \
            list(self.items()) == list(other.items())

    __hash__ = None   # type: ignore[assignment]  # mutable, compared by value

    def items(self) -> Iterator[tuple]:
        """(session id, row) from the least to the most recently active (`__getitem__`'s rows)."""
        slot, keys, newer = self.oldest, self.keys, self.newer
        while slot != _NONE:
            yield keys[slot], self._row(slot)
            slot = newer[slot]

    def _row(self, slot: int) -> list:
        return [self.starts[slot], self.views[slot], self.carts[slot], set(self.carted[slot] or ()),
                dict(self.viewed[slot] or {}), self.lasts[slot]]

    def add(self, key, t: float) -> int:
        """A new session `key` (known absent) first seen at `t`, as the most recent; the least
        recent past the cap are evicted first. Returns its slot."""
        while len(self.index) >= self.cap:
            self._drop_oldest()
            self.evicted += 1
        slot = self._take(key)
        self.starts[slot] = self.lasts[slot] = t
        self.views[slot] = self.carts[slot] = 0
        return slot

    def _take(self, key) -> int:
        """A free slot for `key`, linked as the most recent."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.index[key] = slot
        self.keys[slot] = key
        newest = self.newest
        self.older[slot], self.newer[slot] = newest, _NONE
        if newest == _NONE:
            self.oldest = slot
        else:
            self.newer[newest] = slot
        self.newest = slot
        return slot

    def touch(self, slot: int) -> None:
        """Make `slot` the most recently active."""
        newest = self.newest
        if slot == newest:
            return
        older, newer = self.older, self.newer
        before, after = older[slot], newer[slot]   # after exists: slot is not the newest
        if before == _NONE:
            self.oldest = after
        else:
            newer[before] = after
        older[after] = before
        older[slot], newer[slot] = newest, _NONE
        newer[newest] = slot
        self.newest = slot

    def expire(self, horizon: float) -> int:
        """Drop the sessions last seen before `horizon` (they sit at the old end); how many."""
        dropped, lasts = 0, self.lasts
        while self.oldest != _NONE and lasts[self.oldest] < horizon:
            self._drop_oldest()
            dropped += 1
        return dropped

    def _drop_oldest(self) -> None:
        slot = self.oldest
        after = self.newer[slot]
        self._free.append(self.index.pop(self.keys[slot]))   # the slot's own int, kept with its neighbours
        self.keys[slot] = self.carted[slot] = self.viewed[slot] = None
        self.oldest = after
        if after == _NONE:
            self.newest = _NONE
        else:
            self.older[after] = _NONE

    def _grow(self) -> None:
        """Room for more slots: up to `_GROWTH` (never past the cap), their ints made in one run."""
        start = len(self.keys)
        count = max(1, min(_GROWTH, self.cap - start))
        self.keys += [None] * count
        self.carted += [None] * count
        self.viewed += [None] * count
        zeros = bytes(8 * count)   # 0.0 and 0 alike: every column's items are 8 bytes
        for column in (self.starts, self.lasts, self.views, self.carts, self.older, self.newer):
            column.frombytes(zeros)
        self._free.extend(range(start + count - 1, start - 1, -1))

    def __reduce__(self):
        # The columns as they are (a restored table has the same slots, so it goes on exactly as
        # the uninterrupted one); the index and the free list are rebuilt from the keys.
        return (_restored, (self.cap, self.evicted, self.keys, self.starts, self.lasts, self.views, self.carts,
                            self.carted, self.viewed, self.older, self.newer, self.oldest, self.newest,
                            list(self._free)))

    @classmethod
    def of_rows(cls, cap: int, evicted: int, rows) -> "SessionTable":
        """A table of (session id, [start, views, carts, carted, viewed, last seen]) rows, the
        least recently active first: the `_Capped` sessions of feature state pickled before."""
        table = cls(cap)
        for key, (start, views, carts, carted, viewed, last) in rows:   # every row kept, as it was
            slot = table._take(key)
            table.starts[slot], table.views[slot], table.carts[slot], table.lasts[slot] = start, views, carts, last
            table.carted[slot], table.viewed[slot] = carted or None, viewed or None
        table.evicted = evicted
        return table


def _restored(cap: int, evicted: int, keys: list, starts: array, lasts: array, views: array, carts: array,
              carted: list, viewed: list, older: array, newer: array, oldest: int, newest: int,
              free: list) -> SessionTable:
    """A pickled `SessionTable` (its `__reduce__`), with every slot's int made anew, together."""
    table = SessionTable(cap)
    slots = list(range(len(keys)))
    table.index = {key: slots[slot] for slot, key in enumerate(keys) if key is not None}
    table._free = [slots[slot] for slot in free]
    table.keys, table.carted, table.viewed = keys, carted, viewed
    table.starts, table.lasts = starts, lasts
    table.views, table.carts, table.older, table.newer = views, carts, older, newer
    table.oldest, table.newest, table.evicted = oldest, newest, evicted
    return table

