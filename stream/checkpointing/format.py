"""The checkpoint format CKPT-3: a checked header, then the payload streamed while hashed.

A file (the Kafka store keeps the same head in its manifest record and the payload in
chunk records):

    SHOPSTREAM-CKPT-3\\n
    sha256:<hex>\\n  or  hmac-sha256:<hex>\\n      the check of the header line
    {"format": "CKPT-3", "payload": 3, "group": ..., "topic": ..., "partition": ..., "sequence": ...,
     "next_offset": ..., "size": ..., "sha256": <hex of the payload>, ...}\\n
    <payload: the pickle of the Partition, then its open predictions in batches, then None>

Each batch is an `OpenColumns` (payload version 3: the batch's fields as a few arrays and
strings, pickled in a fraction of the time) or, when the columns cannot hold it exactly, a
list of the joiner's (deadline, seq, prediction) entries (versions 1 and 2: every batch).

The check covers the header, and the header holds the payload's sha256: with a signing
key the check is an HMAC, required on load, so the header (and through its digest the
payload) is authenticated before anything is unpickled. A torn or corrupted file is
detected instead of half-loaded. "payload" is the payload's version (absent: 1); the
payload is unpickled through `migration.CheckpointUnpickler`, so a class that moved is
found where it lives now. Checkpoints of an older format (CKPT-1, CKPT-2) are refused
with a clear error.

Every function that checks or writes a check takes the signing key explicitly (None:
sha256 only); only `encode_state`/`decode_state`, for tests and tools, default to
`FROM_ENVIRONMENT` (SHOPSTREAM_SIGNING_KEY read when they are called).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import pickle
from typing import TYPE_CHECKING, Iterable, Optional

from shopstream.open_columns import OpenColumns
from shopstream.signing import FROM_ENVIRONMENT, Key, SignatureError, key_of, verify

from .migration import PAYLOAD_VERSION, CheckpointUnpickler

if TYPE_CHECKING:
    from stream.partition import Partition

FORMAT = "CKPT-3"
MAGIC = b"SHOPSTREAM-CKPT-3\n"   # then the check line, the header line and the payload
MAGIC_PREFIX = b"SHOPSTREAM-CKPT-"
HEADER_LIMIT = 1 << 20           # a header line longer than this is not ours
READ_SIZE = 1 << 20              # bytes per read when hashing a payload
_BATCH = 20_000                  # open predictions per pickle of the payload's tail


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or read."""


class HeaderFields:
    """What a header says about a partition, fixed when its checkpoint begins."""

    def __init__(self, state: "Partition | HeaderFields"):
        self.group: str = state.group
        self.topic: str = state.topic
        self.partition: int = state.partition
        self.sequence: int = state.sequence
        self.next_offset: int = state.next_offset
        self.checkpoint_id: Optional[str] = state.checkpoint_id


# -- the payload -----------------------------------------------------------------------


class HashingWriter:
    """A file-like sink for `pickle.Pickler`: hashes every byte on its way to `out`."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


def _joiner(state):
    return getattr(getattr(state, "engine", None), "joiner", None)


def dump_payload(state: "Partition", out) -> tuple[int, str]:
    """Pickle `state` straight into `out` (anything with write); return (size, sha256 hex).

    The payload is a sequence of pickles: the state without its open predictions, then
    the open predictions in batches of `_BATCH`, then None. One pickle of everything would
    hold a memo entry (~100 bytes) for every object until its end: hundreds of MiB at a
    million open predictions. Batches keep that to one batch's worth; each is written as
    columns (`OpenColumns`) when they hold it exactly, as entries otherwise."""
    writer = HashingWriter(out)
    protocol = pickle.HIGHEST_PROTOCOL
    joiner = _joiner(state)
    if joiner is None or not hasattr(joiner, "entries_apart"):
        pickle.Pickler(writer, protocol=protocol).dump(state)
    else:
        with joiner.entries_apart(_BATCH) as batches:
            pickle.Pickler(writer, protocol=protocol).dump(state)
            for batch in batches:
                pickle.Pickler(writer, protocol=protocol).dump(OpenColumns.of(batch) or batch)
    pickle.Pickler(writer, protocol=protocol).dump(None)
    return writer.size, writer.sha.hexdigest()


def load_payload(fileobj) -> "Partition":
    """Unpickle what `dump_payload` wrote (only after its digest was checked)."""
    state = CheckpointUnpickler(fileobj).load()
    entries: list = []
    while (batch := CheckpointUnpickler(fileobj).load()) is not None:
        entries.extend(batch.entries() if batch.__class__ is OpenColumns else batch)
    if entries:
        _joiner(state).attach(entries)
    return state


def unpickle_state(fileobj, header: dict, where: str) -> "Partition":
    """The partition in a checked payload; CheckpointError unless it is the one its header names."""
    from stream.partition import Partition   # (it imports this module)

    try:
        state = load_payload(fileobj)
    # Any error: the digest matched, so the payload is what a writer (a bug, or a forger without
    # the key) made, and whatever it raises is a reason to refuse it, not to stop the worker.
    except Exception as exc:
        raise CheckpointError(f"{where}: payload version {header.get('payload', 1)} cannot be read: "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, Partition) or (state.topic, state.partition, state.sequence) != (
            header["topic"], header["partition"], header["sequence"]):
        raise CheckpointError(f"{where}: the payload does not match its header: refusing it")
    state.origin = "checkpoint"
    return state


# -- the head --------------------------------------------------------------------------


def check_line(header: bytes, key: Optional[bytes]) -> bytes:
    """The check of a header line: an HMAC with a signing key, else a sha256."""
    if key is not None:
        return b"hmac-sha256:" + hmac.new(key, header, hashlib.sha256).hexdigest().encode()
    return b"sha256:" + hashlib.sha256(header).hexdigest().encode()


def make_header(state: "Partition | HeaderFields", size: int, digest: str, **extra) -> bytes:
    """The header line (no newline): what the checkpoint is for, and its payload's digest.
    `size` is zero-padded so a header's length is known before the payload is written."""
    fields = {"format": FORMAT, "payload": PAYLOAD_VERSION, "group": state.group, "topic": state.topic,
              "partition": state.partition, "sequence": state.sequence, "next_offset": state.next_offset,
              "checkpoint_id": state.checkpoint_id, "size": f"{size:020d}", "sha256": digest,
              "pickle": pickle.HIGHEST_PROTOCOL, **extra}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def encode_head(header: bytes, key: Optional[bytes]) -> bytes:
    """Magic, check line and header line: a whole head (a Kafka manifest)."""
    return MAGIC + check_line(header, key) + b"\n" + header + b"\n"


def split_head(data: bytes, where: str) -> tuple[bytes, bytes, int]:
    """(check line, header line, offset of the payload) of encoded bytes; refuses what is
    not CKPT-3 with a clear error."""
    if not data.startswith(MAGIC):
        if data.startswith(MAGIC_PREFIX):
            found = data[len(MAGIC_PREFIX) - 5:].partition(b"\n")[0].decode("ascii", "replace")
            number = found[5:]
            if not (number.isascii() and number.isdigit() and b"\n" in data[len(MAGIC_PREFIX):]):
                raise CheckpointError(f"{where}: a truncated or damaged checkpoint (its first line is {found[:40]!r})")
            if int(number) > int(FORMAT[5:]):   # a rollback to an older shopstream: keep the state for the newer one
                raise CheckpointError(
                    f"{where}: format {found} was written by a newer shopstream; this version reads only {FORMAT}. "
                    "Run the version that wrote it (--force-fresh-start would throw its state away)")
            raise CheckpointError(
                f"{where}: format {found} was written by an older shopstream; this version reads only "
                f"{FORMAT} (streamed, chunked checkpoints). Start the partition over with --force-fresh-start "
                "(or finish it with the version that wrote it)")
        raise CheckpointError(f"{where}: not a shopstream checkpoint")
    start = len(MAGIC)
    end_check = data.find(b"\n", start)
    end_header = data.find(b"\n", end_check + 1) if end_check >= 0 else -1
    if end_check < 0 or end_header < 0:
        raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")
    return data[start:end_check], data[end_check + 1:end_header], end_header + 1


def verify_head(check: bytes, header: bytes, where: str, key: Optional[bytes]) -> dict:
    """Verify the header line against its check; return it parsed. SignatureError or
    CheckpointError when it does not hold."""
    kind, _, value = check.decode("ascii", "replace").partition(":")
    if key is not None:
        verify(header, value if kind == "hmac-sha256" else None, key, where)
    elif kind == "hmac-sha256":
        raise SignatureError(f"{where}: signed checkpoint, but SHOPSTREAM_SIGNING_KEY is not set")
    elif kind != "sha256" or hashlib.sha256(header).hexdigest() != value:
        raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")
    try:
        fields = json.loads(header)
        fields["size"] = int(fields["size"])
        if fields.get("format") != FORMAT:
            raise ValueError(fields.get("format"))
        # Read as numbers and text further on: a header whose check holds may still hold other types
        # (a writer's bug, or a forger where no key is set), and they must be refused here, not raise there.
        fields["sequence"] = int(fields["sequence"])
        if not isinstance(fields["sha256"], str):
            raise TypeError(f"sha256 is a {type(fields['sha256']).__name__}")
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError) as exc:
        raise CheckpointError(f"{where}: unreadable header ({type(exc).__name__}: {exc})"[:300]) from None
    version = fields.get("payload", 1)
    if not isinstance(version, int) or not 1 <= version <= PAYLOAD_VERSION:
        raise CheckpointError(f"{where}: payload version {version!r} was written by a newer shopstream; this "
                              f"version reads versions 1 to {PAYLOAD_VERSION}")
    return fields


def decode_head(data: bytes, where: str, key: Optional[bytes]) -> dict:
    """The verified header of encoded bytes that start with a head."""
    check, header, _ = split_head(data, where)
    return verify_head(check, header, where, key)


def signed_sequence(data: bytes, key: Optional[bytes]) -> Optional[int]:
    """The sequence of an encoded checkpoint head whose check holds (HMAC with a signing
    key), without unpickling or reading its payload; None when it does not hold."""
    try:
        return int(decode_head(data or b"", "checkpoint", key)["sequence"])
    except (CheckpointError, SignatureError, ValueError, KeyError, TypeError):
        return None


class ChunkReader(io.RawIOBase):
    """A readable file over a list of byte strings, without joining them."""

    def __init__(self, chunks: list):
        self._chunks = [memoryview(c) for c in chunks]
        self._i = 0
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._i < len(self._chunks):
            chunk = self._chunks[self._i]
            if self._at < len(chunk):
                n = min(len(buffer), len(chunk) - self._at)
                buffer[:n] = chunk[self._at:self._at + n]
                self._at += n
                return n
            self._i, self._at = self._i + 1, 0
        return 0


def check_payload(pieces: Iterable, header: dict, where: str, key: Optional[bytes]) -> None:
    """Hash the payload's pieces; raise unless they are exactly what the header says."""
    sha, size = hashlib.sha256(), 0
    for piece in pieces:
        sha.update(piece)
        size += len(piece)
    if size != header["size"] or sha.hexdigest() != header["sha256"]:
        if key is not None:  # the HMAC covers the header, and the header the payload's digest
            raise SignatureError(f"{where}: HMAC does not match: forged or modified, refusing to load it")
        raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")


def shown(text: str) -> str:
    """At most 100 characters of `text` (a key or header field anyone who may write a checkpoint
    chose), on one line: escaped as `models list` shows a reason when it is not printable.

    >>> shown("g/events-0\\nforged line")
    'g/events-0\\\\nforged line'
    """
    text = text[:100]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def bind(header: dict, topic: str, partition: int, group: str, where: str) -> None:
    """CheckpointError unless the header is for this topic, partition and consumer group."""
    found = (header.get("topic"), header.get("partition"))
    if found != (topic, partition):
        # What a header names (anyone's text where no key is set) is shown on one line (`shown`)
        named = [shown(str(value)) for value in found]
        raise CheckpointError(f"{where}: holds the state of {named[0]}-{named[1]}, not of {topic}-{partition} "
                              "(a file copied from another partition?): refusing it")
    theirs = header.get("group", "")
    if theirs and group and theirs != group:
        raise CheckpointError(f"{where}: belongs to consumer group {theirs!r}, not {group!r}: refusing it")


# -- whole files -----------------------------------------------------------------------


def write_file(state: "Partition", out, key: Optional[bytes]) -> None:
    """Write a checkpoint into a seekable binary file at its current position: a
    placeholder head of the final length, the pickle streamed while hashed, then the head."""
    start = out.tell()
    placeholder = make_header(state, 0, "0" * 64)
    check_width = len(check_line(b"", key))
    out.write(MAGIC + b"0" * check_width + b"\n" + placeholder + b"\n")
    size, digest = dump_payload(state, out)
    end = out.tell()
    header = make_header(state, size, digest)
    assert len(header) == len(placeholder)
    out.seek(start + len(MAGIC))
    out.write(check_line(header, key) + b"\n" + header + b"\n")
    out.seek(end)


def encode_state(state: "Partition", signing_key: Key = FROM_ENVIRONMENT) -> bytes:
    """The bytes of a checkpoint file (for tests and tools; stores stream instead)."""
    out = io.BytesIO()
    write_file(state, out, key_of(signing_key))
    return out.getvalue()


def decode_state(data: bytes, where: str, signing_key: Key = FROM_ENVIRONMENT) -> "Partition":
    """Verify, then unpickle, checkpoint bytes written by `encode_state`."""
    key = key_of(signing_key)
    check, header, start = split_head(data, where)
    fields = verify_head(check, header, where, key)
    view = memoryview(data)[start:]
    check_payload([view], fields, where, key)
    return unpickle_state(io.BytesIO(view), fields, where)
