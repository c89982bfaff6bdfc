"""A checkpoint writes a batch of open predictions as columns (shopstream/open_columns.py):
read back, every entry is the one written, bit for bit; a batch the columns cannot hold
exactly is written as entries; a checkpoint with columns restores an engine that goes on
exactly as one that never stopped."""

from __future__ import annotations

import io
import pickle
import struct
from array import array

import pytest

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.labels import OpenPrediction
from shopstream.open_columns import OpenColumns
from stream.checkpointing.format import CheckpointError, dump_payload, unpickle_state
from stream.partition import Partition


def _bits(value):
    return struct.pack("<d", value) if value.__class__ is float else value


def _fields(entry):
    """Every field of an entry, floats as their bits, each with its type (a bool for an int, a
    str subclass for a str would differ)."""
    deadline, seq, prediction = entry
    outputs = tuple((_bits(p), y) for p, y in prediction.outputs)
    x = {name: _bits(value) for name, value in prediction.x.items()}
    fields = (_bits(deadline), seq, *prediction.key, _bits(prediction.event_time), list(x.items()), outputs,
              prediction.champion, prediction.ref, prediction.seq)
    return fields, [type(field).__name__ for field in (deadline, *prediction.key, prediction.event_time, seq,
                                                       prediction.champion, prediction.seq)]


def _engine(n=3000, features="shop", seed=5):
    engine = Engine.fresh("logreg", features, window=1e9)
    for offset, record in enumerate(generate(n, seed=seed)):
        engine.process(event_from_record(record), offset)
    return engine


def test_columns_give_back_every_entry_bit_for_bit():
    engine = _engine()
    with engine.joiner.entries_apart() as batches:
        [entries] = batches   # batch 0: all in one list
    assert len(entries) > 1000
    assert len({id(p._outputs) for _, _, p in entries}) > 1   # several layouts in one batch
    columns = OpenColumns.of(entries)
    assert columns is not None
    back = pickle.loads(pickle.dumps(columns, protocol=pickle.HIGHEST_PROTOCOL)).entries()
    assert [_fields(e) for e in back] == [_fields(e) for e in entries]
    assert all(type(p.key[0]) is str and type(p.event_time) is float for _, _, p in back)


def _entry(key=("s", "p"), event_time=5.0, x=None, outputs=((0.5, True),), ref=None, pack=True, seq=3):
    prediction = OpenPrediction(key, event_time, {"a": 1.0} if x is None else x, list(outputs), 0, ref)
    if pack:
        prediction.compact({})
    prediction.seq = seq
    return (float(event_time) + 60.0, seq, prediction)


class _Str(str):
    pass


@pytest.mark.parametrize("odd", [
    _entry(key=("s", 7)),                 # a product that is not a string
    _entry(key=("s\x00x", "p")),          # a NUL in a session would split it in two
    _entry(key=("s", "p", "q")),          # not a (session, product) pair
    _entry(key=(_Str("s"), "p")),         # a str subclass would come back a str
    _entry(event_time=5),                 # an int time would come back a float
    _entry(x={"a": 1}, pack=False),       # not packed: its features stay a dict
    _entry(outputs=((0.5, 1),)),          # an output compact() refuses to pack
])
def test_a_batch_the_columns_cannot_hold_exactly_is_left_to_pickle(odd):
    assert OpenColumns.of([_entry(key=("a", "b"), seq=1), odd]) is None
    assert OpenColumns.of([]) is None


class _Float(float):
    pass


def test_a_seq_a_champion_or_a_deadline_that_would_come_back_different_is_not_written_as_columns():
    deadline, _, prediction = _entry(seq=3)
    assert OpenColumns.of([(deadline, 4, prediction)]) is None      # not the entry's seq
    prediction.seq = True
    assert OpenColumns.of([(deadline, 1, prediction)]) is None      # a bool seq would come back an int
    prediction.seq, prediction.champion = 3, True
    assert OpenColumns.of([(deadline, 3, prediction)]) is None      # so would a bool champion
    prediction.champion = 0
    assert OpenColumns.of([(_Float(deadline), 3, prediction)]) is None
    assert OpenColumns.of([(deadline, 3, prediction)]) is not None


def test_the_joiner_pickles_whole_again_after_its_entries_were_apart_even_after_an_error():
    engine = _engine(n=1500)
    joiner = engine.joiner
    with joiner.entries_apart(1000) as batches:
        entries = [entry for batch in batches for entry in batch]
        assert len(pickle.loads(pickle.dumps(joiner))) == 0 < len(entries)
        with pytest.raises(RuntimeError, match="already open"):
            with joiner.entries_apart():
                pass
    assert len(pickle.loads(pickle.dumps(joiner))) == len(joiner) == len(entries)
    with pytest.raises(KeyError):
        with joiner.entries_apart():
            raise KeyError("a failed checkpoint")
    assert len(pickle.loads(pickle.dumps(joiner))) == len(joiner)
    state, first, second = _partition(engine), io.BytesIO(), io.BytesIO()
    dump_payload(state, first)   # the same partition, checkpointed twice: the same payload
    dump_payload(state, second)
    assert first.getvalue() == second.getvalue()


def test_refs_of_any_kind_come_back():
    refs = [None, 17, (2, 40), "offset"]
    entries = [_entry(key=(f"s{i}", "p"), ref=ref, seq=i) for i, ref in enumerate(refs)]
    assert [p.ref for _, _, p in OpenColumns.of(entries).entries()] == refs


def test_columns_that_disagree_in_length_are_refused():
    columns = OpenColumns.of([_entry(seq=1)])
    columns.refs = []
    with pytest.raises(ValueError, match="differ in length"):
        columns.entries()


def _partition(engine):
    return Partition("events", 0, engine, next_offset=3000, group="g", sequence=1)


def test_a_checkpoint_with_columns_and_entries_restores_an_engine_that_goes_on_exactly(monkeypatch):
    from stream.checkpointing import format as checkpoint_format

    monkeypatch.setattr(checkpoint_format, "_BATCH", 700)   # several batches
    engine, original = _engine(), _engine()
    for twin in (engine, original):   # an int among its features: it stays unpacked, its batch goes as entries
        odd = twin.joiner.open_predictions()[5]
        odd.x = {**odd.x, "is_cart": 1}
    written = io.BytesIO()
    dump_payload(_partition(engine), written)
    written.seek(0)
    pickle.load(written)   # the partition, then the batches
    batches = []
    while (batch := pickle.load(written)) is not None:
        batches.append(type(batch).__name__)
    assert batches.count("OpenColumns") >= 2 and batches.count("list") == 1   # the batch with the dict
    restored = unpickle_state(io.BytesIO(written.getvalue()), {"topic": "events", "partition": 0, "sequence": 1},
                              "test")
    assert restored.engine.open_predictions == original.open_predictions
    for offset, record in enumerate(generate(3000, seed=6), 3000):
        event = event_from_record(record)
        assert restored.engine.process(event, offset) == original.process(event, offset)
    assert restored.engine.counts == original.counts


def test_a_prediction_whose_bytes_its_layout_cannot_read_is_refused():
    columns = OpenColumns.of([_entry(key=("a", "b"), seq=1), _entry(key=("c", "d"), seq=2)])
    lengths = array("Q")
    lengths.frombytes(columns.lengths)
    lengths[0], lengths[1] = lengths[0] - 8, lengths[1] + 8   # the same total: only the layout tells
    columns.lengths = lengths.tobytes()
    with pytest.raises(ValueError, match="open prediction 0 of a batch"):
        columns.entries()


def test_columns_that_name_a_missing_layout_or_a_seq_twice_are_refused():
    columns = OpenColumns.of([_entry(key=("a", "b"), seq=1), _entry(key=("c", "d"), seq=2)])
    good_ids, good_seqs = columns.layout_ids, columns.seqs
    columns.layout_ids = array("H", [0, 7]).tobytes()
    with pytest.raises(ValueError, match="layout it does not hold"):
        columns.entries()
    columns.layout_ids, columns.seqs = good_ids, array("q", [1, 1]).tobytes()
    with pytest.raises(ValueError, match="a seq twice"):
        columns.entries()
    columns.seqs, columns.sessions = good_seqs, b"a\x00c"
    with pytest.raises(ValueError, match="wrong type"):
        columns.entries()
    columns.sessions, columns.times = "a\x00c", "not bytes"
    with pytest.raises(ValueError, match="wrong type"):
        columns.entries()


def test_a_batch_whose_columns_disagree_is_a_checkpoint_error():
    engine = _engine()
    with engine.joiner.entries_apart() as batches:
        columns = OpenColumns.of(next(batches))
    columns.refs = columns.refs[:-1]
    payload = io.BytesIO()
    for part in (_partition(Engine.fresh("logreg", "shop", window=1e9)), columns, None):
        pickle.Pickler(payload, protocol=pickle.HIGHEST_PROTOCOL).dump(part)
    with pytest.raises(CheckpointError, match="differ in length"):
        unpickle_state(io.BytesIO(payload.getvalue()), {"topic": "events", "partition": 0, "sequence": 1}, "test")
