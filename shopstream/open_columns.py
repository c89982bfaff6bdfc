"""A checkpoint's batch of open predictions, column by column (`OpenColumns`).

A checkpoint writes the joiner's open predictions in batches of (deadline, seq, prediction)
entries (`LabelJoiner.entries_apart`). Pickled as objects, each entry costs pickle a Python call
(`OpenPrediction.__getstate__`) and a memo entry for each of its five objects. As columns, a
whole checkpoint after 1M events at the serving feed's pace (751,991 open) took 3.2 s, against
6.0 s pickling entries and 9.5 s before `LabelJoiner.entries_apart` (BENCHMARKS.md, *The API on
librdkafka*, 13): the time a forked copy shares the worker's pages.

`OpenColumns.of(entries)` instead reads each field of every entry with C-level `map` calls
and keeps it as one array, string or bytes: deadlines, seqs and event times as doubles and
64-bit ints, the keys' sessions and products joined with NUL, the packed bytes of every
prediction joined (`OpenPrediction.compact`) with their lengths, the champion slots, the
`PackedLayout` each reads through (as an index into the batch's few layouts) and the refs as
a list. `entries()` gives back equal entries: same keys, floats bit for bit, same layouts.

A batch the columns cannot hold exactly (a key that is not two NUL-free strings, a
prediction not packed, a time that is not a float, ...) gets None from `of`: the checkpoint
then pickles that batch as entries, as before.

>>> from shopstream.labels import OpenPrediction
>>> opened = OpenPrediction(("s1", "p9"), 30.0, {"a": 1.5}, [(0.25, False)], 0, 17)
>>> opened.compact({})
>>> opened.seq = 4
>>> columns = OpenColumns.of([(90.0, 4, opened)])
>>> [(d, s, p.key, p.event_time, p.x, p.outputs, p.ref, p.seq) for d, s, p in columns.entries()]
[(90.0, 4, ('s1', 'p9'), 30.0, {'a': 1.5}, ((0.25, False),), 17, 4)]
>>> OpenColumns.of([(90.0, 4, OpenPrediction(("s1", 7), 30.0, None, []))]) is None
True
"""

from __future__ import annotations

from array import array
from operator import attrgetter, itemgetter
from typing import Optional

from .labels import OpenPrediction, PackedLayout

_SEPARATOR = "\x00"
_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)
_key, _time, _packed, _layout = attrgetter("key"), attrgetter("event_time"), attrgetter("_x"), attrgetter("_outputs")
_champion, _ref, _own_seq = attrgetter("champion"), attrgetter("ref"), attrgetter("seq")


def _joined(strings: list) -> Optional[str]:
    """The strings joined with NUL, or None unless every one is a str without NUL."""
    if {*map(type, strings)} != {str}:
        return None
    joined = _SEPARATOR.join(strings)
    return joined if joined.count(_SEPARATOR) == len(strings) - 1 else None


class OpenColumns:
    """A batch of open-prediction entries as columns (see the module docstring)."""

    __slots__ = ("deadlines", "seqs", "times", "sessions", "products", "packed", "lengths", "layouts",
                 "layout_ids", "champions", "refs")

    def __init__(self, deadlines: bytes, seqs: bytes, times: bytes, sessions: str, products: str, packed: bytes,
                 lengths: bytes, layouts: tuple, layout_ids: bytes, champions: bytes, refs: list):
        self.deadlines, self.seqs, self.times = deadlines, seqs, times
        self.sessions, self.products = sessions, products
        self.packed, self.lengths, self.layouts, self.layout_ids = packed, lengths, layouts, layout_ids
        self.champions, self.refs = champions, refs

    def __reduce__(self):
        return OpenColumns, tuple(getattr(self, name) for name in self.__slots__)

    @classmethod
    def of(cls, entries: list) -> Optional["OpenColumns"]:
        """The columns of `entries` (live (deadline, seq, prediction) entries, packed), or None when
        they cannot hold every entry exactly (then pickle the entries themselves)."""
        if not entries:
            return None
        predictions = list(map(_third, entries))
        if {*map(type, predictions)} != {OpenPrediction}:
            return None
        deadlines, seqs = list(map(_first, entries)), list(map(_second, entries))
        times, packed = list(map(_time, predictions)), list(map(_packed, predictions))
        champions, keys = list(map(_champion, predictions)), list(map(_key, predictions))
        if ({*map(type, deadlines)} != {float} or {*map(type, times)} != {float} or {*map(type, seqs)} != {int}
                or {*map(type, packed)} != {bytes} or {*map(type, champions)} != {int}
                or {*map(type, keys)} != {tuple} or {*map(len, keys)} != {2}
                or not 0 <= min(champions) <= max(champions) < 1 << 15):
            return None
        own_seqs = list(map(_own_seq, predictions))
        if {*map(type, own_seqs)} != {int} or own_seqs != seqs:
            return None
        layout_of = list(map(_layout, predictions))
        layouts = tuple(dict.fromkeys(layout_of))   # PackedLayout hashes by identity: the batch's few
        if {*map(type, layouts)} != {PackedLayout} or len(layouts) >= 1 << 16:
            return None
        sessions, products = _joined(list(map(_first, keys))), _joined(list(map(_second, keys)))
        if sessions is None or products is None:
            return None
        index = {id(layout): i for i, layout in enumerate(layouts)}
        try:
            seq_array = array("q", seqs)
        except OverflowError:
            return None
        return cls(array("d", deadlines).tobytes(), seq_array.tobytes(), array("d", times).tobytes(), sessions,
                   products, b"".join(packed), array("Q", map(len, packed)).tobytes(), layouts,
                   array("H", map(index.__getitem__, map(id, layout_of))).tobytes(), array("h", champions).tobytes(),
                   list(map(_ref, predictions)))

    def entries(self) -> list[tuple]:
        """The (deadline, seq, prediction) entries, as `of` read them."""
        deadlines, seqs, times = array("d"), array("q"), array("d")
        lengths, layout_ids, champions = array("Q"), array("H"), array("h")
        numbers = ((deadlines, self.deadlines), (seqs, self.seqs), (times, self.times), (lengths, self.lengths),
                   (layout_ids, self.layout_ids), (champions, self.champions))
        if not (self.sessions.__class__ is self.products.__class__ is str and self.packed.__class__ is bytes
                and self.refs.__class__ is list and self.layouts.__class__ is tuple
                and all(layout.__class__ is PackedLayout for layout in self.layouts)
                and all(raw.__class__ is bytes for _, raw in numbers)):
            raise ValueError("a batch of open predictions holds a column of the wrong type")
        for column, raw in numbers:
            column.frombytes(raw)   # ValueError unless a whole number of items
        sessions, products = self.sessions.split(_SEPARATOR), self.products.split(_SEPARATOR)
        count = len(deadlines)
        if not (len(seqs) == len(times) == len(lengths) == len(layout_ids) == len(champions) == len(sessions)
                == len(products) == len(self.refs) == count) or sum(lengths) != len(self.packed):
            raise ValueError("the columns of a batch of open predictions differ in length")
        if count and (max(layout_ids) >= len(self.layouts) or len(set(seqs)) != count):
            raise ValueError("a batch of open predictions names a layout it does not hold, or a seq twice")
        layouts, packed, refs = self.layouts, self.packed, self.refs
        sizes = [layout.size for layout in layouts]
        entries = []
        end = 0
        for i in range(count):
            start, end = end, end + lengths[i]
            if lengths[i] != sizes[layout_ids[i]]:
                raise ValueError(f"open prediction {i} of a batch: {lengths[i]} bytes, its layout reads "
                                 f"{sizes[layout_ids[i]]}")
            # packed: the bytes and their layout in place of the features and outputs (`compact`'s result)
            prediction = OpenPrediction((sessions[i], products[i]), times[i], packed[start:end],  # type: ignore[arg-type]
                                        layouts[layout_ids[i]], champions[i], refs[i])
            prediction.seq = seqs[i]
            entries.append((deadlines[i], seqs[i], prediction))
        return entries
