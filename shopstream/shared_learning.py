"""Shared learning: every partition's models learn the resolved labels of all partitions.

With one engine per partition, each model sees only its partition's labels: scaling out
to N partitions leaves each model 1/N of the data (QUALITY.md measures what that costs).
In the shared mode a partition learns nothing by itself. Its engine hands every resolved
example (the features recorded at prediction time and the label) to a `LearnOutbox`;
the worker publishes the outbox to the *learn log* (one Kafka partition, so one order),
and every partition's replica applies that log in its offset order (`LogReplica`). Every
replica that has applied the same prefix of the log holds the same models, bit for bit.

Exactly once. An example is named by the partition that resolved it and its sequence
number there (1, 2, ...), both kept in the engine's checkpoint. After a crash the
partition replays its events from its checkpoint and publishes the same examples again,
under the same numbers; a replica skips an example whose number it has already applied
from that source (`applied`), so nothing is learned twice, and since a checkpoint is
written only after the outbox was acknowledged by Kafka, nothing is lost either. The
replica's position in the log (`next_offset`) and `applied` are checkpointed with its
models, so a restored partition resumes the log exactly where its models stand.

>>> from shopstream.engine import Engine
>>> from shopstream.events import Event
>>> a, b = Engine.fresh("logreg", "raw"), Engine.fresh("logreg", "raw")
>>> a.learn_sink = LearnOutbox(source=0)
>>> _ = a.process(Event(1.6e9, "view", "p", "u", "s", features={"f": 1.0}, label=True))
>>> a.counts["learned"], [e.seq for e in a.learn_sink.pending]
(0, [1])
>>> log = a.learn_sink.drain()
>>> ra, rb = LogReplica(), LogReplica()
>>> [ra.apply(a, 0, log[0]), rb.apply(b, 0, log[0]), rb.apply(b, 1, log[0])]
['learned', 'learned', 'duplicate']
>>> a.champion_slot.model["LogisticRegression"].weights == b.champion_slot.model["LogisticRegression"].weights
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .events import Event

MODES = ("partition", "shared")


@dataclass
class Example:
    """One resolved example as it travels the learn log."""

    source: int            # the partition that made the prediction and resolved its label
    seq: int               # its number among that partition's resolved examples: 1, 2, ...
    x: dict                # the features the models saw when they predicted
    y: bool
    predicted_at: float    # event time of the prediction
    resolved_at: float     # event time at which the label resolved


#: What of an event the shop-wide feature tables learn (`ShopFeatures.learn_catalog`).
CATALOG_FIELDS = ("event_type", "product_id", "category_code", "brand", "price", "platform", "channel")


@dataclass
class CatalogEvents:
    """A partition's events as the shop-wide feature tables see them: (offset, fields) pairs.

    Without them each partition's product, brand and category statistics come from 1/N of
    the shop's traffic, and that, more than the labels, is what scaling out cost
    (QUALITY.md): every partition folds every other partition's events into its tables."""

    source: int
    events: list            # [[offset, *CATALOG_FIELDS values], ...] in offset order
    #: How many times the source's offsets went backwards (`LearnOutbox.observe`): offsets are
    #: compared within one epoch only. Records written before it existed say none: 0.
    epoch: int = 0

    @classmethod
    def of(cls, source: int, batch: list, epoch: int = 0) -> "CatalogEvents":
        """From (offset, Event) pairs."""
        return cls(source, [[offset, *(getattr(event, f) for f in CATALOG_FIELDS)] for offset, event in batch],
                   epoch)


class LearnOutbox:
    """The engine's `learn_sink` in the shared mode: resolved examples waiting to be published.

    Pickled with the engine, so `seq` resumes from the checkpoint and a replay numbers the
    same examples the same way. The worker drains it after every event.

    `epoch` counts the times the events' offsets went backwards under this outbox (the
    events topic deleted and created again: the worker goes on from its new start with the
    same engine). Replicas compare a source's catalog offsets within one epoch only: without
    it, they took every event of the new topic for one already folded until its offsets
    passed the old ones. Pickled too, so a replay finds the same epochs at the same events.

    >>> from shopstream.events import Event
    >>> box, e = LearnOutbox(source=2), Event(1.6e9, "view", "p", "u", "s")
    >>> for offset in (7, 8, 0, 1):
    ...     box.observe(offset, e)
    >>> [(b.epoch, [row[0] for row in b.events]) for b in box.drain_catalog()]
    [(0, [7, 8]), (1, [0, 1])]
    """

    epoch = 0               # (class defaults: an outbox pickled before they existed has none)
    last_observed = -1      # the offset of the last event observed
    sealed: Optional[list] = None   # CatalogEvents of an earlier epoch not yet published

    def __init__(self, source: int):
        self.source = source
        self.seq = 0
        self.pending: list[Example] = []
        self.events: list = []   # (offset, Event) handled since the last publication: for CatalogEvents

    def __call__(self, x: Optional[dict], y_true: bool, prediction, now: float) -> None:
        self.seq += 1
        self.pending.append(Example(self.source, self.seq, dict(x or {}), bool(y_true),
                                    float(prediction.event_time), float(now)))

    def drain(self) -> list[Example]:
        out, self.pending = self.pending, []
        return out

    def observe(self, offset: int, event: Event) -> None:
        """An event its partition handled, for the next `CatalogEvents`."""
        if offset <= self.last_observed:   # the events' offsets went backwards: a new epoch
            if self.events:
                self.sealed = [*(self.sealed or ()), CatalogEvents.of(self.source, self.events, self.epoch)]
                self.events = []
            self.epoch += 1
        self.last_observed = offset
        self.events.append((offset, event))

    def drain_catalog(self) -> list[CatalogEvents]:
        """The events observed since the last call: one `CatalogEvents` per epoch, in order."""
        out = list(self.sealed or ())
        if self.sealed:
            self.sealed = None
        if self.events:
            out.append(CatalogEvents.of(self.source, self.events, self.epoch))
            self.events = []
        return out


class LogReplica:
    """Where one partition's models stand in the learn log.

    `next_offset` is the next log offset to apply. `applied[source]` says which sequence
    numbers of that source partition were learned: all up to a number, plus the few above
    it that arrived early (a record the producer had to send again lands after its
    successors). Both are checkpointed with the engine.

    >>> r = LogReplica()
    >>> [r.first_time(0, s) for s in (1, 3, 2, 3, 1, 4)]
    [True, True, True, False, False, True]
    >>> r.applied
    {0: [4, set()]}
    """

    #: Catalog events of other partitions passed over: not above the last offset folded from their
    #: source in its epoch (a source replaying after a restart sends again what was folded; else a
    #: forged offset), or of an epoch older than one folded. (Class defaults: a replica pickled
    #: before they existed has neither.)
    rewound = 0
    epochs: Optional[dict] = None   # source -> the epoch of its events folded (`CatalogEvents.epoch`); absent: 0

    def __init__(self, own: int = -1) -> None:
        self.own = own          # this partition: its own events are already in its feature tables
        self.next_offset = 0
        self.applied: dict[int, list] = {}   # source -> [every seq up to this learned, set of seqs above it learned]
        self.folded: dict[int, int] = {}     # source -> the last event offset folded into the feature tables
        self.learned = 0        # examples learned from the log
        self.duplicates = 0     # examples skipped: already learned (a source replayed after a crash)

    @property
    def waiting(self) -> int:
        """Examples learned ahead of a missing one (non-zero only while a resent record is on its way)."""
        return sum(len(above) for _, above in self.applied.values())

    def first_time(self, source: int, seq: int) -> bool:
        """Mark `seq` of `source` learned; False if it already was."""
        entry = self.applied.setdefault(source, [0, set()])
        done, above = entry
        if seq <= done or seq in above:
            return False
        above.add(seq)
        while done + 1 in above:
            done += 1
            above.remove(done)
        entry[0] = done
        return True

    def apply(self, engine, offset: int, example) -> str:
        """Learn `example`, the log's record at `offset`, with every learning slot of `engine`
        (`CatalogEvents`: fold them into its shop-wide feature tables). Returns "behind"
        (offset already applied), "duplicate", "learned" or "folded"."""
        if offset < self.next_offset:
            return "behind"
        self.next_offset = offset + 1
        if isinstance(example, CatalogEvents):
            return self._fold(engine, example)
        if not self.first_time(example.source, example.seq):
            self.duplicates += 1
            return "duplicate"
        self.learned += 1
        engine.learn_example(example.x, example.y)   # every learning slot, as a resolved prediction is
        return "learned"

    def _fold(self, engine, batch: CatalogEvents) -> str:
        learn_catalog = getattr(engine.features, "learn_catalog", None)
        source = batch.source
        if source == self.own or learn_catalog is None:
            return "folded"
        epochs = self.epochs
        if epochs is None:
            epochs = self.epochs = {}
        epoch = epochs.get(source, 0)
        if batch.epoch != epoch:
            if batch.epoch < epoch:   # the source's offsets went backwards since: these are superseded
                self.rewound += len(batch.events)
                return "folded"
            epochs[source] = batch.epoch   # its events topic started over: offsets count from its new start
            self.folded.pop(source, None)
        last = self.folded.get(source, -1)
        behind = 0
        for offset, *values in batch.events:
            if offset > last:
                learn_catalog(Event(0.0, user_id="", user_session="", **dict(zip(CATALOG_FIELDS, values))))
                last = offset
            else:   # a replayed batch's events were folded already (or a forged offset passed them)
                behind += 1
        self.folded[source] = last
        if behind:
            self.rewound += behind
        return "folded"

    def skip(self, offset: int) -> None:
        """A refused record at `offset`: passed over, never learned."""
        if offset >= self.next_offset:
            self.next_offset = offset + 1
