"""The label rule, in one place: what makes a label, and the joiner that applies it.

What an event is to the rule (`label_role`, which the engine asks for every event):

- an event carrying an explicit ``label`` is predicted and resolved with it at once;
- a view or cart (`PREDICTION_POINTS`) of product P in session S opens a prediction "will S
  buy P within the attribution window?" (keyed by `prediction_key`);
- a purchase of (S, P) inside [event time, event time + window] resolves it positive;
- anything else only feeds the features.

Once the watermark (max event time seen minus the allowed lateness) passes the window's
end, an open prediction expires: it resolves negative. Decisions made on purpose:

- a purchase that precedes the view in event time (out of order) does not resolve it;
- a prediction point already past the watermark when it arrives is *late*: it opens
  nothing (its label would be decided before anything could be learned from it);
- a purchase that resolves nothing is an *orphan*; a duplicate purchase is one too;
- past `max_open` open predictions, the oldest is *evicted* (dropped, never learned);
- an event more than `max_jump` seconds ahead of the latest event time is *ahead*: it is
  handled, but moves the watermark only once ahead events of distinct sources (users) have
  outnumbered the others by `JUMP_QUORUM` (then to the median of their latest times). A
  minority of sources whose clock runs hours fast so never makes honest events late; a real
  gap in the stream (a quiet night) delays expiry until `JUMP_QUORUM` users are seen after it.

>>> joiner = LabelJoiner(window=60.0)
>>> joiner.open(OpenPrediction(("s1", "p1"), 0.0, {}, [(0.9, True)]))
True
>>> [p.key for p in joiner.purchase(("s1", "p1"), 30.0)]
[('s1', 'p1')]
>>> joiner.open(OpenPrediction(("s1", "p2"), 10.0, {}, [(0.1, False)]))
True
>>> joiner.advance(69.0), [p.key for p in joiner.advance(71.0)]
([], [('s1', 'p2')])
"""

from __future__ import annotations

import gc
import heapq
import math
import struct
from collections import deque
from contextlib import contextmanager
from itertools import islice
from typing import Hashable, Iterator, Optional, cast

from .config import EngineConfig
from .events import Event

#: Event types that open a prediction: "will this session buy this product?"
PREDICTION_POINTS = frozenset({"view", "cart"})
#: What an event is to the label rule (`label_role`).
LABELLED, PURCHASE, PREDICTION_POINT, OTHER = "labelled", "purchase", "prediction_point", "other"


def label_role(event: Event) -> str:
    """`LABELLED` (it carries its label), `PURCHASE` (it resolves open predictions positive),
    `PREDICTION_POINT` (it opens one) or `OTHER` (features only).

    >>> label_role(Event(0.0, "purchase", "p", "u", "s", label=False)), label_role(Event(0.0, "cart", "p", "u", "s"))
    ('labelled', 'prediction_point')
    """
    if event.label is not None:
        return LABELLED
    kind = event.event_type
    if kind == "purchase":
        return PURCHASE
    return PREDICTION_POINT if kind in PREDICTION_POINTS else OTHER


def prediction_key(event: Event) -> tuple:
    """What a prediction is about and a purchase resolves: (session, product)."""
    return (event.user_session, event.product_id)


_FLOATS = {float}
_LABEL_CODES = {None: 0, False: 1, True: 2}
_LABELS = (None, False, True)


class PackedLayout:
    """How the bytes of a packed open prediction read back (`OpenPrediction.compact`): its
    feature names, shared by every prediction with the same names, and how many slots'
    outputs follow the features. The bytes: the n feature values and the k slots' P(True)
    as native doubles (array("d")'s layout: every float bit kept), then one label code per
    slot (0: None, 1: False, 2: True).

    >>> layout = PackedLayout(("a", "b"), 1)
    >>> packed = layout.pack((1.5, -0.0), ((0.25, True),))
    >>> len(packed), layout.features(packed), layout.outputs(packed)
    (25, {'a': 1.5, 'b': -0.0}, ((0.25, True),))
    >>> layout.unpack(packed) == (layout.features(packed), layout.outputs(packed))
    True
    """

    __slots__ = ("names", "slots", "_whole", "_features", "_outputs")

    def __init__(self, names: tuple, slots: int):
        self.names = names
        self.slots = slots
        n = len(names)
        self._whole = struct.Struct(f"{n + slots}d{slots}B")
        self._features = struct.Struct(f"{n}d")
        self._outputs = struct.Struct(f"{8 * n}x{slots}d{slots}B")   # skips the features

    @property
    def size(self) -> int:
        """Bytes of a prediction packed through this layout."""
        return self._whole.size

    def pack(self, values, outputs) -> bytes:
        """`values`: the feature values (floats), `outputs`: each slot's (float P(True), label)."""
        return self._whole.pack(*values, *[p for p, _ in outputs], *[_LABEL_CODES[y] for _, y in outputs])

    def features(self, packed: bytes) -> dict:
        return dict(zip(self.names, self._features.unpack_from(packed)))

    def unpack(self, packed: bytes) -> tuple[dict, tuple]:
        """(`features`, `outputs`) at once: one unpack of the bytes."""
        numbers = self._whole.unpack(packed)
        n = len(self.names)
        k = n + self.slots
        return dict(zip(self.names, numbers)), tuple(zip(numbers[n:k], [_LABELS[code] for code in numbers[k:]]))

    def outputs(self, packed: bytes) -> tuple:
        k = self.slots
        numbers = self._outputs.unpack_from(packed)
        return tuple(zip(numbers[:k], [_LABELS[code] for code in numbers[k:]]))

    def __reduce__(self):
        return PackedLayout, (self.names, self.slots)


def _packable(outputs) -> bool:
    """Every (P(True), label) is a float and None, False or True: the bytes hold them exactly."""
    for p_true, y_pred in outputs:
        if p_true.__class__ is not float or not (y_pred is None or y_pred is True or y_pred is False):
            return False
    return True
#: How many more ahead events than others move the watermark across a jump (`advance`).
JUMP_QUORUM = 8


class OpenPrediction:
    """A prediction recorded before its label is known: on which features, when, and what
    each model slot said: `outputs[i]` is slot i's (P(True), predicted label). A label
    of None means the model could not predict yet (River's empty `predict_proba_one`):
    it is learned but not scored, as in river.evaluate. `champion` is the index of the
    slot whose prediction was published.

    While it waits for its label (from `PACK_AFTER` opens on), the joiner packs it (`compact`):
    `_x` becomes one bytes object holding the feature values and every slot's output (8 bytes a
    number, no float objects, no dict, no tuples), and `_outputs` the `PackedLayout` that reads
    them back, shared by every prediction with the same feature names and slot count. Reading `x`
    and `outputs` gives back values equal to the originals, key order and float bits included. A
    prediction with any feature value that is not a float, or an output that is not (float, None,
    False or True), stays unpacked: a dict and a tuple. `deadline` (event time + the window) and
    `seq` (its place in opening order) are the joiner's."""

    __slots__ = ("key", "event_time", "_x", "_outputs", "champion", "ref", "seq", "deadline")

    def __init__(self, key: Hashable, event_time: float, x: Optional[dict], outputs: list,
                 champion: int = 0, ref: object = None):
        self.key = key
        self.event_time = event_time
        self._x: dict | bytes | None = x
        self._outputs: list | tuple | PackedLayout = outputs
        self.champion = champion
        self.ref = ref
        self.seq = 0
        self.deadline = 0.0   # set by the joiner that opens it (not pickled: a checkpoint's entries hold it)

    # (no typing.cast on these paths: a function call per read, and Optional[...] built each time)
    @property
    def x(self) -> Optional[dict]:
        x = self._x
        if x.__class__ is bytes:
            return self._outputs.features(x)   # type: ignore[union-attr]  # packed: a PackedLayout
        return x   # type: ignore[return-value]  # unpacked: a dict or None

    @x.setter
    def x(self, value: Optional[dict]) -> None:
        if self._outputs.__class__ is PackedLayout:
            self._outputs = self.outputs   # the bytes that held them are going
        self._x = value

    @property
    def outputs(self) -> list | tuple:
        outputs = self._outputs
        if outputs.__class__ is PackedLayout:
            return outputs.outputs(self._x)   # type: ignore[arg-type]  # packed: bytes
        return outputs   # type: ignore[return-value]  # unpacked: a list or tuple

    @outputs.setter
    def outputs(self, value: list | tuple) -> None:
        if self._outputs.__class__ is PackedLayout:
            self._x = self.x
        self._outputs = value

    def compact(self, layouts: dict, floats_only: bool = False) -> None:
        """Pack `x` and the outputs into one bytes object read through a layout shared from
        `layouts` (see the class docstring); `floats_only`: the feature set guarantees float
        features, so they are not checked."""
        outputs = self._outputs
        x = self._x
        if outputs.__class__ is PackedLayout:
            return
        if x.__class__ is not dict or not x or not (floats_only or {*map(type, x.values())} == _FLOATS) \
                or not _packable(outputs):
            if outputs.__class__ is list:
                self._outputs = tuple(outputs)   # 48 bytes for one slot, not a list's 88
            return
        names, slots = tuple(x), len(cast(tuple, outputs))
        layout = layouts.get((names, slots))
        if layout is None:
            layout = layouts[names, slots] = PackedLayout(names, slots)
        self._x = layout.pack(x.values(), outputs)
        self._outputs = layout

    @property
    def p_true(self) -> float:
        outputs = self._outputs
        if outputs.__class__ is PackedLayout:
            outputs = outputs.outputs(self._x)   # type: ignore[arg-type]  # packed: bytes
        return outputs[self.champion][0]   # type: ignore[index]

    def __getstate__(self):
        return tuple(getattr(self, name) for name in _PICKLED)

    def __setstate__(self, state):
        for name, value in zip(_PICKLED, state):
            setattr(self, name, value)
        self.deadline = 0.0
        x = self._x
        if x.__class__ is tuple:   # packed before PackedLayout: (names, array("d") bytes of the values)
            names, packed = cast(tuple, x)
            self._x = dict(zip(names, memoryview(packed).cast("d")))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while the block makes objects that all live on past it (a batch of
    entry tuples: each would count towards a collection that frees none of them)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _before(entry: tuple, deadline: float, seq: int) -> bool:
    """A heap entry (deadline, seq, prediction) comes up before (`deadline`, `seq`)."""
    return entry[0] < deadline or (entry[0] == deadline and entry[1] < seq)


_PICKLED = OpenPrediction.__slots__[:-1]   # what a pickled prediction holds: all but its deadline

_APART: set = set()   # ids of the joiners inside `entries_apart` (their pickle leaves the entries out)
_SHARDS = 64  # the key index is cut in shards: growing one resizes a 64th of it, not all of it
#: An open prediction's features are packed (`OpenPrediction.compact`) once this many later
#: predictions were opened: one resolved sooner (a purchase, a short window, a quiet partition)
#: never pays the packing nor the reading back. Costs at most this many unpacked dicts (~2 KB each).
PACK_AFTER = 1024


class LabelJoiner:
    """Open predictions keyed by (session, product), resolved by purchase or expiry.

    Each open prediction is in two places: the deadline queue and the key index (64 dicts, by
    hash of the key; a key maps to its prediction, or to a list when several are open for it).
    The queue is two: the predictions opened in deadline order (no earlier deadline than the
    last one there: most of them, all of them on a time-ordered history) wait in a deque, oldest
    first, as themselves (their deadline and seq are slots of theirs: no entry tuple each; the
    deadline kept, not summed from event_time at expiry, which would touch the decoded event's
    float and fault on its page after a fork), and the others in a heap of (deadline, seq,
    prediction) entries; the next to expire is the earlier (deadline, then seq) of their two
    heads, so they expire in the order one heap gave, without a heap's O(log n) per entry. A
    removed prediction gets seq -1, and is skipped when it comes up (and dropped from a head at
    once: `oldest_open_time` reads it). Checkpoints pickle the live entries only, as one list of
    (deadline, seq, prediction) (`_deadlines`, heapified on load: the format from before the
    deque); the key index is rebuilt on load (hashes differ between processes)."""

    #: The jump guard (`advance`); class defaults for joiners restored from older checkpoints.
    max_jump = 0.0
    _ahead = 0                  # ahead events minus others since the streak began (never < 0)
    _ahead_min = math.inf       # the earliest ahead event time of the streak
    _ahead_sources: dict = {}   # source -> its latest ahead event time, in the streak (replaced, never mutated)

    def __init__(self, window: float, lateness: float = EngineConfig.lateness, max_open: int = EngineConfig.max_open,
                 max_jump: float = EngineConfig.max_time_jump):
        if window <= 0 or lateness < 0 or max_open < 1 or not max_jump >= 0:
            raise ValueError("window must be > 0, lateness >= 0, max_open >= 1 and max_jump >= 0")
        self.max_jump = float(max_jump)
        self.window = float(window)
        self.lateness = float(lateness)
        self.max_open = int(max_open)
        self.max_time = -math.inf
        self._by_key: list[dict] = [{} for _ in range(_SHARDS)]
        self._deadlines: list[tuple] = []  # heap of (deadline, seq, prediction); removed ones skipped ...
        self._in_order: deque = deque()    # ... and the predictions opened in deadline order, oldest first
        self._open = 0
        self._next_seq = 0
        self._schemas: dict[tuple, PackedLayout] = {}  # (feature names, slots) -> the layout predictions share
        self._unpacked: deque = deque()  # the predictions opened last, features not packed yet ...
        self._unpacked_floats = False    # ... and whether their feature set said floats_only
        self.counts = {"opened": 0, "late": 0, "expired": 0, "evicted": 0, "orphans": 0, "positive": 0, "ahead": 0}

    def __getstate__(self) -> dict:
        self._pack_all()   # a checkpoint holds every open prediction packed, as it always did
        state = self.__dict__.copy()
        del state["_by_key"]
        del state["_unpacked"], state["_unpacked_floats"]   # the state is main's: packed, nothing pending
        del state["_in_order"]   # its predictions are in the one list, as entries
        state["_deadlines"] = [] if id(self) in _APART else self._live_entries()
        return state

    def _live_entries(self) -> list[tuple]:
        """The (deadline, seq, prediction) entries of the open predictions, both queues' (heap order
        first, then deadline order)."""
        return [entry for batch in self._live_batches(max(1, len(self._deadlines) + len(self._in_order)))
                for entry in batch]

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        schemas = self.__dict__.setdefault("_schemas", {})
        if not all(layout.__class__ is PackedLayout for layout in schemas.values()):
            self._schemas = {}   # an older checkpoint's names -> names tuples: its predictions are repacked
        self._unpacked, self._unpacked_floats = deque(), False
        self._in_order = deque()   # every restored entry waits in the heap
        deadlines = self._deadlines
        heapq.heapify(deadlines)
        self._by_key = [{} for _ in range(_SHARDS)]
        self._take_in(deadlines)
        self._open = len(deadlines)

    def __len__(self) -> int:
        return self._open

    @contextmanager
    def entries_apart(self, batch: int = 0) -> Iterator[Iterator[list]]:
        """Give the live (deadline, seq, prediction) entries, packed, for a checkpoint to pickle
        apart, as lists of at most `batch` entries (0: one list), each made when the one before is
        done with (a deque's prediction has no entry tuple of its own: a batch's are made for it).
        While the block runs, pickling the joiner leaves them out (a joiner loaded so gets them by
        `attach`). The joiner itself is not changed (no index to rebuild, no attribute set: on
        CPython 3.11 a new attribute can push an object's attributes out of its fast inline
        storage), and must not be used meanwhile."""
        if id(self) in _APART:
            raise RuntimeError("entries_apart is already open for this joiner")
        self._pack_all()
        _APART.add(id(self))
        try:
            yield self._live_batches(batch) if batch else iter([self._live_entries()])
        finally:
            _APART.discard(id(self))

    def _live_batches(self, size: int) -> Iterator[list]:
        """`_live_entries` in lists of at most `size` (none empty; the heap's first, then the deque's)."""
        heap, in_order = iter(self._deadlines), iter(self._in_order)
        while entries := list(islice(heap, size)):
            if live := [entry for entry in entries if entry[2].seq == entry[1]]:
                yield live
        while predictions := list(islice(in_order, size)):
            with _collector_paused():   # else a million new tuples would set off hundreds of collections
                live = [(p.deadline, p.seq, p) for p in predictions if p.seq >= 0]
            if live:
                yield live

    def attach(self, entries: list) -> None:
        """Add entries pickled apart (`entries_apart`), as a checkpoint's batches bring them back: each
        packed one reads through this joiner's layout of its shape (a checkpoint's batches
        each bring their own copy), and one from an older checkpoint is packed now."""
        self._deadlines.extend(entries)
        heapq.heapify(self._deadlines)
        self._take_in(entries)
        self._open += len(entries)

    def _take_in(self, entries: list) -> None:
        """Index restored entries' predictions in opening order, each with its deadline and this
        joiner's layout of its shape (`_adopt`)."""
        adopted: dict = {}
        for deadline, _, prediction in sorted(entries, key=lambda entry: entry[1]):  # opening order
            prediction.deadline = deadline
            self._index(prediction)
            self._adopt(prediction, adopted)

    def _adopt(self, prediction: OpenPrediction, adopted: dict) -> None:
        """A restored prediction reads through this joiner's layout of its shape (each pickle
        brings its own copy; `adopted` maps the copies met so far to it); one from a checkpoint
        older than `PackedLayout` is packed now."""
        layout = prediction._outputs
        if layout.__class__ is PackedLayout:
            own = adopted.get(layout)
            if own is None:
                own = adopted[layout] = self._schemas.setdefault((layout.names, layout.slots), layout)
            prediction._outputs = own
        else:
            prediction.compact(self._schemas)

    @property
    def _by_seq(self) -> dict[int, OpenPrediction]:
        """The open predictions by seq, in opening order (a copy: O(n), for tools)."""
        live = sorted(self._live_entries(), key=lambda e: e[1])
        return {seq: prediction for _, seq, prediction in live}

    def open_predictions(self) -> list[OpenPrediction]:
        """The open predictions, in opening order (a copy)."""
        return list(self._by_seq.values())

    @property
    def watermark(self) -> float:
        return self.max_time - self.lateness

    def oldest_open_time(self) -> Optional[float]:
        """Event time of the oldest open prediction. A pure read (metrics call it from
        another thread): the queue's head is kept valid by every removal instead."""
        try:
            first = self._first()
        except IndexError:   # the loop thread took the last entry out between the check and the read
            return None
        return first[0] - self.window if first is not None else None

    def _first(self) -> Optional[tuple]:
        """(deadline, seq, prediction) of what comes up first in the two queues (the earlier deadline,
        then seq), or None. A removed prediction's seq is -1."""
        deadlines, in_order = self._deadlines, self._in_order
        if in_order:
            head = in_order[0]
            deadline = head.deadline
            if deadlines and _before(deadlines[0], deadline, head.seq):
                return deadlines[0]
            return deadline, head.seq, head
        return deadlines[0] if deadlines else None

    def _pop_first(self) -> Optional[OpenPrediction]:
        """Take out what `_first()` gives (there is one): its prediction, or None if it was removed."""
        deadlines, in_order = self._deadlines, self._in_order
        if in_order:
            head = in_order[0]
            if not (deadlines and _before(deadlines[0], head.deadline, head.seq)):
                in_order.popleft()
                return head if head.seq >= 0 else None
        _, seq, prediction = heapq.heappop(deadlines)
        return prediction if prediction.seq == seq else None

    def _drop_stale_head(self) -> None:
        first = self._first()
        while first is not None and first[2].seq < 0:
            self._pop_first()
            first = self._first()

    def advance(self, event_time: float, source: Hashable = None) -> list[OpenPrediction]:
        """Move event time forward; return the predictions that expired (label: negative).
        `source` (the engine passes the user) is whose clock dated the event: ahead events
        count once per source towards a jump, so one fast clock cannot carry it alone."""
        if event_time > self.max_time:
            if event_time - self.max_time > self.max_jump > 0 and self.max_time > -math.inf:
                if self._jump_ahead(event_time, source):
                    return []
                # Corroborated: to the median of the sources' latest times (a fast one among them
                # does not carry it), or the earliest ahead time when sources are unknown.
                times = sorted(self._ahead_sources.values())
                event_time = times[(len(times) - 1) // 2] if times else self._ahead_min
                self._ahead, self._ahead_min, self._ahead_sources = 0, math.inf, {}
            elif self._ahead:
                self._not_ahead()
            self.max_time = event_time
        elif self._ahead:
            self._not_ahead()
        watermark = self.max_time - self.lateness
        deadlines, in_order = self._deadlines, self._in_order
        if (not in_order or in_order[0].deadline >= watermark) and \
                (not deadlines or deadlines[0][0] >= watermark):
            return []   # the usual case: nothing expires
        expired = []
        while True:   # the earlier head of the two queues, as long as it is due (`_first`, inline)
            if in_order:
                prediction = in_order[0]
                deadline = prediction.deadline
                if not (deadlines and _before(deadlines[0], deadline, prediction.seq)):
                    if deadline >= watermark:
                        break
                    in_order.popleft()
                    if prediction.seq >= 0:
                        self._remove(prediction)
                        expired.append(prediction)
                    continue
            if deadlines and deadlines[0][0] < watermark:
                _, seq, prediction = heapq.heappop(deadlines)
                if prediction.seq == seq:
                    self._remove(prediction)
                    expired.append(prediction)
            else:
                break
        self._drop_stale_head()   # a prediction resolved earlier may stand at a head now: `oldest_open_time`
        self.counts["expired"] += len(expired)
        return expired

    def _jump_ahead(self, event_time: float, source: Hashable) -> bool:
        """Count an ahead event; True while the jump is not corroborated (the watermark stays)."""
        self.counts["ahead"] = self.counts.get("ahead", 0) + 1
        if not self._ahead:
            self._ahead_sources = {}
        sources = self._ahead_sources
        if source is None or source not in sources:
            self._ahead += 1
        if source is not None:
            sources[source] = max(event_time, sources.get(source, event_time))
        if event_time < self._ahead_min:
            self._ahead_min = event_time
        return self._ahead < JUMP_QUORUM

    def _not_ahead(self) -> None:
        self._ahead -= 1
        if not self._ahead:
            self._ahead_min, self._ahead_sources = math.inf, {}

    def _index(self, prediction: OpenPrediction) -> None:
        key = prediction.key
        shard = self._by_key[hash(key) % _SHARDS]
        found = shard.get(key)
        if found is None:
            shard[key] = prediction
        elif found.__class__ is list:
            found.append(prediction)
        else:
            shard[key] = [found, prediction]

    def is_late(self, event_time: float) -> bool:
        """Whether a prediction made at `event_time` would be late: its window closed before the watermark."""
        return event_time + self.window < self.max_time - self.lateness

    def open(self, prediction: OpenPrediction, floats_only: bool = False) -> bool:
        """Record a prediction; False (and counted as late) if its window already closed.
        `floats_only`: its features are floats for sure (the feature set's word), see `compact`."""
        if self.is_late(prediction.event_time):
            self.counts["late"] += 1
            return False
        deadline = prediction.event_time + self.window
        prediction.seq = seq = self._next_seq
        prediction.deadline = deadline
        self._next_seq += 1
        self._index(prediction)
        in_order = self._in_order
        if not in_order or deadline >= in_order[-1].deadline:   # seq grows: (deadline, seq) stays in order
            in_order.append(prediction)
        else:
            heapq.heappush(self._deadlines, (deadline, seq, prediction))
        if prediction._outputs.__class__ is list:
            prediction._outputs = tuple(prediction._outputs)   # 48 bytes for one slot, not a list's 88
        if floats_only != self._unpacked_floats:   # (never in practice: one feature set per engine)
            self._pack_all()
            self._unpacked_floats = floats_only
        unpacked = self._unpacked
        unpacked.append(prediction)   # no tuple per open: it would live on into the older GC generations
        if len(unpacked) > PACK_AFTER:
            waiting = unpacked.popleft()
            if waiting.seq >= 0:   # still open
                waiting.compact(self._schemas, floats_only)
        self._open += 1
        self.counts["opened"] += 1
        if self._open > self.max_open:
            self._evict_oldest()
        return True

    def _pack_all(self) -> None:
        """Pack the features of every open prediction not packed yet (see `PACK_AFTER`)."""
        unpacked, schemas, floats_only = self._unpacked, self._schemas, self._unpacked_floats
        while unpacked:
            prediction = unpacked.popleft()
            if prediction.seq >= 0:
                prediction.compact(schemas, floats_only)

    def purchase(self, key: Hashable, event_time: float) -> list[OpenPrediction]:
        """A purchase of `key` at `event_time`: return the predictions it makes positive."""
        waiting = self._by_key[hash(key) % _SHARDS].get(key)
        resolved = []
        if waiting is not None:
            window = self.window
            if waiting.__class__ is not list:
                waiting = [waiting]
            resolved = [p for p in waiting if p.event_time <= event_time <= p.event_time + window]
            for prediction in resolved:
                self._remove(prediction)
            self._drop_stale_head()
        if resolved:
            self.counts["positive"] += len(resolved)
        else:
            self.counts["orphans"] += 1
        return resolved

    def _remove(self, prediction: OpenPrediction) -> None:
        key = prediction.key
        shard = self._by_key[hash(key) % _SHARDS]
        found = shard[key]
        if found is prediction:
            del shard[key]
        else:
            found.remove(prediction)
            if len(found) == 1:
                shard[key] = found[0]
        prediction.seq = -1
        self._open -= 1

    def _evict_oldest(self) -> None:
        while self._first() is not None:
            prediction = self._pop_first()
            if prediction is not None:
                self._remove(prediction)
                self.counts["evicted"] += 1
                break
        self._drop_stale_head()
