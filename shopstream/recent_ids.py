"""The engine's dedupe window: the last handled events, oldest first, each keyed by
``(user_id, event_id)`` with the champion's P(purchase) that was recorded for it (None if
the event was not predicted).

Keyed by the user too: an event id is the client's, and a scoring request may name any id.
Keyed by the id alone, a request carrying another user's event id read that event's
recorded score, and made that user's own event, arriving later, a "duplicate" dropped
unlearned. A redelivery (a producer's retry, a replay) repeats both, and is still dropped.

A dict keeps the keys in the order they were handled (a key is added only when it is not
there) and a deque finds the oldest in O(1) (a dict's own first key slows down as its head
fills with deleted slots).

A checkpoint must hold the whole window, and the worker's loop waits for it. Pickled
item by item (an `OrderedDict`), 100,000 ids took 65 ms of an 80 ms checkpoint; joined
at checkpoint time, still 34-42 ms in a worker after 300,000 events, because each id
string sits somewhere else in a large heap (BENCHMARKS.md, "The dedupe window in a
checkpoint"). So the window also keeps itself packed as it grows: every `CHUNK` keys'
ids are joined (NUL between them) into one string, their users into another, their
scores into one array (NaN for None; a recorded score is never NaN), while they are
fresh in the cache. A checkpoint joins a hundred chunks, not a hundred thousand strings.

A window from a checkpoint written before the window kept users holds bare ids as keys
(`bare` counts them; the engine also looks a bare id up while any is left): they are
packed with an empty user, which no event has (`events.validate`). A key that is neither
a bare string id nor a pair of strings, or holds a NUL (no id or user passes
`events.validate` so), makes the window pickle as pairs.

>>> import pickle
>>> ids = RecentIds()
>>> for key, p_true in ((("u1", "e1"), 0.25), (("u2", "e-2"), None), (("u1", "e3"), 0.5)):
...     ids.add(key, p_true, cap=2)
>>> copy = pickle.loads(pickle.dumps(ids))
>>> list(copy.items()), ("u1", "e1") in copy, copy.get(("u1", "e3")), ("u2", "e3") in copy
([(('u2', 'e-2'), None), (('u1', 'e3'), 0.5)], False, 0.5, False)
>>> list(pickle.loads(pickle.dumps(RecentIds([(7, 0.5), ("e", 0.1)]))).items())
[(7, 0.5), ('e', 0.1)]
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import Iterable, Optional

#: Keys joined per packed chunk.
CHUNK = 1024
_SEPARATOR = "\x00"
_NONE = math.nan   # a score of None, in the packed arrays
_BARE = ""         # the user packed for a bare id (no event's user is empty)


class RecentIds(dict):
    """(user id, event id) -> recorded P(purchase) or None, oldest first; `add` evicts past
    `cap`. A dict itself, so the engine's `in` and `get` on every event are the dict's own."""

    __slots__ = ("_order", "_fresh", "_fresh_users", "_fresh_scores", "_packed", "_dropped", "_packable",
                 "bare")

    def __init__(self, items: Iterable[tuple] = ()):
        super().__init__()
        self._order: deque = deque()
        self._fresh: list = []              # ids added since the last chunk was packed
        self._fresh_users: list = []        # and their users (`_BARE` for a bare id)
        self._fresh_scores = array("d")
        self._packed: deque = deque()       # [ids joined, users joined, their scores, how many], oldest first
        self._dropped = 0                   # keys evicted from the head of the oldest chunk (or of _fresh)
        self._packable = True
        self.bare = 0                       # keys that are not (user, id) pairs: bare ids of an old checkpoint
        for key, p_true in items:
            if key not in self:
                self.add(key, p_true, cap=len(self) + 1)

    def add(self, key, p_true: Optional[float], cap: int) -> None:
        """Remember a handled event's key (not already here: the engine drops repeats)."""
        self[key] = p_true
        self._order.append(key)
        pair = key.__class__ is tuple
        if pair:
            user, event_id = key if len(key) == 2 else (_BARE, None)
        else:
            user, event_id = _BARE, key
            self.bare += 1
        if self._packable:
            # packed: a str id, and for a pair a non-empty str user (empty marks a bare id); no NUL in either
            if (event_id.__class__ is str and _SEPARATOR not in event_id and user.__class__ is str
                    and _SEPARATOR not in user and (user != _BARE or not pair)):
                self._fresh.append(event_id)
                self._fresh_users.append(user)
                self._fresh_scores.append(_NONE if p_true is None else p_true)
                if len(self._fresh) >= CHUNK:
                    self._pack_fresh()
            else:
                self._packable = False
                self._fresh, self._fresh_users, self._fresh_scores, self._packed = [], [], array("d"), deque()
        order = self._order
        while len(order) > cap:
            oldest = order.popleft()
            del self[oldest]
            if oldest.__class__ is not tuple:
                self.bare -= 1
            if self._packable:
                self._drop_oldest()

    def _pack_fresh(self) -> None:
        self._packed.append([_SEPARATOR.join(self._fresh), _SEPARATOR.join(self._fresh_users),
                             self._fresh_scores, len(self._fresh)])
        self._fresh, self._fresh_users, self._fresh_scores = [], [], array("d")

    def _drop_oldest(self) -> None:
        self._dropped += 1
        packed = self._packed
        if packed and self._dropped == packed[0][3]:
            packed.popleft()
            self._dropped = 0
        elif not packed and self._dropped:   # the window is smaller than a chunk: trim _fresh itself
            del self._fresh[:self._dropped], self._fresh_users[:self._dropped], self._fresh_scores[:self._dropped]
            self._dropped = 0

    def __reduce__(self):
        if not self._packable or not self:
            return (self.__class__, (list(self.items()),))
        chunks = [[ids, users, scores] for ids, users, scores, _ in self._packed]
        if self._fresh:
            chunks.append([_SEPARATOR.join(self._fresh), _SEPARATOR.join(self._fresh_users), self._fresh_scores])
        if self._dropped:   # the oldest chunk's first keys were evicted
            ids, users, scores = chunks[0]
            chunks[0] = [_after(ids, self._dropped), _after(users, self._dropped), scores[self._dropped:]]
        scores = array("d")
        for *_, part in chunks:
            scores.extend(part)
        return (_unpack, (_SEPARATOR.join(chunk[0] for chunk in chunks), None, scores,
                          _SEPARATOR.join(chunk[1] for chunk in chunks)))


def _after(text: str, n: int) -> str:
    """`text` (parts joined by NUL) without its first `n` parts."""
    cut = -1
    for _ in range(n):
        cut = text.index(_SEPARATOR, cut + 1)
    return text[cut + 1:]


def _unpack(text: str, lengths: Optional[array], scores, users: Optional[str] = None) -> RecentIds:
    """The window a checkpoint holds: ids split on NUL (or cut by `lengths`, as written on
    2026-12-03 before the window was packed as it grew), their scores, and their users split
    on NUL (an empty one: a bare id). Without `users` (written before the window kept them,
    2026-12-08), every id is bare."""
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
    if users is None:
        return RecentIds(zip(ids, scores))
    owners = users.split(_SEPARATOR)
    if not len(owners) == len(ids) == len(scores):
        raise ValueError(f"a dedupe window of {len(ids)} ids, {len(owners)} users and {len(scores)} scores")
    return RecentIds(zip([(user, event_id) if user else event_id for user, event_id in zip(owners, ids)], scores))
