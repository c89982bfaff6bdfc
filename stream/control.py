"""Model lifecycle commands for running workers, through a one-partition control topic.

`shopstream models promote NAME` / `rollback VERSION` append a command; every worker
reads the whole topic and applies each command, in order, to each partition engine it
owns whose `control_offset` is older. The offset is saved in the partition's
checkpoint, so a command reaches every partition exactly once: even one that was
on a stopped worker, or moves to another worker, when the command was sent.

Anyone who can write to the topic can send a command, so a command names things and
never paths: a rollback target must look like an artifact version (``logreg-20260101T000000-
0123abcd``: no separators, bounded length) and exist in the worker's --artifacts; a promote
target must be a model the partition runs. With SHOPSTREAM_SIGNING_KEY set, a command must
carry an HMAC of its bytes (header ``shopstream.hmac``). Whatever happens, the worker goes
on: every command ends, per partition, as ``applied`` or ``rejected`` with a reason,
logged once, counted (shopstream_control_commands_total), recorded in the partition's
lineage and acknowledged on the reply topic (`<control topic>-replies`), which
`shopstream models ... --wait` reads.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import deque
from typing import Optional

import msgspec
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shopstream.artifacts import find_version, list_versions, load_artifact
from shopstream.engine import Engine
from shopstream.models import CATALOG, RENAMED
from shopstream.signing import sign, signing_key

from .connection import KafkaConnection, kafka_options
from .topics import create_topics

log = logging.getLogger(__name__)

ACTIONS = ("promote", "rollback")
SIGNATURE_HEADER = "shopstream.hmac"
MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
VERSION = re.compile(r"(?P<model>[a-z][a-z0-9_]{0,63})-\d{8}T\d{6}-[0-9a-f]{8}")
MAX_COMMAND_BYTES = 4096


class Command(msgspec.Struct, forbid_unknown_fields=True):
    action: str                       # "promote" or "rollback"
    target: str                       # model name to promote, or artifact version to roll back to
    partition: Optional[int] = None   # None: every partition


class Reply(msgspec.Struct):
    command: int                      # the command's offset in the control topic
    partition: int
    outcome: str                      # "applied" or "rejected"
    reason: str = ""
    model: str = ""                   # the partition's champion after the command
    version: str = ""
    worker: str = ""


def replies_topic(control_topic: str) -> str:
    return f"{control_topic}-replies"


def check_target(action: str, target: str) -> None:
    """A command's target as a name, never a path: ValueError with the reason otherwise.

    >>> check_target("rollback", "../../tmp/evil")
    Traceback (most recent call last):
    ...
    ValueError: rollback target '../../tmp/evil' is not an artifact version (model-YYYYmmddTHHMMSS-hash8)
    >>> check_target("rollback", "logreg-20260101T000000-0123abcd")
    """
    shown = target if len(target) <= 80 else target[:77] + "..."
    if action == "promote":
        if not MODEL_NAME.fullmatch(target):
            raise ValueError(f"promote target {shown!r} is not a model name")
    elif action == "rollback":
        match = VERSION.fullmatch(target)
        if not match:
            raise ValueError(f"rollback target {shown!r} is not an artifact version (model-YYYYmmddTHHMMSS-hash8)")
        if match["model"] not in CATALOG and match["model"] not in RENAMED:  # old artifacts keep old names
            raise ValueError(f"rollback target {shown!r} names no catalog model ({sorted(CATALOG)})")
    else:
        raise ValueError(f"unknown action {action[:40]!r}; choose from {ACTIONS}")


def send_command(options: dict, topic: str, command: Command) -> int:
    """Append a command (signed when SHOPSTREAM_SIGNING_KEY is set); return its offset."""
    create_topics(options, {topic: 1, replies_topic(topic): 1})
    value = msgspec.json.encode(command)
    key = signing_key()
    headers = [(SIGNATURE_HEADER, sign(value, key).encode())] if key else []
    producer = KafkaProducer(acks="all", **options)
    try:
        metadata = producer.send(topic, value=value, headers=headers).get(timeout=30)
    finally:
        producer.close()
    return metadata.offset


#: Valid commands kept for partitions that have not seen them yet (the newest; older ones are
#: skipped, counted and logged for a partition that missed them).
MAX_KEPT_COMMANDS = 1000
#: Messages that are no command, logged one by one; after these, one line every 1,000.
_LOGGED_INVALID = 20


class ControlChannel:
    """Reads the control topic from the beginning and keeps the newest `MAX_KEPT_COMMANDS`
    valid commands (signed, with a signing key); applies them to partition engines;
    acknowledges on the reply topic. A message that is no command is rejected once, when it
    is read (counted, logged, one reply for partition -1), never replayed into partitions.
    A recreated control topic (its offsets start again below what a partition already saw) is
    detected, reported and its commands applied from its start."""

    def __init__(self, options: dict, topic: str, artifacts: Optional[str], worker: str = ""):
        create_topics(options, {topic: 1, replies_topic(topic): 1})
        self.artifacts = artifacts
        self.worker = worker
        self.replies = replies_topic(topic)
        self.commands: deque = deque()     # (offset, Command), offsets increasing
        self.counts: dict[tuple[str, str], int] = {}   # (action, outcome) -> partitions
        self.read_up_to = 0                # the next offset of the control topic to read
        self.dropped_through = -1          # the newest command dropped for the bound
        self.invalid = 0                   # messages that were no command
        self._options = options
        self._producer: Optional[KafkaProducer] = None
        self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                       **options)
        self._partition = TopicPartition(topic, 0)
        self._consumer.assign([self._partition])
        self.catch_up()

    def catch_up(self, timeout: float = 15.0) -> None:
        """Read every command sent so far, so partitions get them before their first event.
        Messages already there are no one's to answer again (a restart would reply to all)."""
        end = self._end_offset()
        deadline = time.monotonic() + timeout
        while self._consumer.position(self._partition) < end and time.monotonic() < deadline:
            self.poll(timeout_ms=200, live=False)

    def _end_offset(self) -> int:
        return self._consumer.end_offsets([self._partition])[self._partition]

    def poll(self, timeout_ms: int = 0, live: bool = True) -> bool:
        """Fetch new commands; True if there were any."""
        records = [r for batch in self._consumer.poll(timeout_ms=timeout_ms).values() for r in batch]
        return self.receive(records, live)

    def receive(self, records, live: bool = True) -> bool:
        """Take read records: keep the commands, reject (once) what is none; True if any was kept.
        `live`: answer rejected messages on the reply topic (not when catching up at start)."""
        fresh = False
        for record in records:
            if record.offset < self.read_up_to:
                self._recreated(f"offsets went back from {self.read_up_to - 1} to {record.offset}")
            self.read_up_to = record.offset + 1
            parsed = self._parse(record)
            if isinstance(parsed, str):
                self._reject_invalid(record.offset, parsed, live)
                continue
            self.commands.append((record.offset, parsed))
            if len(self.commands) > MAX_KEPT_COMMANDS:
                self.dropped_through = self.commands.popleft()[0]
            fresh = True
        return fresh

    def _recreated(self, how: str) -> None:
        """The topic was deleted and created again: what was kept belongs to the old one."""
        log.error("control topic %s was recreated (%s): its commands are applied from its start",
                  self._partition.topic, how)
        self.counts[("topic", "recreated")] = self.counts.get(("topic", "recreated"), 0) + 1
        self.commands.clear()
        self.read_up_to = 0
        self.dropped_through = -1

    def _reject_invalid(self, offset: int, reason: str, live: bool) -> None:
        self.invalid += 1
        self.counts[("invalid", "rejected")] = self.counts.get(("invalid", "rejected"), 0) + 1
        if self.invalid <= _LOGGED_INVALID or self.invalid % 1000 == 0:
            log.error("control message %d rejected (%d so far): %s", offset, self.invalid, reason[:300])
        if live:
            self._reply(Reply(offset, -1, "rejected", reason[:300], worker=self.worker))

    @staticmethod
    def _parse(record) -> Command | str:
        value = record.value or b""
        if len(value) > MAX_COMMAND_BYTES:
            return f"{len(value)} bytes, more than {MAX_COMMAND_BYTES}"
        key = signing_key()
        if key is not None:
            tag = dict((k, v) for k, v in record.headers or [] if isinstance(k, str)).get(SIGNATURE_HEADER)
            if tag is None:
                return "unsigned, but SHOPSTREAM_SIGNING_KEY is set"
            if tag != sign(value, key).encode():
                return "HMAC does not match: forged or modified"
        try:
            return msgspec.json.decode(value, type=Command)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
            return f"not a command: {exc}"

    def apply(self, engine: Engine, partition: int) -> bool:
        """Apply, in order, every command this engine has not seen yet; True if any.
        Never raises: a command that cannot be applied is rejected with its reason."""
        applied = self._catch_up_engine(engine, partition)
        for offset, command in self.commands:
            if offset <= engine.control_offset:
                continue
            engine.control_offset = offset
            applied = True
            if command.partition is not None and command.partition != partition:
                continue
            action = command.action if command.action in ACTIONS else "invalid"
            target = command.target[:80]
            try:
                self._apply(engine, command)
            except Exception as exc:  # a command must never stop a worker: rejected, with the reason
                reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
                outcome = "rejected"
                log.error("partition %d: control command %d (%s %s) rejected: %s", partition, offset, action,
                          target, reason[:300])
            else:
                reason, outcome = "", "applied"
                log.info("partition %d: control command %d (%s %s) applied", partition, offset, action, target)
            self.counts[(action, outcome)] = self.counts.get((action, outcome), 0) + 1
            engine._record("control", command=offset, action=action, target=target, outcome=outcome,
                           reason=reason[:300])
            self._reply(Reply(offset, partition, outcome, reason[:300], engine.model_name, engine.model_version,
                              self.worker))
        return applied

    def _catch_up_engine(self, engine: Engine, partition: int) -> bool:
        """Before applying: an engine that saw an offset this topic does not have (recreated:
        its commands would be skipped silently), or that missed commands dropped for the bound.
        True if the engine's control offset changed."""
        if engine.control_offset >= self.read_up_to:
            end = self._end_offset()
            if engine.control_offset < end:   # only behind: read on (another worker read further)
                self.catch_up()
            if engine.control_offset >= max(end, self.read_up_to):
                log.error("partition %d: saw control command %d, but control topic %s ends at %d: it was "
                          "recreated; applying its commands from its start", partition, engine.control_offset,
                          self._partition.topic, end)
                self.counts[("topic", "recreated")] = self.counts.get(("topic", "recreated"), 0) + 1
                engine.control_offset = -1
                return True
        if engine.control_offset < self.dropped_through:
            log.warning("partition %d: the commands at control offsets %d..%d were beyond the newest %d kept: "
                        "skipped", partition, engine.control_offset + 1, self.dropped_through, MAX_KEPT_COMMANDS)
            # once per partition that missed some (how many were commands, the bound no longer knows)
            self.counts[("older", "skipped")] = self.counts.get(("older", "skipped"), 0) + 1
            engine.control_offset = self.dropped_through
            return True
        return False

    def _apply(self, engine: Engine, command: Command) -> None:
        check_target(command.action, command.target)
        if command.action == "promote":
            engine.promote(command.target, reason="manual")
            return
        if not self.artifacts:
            raise ValueError("rollback needs the worker's --artifacts")
        artifact = load_artifact(find_version(self.artifacts, command.target))
        name, version = artifact.meta["model"], artifact.meta["version"]
        if version != command.target:
            raise ValueError(f"artifact {command.target} says it is version {version!r}")
        if name != engine.model_name:
            if name not in [slot.name for slot in engine.slots]:
                engine.add_slot(name, artifact.model, "challenger", version)
            engine.promote(name, reason=f"rollback to {version}")
        engine.rollback(artifact.model, version)

    def _reply(self, reply: Reply) -> None:
        try:
            if self._producer is None:
                self._producer = KafkaProducer(acks=1, linger_ms=0, **self._options)
            self._producer.send(self.replies, value=msgspec.json.encode(reply))
        except Exception as exc:  # replies inform the operator; a lost one must not stop the worker
            log.warning("control reply not sent: %s: %s", type(exc).__name__, exc)

    def close(self) -> None:
        self._consumer.close()
        if self._producer is not None:
            self._producer.close(timeout=5)


def list_models(artifacts: Optional[str], store=None, reported: Optional[dict] = None) -> str:
    """A text table of artifact versions, of what each checkpointed partition runs, and of
    what workers last reported per partition (newer than a checkpoint after a command)."""
    from pathlib import Path

    lines = []
    if artifacts and Path(artifacts).is_dir():
        lines.append("artifact versions (rollback targets):")
        for meta in list_versions(artifacts):
            holdout = meta.get("metrics", {}).get("holdout", {})
            mark = " DEFAULT" if meta["is_default"] else ""
            lines.append(f"  {meta['version']:<45} created {meta['created_at'][:19]}  "
                         f"holdout roc_auc {holdout.get('roc_auc', float('nan')):.4f}{mark}")
    if store is not None:
        lines.append("partitions (from checkpoints):")
        for (topic, partition), state in sorted(store.load_all().items()):
            for slot in state.engine.slots:
                rolling = slot.scores.rolling.values()
                lines.append(f"  {topic}[{partition}] {slot.role:<10} {slot.name:<24} {slot.version:<45} "
                             f"rolling roc_auc {rolling['roc_auc']:.4f}  resolved {len(slot.scores.cumulative)}"
                             f"  drifts {slot.drift_detections}")
            for entry in state.engine.history[-5:]:
                if entry["kind"] != "drift":
                    lines.append(f"    {entry}")
    if reported:
        lines.append("live (last reply of a worker per partition):")
        for partition, reply in sorted(reported.items()):
            lines.append(f"  partition {partition}: champion {reply.model} {reply.version}  (command {reply.command} "
                         f"{reply.outcome}{': ' + reply.reason if reply.reason else ''}; worker {reply.worker})")
    return "\n".join(lines) or "nothing found (give --artifacts and/or --checkpoints)"


def read_replies(options: dict, control_topic: str, start: int = 0, until=None, timeout: float = 0.0) -> list[Reply]:
    """Replies from offset `start`; keep reading until `until(replies)` is true or `timeout`."""
    topic = TopicPartition(replies_topic(control_topic), 0)
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **options)
    replies: list[Reply] = []
    try:
        consumer.assign([topic])
        consumer.seek(topic, start)
        deadline = time.monotonic() + timeout
        while True:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    try:
                        replies.append(msgspec.json.decode(record.value, type=Reply))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue
            caught_up = consumer.position(topic) >= consumer.end_offsets([topic])[topic]
            if (until is not None and until(replies)) or (until is None and caught_up) or time.monotonic() > deadline:
                return replies
    finally:
        consumer.close()


def models_command(args) -> int:
    options = kafka_options(KafkaConnection.from_args(args))
    if args.action == "list":
        from .checkpointing.stores import DirectoryCheckpointStore

        store = None
        if args.checkpoint_store == "kafka":
            from .checkpointing.kafka_store import KafkaCheckpointStore

            store = KafkaCheckpointStore(options, args.checkpoint_topic, group=args.group)
        elif args.checkpoints:
            store = DirectoryCheckpointStore(args.checkpoints, create=False)
        reported = None
        if args.bootstrap_servers:
            try:
                reported = {r.partition: r for r in read_replies(options, args.control_topic, timeout=10)}
            except Exception as exc:  # no broker: the checkpoints still say something
                print(f"(no live replies: {type(exc).__name__}: {exc})", file=sys.stderr)
        try:
            print(list_models(args.artifacts, store, reported))
        finally:
            if store is not None and hasattr(store, "close"):
                store.close()
        return 0
    if not args.target:
        raise ValueError(f"models {args.action} needs a target: a model name (promote) or an artifact version "
                         "(rollback)")
    check_target(args.action, args.target)
    if args.action == "rollback" and args.artifacts:
        find_version(args.artifacts, args.target)  # fail here, not silently in every worker
    create_topics(options, {args.control_topic: 1, replies_topic(args.control_topic): 1})
    replies_end = _end_offset(options, replies_topic(args.control_topic))
    offset = send_command(options, args.control_topic, Command(args.action, args.target, args.partition))
    scope = "every partition" if args.partition is None else f"partition {args.partition}"
    print(f"sent {args.action} {args.target} for {scope} (control offset {offset})")
    if not args.wait:
        print("running workers apply it within a second, stopped ones when they resume")
        return 0
    wanted = _partitions(options, args.topic) if args.partition is None else {args.partition}
    answered: dict[int, Reply] = {}

    def complete(replies):
        for reply in replies:
            if reply.command == offset:
                answered.setdefault(reply.partition, reply)
        return wanted <= set(answered)

    read_replies(options, args.control_topic, replies_end, until=complete, timeout=args.wait_timeout)
    for partition in sorted(wanted | set(answered)):
        reply = answered.get(partition)
        if reply is None:
            print(f"  partition {partition}: no reply in {args.wait_timeout:g} s (no worker running it?)")
        else:
            detail = f": {reply.reason}" if reply.reason else f" (champion {reply.model} {reply.version})"
            print(f"  partition {partition}: {reply.outcome}{detail}")
    ok = wanted <= set(answered) and all(r.outcome == "applied" for r in answered.values())
    return 0 if ok else 1


def _end_offset(options: dict, topic: str) -> int:
    consumer = KafkaConsumer(group_id=None, **options)
    try:
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def _partitions(options: dict, topic: str) -> set[int]:
    consumer = KafkaConsumer(group_id=None, **options)
    try:
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise ValueError(f"topic {topic!r} has no partitions (wrong --topic?)")
        return set(found)
    finally:
        consumer.close()
