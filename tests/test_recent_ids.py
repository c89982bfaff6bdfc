"""The dedupe window (shopstream/recent_ids.py): what it remembers, and how a checkpoint holds it."""

import pickle
from array import array
from collections import OrderedDict

import pytest

from shopstream.engine import Engine
from shopstream.events import Event
from shopstream.recent_ids import CHUNK, RecentIds, _unpack


def _window(n: int, cap: int) -> RecentIds:
    ids = RecentIds()
    for i in range(n):
        ids.add(f"event-{i}", None if i % 3 == 0 else i / 7, cap)
    return ids


def test_the_window_keeps_the_newest_ids_in_order_with_their_scores():
    ids = _window(10, cap=4)
    assert list(ids.items()) == [("event-6", None), ("event-7", 1.0), ("event-8", 8 / 7), ("event-9", None)]
    assert "event-5" not in ids and ids.get("event-8") == 8 / 7


def test_a_pickled_window_is_the_same_window_and_keeps_evicting_the_oldest():
    ids = _window(1_000, cap=300)
    copy = pickle.loads(pickle.dumps(ids, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(copy) is RecentIds and list(copy.items()) == list(ids.items())
    for window in (ids, copy):
        window.add("new", 0.5, cap=300)
    assert list(copy.items()) == list(ids.items()) and "event-700" not in copy


@pytest.mark.parametrize("cap", [1, 3, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5])
@pytest.mark.parametrize("extra", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17])
def test_the_window_packed_in_chunks_is_the_window_an_ordered_dict_keeps(cap, extra):
    """Every id packed as it arrives, chunks dropped as the oldest ids leave: the pickle is the same
    window as a plain OrderedDict evicting its oldest, at every chunk boundary."""
    ids, expected = RecentIds(), OrderedDict()
    for i in range(cap + extra):
        score = None if i % 5 == 0 else i / 3
        ids.add(f"id-{i}", score, cap)
        expected[f"id-{i}"] = score
        while len(expected) > cap:
            expected.popitem(last=False)
    copy = pickle.loads(pickle.dumps(ids))
    assert list(ids.items()) == list(copy.items()) == list(expected.items())
    for window in (ids, copy):
        window.add("next", 0.5, cap)
    assert list(pickle.loads(pickle.dumps(copy)).items()) == list(ids.items())


def test_a_window_written_before_it_was_packed_in_chunks_still_loads():
    # 2026-12-03 morning: ids joined at checkpoint time, cut by their lengths, scores as a list
    lengths = array("I", [2, 0, 3])
    assert list(_unpack("e1\x00\x00a\x00b", lengths, [0.5, None, 0.25]).items()) == \
        [("e1", 0.5), ("", None), ("a\x00b", 0.25)]
    assert list(_unpack("e1\x00e2", None, [0.5, None]).items()) == [("e1", 0.5), ("e2", None)]


def test_string_ids_are_pickled_as_one_string_not_one_pickle_item_each():
    # Item by item, pickle memoizes every id: 65 of an 80 ms checkpoint at 100k ids (BENCHMARKS.md).
    ids = _window(50, cap=50)
    assert "\x00".join(ids).encode() in pickle.dumps(ids)


def test_ids_holding_the_separator_or_empty_round_trip_exactly():
    ids = RecentIds()
    for event_id in ("a\x00b", "", "\x00", "c", "\x00\x00d"):
        ids.add(event_id, 0.25, cap=10)
    assert list(pickle.loads(pickle.dumps(ids)).items()) == list(ids.items())
    one_empty = RecentIds([("", None)])
    assert list(pickle.loads(pickle.dumps(one_empty)).items()) == [("", None)]
    assert len(pickle.loads(pickle.dumps(RecentIds()))) == 0


def test_ids_that_are_not_all_strings_round_trip_as_pairs():
    ids = RecentIds()
    for event_id in (7, "seven", 8, "é-\U0001F600"):
        ids.add(event_id, 0.5, cap=10)
    assert list(pickle.loads(pickle.dumps(ids)).items()) == list(ids.items())


def test_an_engine_from_before_the_packed_window_keeps_its_ids():
    engine = Engine.fresh("logreg", "shop")
    state = engine.__dict__.copy()
    state["_recent_ids"] = OrderedDict([("seen", 0.25)])   # what checkpoints before it held
    old = Engine.__new__(Engine)
    old.__setstate__(state)
    assert old.recorded("seen", "u1") == (True, 0.25) and old.recorded("seen", "anyone") == (True, 0.25)
    repeat = Event(1.7e9, "view", "p1", "u1", "s1", event_id="seen")
    assert old.process(repeat) is None and old.counts["duplicate"] == 1


def test_another_users_event_of_the_same_id_is_its_own_event_not_a_duplicate():
    """Keyed by the id alone, a scoring request naming another user's event id read that event's
    score, and that user's own event, coming later, was dropped unlearned as a "duplicate"."""
    engine = Engine.fresh("logreg", "raw")
    first = Event(1.7e9, "view", "p1", "u1", "s1", event_id="e-7", features={"a": 1.0})
    other = Event(1.7e9 + 1, "view", "p2", "u2", "s2", event_id="e-7", features={"a": 2.0})
    p_first = engine.process(first)
    assert engine.recorded("e-7", "u2") == (False, None)
    p_other = engine.process(other)
    assert p_other is not None and engine.counts["duplicate"] == 0 and engine.counts["predicted"] == 2
    assert engine.recorded("e-7", "u1") == (True, p_first) and engine.recorded("e-7", "u2") == (True, p_other)
    assert engine.process(first) is None and engine.counts["duplicate"] == 1   # a redelivery is still one


def test_bare_ids_of_a_checkpoint_written_before_users_still_drop_their_redeliveries_until_they_leave():
    old = _unpack("e1\x00e2", None, array("d", [0.5, float("nan")]))   # as written before 2026-12-08
    assert old.bare == 2 and list(old.items()) == [("e1", 0.5), ("e2", None)]
    engine = Engine.fresh("logreg", "raw", dedupe=3)
    engine._recent_ids = old
    assert engine.recorded("e1", "anyone") == (True, 0.5)
    assert engine.process(Event(1.7e9, "view", "p", "u9", "s", event_id="e2")) is None   # its user unknown: dropped
    for i in range(3):
        engine.process(Event(1.7e9 + i, "view", "p", "u1", "s", event_id=f"new-{i}", features={"a": 1.0}))
    window = engine._recent_ids
    assert window.bare == 0 and list(window) == [("u1", "new-0"), ("u1", "new-1"), ("u1", "new-2")]
    assert engine.recorded("e1", "anyone") == (False, None)
    copy = pickle.loads(pickle.dumps(window))
    assert list(copy.items()) == list(window.items()) and copy.bare == 0


@pytest.mark.parametrize("cap", [1, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 5])
@pytest.mark.parametrize("bare", [0, 1, CHUNK + 3])
def test_a_window_of_users_events_after_bare_ids_packs_and_evicts_as_an_ordered_dict(cap, bare):
    ids, expected = _unpack("\x00".join(f"old-{i}" for i in range(bare)), None,
                            array("d", [i / 9 for i in range(bare)])), OrderedDict()
    expected.update((f"old-{i}", i / 9) for i in range(bare))
    for i in range(cap + CHUNK + 7):
        key, score = (f"user-{i % 13}", f"id-{i}"), (None if i % 5 == 0 else i / 3)
        ids.add(key, score, cap)
        expected[key] = score
        while len(expected) > cap:
            expected.popitem(last=False)
    assert list(ids.items()) == list(expected.items())
    assert ids.bare == sum(1 for key in expected if key.__class__ is str)
    copy = pickle.loads(pickle.dumps(ids))
    assert list(copy.items()) == list(expected.items()) and copy.bare == ids.bare
    assert ("\x00".join(key[1] for key in list(expected)[-3:])).encode() in pickle.dumps(ids)   # packed, not pairs


def test_keys_the_packed_form_cannot_hold_round_trip_as_pairs():
    for odd in (("", "e"), ("u\x00", "e"), ("u", "e\x00"), ("u", 7), (7, "e"), ("u", "e", "x")):
        ids = RecentIds()
        for key in (("u", "first"), odd, "bare"):
            ids.add(key, 0.25, cap=10)
        copy = pickle.loads(pickle.dumps(ids))
        assert list(copy.items()) == list(ids.items()) and copy.bare == ids.bare == 1, odd


def test_a_window_whose_users_do_not_match_its_ids_is_refused():
    with pytest.raises(ValueError, match="2 ids, 1 users and 2 scores"):
        _unpack("a\x00b", None, array("d", [0.5, 0.5]), "u1")
