"""The shop features' sessions, one slot per session in a few columns (`SessionTable`).

A session's start, views, carts and last activity are numbers in arrays; its carted products
(a set) and its views per product (a dict) are made on first use. The recency order and the
cap are `SlotTable`'s (see slot_table.py for why columns): a session with activity moves last
(`touch`), the least recently active go first past the cap (`evicted`) and when idle past a
horizon (`expire`), as in the `OrderedDict` with a cap the sessions were kept in before.

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

from .slot_table import NONE, SlotTable


class SessionTable(SlotTable):
    """Sessions as slots. Read a row through `index` (session id -> slot) and the columns:
    `starts`, `views`, `carts`, `lasts` (arrays), `carted` (a set of products, None before the
    first cart) and `viewed` ({product: views}, None before the first view), each indexed by slot."""

    __slots__ = ("starts", "lasts", "views", "carts", "carted", "viewed")

    def __init__(self, cap: int):
        super().__init__(cap)
        self.starts, self.lasts = array("d"), array("d")
        self.views, self.carts = array("q"), array("q")
        self.carted: list = []
        self.viewed: list = []

    def _numbers(self) -> tuple[array, ...]:
        return (self.starts, self.lasts, self.views, self.carts)

    def _objects(self) -> tuple[list, ...]:
        return (self.carted, self.viewed)

    def _row(self, slot: int) -> list:
        """[start, views, carts, carted, viewed, last seen], as the `OrderedDict` held it."""
        return [self.starts[slot], self.views[slot], self.carts[slot], set(self.carted[slot] or ()),
                dict(self.viewed[slot] or {}), self.lasts[slot]]

    def _fill(self, slot: int, row) -> None:
        start, views, carts, carted, viewed, last = row
        self.starts[slot], self.views[slot], self.carts[slot], self.lasts[slot] = start, views, carts, last
        self.carted[slot], self.viewed[slot] = carted or None, viewed or None

    def add(self, key, t: float) -> int:  # type: ignore[override]  # a session starts at a time
        """A new session `key` (known absent) first seen at `t`, as the most recent; the least
        recent past the cap are evicted first. Returns its slot."""
        slot = super().add(key)   # evicts past the cap; views and carts 0
        self.starts[slot] = self.lasts[slot] = t
        return slot

    def expire(self, horizon: float) -> int:
        """Drop the sessions last seen before `horizon` (they sit at the old end); how many."""
        dropped, lasts = 0, self.lasts
        while self.oldest != NONE and lasts[self.oldest] < horizon:
            self._drop_oldest()
            dropped += 1
        return dropped
