"""Where an assigned partition starts from, and whether that start can be trusted.

`PartitionRestorer.restore` gives a partition its checkpoint, else a new engine (the
bootstrap artifact, else a fresh model), with the control commands it has not seen yet
applied. With a signing key, `witness` holds the state against the consumer group's
committed offset: offsets are committed only after a checkpoint is durable, and live in
Kafka, not beside the checkpoints, so a checkpoint behind that offset (an old one put
back), or none at all while the group has committed (one deleted), is refused. Without a
key, so is a partition whose newest checkpoint the store may not have been able to read
(`CheckpointStore.doubt`: a batch of the Kafka store's manifest topic that could not be
read): its last readable checkpoint is taken when the group committed no further, a new
start when the group committed nothing.

A checkpoint the store cannot read at all (an OSError: a directory or a FIFO by its name, a
file the process may not read, EIO) is neither refused nor taken as absent: `restore` raises
`CheckpointUnreadable`, and the partition is held, paused, until its checkpoint can be read
(`Checkpointer.hold`); a new start there would drop what it learned and count its records
again. `--force-fresh-start` does not pass it: the file may be readable again in a moment.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Callable, Optional

from shopstream.config import TRAINED_UNDER, EngineConfig
from shopstream.features import FeatureCaps
from shopstream.signing import SignatureError

from .checkpointing.format import CheckpointError
from .checkpointing.stores import CheckpointStore, unreadable
from .partition import Partition

log = logging.getLogger(__name__)


class CheckpointUnreadable(OSError):
    """A partition's checkpoint could not be read (the OSError is its cause): the partition is held, not
    started over and not the worker's end."""


class PartitionRestorer:
    """`config`, `caps`: this worker's engine settings and feature caps. A checkpoint goes on under
    the engine settings it was made with (its open predictions were made under its window, its
    metrics under its own): a difference is logged, never silent; its features take this
    worker's caps (limits on memory, not on what was learned). `adopted`: the artifact's
    `TRAINED_UNDER` settings were adopted (--adopt-artifact-settings), so those may differ."""

    def __init__(self, store: CheckpointStore, new_engine: Callable[[], tuple], control, group: str,
                 force_fresh_start: bool = False, config: Optional[EngineConfig] = None,
                 caps: Optional[FeatureCaps] = None, adopted: bool = False):
        self.store = store
        self.new_engine = new_engine
        self.control = control
        self.group = group
        self.force_fresh_start = force_fresh_start
        self.config = config
        self.caps = caps
        self.adopted = adopted
        self.doubted: dict = {}   # TopicPartition -> why its newest checkpoint may be unread (store.doubt)

    def restore(self, tp) -> Partition:
        """The partition's checkpoint, else a new start. A refused checkpoint raises
        (CheckpointError, SignatureError) unless `force_fresh_start`. What no checkpoint
        holds (a new start, commands applied since) counts as unsaved from now. A checkpoint
        that cannot be read raises CheckpointUnreadable, `force_fresh_start` or not."""
        try:
            state = self.store.load(tp.topic, tp.partition)
        except OSError as exc:   # the disk, not what the file holds: never a new start over it
            raise CheckpointUnreadable(f"partition {tp.partition}: "
                                       f"{unreadable(self.store.key(tp.topic, tp.partition), exc)}") from exc
        except (CheckpointError, SignatureError) as exc:
            if not self.force_fresh_start:
                raise
            log.warning("partition %d: %s; --force-fresh-start: starting it over", tp.partition, exc)
            state = None
        self.doubted.pop(tp, None)
        doubt = self.store.doubt(tp.topic, tp.partition)
        if doubt is not None:   # held against the committed offset before any record of it is handled
            self.doubted[tp] = doubt
            log.warning("partition %d: %s: starting from %s if the group's committed offset agrees", tp.partition,
                        doubt, f"its checkpoint at offset {state.next_offset}" if state is not None else "offset 0")
        if state is None:
            return self.start_over(tp)
        self._settle_settings(state, tp)
        self._apply_commands(state, tp)
        state.note_unsaved()
        return state

    def _settle_settings(self, state: Partition, tp) -> None:
        engine = state.engine
        if self.config is not None and isinstance(engine.config, EngineConfig):
            kept = [f"{name} {value!r} (this worker's: {getattr(self.config, name)!r})"
                    for name, value in asdict(engine.config).items()
                    if value != getattr(self.config, name, value) and not (self.adopted and name in TRAINED_UNDER)]
            if kept:
                log.warning("partition %d: restored under the engine settings of its checkpoint: %s; a partition "
                            "keeps them (--force-fresh-start starts it over under this worker's)", tp.partition,
                            ", ".join(kept))
        features = engine.features
        if self.caps is not None and getattr(features, "caps", self.caps) != self.caps:
            log.info("partition %d: its feature caps are now this worker's (%s)", tp.partition, self.caps)
            features.set_caps(self.caps)

    def start_over(self, tp) -> Partition:
        """A new engine at offset 0 (the bootstrap artifact, else a fresh model): unsaved from now."""
        engine, origin = self.new_engine()
        state = Partition(tp.topic, tp.partition, engine, next_offset=0, origin=origin, started_from=origin)
        self._apply_commands(state, tp)
        state.note_unsaved()
        return state

    def _apply_commands(self, state: Partition, tp) -> None:
        if self.control is not None and self.control.apply(state.engine, tp.partition):
            state.mark_changed()

    def witness(self, consumer, tp, state: Partition) -> None:
        """Raise CheckpointError when the group's committed offset contradicts `state` (with a signing
        key; without one, checkpoints are not claimed to be tamper-proof, and only a partition in doubt is
        held to it)."""
        doubt = self.doubted.pop(tp, None)
        if self.store.signing_key is None and doubt is None:
            return
        why = f" ({doubt}: the newer one was among them)" if doubt is not None else ""
        try:
            committed = consumer.committed(tp)
        except Exception as exc:  # the broker is slow to answer: the other checks still hold
            log.warning("partition %d: committed offset unknown (%s): restoring without that check",
                        tp.partition, type(exc).__name__)
            return
        if not committed:
            return
        if state.origin != "checkpoint":
            raise CheckpointError(f"partition {tp.partition}: no checkpoint, but group {self.group!r} "
                                  f"committed offset {committed}{why}: refusing to start it over from offset 0 "
                                  "(--force-fresh-start does that on purpose)")
        if state.next_offset < committed:
            raise CheckpointError(f"partition {tp.partition}: checkpoint at offset {state.next_offset} is older "
                                  f"than the offset {committed} group {self.group!r} committed after a "
                                  f"newer one{why or ' (an old checkpoint put back?)'}: refusing it")

    def fresh_after_refusal(self, tp) -> Partition:
        """--force-fresh-start after `witness` refused: a new start, unsaved from now."""
        return self.start_over(tp)
