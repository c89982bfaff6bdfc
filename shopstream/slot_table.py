"""Tables whose rows are slots in columns, oldest first, with a cap (`SlotTable`); rows of
counts (`CountTable`: the shop features' users, products and brands).

Why not a dict of row lists: after a checkpoint forks the worker, the first write to each page
shared with the child costs the loop a copy (copy-on-write), and in CPython reading an object
writes its reference count. A row kept as a list of objects in an `OrderedDict` costs a page per
object read, and `OrderedDict.move_to_end` writes three list nodes on random pages (BENCHMARKS.md,
*The API on librdkafka*, 13-15). Here a row is a slot: its numbers sit at the slot in one array
per column (512 to a page), the dict from key to slot holds slot ints made together (about 126
to a page), and the order is a doubly linked list of slots in two arrays.

Order and limits are those of the `OrderedDict` with a cap these tables replace (`_Capped` in
features.py), exactly: a new key goes last (`add`), `touch` moves one last (`move_to_end`), and
the oldest go first past the cap, counted in `evicted`.

>>> users = CountTable(cap=2, width=2)
>>> u1 = users.add("u1"); users.columns[1][u1] += 1
>>> u2 = users.add("u2"); u3 = users.add("u3")      # past the cap: the oldest goes
>>> list(users.items()), users.evicted, "u1" in users
([('u2', [0, 0]), ('u3', [0, 0])], 1, False)
"""

from __future__ import annotations

from array import array
from typing import Iterator

NONE = -1           # no slot: the list's ends
_GROWTH = 4_096     # slots added at a time (and their ints made together)


class SlotTable:
    """Keys in slots, in order, with a cap. Subclasses hold the rows' columns, indexed by slot:
    arrays of 8-byte numbers (`_numbers`, zero in a new row) and lists of objects (`_objects`,
    None in a new row); `index` gives a key's slot. Every class of them has `__slots__`: no
    `__dict__` that pickling could ask for (on CPython 3.11-3.12 that slows every later attribute
    load of the object, and the features load these per event: `model_state.py`)."""

    __slots__ = ("cap", "evicted", "index", "keys", "older", "newer", "oldest", "newest", "_free")

    def __init__(self, cap: int):
        self.cap = cap
        self.evicted = 0
        self.index: dict = {}
        self.keys: list = []            # slot -> key (None: a free slot)
        self.older, self.newer = array("q"), array("q")   # the order's links
        self.oldest = self.newest = NONE
        self._free: list = []           # free slots' ints, the lowest last

    def _numbers(self) -> tuple[array, ...]:
        return ()

    def _objects(self) -> tuple[list, ...]:
        return ()

    def _row(self, slot: int) -> list:
        """A copy of the row at `slot`, as the `OrderedDict` held it."""
        raise NotImplementedError

    def _fill(self, slot: int, row) -> None:
        """Set the row at `slot` from such a copy."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key) -> bool:
        return key in self.index

    def __getitem__(self, key) -> list:
        """A copy of `key`'s row (for tests and reading; the features use the columns)."""
        return self._row(self.index[key])

    def __eq__(self, other) -> bool:
        """Equal rows in the same order, cap and evictions (as `OrderedDict`s compare), whatever the slots."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.cap, self.evicted, len(self)) == (other.cap, other.evicted, len(other)) and \
            list(self.items()) == list(other.items())

    __hash__ = None   # type: ignore[assignment]  # mutable, compared by value

    def items(self) -> Iterator[tuple]:
        """(key, row) from the oldest to the newest (`__getitem__`'s rows)."""
        slot, keys, newer = self.oldest, self.keys, self.newer
        while slot != NONE:
            yield keys[slot], self._row(slot)
            slot = newer[slot]

    def add(self, key) -> int:
        """A new `key` (known absent) as the newest, its numbers 0 and objects None; the oldest
        past the cap are evicted first. Returns its slot."""
        while len(self.index) >= self.cap:
            self._drop_oldest()
            self.evicted += 1
        slot = self._take(key)
        for column in self._numbers():
            column[slot] = 0
        return slot

    def _take(self, key) -> int:
        """A free slot for `key`, linked as the newest."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.index[key] = slot
        self.keys[slot] = key
        newest = self.newest
        self.older[slot], self.newer[slot] = newest, NONE
        if newest == NONE:
            self.oldest = slot
        else:
            self.newer[newest] = slot
        self.newest = slot
        return slot

    def touch(self, slot: int) -> None:
        """Make `slot` the newest."""
        newest = self.newest
        if slot == newest:
            return
        older, newer = self.older, self.newer
        before, after = older[slot], newer[slot]   # after exists: slot is not the newest
        if before == NONE:
            self.oldest = after
        else:
            newer[before] = after
        older[after] = before
        older[slot], newer[slot] = newest, NONE
        newer[newest] = slot
        self.newest = slot

    def _drop_oldest(self) -> None:
        slot = self.oldest
        after = self.newer[slot]
        self._free.append(self.index.pop(self.keys[slot]))   # the slot's own int, kept with its neighbours
        self.keys[slot] = None
        for column in self._objects():
            column[slot] = None
        self.oldest = after
        if after == NONE:
            self.newest = NONE
        else:
            self.older[after] = NONE

    def _grow(self) -> None:
        """Room for more slots: up to `_GROWTH` (never past the cap), their ints made in one run."""
        start = len(self.keys)
        count = max(1, min(_GROWTH, self.cap - start))
        self.keys += [None] * count
        for objects in self._objects():
            objects += [None] * count
        zeros = bytes(8 * count)   # 0.0 and 0 alike: every number column's items are 8 bytes
        for column in (self.older, self.newer, *self._numbers()):
            column.frombytes(zeros)
        self._free.extend(range(start + count - 1, start - 1, -1))

    def fill(self, rows, evicted: int = 0) -> "SlotTable":
        """This empty table filled with (key, row) rows, the oldest first (an `OrderedDict` with a
        cap pickled before these tables: every row kept, as it was); returns it."""
        for key, row in rows:
            self._fill(self._take(key), row)
        self.evicted = evicted
        return self

    def __getstate__(self) -> dict:
        # The columns as they are (a restored table has the same slots, so it goes on exactly as
        # the uninterrupted one); the index is rebuilt from the keys.
        names = [name for cls in type(self).__mro__ for name in getattr(cls, "__slots__", ())]
        return {name: getattr(self, name) for name in names if name != "index"}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        slots = list(range(len(self.keys)))   # every slot's int made anew, together
        self.index = {key: slots[slot] for slot, key in enumerate(self.keys) if key is not None}
        self._free = [slots[slot] for slot in self._free]


class CountTable(SlotTable):
    """Rows of `width` counts (ints): `columns[i][slot]` is the row's i-th count.

    >>> products = CountTable(cap=10, width=3)
    >>> p = products.add("p1"); products.columns[0][p] += 2
    >>> products["p1"], products.index["p1"] == p
    ([2, 0, 0], True)
    """

    __slots__ = ("columns",)

    def __init__(self, cap: int, width: int):
        super().__init__(cap)
        self.columns = tuple(array("q") for _ in range(width))

    def _numbers(self) -> tuple[array, ...]:
        return self.columns

    def _row(self, slot: int) -> list:
        return [column[slot] for column in self.columns]

    def _fill(self, slot: int, row) -> None:
        for column, count in zip(self.columns, row):
            column[slot] = count
