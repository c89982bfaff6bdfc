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

import heapq
import math
import struct
from collections import deque
from typing import Hashable, Optional

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
#: n -> a Struct packing n native doubles, as array("d") lays them out.
_PACKERS: dict[int, struct.Struct] = {}


def _packer(n: int) -> struct.Struct:
    packer = _PACKERS[n] = struct.Struct(f"{n}d")
    return packer
#: How many more ahead events than others move the watermark across a jump (`advance`).
JUMP_QUORUM = 8


class OpenPrediction:
    """A prediction recorded before its label is known: on which features, when, and what
    each model slot said: `outputs[i]` is slot i's (P(True), predicted label). A label
    of None means the model could not predict yet (River's empty `predict_proba_one`):
    it is learned but not scored, as in river.evaluate. `champion` is the index of the
    slot whose prediction was published.

    While it waits for its label (from `PACK_AFTER` opens on), the joiner keeps `x` compact (`compact`): its names as
    a tuple shared by every prediction with the same feature names, its values as the
    bytes of an ``array('d')`` (8 bytes each, no float objects, no dict), and `outputs`
    as a tuple. Reading `x` gives back a dict equal to the original, key order and float
    bits included; a dict with any value that is not a float stays a dict."""

    __slots__ = ("key", "event_time", "_x", "outputs", "champion", "ref", "seq")

    def __init__(self, key: Hashable, event_time: float, x: Optional[dict], outputs: list,
                 champion: int = 0, ref: object = None):
        self.key = key
        self.event_time = event_time
        self._x: dict | tuple | None = x
        self.outputs: list | tuple = outputs
        self.champion = champion
        self.ref = ref
        self.seq = 0

    @property
    def x(self) -> Optional[dict]:
        x = self._x
        if isinstance(x, tuple):
            return dict(zip(x[0], memoryview(x[1]).cast("d")))
        return x

    @x.setter
    def x(self, value: Optional[dict]) -> None:
        self._x = value

    def compact(self, schemas: dict, floats_only: bool = False) -> None:
        """Keep `x` as (shared names, array of doubles) if every value is a float
        (`floats_only`: the feature set guarantees it, so it is not checked)."""
        outputs = self.outputs
        if outputs.__class__ is list:
            self.outputs = tuple(outputs)   # 48 bytes for one slot, not a list's 88
        x = self._x
        if x.__class__ is not dict or not x or not (floats_only or {*map(type, x.values())} == _FLOATS):
            return
        names = tuple(x)
        n = len(names)
        packer = _PACKERS.get(n) or _packer(n)   # the bytes of array("d", values), without the list
        self._x = (schemas.setdefault(names, names), packer.pack(*x.values()))

    @property
    def p_true(self) -> float:
        return self.outputs[self.champion][0]

    def __getstate__(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state):
        for name, value in zip(self.__slots__, state):
            setattr(self, name, value)


_SHARDS = 64  # the key index is cut in shards: growing one resizes a 64th of it, not all of it
#: An open prediction's features are packed (`OpenPrediction.compact`) once this many later
#: predictions were opened: one resolved sooner (a purchase, a short window, a quiet partition)
#: never pays the packing nor the reading back. Costs at most this many unpacked dicts (~2 KB each).
PACK_AFTER = 1024


class LabelJoiner:
    """Open predictions keyed by (session, product), resolved by purchase or expiry.

    Each open prediction is in two places: the deadline heap, as (deadline, seq,
    prediction), and the key index (64 dicts, by hash of the key; a key maps to its
    prediction, or to a list when several are open for it). A removed prediction gets
    seq -1, and its heap entry is skipped when it comes up. Checkpoints pickle the live
    heap entries only; the key index is rebuilt on load (hashes differ between processes)."""

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
        self._deadlines: list[tuple] = []  # heap of (deadline, seq, prediction); removed ones skipped
        self._open = 0
        self._next_seq = 0
        self._schemas: dict[tuple, tuple] = {}  # feature names -> the one tuple open predictions share
        self._unpacked: deque = deque()  # the predictions opened last, features not packed yet ...
        self._unpacked_floats = False    # ... and whether their feature set said floats_only
        self.counts = {"opened": 0, "late": 0, "expired": 0, "evicted": 0, "orphans": 0, "positive": 0, "ahead": 0}

    def __getstate__(self) -> dict:
        self._pack_all()   # a checkpoint holds every open prediction packed, as it always did
        state = self.__dict__.copy()
        del state["_by_key"]
        del state["_unpacked"], state["_unpacked_floats"]   # the state is main's: packed, nothing pending
        state["_deadlines"] = [entry for entry in self._deadlines if entry[2].seq == entry[1]]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_schemas", {})
        self._unpacked, self._unpacked_floats = deque(), False
        deadlines = self._deadlines
        heapq.heapify(deadlines)
        self._by_key = [{} for _ in range(_SHARDS)]
        for _, _, prediction in sorted(deadlines, key=lambda entry: entry[1]):  # opening order
            self._index(prediction)
        self._open = len(deadlines)

    def __len__(self) -> int:
        return self._open

    def detach(self) -> list:
        """Take the live heap entries out (the joiner is then empty) and return them, so a
        checkpoint can pickle them apart, in batches (each with its own small memo), and
        `attach` them back. The joiner must not be used in between."""
        self._pack_all()
        entries = [entry for entry in self._deadlines if entry[2].seq == entry[1]]
        self._deadlines, self._by_key, self._open = [], [{} for _ in range(_SHARDS)], 0
        return entries

    def attach(self, entries: list) -> None:
        """Put back entries taken by `detach` (or loaded from a checkpoint's batches)."""
        self._deadlines.extend(entries)
        heapq.heapify(self._deadlines)
        for _, _, prediction in sorted(entries, key=lambda entry: entry[1]):  # opening order
            self._index(prediction)
        self._open += len(entries)

    @property
    def _by_seq(self) -> dict[int, OpenPrediction]:
        """The open predictions by seq, in opening order (a copy: O(n), for tools)."""
        live = sorted((entry for entry in self._deadlines if entry[2].seq == entry[1]), key=lambda e: e[1])
        return {seq: prediction for _, seq, prediction in live}

    def open_predictions(self) -> list[OpenPrediction]:
        """The open predictions, in opening order (a copy)."""
        return list(self._by_seq.values())

    @property
    def watermark(self) -> float:
        return self.max_time - self.lateness

    def oldest_open_time(self) -> Optional[float]:
        """Event time of the oldest open prediction. A pure read (metrics call it from
        another thread): the heap's head is kept valid by every removal instead."""
        deadlines = self._deadlines
        return deadlines[0][0] - self.window if deadlines else None

    def _drop_stale_head(self) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].seq < 0:
            heapq.heappop(deadlines)

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
        deadlines = self._deadlines
        if not deadlines or deadlines[0][0] >= watermark:   # the usual case: nothing expires
            return []
        expired = []
        while deadlines and deadlines[0][0] < watermark:
            _, seq, prediction = heapq.heappop(deadlines)
            if prediction.seq == seq:
                self._remove(prediction)
                expired.append(prediction)
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

    def open(self, prediction: OpenPrediction, floats_only: bool = False) -> bool:
        """Record a prediction; False (and counted as late) if its window already closed.
        `floats_only`: its features are floats for sure (the feature set's word), see `compact`."""
        deadline = prediction.event_time + self.window
        if deadline < self.max_time - self.lateness:   # the watermark
            self.counts["late"] += 1
            return False
        prediction.seq = seq = self._next_seq
        self._next_seq += 1
        self._index(prediction)
        heapq.heappush(self._deadlines, (deadline, seq, prediction))
        if prediction.outputs.__class__ is list:
            prediction.outputs = tuple(prediction.outputs)   # 48 bytes for one slot, not a list's 88
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
        deadlines = self._deadlines
        while deadlines:
            _, seq, prediction = heapq.heappop(deadlines)
            if prediction.seq == seq:
                self._remove(prediction)
                self.counts["evicted"] += 1
                break
        self._drop_stale_head()
