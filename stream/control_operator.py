"""The operator's end of the control protocol (`control_protocol.py`): `shopstream models` sends a
command, waits for the workers' replies, and lists what runs.

`ControlClient` only keeps its settings when built; `connect()` creates the topics if
missing and opens the producer that sends commands (signed with `signing_key` when given).
With a key, only replies signed with it are taken: anyone who may write to the reply topic
could otherwise show a command as applied; the others are counted (`RepliesRead.unverified`)
and reported. A reply answers a command when it names the command's offset and id, and the
consumer group and events topic the command was sent to (groups may share the control and
reply topics: another group's workers pass over the command, and their replies, to
other commands at the same offset, or of a worker from before groups, answer nothing). A batch
of the reply topic the client cannot read (stream/corrupt.py) is passed over and counted
(`RepliesRead.unreadable`): it failed every read of the replies after it.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CorruptRecordError

from shopstream.artifacts import find_version, list_versions
from shopstream.signing import KEY_IS_SET

from .checkpointing.stores import DirectoryCheckpointStore
from .connection import kafka_options
from .corrupt import CorruptBatchSkipper
from .checkpointing.kafka_store import KafkaCheckpointStore
from .record_reader import read_records_in_one_pass
from .settings import ModelsSettings
from .topics import create_topics
from .control_protocol import (CONTROL_TOPIC_CONFIGS, Command, Reply, check_target, decode_reply, encode_command,
                               replies_topic, signature_problem)


@dataclass
class RepliesRead:
    """Replies read from the reply topic: those taken, and how many were not because they were
    unsigned or forged while there is a key (records that are no reply are skipped, uncounted)."""

    replies: list[Reply] = field(default_factory=list)
    unverified: int = 0
    unreadable: int = 0   # records of batches the client could not read, passed over

    def take(self, record, signing_key: Optional[bytes]) -> None:
        reply = decode_reply(record.value)
        if reply is None:
            return
        if signing_key is not None and signature_problem(record.value, record.headers, signing_key):
            self.unverified += 1
            return
        self.replies.append(reply)

    def ignored_line(self) -> str:
        """What was not taken, for the operator ("" when all was)."""
        said = []
        if self.unverified:
            one = self.unverified == 1
            said.append(f"ignored {self.unverified} repl{'y' if one else 'ies'} that {'was' if one else 'were'} "
                        f"unsigned or forged: {KEY_IS_SET}, and only replies signed with it count")
        if self.unreadable:
            said.append(f"passed over {self.unreadable} record{'' if self.unreadable == 1 else 's'} of the reply "
                        "topic that could not be read (a corrupt batch)")
        return "; ".join(said)


def answers(reply: Reply, offset: int, command_id: Optional[str], group: str, topic: str) -> bool:
    """Whether `reply` answers the command sent at `offset` (with `command_id`, when known) to the
    workers of consumer group `group` on events topic `topic`: a reply to an earlier command, to
    the same offset of a recreated topic, or from a worker of another group or topic (or from
    before groups, naming none) does not."""
    return (reply.command == offset and (command_id is None or reply.id == command_id)
            and reply.group == group and reply.topic == topic)


class ControlClient:
    """Sends commands to the control topic and reads the workers' replies."""

    def __init__(self, options: dict, control_topic: str, signing_key: Optional[bytes] = None):
        self.options = options
        self.control_topic = control_topic
        self.replies = replies_topic(control_topic)
        self.signing_key = signing_key
        self._producer: Optional[KafkaProducer] = None

    def connect(self) -> "ControlClient":
        """Create the control and reply topics if missing; open the producer."""
        create_topics(self.options, {self.control_topic: 1, self.replies: 1},
                      configs={self.control_topic: CONTROL_TOPIC_CONFIGS})
        self._producer = KafkaProducer(acks="all", **self.options)
        return self

    def send(self, command: Command) -> int:
        """Append a command (signed when there is a key); return its offset."""
        if self._producer is None:
            raise RuntimeError("the control client is not connected: call connect() first")
        value, headers = encode_command(command, self.signing_key)
        # partition 0, the one workers read (a control topic made with more would spread commands)
        return self._producer.send(self.control_topic, value=value, headers=headers, partition=0).get(timeout=30).offset

    def replies_end(self) -> int:
        """The reply topic's end offset: where the replies to a command sent now start."""
        consumer = KafkaConsumer(group_id=None, **self.options)
        try:
            tp = TopicPartition(self.replies, 0)
            return consumer.end_offsets([tp])[tp]
        finally:
            consumer.close()

    def read_replies(self, start: int = 0, until: Optional[Callable[[list[Reply]], bool]] = None,
                     timeout: float = 0.0) -> RepliesRead:
        """Replies from offset `start` (with a key, only those signed with it); keep reading until
        `until(replies)` is true or `timeout`."""
        topic = TopicPartition(self.replies, 0)
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **self.options)
        read_records_in_one_pass(consumer)   # what cannot be read is what the skipper's probe cannot read
        read = RepliesRead()
        skipper = CorruptBatchSkipper(self.options, outputs=None)   # connects only when a batch cannot be read
        try:
            consumer.assign([topic])
            consumer.seek(topic, start)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    batches = consumer.poll(timeout_ms=200)
                except CorruptRecordError:   # raised again at every poll until a seek
                    at = consumer.position(topic)
                    end = skipper.pass_over(consumer, topic, at)
                    if end is None:   # the probe read it, or did not answer in time: nowhere to seek to
                        raise
                    read.unreadable += end - at
                    continue
                for records in batches.values():
                    for record in records:
                        read.take(record, self.signing_key)
                caught_up = consumer.position(topic) >= consumer.end_offsets([topic])[topic]
                if ((until is not None and until(read.replies)) or (until is None and caught_up)
                        or time.monotonic() > deadline):
                    return read
        finally:
            consumer.close()
            skipper.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


def partitions_of(options: dict, topic: str) -> set[int]:
    consumer = KafkaConsumer(group_id=None, **options)
    try:
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise ValueError(f"topic {topic!r} has no partitions (wrong --topic?)")
        return set(found)
    finally:
        consumer.close()


def list_models(artifacts: Optional[str], store=None, reported: Optional[dict] = None) -> str:
    """A text table of artifact versions, of what each checkpointed partition runs (or why its
    checkpoint cannot be read), and of what workers last reported per partition (newer than a
    checkpoint after a command)."""
    lines = []
    if artifacts:
        if not Path(artifacts).is_dir():   # a mistyped path is not "nothing found"
            raise ValueError(f"--artifacts {artifacts}: not a directory")
        lines.append("artifact versions (rollback targets):")
        for meta in list_versions(artifacts):
            if "unreadable" in meta:
                lines.append(f"  unreadable: {meta['unreadable']}")
                continue
            metrics = meta.get("metrics")
            holdout = metrics.get("holdout") if isinstance(metrics, dict) else None
            roc_auc = holdout.get("roc_auc") if isinstance(holdout, dict) else None
            mark = " DEFAULT" if meta["is_default"] else ""
            shown = f"{roc_auc:.4f}" if isinstance(roc_auc, (int, float)) else "n/a"
            lines.append(f"  {meta['version']:<45} created {str(meta.get('created_at', '-'))[:19]}  "
                         f"holdout roc_auc {shown}{mark}")
    if store is not None:
        lines.append("partitions (from checkpoints):")
        refused: dict[tuple[str, int], str] = {}
        states = store.load_all(refused=refused)
        for topic, partition in sorted(states.keys() | refused.keys()):
            if (topic, partition) in refused:
                reason = refused[(topic, partition)][:300]   # may quote a header: one line, printable
                shown = reason if reason.isprintable() else reason.encode("unicode_escape").decode("ascii")
                lines.append(f"  {topic}[{partition}] unreadable: {shown}")
                continue
            state = states[(topic, partition)]
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


def models_command(s: ModelsSettings) -> int:
    """`shopstream models list|promote|rollback`: list, or send a command (signed with the
    settings' key when there is one; with --wait, print each partition's reply; exit 1 unless
    every wanted partition applied it)."""
    options = kafka_options(s.kafka)
    client = ControlClient(options, s.control_topic, s.signing_key)
    if s.action == "list":
        return _list(s, options, client)
    assert s.target is not None  # ModelsSettings requires it for promote and rollback
    check_target(s.action, s.target)
    if s.action == "rollback" and s.artifacts:
        find_version(s.artifacts, s.target)  # fail here, not silently in every worker
    partitions = None
    if s.partition is not None or s.wait:
        partitions = partitions_of(options, s.topic)
        if s.partition is not None and s.partition not in partitions:   # no worker would ever answer
            raise ValueError(f"--partition {s.partition}: topic {s.topic!r} has partitions "
                             f"{_ranges(sorted(partitions))}")
    client.connect()
    try:
        replies_end = client.replies_end()
        command_id = uuid.uuid4().hex
        offset = client.send(Command(s.action, s.target, s.partition, id=command_id, issued_at=time.time(),
                                     group=s.group, topic=s.topic))
    finally:
        client.close()
    scope = "every partition" if s.partition is None else f"partition {s.partition}"
    print(f"sent {s.action} {s.target} for {scope} of {s.topic} in group {s.group} (control offset {offset})")
    if not s.wait:
        print("running workers of the group apply it within a second, stopped ones when they resume")
        return 0
    assert partitions is not None
    wanted = partitions if s.partition is None else {s.partition}
    answered: dict[int, Reply] = {}

    def complete(replies):
        for reply in replies:
            if answers(reply, offset, command_id, s.group, s.topic):
                answered.setdefault(reply.partition, reply)
        return wanted <= set(answered)

    read = client.read_replies(replies_end, until=complete, timeout=s.wait_timeout)
    for partition in sorted(wanted | set(answered)):
        reply = answered.get(partition)
        if reply is None:
            print(f"  partition {partition}: no reply in {s.wait_timeout:g} s (no worker of group {s.group} on "
                  f"{s.topic} running it?)")
        else:
            detail = f": {reply.reason}" if reply.reason else f" (champion {reply.model} {reply.version})"
            print(f"  partition {partition}: {reply.outcome}{detail}")
    _print_not_answers(read, offset, command_id, s.group, s.topic)
    ok = wanted <= set(answered) and all(r.outcome == "applied" for r in answered.values())
    return 0 if ok else 1


def _ranges(numbers: list[int]) -> str:
    """Sorted numbers as runs: [0, 1, 2, 5] -> '0..2, 5'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in runs)


def _print_not_answers(read: RepliesRead, offset: int, command_id: str, group: str = "", topic: str = "") -> None:
    """Say which replies to this command's offset were not taken as its answers, and why."""
    if read.unverified or read.unreadable:
        print(f"  {read.ignored_line()}")
    to_offset = [r for r in read.replies if r.command == offset and not answers(r, offset, command_id, group, topic)]
    others = sum(1 for r in to_offset if r.id != command_id)
    if others:
        print(f"  ignored {others} repl{'y' if others == 1 else 'ies'} to control offset {offset} for another "
              f"command (not id {command_id}: from a worker of before ids, or a recreated control topic?)")
    elsewhere = len(to_offset) - others
    if elsewhere:
        print(f"  ignored {elsewhere} repl{'y' if elsewhere == 1 else 'ies'} to this command from workers not of "
              f"group {group} on {topic} (a worker from before groups, naming none, or a forger?)")


def _list(s: ModelsSettings, options: dict, client: ControlClient) -> int:
    store: Union[KafkaCheckpointStore, DirectoryCheckpointStore, None] = None
    if s.checkpoint_store == "kafka":
        store = KafkaCheckpointStore(options, s.checkpoint_topic, group=s.group)
    elif s.checkpoints:
        store = DirectoryCheckpointStore(s.checkpoints, create=False)
    reported = None
    ignored = ""
    if s.kafka.bootstrap_servers:
        try:
            read = client.read_replies(timeout=10)
        except Exception as exc:  # no broker: the checkpoints still say something
            print(f"(no live replies: {type(exc).__name__}: {exc})", file=sys.stderr)
        else:
            ours = [r for r in read.replies if r.group == s.group and r.topic == s.topic]
            reported, ignored = {r.partition: r for r in ours}, read.ignored_line()
            if len(ours) < len(read.replies):
                others = len(read.replies) - len(ours)
                ignored = "; ".join(filter(None, [ignored, (
                    f"{others} repl{'y' if others == 1 else 'ies'} of workers not of group {s.group} on {s.topic} "
                    "not shown (another group sharing the control topic, or a worker from before groups: "
                    "--group, --topic)")]))
    try:
        print(list_models(s.artifacts, store, reported))
        if ignored:
            print(f"({ignored})")
    finally:
        if store is not None:
            store.close()
    return 0
