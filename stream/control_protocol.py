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
HMAC of its bytes (header ``shopstream.hmac``), and a command carrying an id that an earlier
offset carried is a replay (the same signed bytes sent again), refused. A reply is JSON on
`<control topic>-replies`.

>>> value, headers = encode_command(Command("promote", "logreg"), b"k3y")
>>> parse_command(value, headers, b"k3y")
Command(action='promote', target='logreg', partition=None, id=None)
>>> parse_command(value, [], b"k3y")
'unsigned, but a signing key is set (SHOPSTREAM_SIGNING_KEY or --signing-key-file)'
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Optional

import msgspec

from shopstream.models import CATALOG, RENAMED
from shopstream.signing import KEY_IS_SET, sign

ACTIONS = ("promote", "rollback")
SIGNATURE_HEADER = "shopstream.hmac"
MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
VERSION = re.compile(r"(?P<model>[a-z][a-z0-9_]{0,63})-\d{8}T\d{6}-[0-9a-f]{8}")
MAX_COMMAND_BYTES = 4096


class Command(msgspec.Struct, forbid_unknown_fields=True):
    action: str                       # "promote" or "rollback"
    target: str                       # model name to promote, or artifact version to roll back to
    partition: Optional[int] = None   # None: every partition
    # This command's own (`shopstream models` draws one): signed with it, so the same bytes sent
    # again are a replay, refused (`ControlChannel.receive`); commands from before ids have none.
    id: Optional[Annotated[str, msgspec.Meta(max_length=64)]] = None


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


def encode_command(command: Command, signing_key: Optional[bytes]) -> tuple[bytes, list]:
    """A command's record value and headers: signed when there is a key."""
    value = msgspec.json.encode(command)
    return value, [(SIGNATURE_HEADER, sign(value, signing_key).encode())] if signing_key else []


def parse_command(value: Optional[bytes], headers, signing_key: Optional[bytes]) -> Command | str:
    """A control record's command, or why it is none (too large, unsigned or forged while
    there is a key, not a command)."""
    value = value or b""
    if len(value) > MAX_COMMAND_BYTES:
        return f"{len(value)} bytes, more than {MAX_COMMAND_BYTES}"
    if signing_key is not None:
        tag = dict((k, v) for k, v in headers or [] if isinstance(k, str)).get(SIGNATURE_HEADER)
        if tag is None:
            return f"unsigned, but {KEY_IS_SET}"
        if not isinstance(tag, bytes) or not hmac.compare_digest(tag, sign(value, signing_key).encode()):
            return "HMAC does not match: forged or modified"
    try:
        return msgspec.json.decode(value, type=Command)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
        return f"not a command: {exc}"


def encode_reply(reply: Reply) -> bytes:
    return msgspec.json.encode(reply)


def decode_reply(value: bytes) -> Optional[Reply]:
    """A reply, or None for a record that is none (skipped by readers)."""
    try:
        return msgspec.json.decode(value, type=Reply)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
