"""Model lifecycle commands for running workers, through a one-partition control topic:
what both ends share (the messages, their topics, what a target may name, signing).

`shopstream models promote NAME` / `rollback VERSION` append a command
(`control_operator.py`); every worker reads the whole topic and applies each command, in
order, to each partition engine it owns whose `control_offset` is older
(`control_worker.py`). The offset is saved in the partition's checkpoint, so a command
reaches every partition exactly once: even one that was on a stopped worker, or moves to
another worker, when the command was sent.

Anyone who can write to the topic can send a command, so a command names things and
never paths: a rollback target must look like an artifact version (``logreg-20260101T000000-
0123abcd``: no separators, bounded length) and exist in the worker's --artifacts; a promote
target must be a model the partition runs. With a signing key, a command must carry an
HMAC of its bytes (header ``shopstream.hmac``), an id and an issue time (both signed;
`shopstream models` sets them; commands from before, without them, cannot be told from old
ones sent again, so they are refused, also for a partition that had not applied one yet: send
it again). A command carrying an id that an earlier offset carried is a replay (the same
signed bytes sent again), refused; so is one whose id a partition's lineage records as
already applied to it (`control_worker.py`: the first copy may have left the topic, or the
worker's memory at a restart).

Groups. Consumer groups may share a control topic (the default ``shop-control`` is every
group's), so a command names the consumer group and the events topic it is for (``group``,
``topic``; signed with the rest), a worker passes over, unanswered and counted
(``outcome="skipped"``, ``action`` one of `ELSEWHERE`), the commands of other groups, and a reply
names its worker's group and topic: `--wait` takes a reply only from its own group's workers. A
command naming no group (from a `shopstream models` of before groups, which every group applied)
is refused by a worker that knows its group, like a message that is no command (`elsewhere`).

Issue time. An id stops a copy only while the first copy is in the topic (or in a worker's
memory); once that one expired, a copy would be "first". So a command is refused when the
broker appended it more than `MAX_COMMAND_AGE` after it was issued (or more than
`MAX_CLOCK_SKEW` before). It is judged against the record's broker timestamp, not the
worker's clock, so every worker, at every start, judges a record the same way:

- a command appended in time stays valid: partitions that applied it skip it (offset at or
  below their `control_offset`), and it is never flagged again when re-read at a start;
- a partition that did not apply it yet (new, restored from an old checkpoint, or on a worker
  that was stopped for days) gets it, as it would have when it was sent;
- a copy appended later than `MAX_COMMAND_AGE` after its issue is refused by every worker.

Judged by the worker's clock instead, every command older than the bound would be refused
for the partitions that missed it and flagged at every start. The broker timestamp is the
broker's own with ``message.timestamp.type=LogAppendTime`` (`CONTROL_TOPIC_CONFIGS`: how both
ends create the control topic); with CreateTime it is the writer's word, which a writer
could backdate to pass: the worker warns once when a signed command carries one. The bound
assumes the topic keeps a command longer than `MAX_COMMAND_AGE` (retention.ms, 7 days by
default). A reply is JSON on `<control topic>-replies`, signed like a command with a key,
and names the command's offset and id.

>>> value, headers = encode_command(Command("promote", "logreg", id="c0ffee", issued_at=1.8e9, group="shopstream",
...                                         topic="shop-events"), b"k3y")
>>> parse_command(value, headers, b"k3y")  # doctest: +NORMALIZE_WHITESPACE
Command(action='promote', target='logreg', partition=None, id='c0ffee', issued_at=1800000000.0,
        group='shopstream', topic='shop-events')
>>> parse_command(value, [], b"k3y")
'unsigned, but a signing key is set (SHOPSTREAM_SIGNING_KEY or --signing-key-file)'
>>> issue_time_problem(parse_command(value, headers, b"k3y"), appended_ms=1_800_000_002_000)
>>> issue_time_problem(parse_command(value, headers, b"k3y"), appended_ms=1_900_000_000_000)
'issued 100000000 s before the broker appended it, more than the 86400 s a command may take: an old command sent again?'
"""

from __future__ import annotations

import hmac
import math
import re
from typing import Annotated, Optional

import msgspec

from shopstream.models import CATALOG, RENAMED
from shopstream.signing import KEY_IS_SET, sign

ACTIONS = ("promote", "rollback")
#: Why a worker passed over a command meant for other workers (the `action` label of
#: ``shopstream_control_commands_total{outcome="skipped"}``; a fixed set).
ELSEWHERE = ("other_group", "other_topic")
SIGNATURE_HEADER = "shopstream.hmac"
MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
VERSION = re.compile(r"(?P<model>[a-z][a-z0-9_]{0,63})-\d{8}T\d{6}-[0-9a-f]{8}")
MAX_COMMAND_BYTES = 4096
#: The longest a command may take from its issue to the broker's append. An honest one takes
#: seconds (a send, its retries) plus the operator's clock being behind the broker's: a day
#: forgives any clock that is roughly right, and stays well below the topic's retention (7
#: days by default), so while a copy could pass this bound, the first copy and its id are
#: still in the topic to make it a replay.
MAX_COMMAND_AGE = 24 * 3600.0
#: How far the operator's clock may be ahead of the broker's: an issue time later than the
#: append is no honest command's, but clocks differ by seconds to minutes.
MAX_CLOCK_SKEW = 300.0
#: How both ends create the control topic: the broker stamps each record with its append time
#: (with CreateTime, a writer could backdate a copy of an old command to pass MAX_COMMAND_AGE).
CONTROL_TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime"}
#: `ConsumerRecord.timestamp_type` of a timestamp its producer chose.
CREATE_TIME = 0

CommandId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
#: A consumer group or a topic, as a command names them (Kafka's topics are at most 249 characters).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
PartitionNumber = Annotated[int, msgspec.Meta(ge=0)]


class Command(msgspec.Struct, forbid_unknown_fields=True):
    action: str                       # "promote" or "rollback"
    target: str                       # model name to promote, or artifact version to roll back to
    partition: Optional[PartitionNumber] = None   # None: every partition
    # This command's own (`shopstream models` draws one): signed with it, so the same bytes sent
    # again are a replay, refused (`ControlChannel.receive`); required with a signing key.
    id: Optional[CommandId] = None
    # When `shopstream models` issued it (epoch seconds; signed): a copy appended much later is
    # refused (`issue_time_problem`); required with a signing key.
    issued_at: Optional[float] = None
    # The consumer group and events topic whose workers it is for (signed with the rest): groups
    # may share a control topic (the default `shop-control` is every group's), and each applies only
    # its own commands. A worker refuses one without them (`elsewhere`); a `shopstream models` from
    # before groups wrote none, and every group applied its commands.
    group: Optional[Name] = None
    topic: Optional[Name] = None


class Reply(msgspec.Struct):
    command: int                      # the command's offset in the control topic
    partition: int
    outcome: str                      # "applied" or "rejected"
    reason: str = ""
    model: str = ""                   # the partition's champion after the command
    version: str = ""
    worker: str = ""
    # The command's id: a reply answers that command only, not one at the same offset of a
    # recreated topic (None: the command had none, or a worker from before ids replied).
    id: Optional[CommandId] = None
    # The replying worker's consumer group and events topic: a reply answers a command only for
    # the group and topic it was sent to (None: a worker from before groups, of any group).
    group: Optional[str] = None
    topic: Optional[str] = None


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


def signed_headers(value: bytes, signing_key: Optional[bytes]) -> list:
    """A record's headers: the HMAC of `value` when there is a key (commands and replies)."""
    return [(SIGNATURE_HEADER, sign(value, signing_key).encode())] if signing_key else []


def signature_problem(value: bytes, headers, signing_key: bytes) -> Optional[str]:
    """Why a record's HMAC header does not prove `value` was signed with the key, or None."""
    tag = dict((k, v) for k, v in headers or [] if isinstance(k, str)).get(SIGNATURE_HEADER)
    if tag is None:
        return f"unsigned, but {KEY_IS_SET}"
    if not isinstance(tag, bytes) or not hmac.compare_digest(tag, sign(value, signing_key).encode()):
        return "HMAC does not match: forged or modified"
    return None


def encode_command(command: Command, signing_key: Optional[bytes]) -> tuple[bytes, list]:
    """A command's record value and headers: signed when there is a key."""
    value = msgspec.json.encode(command)
    return value, signed_headers(value, signing_key)


def parse_command(value: Optional[bytes], headers, signing_key: Optional[bytes]) -> Command | str:
    """A control record's command, or why it is none (too large, not a command; while there is a
    key: unsigned, forged, or without the id and issue time that tell it from an old one)."""
    value = value or b""
    if len(value) > MAX_COMMAND_BYTES:
        return f"{len(value)} bytes, more than {MAX_COMMAND_BYTES}"
    problem = signature_problem(value, headers, signing_key) if signing_key is not None else None
    if problem:
        return problem
    try:
        command = msgspec.json.decode(value, type=Command)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
        return f"not a command: {exc}"
    if signing_key is not None and command.id is None:
        return "no id: a signed command from before ids cannot be told from one sent again; send it again"
    if signing_key is not None and command.issued_at is None:
        return ("no issue time: a signed command from before issue times cannot be told from one sent again "
                "after its first copy expired; send it again")
    return command


def elsewhere(command: Command, group: Optional[str], topic: Optional[str]) -> Optional[str]:
    """Whether `command` is for the workers of another consumer group or events topic than
    `group` and `topic` (the reader's): "other_group" or "other_topic" (`ELSEWHERE`), else None.
    A command naming neither is no one's: ValueError with the reason (`ControlChannel.receive`
    refuses it). A reader that knows no group (None) takes every command, as before groups.

    >>> elsewhere(Command("promote", "logreg", group="eu", topic="shop-events"), "us", "shop-events")
    'other_group'
    >>> elsewhere(Command("promote", "logreg", group="us", topic="shop-events"), "us", "shop-events")
    >>> elsewhere(Command("promote", "logreg", group="us"), "us", "shop-events")
    Traceback (most recent call last):
    ...
    ValueError: names no events topic (sent by a `shopstream models` from before groups, ...): send it again
    """
    if group is None:
        return None
    missing = [what for what, named in (("consumer group", command.group), ("events topic", command.topic))
               if named is None]
    if missing:
        raise ValueError(f"names no {' nor '.join(missing)} (sent by a `shopstream models` from before groups, "
                         "which every group sharing the control topic applied): send it again")
    if command.group != group:
        return "other_group"
    if topic is not None and command.topic != topic:
        return "other_topic"
    return None


def issue_time_problem(command: Command, appended_ms: Optional[int]) -> Optional[str]:
    """Why a command's issue time refuses it, judged against the broker's append time of its
    record (`appended_ms`, epoch milliseconds), or None (also for a command without one)."""
    issued = command.issued_at
    if issued is None:
        return None
    if not math.isfinite(issued):
        return f"issue time {issued!r} is not a number of seconds"
    if not isinstance(appended_ms, int) or isinstance(appended_ms, bool) or appended_ms < 0:
        return f"no broker timestamp ({appended_ms!r:.40}) to judge its issue time by"
    age = appended_ms / 1000 - issued
    if age > MAX_COMMAND_AGE:
        return (f"issued {_seconds(age)} before the broker appended it, more than the {_seconds(MAX_COMMAND_AGE)} "
                "a command may take: an old command sent again?")
    if age < -MAX_CLOCK_SKEW:
        return (f"issued {_seconds(-age)} after the broker appended it, more than the {_seconds(MAX_CLOCK_SKEW)} "
                "clocks may differ by")
    return None


def _seconds(seconds: float) -> str:
    """A duration for a reason: whole seconds, or 3 digits when huge (a hostile issue time)."""
    return f"{seconds:.0f} s" if seconds < 1e12 else f"{seconds:.3g} s"


def encode_reply(reply: Reply, signing_key: Optional[bytes] = None) -> tuple[bytes, list]:
    """A reply's record value and headers: signed when there is a key."""
    value = msgspec.json.encode(reply)
    return value, signed_headers(value, signing_key)


def decode_reply(value: Optional[bytes]) -> Optional[Reply]:
    """A reply, or None for a record that is none (skipped by readers)."""
    try:
        return msgspec.json.decode(value or b"", type=Reply)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
