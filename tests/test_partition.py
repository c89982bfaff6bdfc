"""A partition's bookkeeping is written in one place (stream/partition.py) and asked by the rest."""

from __future__ import annotations

import pickle

from shopstream.engine import Engine
from stream.checkpointing.format import decode_state, encode_state
from stream.partition import CheckpointMarks, Partition


def test_unsaved_progress_is_marked_once_and_a_failed_checkpoint_keeps_what_was_learned_since():
    partition = Partition("events", 0, Engine.fresh("logreg", "raw"), origin="checkpoint")
    assert not partition.needs_checkpoint and partition.unsaved_since is None
    partition.handled(41)
    first = partition.unsaved_since
    partition.handled(42)
    assert (partition.next_offset, partition.events_since_checkpoint, partition.unsaved_since) == (43, 2, first)
    before = partition.begin_checkpoint("g", 5)
    assert isinstance(before, CheckpointMarks) and before.events_since_checkpoint == 2 and before.sequence == 0
    assert (partition.events_since_checkpoint, partition.sequence, partition.checkpointed_offset) == (0, 5, 43)
    partition.handled(43)             # learned while the checkpoint was being written
    partition.mark_changed()          # and a control command applied
    partition.undo_checkpoint(before)  # then it failed
    assert partition.events_since_checkpoint == 3 and partition.changed and partition.sequence == 0
    assert partition.unsaved_since == first and partition.checkpoint_id is None


def test_what_is_this_worker_s_own_is_never_in_a_checkpoint():
    partition = Partition("events", 1, Engine.fresh("logreg", "raw"), next_offset=9)
    partition.paused_because = "No space left on device"
    partition.checkpoint_age(at_most=30.0)
    assert partition.age_origin is not None
    assert b"No space left" not in pickle.dumps(partition)
    restored = decode_state(encode_state(partition, signing_key=None), "p", signing_key=None)
    assert restored.paused_because is None and restored.age_origin is None and restored.next_offset == 9
    assert partition.paused_because == "No space left on device"   # the live one is untouched
