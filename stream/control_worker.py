"""The worker's end of the control protocol (`control_protocol.py`): read the commands, apply them
to the partitions' engines, reply.

Whatever happens, the worker goes on: every command ends, per partition, as ``applied`` or
``rejected`` with a reason, logged once, counted (shopstream_control_commands_total),
recorded in the partition's lineage (with the command's id) and acknowledged on the reply
topic (signed with the worker's signing key, when it has one; naming the worker's consumer group
and events topic), which `shopstream models ... --wait` reads (`control_operator.py`). A command
for another group or events topic is passed over, unanswered, counted as ``skipped``.

Each message is judged once per partition: a partition's `control_offset` moves past every
message read, also one refused (no command, a replay, too old) or another group's, so a
worker that reads the topic again at a restart, when an earlier copy may have expired, does
not judge it again; and a command whose id the partition's lineage records is refused as a
replay of it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Optional

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CorruptRecordError

from shopstream.artifacts import find_version, load_artifact
from shopstream.engine import Engine
from shopstream.lineup import check_trained_under

from .corrupt import CorruptBatchSkipper
from .record_reader import read_records_in_one_pass
from .topics import create_topics
from .control_protocol import (ACTIONS, CONTROL_TOPIC_CONFIGS, CREATE_TIME, Command, Reply, check_target,
                               elsewhere, encode_reply, issue_time_problem, parse_command, replies_topic)

log = logging.getLogger(__name__)

#: Valid commands kept for partitions that have not seen them yet (the newest; older ones are
#: skipped, counted and logged for a partition that missed them).
MAX_KEPT_COMMANDS = 1000
#: Command ids remembered to refuse replays, the newest. Without a key anyone may write commands
#: (and ids), so the memory is bounded; with a key only the operator's commands carry ids, and a
#: copy older than MAX_COMMAND_AGE is refused by its issue time whether its id is remembered or not.
MAX_KEPT_IDS = 100_000
#: Messages that are no command, logged one by one; after these, one line every 1,000.
_LOGGED_INVALID = 20


class ControlChannel:
    """Reads the control topic from the beginning and keeps the newest `MAX_KEPT_COMMANDS`
    valid commands (signed, with a signing key); applies them to partition engines;
    acknowledges on the reply topic. A message that is no command is rejected once, when it
    is read (counted, logged, one reply for partition -1), never replayed into partitions.
    A recreated control topic (its offsets start again below what a partition already saw) is
    detected, reported and its commands applied from its start.

    The constructor only keeps the settings; `open()` connects and reads what was sent so far.
    With `signing_key`, only commands signed with it (with an id and an issue time) are taken,
    and replies are signed with it. A command issued too long before the broker appended it is
    refused like a message that is no command (`issue_time_problem`).

    `group` and `events_topic`: the worker's consumer group and events topic. Only commands
    naming both are taken; another group's or topic's are passed over (counted, unanswered); one
    naming neither (from before groups) is refused. Without them (None) every command is taken,
    as before groups, whoever it was for."""

    signing_key: Optional[bytes] = None
    group: Optional[str] = None          # the worker's consumer group (None: unknown, every command taken)
    events_topic: Optional[str] = None   # the worker's events topic
    _warned_backdatable = False        # a signed command with a producer-chosen timestamp was logged
    _said_shared = False               # a command of another group or topic was logged

    def __init__(self, options: dict, topic: str, artifacts: Optional[str], worker: str = "",
                 signing_key: Optional[bytes] = None, *, group: Optional[str] = None,
                 events_topic: Optional[str] = None):
        self.artifacts = artifacts
        self.worker = worker
        self.signing_key = signing_key
        self.group = group
        self.events_topic = events_topic
        self.replies = replies_topic(topic)
        self.commands: deque = deque()     # (offset, Command), offsets increasing
        self._ids: OrderedDict = OrderedDict()   # command id -> the offset that first carried it (replays refused)
        self.counts: dict[tuple[str, str], int] = {}   # (action, outcome) -> partitions
        self.read_up_to = 0                # the next offset of the control topic to read
        self.dropped_through = -1          # the newest command dropped for the bound
        self.invalid = 0                   # messages that were no command
        self._options = options
        self._producer: Optional[KafkaProducer] = None
        self._consumer: Optional[KafkaConsumer] = None
        self._unreadable: Optional[CorruptBatchSkipper] = None   # built when a batch cannot be read
        self._partition = TopicPartition(topic, 0)

    def open(self) -> "ControlChannel":
        """Create the topics if missing, connect, and read every command sent so far."""
        if self.group is None:
            log.warning("control topic %s: this worker's consumer group is not known to its control channel: it "
                        "applies every command, whichever group it was sent to", self._partition.topic)
        create_topics(self._options, {self._partition.topic: 1, self.replies: 1},
                      configs={self._partition.topic: CONTROL_TOPIC_CONFIGS})
        self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                       **self._options)
        read_records_in_one_pass(self._consumer)   # an unreadable batch raises again at each poll, never spins
        self._consumer.assign([self._partition])
        self.catch_up()
        return self

    @property
    def consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the control channel is not open: call open() first")
        return self._consumer

    def catch_up(self, timeout: float = 15.0) -> None:
        """Read every command sent so far, so partitions get them before their first event.
        Messages already there are no one's to answer again (a restart would reply to all)."""
        end = self._end_offset()
        deadline = time.monotonic() + timeout
        while self.consumer.position(self._partition) < end and time.monotonic() < deadline:
            self.poll(timeout_ms=200, live=False)

    def _end_offset(self) -> int:
        return self.consumer.end_offsets([self._partition])[self._partition]

    def poll(self, timeout_ms: int = 0, live: bool = True) -> bool:
        """Fetch new messages; True if there were any (commands for the partitions to apply, or
        messages refused or passed over, for them to move past: `apply`)."""
        try:
            batches = self.consumer.poll(timeout_ms=timeout_ms)
        except CorruptRecordError as exc:   # every worker reads this topic: one such batch stopped them all
            return self._pass_over_unreadable(exc, live)
        return self.receive([r for batch in batches.values() for r in batch], live)

    def _pass_over_unreadable(self, exc: Exception, live: bool) -> bool:
        """A batch the client cannot read (stream/corrupt.py finds where it ends): its messages are
        rejected together, as messages that are no command. True if it was passed over."""
        if self._unreadable is None:
            self._unreadable = CorruptBatchSkipper(self._options, outputs=None)
        start = self.consumer.position(self._partition)
        end = self._unreadable.pass_over(self.consumer, self._partition, start)
        if end is None:   # readable from here: the next poll says
            log.warning("control topic: an unreadable batch could not be located (%s): reading again", exc)
            return False
        self.invalid += end - start
        self.counts[("invalid", "rejected")] = self.counts.get(("invalid", "rejected"), 0) + end - start
        reason = f"offsets {start}..{end - 1}: unreadable record batch: {exc}"
        log.error("control messages %d..%d cannot be read (%s): rejected", start, end - 1, exc)
        if live:
            self._reply(Reply(start, -1, "rejected", reason[:300], worker=self.worker))
        self.read_up_to = end
        return True

    def receive(self, records, live: bool = True) -> bool:
        """Take read records: keep the commands, reject (once) what is none, pass over the commands
        of other groups; True if any record was read (the partitions move past it: `apply`).
        `live`: answer rejected messages on the reply topic (not when catching up at start)."""
        fresh = False
        for record in records:
            if record.offset < self.read_up_to:
                self._recreated(f"offsets went back from {self.read_up_to - 1} to {record.offset}")
            self.read_up_to = record.offset + 1
            fresh = True
            parsed = parse_command(record.value, record.headers, self.signing_key)
            if isinstance(parsed, str):
                self._reject_invalid(record.offset, parsed, live)
                continue
            try:
                away = elsewhere(parsed, self.group, self.events_topic)
            except ValueError as exc:   # names no group: every group would take it
                self._reject_invalid(record.offset, str(exc), live, parsed.id)
                continue
            if away is not None:
                self._skip_elsewhere(record.offset, parsed, away)
                continue
            refusal = self._replay_of(parsed, record.offset) or issue_time_problem(parsed, record.timestamp)
            if refusal:
                self._reject_invalid(record.offset, refusal, live, parsed.id)
                continue
            self._warn_if_backdatable(record)
            self.commands.append((record.offset, parsed))
            if len(self.commands) > MAX_KEPT_COMMANDS:
                self.dropped_through = self.commands.popleft()[0]
        return fresh

    def _skip_elsewhere(self, offset: int, command: Command, away: str) -> None:
        """A command for the workers of another consumer group or events topic sharing this control
        topic: theirs to apply and answer; counted here (`away`: "other_group" or "other_topic")."""
        self.counts[(away, "skipped")] = self.counts.get((away, "skipped"), 0) + 1
        if not self._said_shared:
            self._said_shared = True
            log.info("control topic %s is shared with other consumer groups or events topics: their commands are "
                     "passed over (first: %d, for group %r, topic %r)", self._partition.topic, offset,
                     str(command.group)[:80], str(command.topic)[:80])

    def _replay_of(self, command: Command, offset: int) -> Optional[str]:
        """Why the command is a replay (an earlier offset carried its id), or None."""
        if command.id is None:
            return None
        first = self._ids.setdefault(command.id, offset)
        if first == offset:   # signed or not, the same command twice is one command
            if len(self._ids) > MAX_KEPT_IDS:
                self._ids.popitem(last=False)   # the oldest, O(1) (a dict's head fills with holes)
            return None
        return f"a replay of command {first} (the same id, {command.id[:64]!r})"

    def _warn_if_backdatable(self, record) -> None:
        """Once: a signed command's timestamp was chosen by its producer (CreateTime), so a copy of
        an old command could be backdated past `issue_time_problem`."""
        if self.signing_key is None or self._warned_backdatable or record.timestamp_type != CREATE_TIME:
            return
        self._warned_backdatable = True
        log.warning("control command %d carries its producer's timestamp (CreateTime), not the broker's: a "
                    "writer could backdate a copy of an old command to pass the age check; set "
                    "message.timestamp.type=LogAppendTime on topic %s", record.offset, self._partition.topic)

    def _recreated(self, how: str) -> None:
        """The topic was deleted and created again: what was kept belongs to the old one."""
        log.error("control topic %s was recreated (%s): its commands are applied from its start",
                  self._partition.topic, how)
        self.counts[("topic", "recreated")] = self.counts.get(("topic", "recreated"), 0) + 1
        self.commands.clear()
        self._ids.clear()
        self.read_up_to = 0
        self.dropped_through = -1

    def _reject_invalid(self, offset: int, reason: str, live: bool, command_id: Optional[str] = None) -> None:
        self.invalid += 1
        self.counts[("invalid", "rejected")] = self.counts.get(("invalid", "rejected"), 0) + 1
        if self.invalid <= _LOGGED_INVALID or self.invalid % 1000 == 0:
            log.error("control message %d rejected (%d so far): %r", offset, self.invalid, reason[:300])
        if live:
            self._reply(Reply(offset, -1, "rejected", reason[:300], worker=self.worker, id=command_id))

    def apply(self, engine: Engine, partition: int) -> bool:
        """Apply, in order, every command this engine has not seen yet, then move its control
        offset past every message read (refused or passed over too); True if anything changed.
        Never raises: a command that cannot be applied is rejected with its reason."""
        applied = self._catch_up_engine(engine, partition)
        seen: Optional[dict] = None   # command id -> control offset, from the lineage (built when needed)
        for offset, command in self.commands:
            if offset <= engine.control_offset:
                continue
            engine.control_offset = offset
            applied = True
            if command.partition is not None and command.partition != partition:
                continue
            action = command.action if command.action in ACTIONS else "invalid"
            target = command.target[:80]   # logged with %r: a target (or a reason) may hold a line end
            if seen is None:
                seen = ids_in_lineage(engine)
            try:
                if command.id is not None and command.id in seen:
                    raise ValueError(f"a replay of command {seen[command.id]} (the same id, {command.id!r}), "
                                     "which this partition's lineage records")
                self._apply(engine, command)
            except Exception as exc:  # a command must never stop a worker: rejected, with the reason
                reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
                outcome = "rejected"
                log.error("partition %d: control command %d (%s %r) rejected: %r", partition, offset, action,
                          target, reason[:300])
            else:
                reason, outcome = "", "applied"
                log.info("partition %d: control command %d (%s %r) applied", partition, offset, action, target)
            self.counts[(action, outcome)] = self.counts.get((action, outcome), 0) + 1
            engine.record("control", command=offset, action=action, target=target, outcome=outcome,
                           reason=reason[:300], id=command.id)
            if command.id is not None:
                seen.setdefault(command.id, offset)
            champion = engine.champion_slot
            self._reply(Reply(offset, partition, outcome, reason[:300], champion.name, champion.version, self.worker,
                              command.id))
        if engine.control_offset < self.read_up_to - 1:
            # past the messages refused or passed over after its last command: judged once, here; a
            # worker reading them again at a restart (an earlier copy expired by then) skips them
            engine.control_offset = self.read_up_to - 1
            applied = True
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
        artifact = load_artifact(find_version(self.artifacts, command.target), self.signing_key)
        name, version = artifact.meta["model"], artifact.meta["version"]
        if version != command.target:
            raise ValueError(f"artifact {command.target} says it is version {version!r}")
        check_trained_under(artifact, engine.config, "roll back to an artifact trained under this partition's")
        if name != engine.champion_slot.name:
            if name not in [slot.name for slot in engine.slots]:
                engine.add_slot(name, artifact.model, "challenger", version)
            engine.promote(name, reason=f"rollback to {version}")
        engine.rollback(artifact.model, version)

    def _reply(self, reply: Reply) -> None:
        reply.group, reply.topic = self.group, self.events_topic   # whose workers answer
        try:
            if self._producer is None:
                self._producer = KafkaProducer(acks=1, linger_ms=0, **self._options)
            value, headers = encode_reply(reply, self.signing_key)
            self._producer.send(self.replies, value=value, headers=headers, partition=0)   # the one read
        except Exception as exc:  # replies inform the operator; a lost one must not stop the worker
            log.warning("control reply not sent: %s: %s", type(exc).__name__, exc)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        if self._unreadable is not None:
            self._unreadable.close()
        if self._producer is not None:
            self._producer.close(timeout=5)


def ids_in_lineage(engine: Engine) -> dict:
    """The ids of the control commands a partition's lineage records (each with its offset): the
    commands applied or rejected here, for as long as the lineage keeps them (its newest entries)."""
    seen: dict = {}
    for entry in engine.history:
        if isinstance(entry, dict) and entry.get("kind") == "control" and isinstance(entry.get("id"), str):
            seen.setdefault(entry["id"], entry.get("command"))
    return seen

