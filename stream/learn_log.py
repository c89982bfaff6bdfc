"""The learn log on Kafka: `--learning shared`, every partition learns every partition's labels.

The in-process half is `shopstream/shared_learning.py` (the engine's outbox, a replica's
position). This module is the Kafka half, one `LearnLog` per worker:

- `publish`: after each batch of a partition, the examples its engine resolved go to the
  learn topic (one partition: one order for the whole group) through the worker's own
  producer, so the checkpoint's "outputs acknowledged first" covers them too, and so do
  the events it handled (`CatalogEvents`, cut in records of at most `MAX_BATCH_BYTES`);
- `apply`: every loop, the learn topic is read from the lowest position of the partitions
  this worker owns, and each record is applied to every owned partition whose position it
  is at (`LogReplica.apply`): every replica applies the same records in the same order;
- a record that is corrupt, unsigned while a signing key is set, forged, from another group
  or events topic, or made under another feature schema or label window is refused with
  its reason (logged, counted in ``shopstream_learn_log_refused_total{reason}``): every
  replica passes over it and nothing of it is learned. So are the records of a batch the
  client cannot read or decompress (reason ``unreadable``; found as stream/corrupt.py finds
  one in the events topic): every worker of the group reads this topic, and such a batch
  stopped them all, at every restart. The events' limits hold for a record too (``invalid``:
  more than MAX_FEATURES features, a longer name, a text value for a floats-only feature set).
  Catalog events not above the last offset folded from their partition in its epoch are not
  folded, but counted (reason ``rewound``, in events) and logged.

A record's value: one check line (``sha256:<hex>``, or ``hmac-sha256:<hex>`` with the
worker's signing key, its setting `signing_key`), then the example as JSON (floats written so they read back to the
same bits). The check covers the JSON bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import time
from typing import Optional

import msgspec
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CorruptRecordError
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shopstream.events import EVENT_TYPES, MAX_EVENT_TIME, MAX_FEATURES, MAX_ID_CHARS, MAX_NAME_CHARS, MAX_PRICE
from shopstream.features import FEATURE_SETS
from shopstream.shared_learning import CATALOG_FIELDS, CatalogEvents, Example, LearnOutbox, LogReplica
from shopstream.signing import FROM_ENVIRONMENT, KEY_IS_SET, Key, key_of

from .corrupt import CorruptBatchSkipper
from .outputs import MAX_BATCH_BYTES
from .record_reader import read_records_in_one_pass
from .topics import create_topics

log = logging.getLogger(__name__)

FORMAT = "LEARN-1"
MAX_RECORDS_PER_LOOP = 5_000   # learn records applied per loop turn: events are never starved for long
DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class RefusedRecord(ValueError):
    """A learn-topic record that must not be learned; `kind` is the metric's reason label."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def schema_of(config) -> str:
    """What makes examples interchangeable: the feature set and the label's definition."""
    return f"features={config.features};window={config.window:g}"


@functools.lru_cache(maxsize=16)
def _floats_only(schema: str) -> bool:
    """Whether the feature set `schema` names gives floats only (`ShopFeatures.floats_only`)."""
    name = schema.partition(";")[0].partition("features=")[2]
    return bool(getattr(FEATURE_SETS.get(name), "floats_only", False))


def encode(example: Example | CatalogEvents, group: str, topic: str, schema: str, lineup: str,
           key: Optional[bytes] = None) -> bytes:
    head = {"format": FORMAT, "group": group, "topic": topic, "schema": schema, "lineup": lineup}
    if isinstance(example, CatalogEvents):
        body = _encode({**head, "kind": "events", "source": example.source, "epoch": example.epoch,
                        "events": example.events})
    else:
        body = _encode({**head, "kind": "example", "source": example.source, "seq": example.seq, "y": example.y,
                        "predicted_at": example.predicted_at, "resolved_at": example.resolved_at,
                        "x": example.x})
    check = f"hmac-sha256:{hmac.new(key, body, hashlib.sha256).hexdigest()}" if key else \
        f"sha256:{hashlib.sha256(body).hexdigest()}"
    return check.encode() + b"\n" + body


def decode(value: Optional[bytes], group: str, topic: str, schema: str,
           key: Optional[bytes] = None) -> Example | CatalogEvents:
    """The example in a learn record, or `RefusedRecord` saying why it cannot be learned."""
    if not value:
        raise RefusedRecord("corrupt", "empty record")
    check, newline, body = bytes(value).partition(b"\n")
    if not newline:
        raise RefusedRecord("corrupt", "no check line")
    kind, _, digest = check.decode("ascii", "replace").partition(":")
    if key is not None:
        if kind != "hmac-sha256":
            raise RefusedRecord("unsigned", f"not signed ({kind or 'no check'}), but {KEY_IS_SET}")
        # (a replaced non-ASCII byte would make compare_digest raise TypeError, not say False)
        if not digest.isascii() or not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), digest):
            raise RefusedRecord("forged", "HMAC does not match: forged or modified")
    elif kind == "sha256":
        if not digest.isascii() or not hmac.compare_digest(hashlib.sha256(body).hexdigest(), digest):
            raise RefusedRecord("corrupt", "sha256 does not match: corrupted")
    elif kind == "hmac-sha256":
        raise RefusedRecord("unsigned", "signed, but this worker has no signing key to check it")
    else:
        raise RefusedRecord("corrupt", f"unknown check {kind[:40]!r}")
    try:
        doc = _decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RefusedRecord("corrupt", f"not JSON: {type(exc).__name__}: {exc}"[:200]) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RefusedRecord("corrupt", f"format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                                       f"not {FORMAT}")
    if doc.get("group") != group:
        raise RefusedRecord("group", f"from consumer group {doc.get('group')!r}, not {group!r}")
    if doc.get("topic") != topic:
        raise RefusedRecord("group", f"for events topic {doc.get('topic')!r}, not {topic!r}")
    if doc.get("schema") != schema:
        raise RefusedRecord("schema", f"made under {doc.get('schema')!r}; this worker's models learn {schema!r}")
    try:
        return _catalog(doc) if doc.get("kind") == "events" else _example(doc, _floats_only(schema))
    except RefusedRecord:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:   # a value no check above foresaw
        raise RefusedRecord("invalid", f"{type(exc).__name__}: {exc}"[:200]) from None


#: The largest magnitude of a learned feature value: far past any the feature sets compute, and far
#: from where squaring it in a scaler's variance overflows.
MAX_LEARNED_ABS = 1e15


def _number_in(value, low: float, high: float) -> bool:
    """A JSON number (not a bool) within [low, high]: an integer past a float's range is not."""
    return type(value) in (int, float) and -math.inf < low <= value <= high < math.inf


#: Kafka's offsets are signed 64-bit integers.
MAX_OFFSET = 2**63 - 1


def _catalog(doc: dict) -> CatalogEvents:
    """The events' limits hold here too (events.py): a catalog row is an event another worker read.
    Its rows come in increasing offset order, as the source read them."""
    source, events, epoch = doc.get("source"), doc.get("events"), doc.get("epoch", 0)
    if type(source) is not int or source < 0 or not isinstance(events, list):
        raise RefusedRecord("invalid", f"source {source!r}: must be an integer >= 0, with a list of events")
    if type(epoch) is not int or not 0 <= epoch <= MAX_OFFSET:
        raise RefusedRecord("invalid", f"epoch {str(epoch)[:40]}: must be an integer >= 0")
    last = -1
    for row in events:
        if not (isinstance(row, list) and len(row) == 1 + len(CATALOG_FIELDS) and type(row[0]) is int
                and last < row[0] <= MAX_OFFSET
                and row[1].__class__ is str and row[1] in EVENT_TYPES
                and (row[2].__class__ is int or (row[2].__class__ is str and 0 < len(row[2]) <= MAX_ID_CHARS))
                and all(v is None or (v.__class__ is str and len(v) <= MAX_NAME_CHARS)
                        for v in (row[3], row[4], row[6], row[7]))
                and (row[5] is None or _number_in(row[5], 0.0, MAX_PRICE))):
            raise RefusedRecord("invalid", f"event {str(row)[:120]}: not [offset, {', '.join(CATALOG_FIELDS)}] "
                                           "within the events' limits, offsets increasing")
        last = row[0]
    return CatalogEvents(source, events, epoch)


#: The one-hot columns `ShopFeatures` names "field=value" (a value of up to MAX_NAME_CHARS characters).
_ONE_HOT_FIELDS = frozenset({"platform", "channel", "category"})


def _name_fits(name: str) -> bool:
    """A feature name a feature set can give: an event's (raw), or one of the shop features' (their one-hot
    columns say which value: longer by their "field=" prefix)."""
    if len(name) <= MAX_NAME_CHARS:
        return True
    field, _, value = name.partition("=")
    return field in _ONE_HOT_FIELDS and len(value) <= MAX_NAME_CHARS


def _example(doc: dict, floats_only: bool = False) -> Example:
    source, seq, y, x = doc.get("source"), doc.get("seq"), doc.get("y"), doc.get("x")
    predicted_at, resolved_at = doc.get("predicted_at"), doc.get("resolved_at")
    times = (predicted_at, resolved_at)
    if type(source) is not int or source < 0 or type(seq) is not int or seq < 1:
        raise RefusedRecord("invalid", f"source {source!r} / seq {seq!r}: must be integers >= 0 / >= 1")
    if type(y) is not bool:
        raise RefusedRecord("invalid", f"label {y!r}: must be true or false")
    if not (_number_in(predicted_at, -MAX_EVENT_TIME, MAX_EVENT_TIME)
            and _number_in(resolved_at, -MAX_EVENT_TIME, MAX_EVENT_TIME)):
        raise RefusedRecord("invalid", f"times {str(times)[:80]}: must be finite numbers")
    if not isinstance(x, dict):
        raise RefusedRecord("invalid", "features: must be an object")
    # The events' limits (a genuine example has at most as many: raw gives a subset of an event's features,
    # shop about 65): a record with 40,000 invented names grew every model and checkpoint for good.
    if len(x) > MAX_FEATURES:
        raise RefusedRecord("invalid", f"{len(x)} features: more than the events' {MAX_FEATURES}")
    for name, v in x.items():
        if not _name_fits(name):
            raise RefusedRecord("invalid", f"feature name {name[:40]!r}... of {len(name)} characters: more than "
                                           f"the events' {MAX_NAME_CHARS}")
        # bounded (1e300 then -1e300 made a scaler's variance NaN, and every slot reset); looser than an
        # event's features: these are computed ones (a session's seconds may pass 1e9 under a long --session-ttl)
        if not ((v.__class__ is str and len(v) <= MAX_NAME_CHARS) or _number_in(v, -MAX_LEARNED_ABS, MAX_LEARNED_ABS)):
            raise RefusedRecord("invalid", f"feature {name[:80]!r}: {str(v)[:40]} is not a finite number or a string")
        if floats_only and v.__class__ is not float:
            # River's StandardScaler counted a text value, then raised: every scaler changed, nothing learned
            raise RefusedRecord("invalid", f"feature {name[:80]!r}: {str(v)[:40]} is not a float, and this "
                                           "feature set gives floats only")
    return Example(source, seq, x, y, float(predicted_at), float(resolved_at))  # type: ignore[arg-type]  # numbers


class LearnLog:
    """A worker's side of the learn log (see the module's docstring)."""

    def __init__(self, options: dict, topic: str, group: str, events_topic: str, engine_config, outputs,
                 registry: CollectorRegistry, consumer: Optional[KafkaConsumer] = None,
                 signing_key: Key = FROM_ENVIRONMENT, unreadable: Optional[CorruptBatchSkipper] = None):
        self.topic = topic
        self.unreadable = unreadable   # finds where a batch the client cannot read ends (built when first needed)
        self.key = key_of(signing_key)   # signs what this worker publishes, checks what it applies
        self.group = group
        self.events_topic = events_topic
        self.schema = schema_of(engine_config)
        self.outputs = outputs
        self.tp = TopicPartition(topic, 0)
        self.options = options
        self._consumer = consumer   # built by open() when not given
        self._assigned = False
        self.position = 0          # the next offset the consumer returns
        self.end = 0               # the learn topic's end offset, as last seen
        self.published = 0
        self.refused: dict[str, int] = {}
        self.rewound_records = 0   # records with catalog events not folded (`_rewound`): for the log's rate
        self.partitions: dict = {}  # the worker's owned partitions, for metrics
        self.delay = Histogram("shopstream_learn_delay_seconds",
                               "From a learn record's publication to its being applied by a partition",
                               registry=registry, buckets=DELAY_BUCKETS)
        registry.register(_LearnLogCollector(self))

    def open(self) -> "LearnLog":
        """Create the learn topic if missing and start reading it (the broker is first asked
        here, never when the log is built); called again, nothing."""
        if self._consumer is None:
            create_topics(self.options, {self.topic: 1})   # one partition: one order for every replica
            self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                           **self.options)
            read_records_in_one_pass(self._consumer)   # a record per example of the group (record_reader.py)
        if not self._assigned:
            self._consumer.assign([self.tp])
            self._assigned = True
            try:
                found = self._consumer.partitions_for_topic(self.topic) or ()
            except Exception:   # noqa: BLE001 - metadata late: only a warning is at stake
                found = ()
            if len(found) > 1:
                log.warning("learn topic %s has %d partitions: the learn log uses partition 0 only (one order for "
                            "the group); the others stay unused", self.topic, len(found))
        return self

    @property
    def consumer(self) -> KafkaConsumer:
        if not self._assigned:
            self.open()
        assert self._consumer is not None
        return self._consumer

    # -- partitions --------------------------------------------------------------------

    def attach(self, state) -> None:
        """Give a restored or new partition its outbox and log position (kept in its checkpoint)."""
        engine = state.engine
        if not isinstance(engine.learn_sink, LearnOutbox):
            engine.learn_sink = LearnOutbox(source=state.partition)
        if state.learn_log is None:
            state.learn_log = LogReplica(own=state.partition)
            if state.origin == "checkpoint":
                log.warning("partition %d: its checkpoint learned alone (--learning partition); it now applies "
                            "the learn log from its start, and its models will not equal the other partitions'",
                            state.partition)
        replica = state.learn_log
        if replica.next_offset < self.position:
            self.consumer.seek(self.tp, replica.next_offset)
            self.position = replica.next_offset

    def observe(self, state, offset: int, event) -> None:
        """An event the partition handled: its catalog part goes out with the next publication."""
        state.engine.learn_sink.observe(offset, event)

    def publish(self, state) -> None:
        """Send what the partition's engine resolved, and the events it handled, since the last call."""
        outbox = state.engine.learn_sink
        batches = outbox.drain_catalog()
        if not outbox.pending and not batches:
            return
        lineup = ",".join(f"{s.name}@{s.version}" for s in state.engine.slots if s.learn)
        for example in outbox.drain():
            # One example: at most the events' MAX_FEATURES names and values (tens of KB), never near the cap
            self._send(example, encode(example, self.group, self.events_topic, self.schema, lineup, self.key))
            self.published += 1
        for batch in batches:
            self._send_catalog(batch, lineup)

    def _send_catalog(self, batch: CatalogEvents, lineup: str) -> None:
        """A polled batch's events, cut in halves until each record is at most `MAX_BATCH_BYTES` (as
        predictions are, outputs.py): 1,000 events with long names made one of 1.3 MB, past the broker's
        and the client's 1 MiB; refused, sent again at every confirm, no checkpoint ever again. Replicas
        fold row by row in offset order, so the halves, sent in order, fold exactly as the whole."""
        value = encode(batch, self.group, self.events_topic, self.schema, lineup, self.key)
        if len(value) > MAX_BATCH_BYTES and len(batch.events) > 1:
            half = len(batch.events) // 2
            self._send_catalog(CatalogEvents(batch.source, batch.events[:half], batch.epoch), lineup)
            self._send_catalog(CatalogEvents(batch.source, batch.events[half:], batch.epoch), lineup)
            return
        self._send(batch, value)

    def _send(self, example: Example | CatalogEvents, value: bytes) -> None:
        # The worker's producer: a checkpoint waits until these are acknowledged like any output.
        # To the one partition read (a learn topic made with more would spread records by key).
        self.outputs.send(self.topic, str(example.source).encode(), value, partition=self.tp.partition)

    # -- applying ----------------------------------------------------------------------

    def apply(self, partitions: dict) -> int:
        """Apply what the learn topic holds past the owned partitions' positions; return how many
        records were read."""
        self.partitions = partitions
        if not partitions:
            return 0
        for state in partitions.values():
            if state.learn_log is None:  # started over by --force-fresh-start after the assignment
                self.attach(state)
        try:
            batches = self.consumer.poll(timeout_ms=0, max_records=MAX_RECORDS_PER_LOOP)
        except CorruptRecordError as exc:   # raised again at every poll: passed over, or it stops the worker
            self._pass_over_unreadable(exc)
            return 0
        records = batches.get(self.tp, [])
        if not records:
            return 0
        states = list(partitions.values())
        now = time.time()
        for record in records:
            self.position = record.offset + 1
            behind = [s for s in states if s.learn_log.next_offset <= record.offset]
            if not behind:
                continue
            missed = record.offset - min(s.learn_log.next_offset for s in behind)
            if missed > 0:  # offsets are contiguous: records deleted by retention before being applied
                self.refused["truncated"] = self.refused.get("truncated", 0) + missed
                log.error("learn topic %s: %d record(s) before offset %d were deleted (retention) before every "
                          "owned partition applied them: those partitions' models miss them", self.topic, missed,
                          record.offset)
            try:
                example = decode(record.value, self.group, self.events_topic, self.schema, self.key)
            except RefusedRecord as exc:
                n = self.refused[exc.kind] = self.refused.get(exc.kind, 0) + 1
                if n & (n - 1) == 0:  # the 1st, 2nd, 4th... of each reason: a flood cannot flood the log
                    log.warning("learn topic %s@%d refused, not learned (%s #%d): %s", self.topic, record.offset,
                                exc.kind, n, exc)
                for state in behind:
                    state.learn_log.skip(record.offset)
                continue
            rewound = 0
            for state in behind:
                replica = state.learn_log
                before = replica.rewound
                outcome = replica.apply(state.engine, record.offset, example)
                if outcome == "learned" or outcome == "folded":
                    if outcome == "learned" and record.timestamp and record.timestamp > 0:
                        self.delay.observe(max(0.0, now - record.timestamp / 1000.0))
                    state.mark_changed()
                rewound = max(rewound, replica.rewound - before)
            if rewound:
                self._rewound(record.offset, example, rewound, behind)
        self.end = max(self.end, self.position, self.consumer.highwater(self.tp) or 0)
        return len(records)

    def _rewound(self, offset: int, batch, rows: int, behind: list) -> None:
        """Catalog events not folded: at or below the last offset folded from their source (in its epoch).
        Counted as refused (reason ``rewound``, events, not records), logged as the other refusals are."""
        n = self.refused["rewound"] = self.refused.get("rewound", 0) + rows
        self.rewound_records += 1
        k = self.rewound_records
        if k & (k - 1) == 0:   # the 1st, 2nd, 4th... such record: a flood cannot flood the log
            last = max((s.learn_log.folded.get(batch.source, -1) for s in behind), default=-1)
            log.warning("learn topic %s@%d: %d of %d catalog event(s) of partition %d (offsets %d..%d, epoch %d) "
                        "not folded: not above the last folded from it (%d), or of an earlier epoch (%d such "
                        "event(s) so far). Expected after that partition's restart (its replay sends again what "
                        "was folded); else a forged offset went ahead of its events (set a signing key), and "
                        "they are missing from the shop-wide tables",
                        self.topic, offset, rows, len(batch.events), batch.source, batch.events[0][0],
                        batch.events[-1][0], batch.epoch, last, n)

    def _pass_over_unreadable(self, exc: Exception) -> None:
        """The batch at the log's position cannot be read: every replica passes over its records."""
        if self.unreadable is None:
            self.unreadable = CorruptBatchSkipper(self.options, outputs=None)
        start = self.position
        end = self.unreadable.pass_over(self.consumer, self.tp, start)
        if end is None:   # readable from here: the batch was one in flight; the next poll says
            log.warning("learn topic %s: an unreadable batch could not be located (%s): reading again", self.topic,
                        exc)
            return
        self.refused["unreadable"] = self.refused.get("unreadable", 0) + end - start
        log.error("learn topic %s: offsets %d..%d cannot be read (%s): passed over, never learned", self.topic,
                  start, end - 1, exc)
        for state in self.partitions.values():
            if state.learn_log is not None:
                state.learn_log.skip(end - 1)
        self.position = end

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        if self.unreadable is not None:
            self.unreadable.close()


class _LearnLogCollector:
    def __init__(self, learn_log: LearnLog):
        self.learn_log = learn_log

    def describe(self):
        return []

    def collect(self):
        ll = self.learn_log
        position = GaugeMetricFamily("shopstream_learn_log_position",
                                     "Next learn-log offset each partition's models apply", labels=["partition"])
        lag = GaugeMetricFamily("shopstream_learn_log_lag",
                                "Learn-log records not yet applied by the partition (behind the group's newest)",
                                labels=["partition"])
        learned = CounterMetricFamily("shopstream_learn_log_examples",
                                      "Learn-log records applied per partition: learned, or skipped as duplicate",
                                      labels=["partition", "outcome"])
        for tp, state in list(ll.partitions.items()):
            replica = state.learn_log
            if replica is None:
                continue
            label = str(tp.partition)
            position.add_metric([label], replica.next_offset)
            lag.add_metric([label], max(0, ll.end - replica.next_offset))
            learned.add_metric([label, "learned"], replica.learned)
            learned.add_metric([label, "duplicate"], replica.duplicates)
        refused = CounterMetricFamily("shopstream_learn_log_refused", "Learn-topic records refused, never learned",
                                      labels=["reason"])
        for kind, count in dict(ll.refused).items():
            refused.add_metric([kind], count)
        published = CounterMetricFamily("shopstream_learn_log_published", "Resolved examples this worker published")
        published.add_metric([], ll.published)
        yield from (position, lag, learned, refused, published)
