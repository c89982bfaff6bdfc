"""Where checkpoints live: the store interface, and one file per partition in a directory.

A checkpoint is the only source of truth for where a partition's model stands: the
worker restores the engine and seeks to `next_offset`, so after a crash the events
since the checkpoint are replayed onto exactly the state that had not seen them.

A checkpoint binds to what it is for: its topic, partition and consumer group, and a
sequence number that grows with every save, are inside the checked header (readable
without unpickling). A checkpoint for another partition or group is refused; so, with a
signing key, is one older than a checkpoint this store already saw (an old file or
record put back). Each checkpoint records its lineage: its id, its parent's, what the
partition started from (artifact version or fresh), the offsets, and the shopstream and
River versions.

The directory store writes files atomically (temp file, fsync, rename), the pickle
streamed straight into the temporary file while it is hashed: no copy of the whole state
is ever held in memory. `begin_synced_save` leaves the fsync and the rename to a thread
(`syncing.py`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional

from shopstream.files import begin_atomic_write, discard, remove_leftovers, write_atomically
from stream.partition import CheckpointMarks, Partition

from .background import BackgroundCheckpoints, PendingSave
from .format import (FROM_ENVIRONMENT, HEADER_LIMIT, MAGIC, READ_SIZE, CheckpointError, ChunkReader, Key,
                     SignatureError, bind, check_payload, key_of, split_head, unpickle_state, verify_head, write_file)
from .syncing import Acknowledged, SyncingSave

log = logging.getLogger(__name__)
#: What `key` makes of a topic and partition: a Kafka topic name, a partition number as `str(int)` writes it.
_CHECKPOINT_NAME = re.compile(r"([A-Za-z0-9._-]{1,249})-(0|[1-9][0-9]{0,9})")


def unreadable(key: str, exc: OSError) -> str:
    """Why the checkpoint under `key` could not be read, in one line (`load_all`, the worker's restore).

    >>> unreadable("events-1", IsADirectoryError(21, "Is a directory", "/c/events-1.ckpt"))
    'checkpoint events-1: cannot be read: IsADirectoryError: Is a directory'
    """
    return f"checkpoint {key}: cannot be read: {type(exc).__name__}: {exc.strerror or exc}"


def _pieces(handle, size: int):
    """`handle`'s next `size` bytes and one more (a longer file is refused too), in pieces."""
    left = size + 1
    while left > 0 and (piece := handle.read(min(READ_SIZE, left))):
        yield piece
        left -= len(piece)


def open_checkpoint(path: Path, buffering: int = -1):
    """`path` opened for reading without waiting: a FIFO by a checkpoint's name blocked open() until a
    writer came (a restore, models list and a save's group check hung for good). Anything but a regular
    file is refused with an OSError (a directory by Python's own open)."""
    handle = open(path, "rb", buffering=buffering, opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise OSError(f"{path} is not a regular file (a FIFO or a device)")
    return handle


class CheckpointStore:
    """Where checkpoints live; subclasses say how one keyed checkpoint is written and read
    (`_write_state`, `_read_head`, `_read_payload`, `_keys`). `save` raises OSError when the
    store cannot take the write, leaving the partition's bookkeeping as it was (the worker
    then pauses the partition).

    `signing_key`: the key that signs and verifies (None: sha256 only); the default reads
    SHOPSTREAM_SIGNING_KEY whenever one is needed (tests and tools)."""

    # Immutable class defaults, replaced (never mutated) per instance.
    group: str = ""
    _key_source: Any = FROM_ENVIRONMENT
    _sequences: Mapping[str, int] = MappingProxyType({})  # key -> highest sequence this store saved or loaded

    def __init__(self, group: str = "", signing_key: Key = FROM_ENVIRONMENT):
        self.group = group
        self._key_source = signing_key
        self._sequences = {}

    @property
    def signing_key(self) -> Optional[bytes]:
        return key_of(self._key_source)

    def key(self, topic: str, partition: int) -> str:
        """What the store files the checkpoint of a topic's partition under."""
        return f"{topic}-{partition}"

    # -- what a subclass provides --------------------------------------------------------

    def _write_state(self, key: str, state: Partition) -> None:
        """Write the checkpoint of `state` durably under `key` (OSError if not)."""
        raise NotImplementedError

    def _read_head(self, key: str, where: str) -> Optional[tuple[dict, Any]]:
        """None, or (verified header dict, handle) for `_read_payload`."""
        raise NotImplementedError

    def _read_payload(self, handle, header: dict, where: str) -> Partition:
        """Check the payload against the header, then unpickle it."""
        raise NotImplementedError

    def _keys(self) -> list[str]:
        raise NotImplementedError

    # -- sequences ----------------------------------------------------------------------

    def seen_sequence(self, key: str) -> int:
        """The highest sequence this store saved or loaded under `key` (0: none)."""
        return self._sequences.get(key, 0)

    def saw_sequence(self, key: str, sequence: int) -> None:
        """A checkpoint of `sequence` under `key` was saved or loaded."""
        if sequence > self.seen_sequence(key):
            self._sequences = {**self._sequences, key: sequence}

    # -- saving and loading --------------------------------------------------------------

    def stage(self, state: Partition) -> CheckpointMarks:
        """Set the marks a new checkpoint of `state` records; return what to put back if it fails."""
        key = self.key(state.topic, state.partition)
        return state.begin_checkpoint(self.group, max(state.sequence, self.seen_sequence(key)) + 1)

    def save(self, state: Partition) -> None:
        before = self.stage(state)
        key = self.key(state.topic, state.partition)
        try:
            self._write_state(key, state)
        except BaseException:   # the disk, or pickling: the marks go back either way
            state.undo_checkpoint(before)
            raise
        self.saw_sequence(key, state.sequence)

    def begin_save(self, state: Partition, freeze_gc: bool = True) -> PendingSave:
        """Begin a checkpoint of `state` written in the background (`background.BackgroundCheckpoints`)."""
        raise NotImplementedError(f"{type(self).__name__} writes no checkpoint in the background")

    def load(self, topic: str, partition: int) -> Optional[Partition]:
        """The partition's checkpoint, verified and bound to this topic, partition and
        group; None if there is none. CheckpointError (or SignatureError) if it cannot be
        trusted, OSError if it cannot be read (`unreadable` says so). Everything but the payload
        is checked before the payload is read."""
        key = self.key(topic, partition)
        where = f"checkpoint {key}"
        found = self._read_head(key, where)
        if found is None:
            return None
        header, handle = found
        bind(header, topic, partition, self.group, where)
        sequence = int(header.get("sequence", 0))
        seen = self.seen_sequence(key)
        if sequence < seen and self.signing_key is not None:
            raise CheckpointError(f"{where}: sequence {sequence} is older than the {seen} this worker already "
                                  "saw (an old checkpoint put back?): refusing it")
        state = self._read_payload(handle, header, where)
        self.saw_sequence(key, sequence)
        return state

    def doubt(self, topic: str, partition: int) -> Optional[str]:
        """Why the partition's newest checkpoint may be one this store could not read, as of its last load,
        or None (the Kafka store says so after a batch of its manifest topic could not be read)."""
        return None

    def load_all(self, refused: Optional[dict[tuple[str, int], str]] = None) -> dict[tuple[str, int], Partition]:
        """Every checkpoint in the store, by (topic, partition). A checkpoint `load` refuses
        (CheckpointError or SignatureError), or cannot open (OSError: a directory by that name, a file
        the process may not read), raises, unless `refused` is given: then its reason goes in it under
        (topic, partition), and the others are still loaded."""
        states = {}
        for key in sorted(self._keys()):
            named = _CHECKPOINT_NAME.fullmatch(key)
            if named is None:
                # A stray file (`notes.ckpt`, `events-01.ckpt`) or a key someone wrote to the manifest topic
                log.warning("checkpoint store: %r is not a checkpoint's name (<topic>-<partition>): passed over",
                            key[:100])
                continue
            topic, partition = named[1], named[2]
            try:
                state = self.load(topic, int(partition))
            except (CheckpointError, SignatureError, OSError) as exc:
                if refused is None:
                    raise
                refused[(topic, int(partition))] = unreadable(key, exc) if isinstance(exc, OSError) else str(exc)
                continue
            if state is not None:
                states[(topic, int(partition))] = state
        return states

    def open(self) -> "CheckpointStore":
        """Connect to what holds the checkpoints (nothing to do, here); built stores never have."""
        return self

    def close(self) -> None:
        """Let go of what the store holds open (nothing, here)."""


class DirectoryCheckpointStore(BackgroundCheckpoints, CheckpointStore):
    """One file per topic-partition under `root`, e.g. ``root/shop-events-3.ckpt``."""

    def __init__(self, root: str | Path, group: str = "", create: bool = True,
                 signing_key: Key = FROM_ENVIRONMENT):
        CheckpointStore.__init__(self, group, signing_key)
        BackgroundCheckpoints.__init__(self)
        self._syncing: dict[str, SyncingSave] = {}   # key -> its last synced save (see `_not_stuck`)
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.root} does not exist")
        # A writer killed mid-checkpoint (kill -9, or its worker's death) leaves a temp file as
        # large as the state: the worker that comes next removes it.
        for path in remove_leftovers(self.root, ".*.ckpt.*.tmp"):
            log.info("removed %s, left by a checkpoint writer that was killed", path)

    def path(self, topic: str, partition: int) -> Path:
        return self.root / f"{self.key(topic, partition)}.ckpt"

    def _write_state(self, key: str, state: Partition) -> None:
        self._not_stuck(key)
        signing_key = self.signing_key
        write_atomically(self.root / f"{key}.ckpt", lambda out: write_file(state, out, signing_key),
                         buffering=READ_SIZE)

    def begin_synced_save(self, state: Partition, acknowledged: Optional[Acknowledged] = None,
                          acknowledge_seconds: float = 5.0) -> SyncingSave:
        """Write a checkpoint of `state` to its temp file now; a thread makes it durable and
        publishes it (`syncing.SyncingSave`), once `acknowledged` says the outputs it covers are.
        OSError if the write fails (bookkeeping restored)."""
        before = self.stage(state)
        key, signing_key = self.key(state.topic, state.partition), self.signing_key
        path = self.root / f"{key}.ckpt"
        try:
            self._not_stuck(key)
            out, tmp = begin_atomic_write(path, lambda out: write_file(state, out, signing_key), buffering=READ_SIZE)
        except BaseException:   # the disk, or pickling: the marks go back either way
            state.undo_checkpoint(before)
            raise
        try:
            syncing = self._syncing[key] = SyncingSave(self, state, before, out, tmp, path, acknowledged,
                                                       acknowledge_seconds)
        except BaseException as exc:  # no thread could be started: nothing is left, nothing counts
            discard(out, tmp)
            state.undo_checkpoint(before)
            raise OSError(f"checkpoint {key}: cannot start its sync thread: {type(exc).__name__}: {exc}") from None
        return syncing

    def _not_stuck(self, key: str) -> None:
        """OSError while an earlier sync of `key` that was given up on still runs, or if the file
        under `key` holds another consumer group's checkpoint (`_group_in_file`)."""
        theirs = self._group_in_file(key)
        if theirs and self.group and theirs != self.group:
            raise OSError(f"checkpoint {key}: {self.root / (key + '.ckpt')} holds consumer group {theirs!r}'s "
                          f"checkpoint, not {self.group!r}'s: two groups share this checkpoint directory; give each "
                          "its own (--checkpoints). Nothing was written over it")
        syncing = self._syncing.get(key)
        if syncing is not None and syncing.stuck:
            raise OSError(f"checkpoint {key}: an earlier checkpoint's fsync or rename has not returned for "
                          f"{time.monotonic() - syncing.started:.0f} s (a stalled volume?): no other is written "
                          "until it does")

    def _group_in_file(self, key: str) -> Optional[str]:
        """The consumer group the header of the file under `key` names, unverified (a file's name
        has no group in it: two groups sharing a directory would write over each other's); None
        if there is no such file or no readable header."""
        try:
            with open_checkpoint(self.root / f"{key}.ckpt") as handle:
                head = handle.read(len(MAGIC))
                handle.readline(HEADER_LIMIT)
                header = handle.readline(HEADER_LIMIT)
            group = json.loads(header).get("group") if head == MAGIC else None
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        return group if isinstance(group, str) else None

    def _read_head(self, key: str, where: str) -> Optional[tuple[dict, Any]]:
        path = self.root / f"{key}.ckpt"
        try:
            handle = open_checkpoint(path, buffering=READ_SIZE)
        except FileNotFoundError:
            return None
        try:
            head = handle.read(len(MAGIC))
            if head != MAGIC:
                split_head(head + handle.read(64), where)  # raises: which format it is, or none
            check = handle.readline(HEADER_LIMIT)
            header = handle.readline(HEADER_LIMIT)
            if not (check.endswith(b"\n") and header.endswith(b"\n")):
                raise CheckpointError(f"{where}: checksum mismatch (torn or modified file)")
            fields = verify_head(check[:-1], header[:-1], where, self.signing_key)
            self._check_size(handle, fields, where)
        except BaseException:
            handle.close()
            raise
        return fields, handle

    def _read_payload(self, handle, header: dict, where: str) -> Partition:
        # The pieces hashed are the pieces unpickled, held in memory as the Kafka store's chunks are:
        # hashed, then read again, the file could have changed in between (anyone who may write here).
        with handle:
            pieces = list(_pieces(handle, header["size"]))
        check_payload(pieces, header, where, self.signing_key)
        return unpickle_state(io.BufferedReader(ChunkReader(pieces), buffer_size=READ_SIZE), header, where)

    def _check_size(self, handle, header: dict, where: str) -> None:
        """Refuse a payload before any of it is held that the file cannot hold: its header (sha256-checked,
        unsigned without a key) may claim any size, and a sparse file of 4 KiB on disk may claim 64 GiB of
        holes that read as zeros. A file with fewer blocks than its payload's bytes is hashed first, unheld."""
        start, info = handle.tell(), os.fstat(handle.fileno())
        if header["size"] > info.st_size - start:   # refused as a short file always was, none of it read
            check_payload((), header, where, self.signing_key)
        if info.st_blocks * 512 < header["size"]:   # holes (or a file system that compresses): hashed, unheld
            check_payload(_pieces(handle, header["size"]), header, where, self.signing_key)
            handle.seek(start)

    def _keys(self) -> list[str]:
        return [path.stem for path in self.root.glob("*.ckpt")]

    def _write_in_child(self, key: str, state: Partition, spool: Path) -> None:
        self._write_state(key, state)   # the whole atomic write happens in the child
