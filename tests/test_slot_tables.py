"""`SessionTable` and `CountTable` keep the order and the limits of the `_Capped` tables they
replaced: the same rows in the same order, the same evictions, the same expiries, through any
mix of new keys, touches, expiries, cap changes and pickles; feature state pickled with the old
tables loads into the new ones and goes on as the old code would."""

import pickle
import random

import pytest

from shopstream.events import event_from_record
from shopstream.features import FeatureCaps, ShopFeatures, _Capped
from shopstream.generator import generate
from shopstream.session_table import SessionTable
from shopstream.slot_table import CountTable
from test_features_lookups import Reference, _bits


class CappedSessions:
    """The same operations on the old layout: an `OrderedDict` of rows with a cap."""

    def __init__(self, cap):
        self.table, self.expired = _Capped(cap), 0

    def add(self, key, t):
        self.table.put(key, [t, 0, 0, set(), {}, t])

    def touch(self, key):
        self.table.move_to_end(key)

    def expire(self, horizon):
        table = self.table
        while table and next(iter(table.values()))[5] < horizon:
            table.popitem(last=False)
            self.expired += 1


def _rows(table):
    return [(key, row) for key, row in table.items()]


@pytest.mark.parametrize("seed", range(6))
def test_any_mix_of_operations_keeps_the_old_tables_order_and_evictions(seed):
    rng = random.Random(seed)
    cap = rng.choice([1, 2, 5, 40])
    new, old = SessionTable(cap), CappedSessions(cap)
    expired, t = 0, 1.7e9
    for step in range(3000):
        t += rng.random() * 10
        key = f"s{rng.randrange(3 * cap + 2)}"
        action = rng.random()
        if action < 0.6:
            if key in new:
                slot = new.index[key]
                new.views[slot] += 1
                new.lasts[slot] = t
                new.touch(slot)
                old.table[key][1] += 1
                old.table[key][5] = t
                old.touch(key)
            else:
                slot = new.add(key, t)
                old.add(key, t)
                if rng.random() < 0.5:
                    new.carted[slot] = {f"p{step}"}
                    old.table[key][3].add(f"p{step}")
        elif action < 0.75:
            horizon = t - rng.random() * 200
            expired += new.expire(horizon)
            old.expire(horizon)
        elif action < 0.8:   # a worker's own caps applied to restored state (set_caps)
            new.cap = old.table.cap = rng.choice([1, 2, 5, 40])
        elif action < 0.85:
            new = pickle.loads(pickle.dumps(new))
        assert len(new) == len(old.table)
    assert _rows(new) == _rows(old.table)
    assert (new.evicted, expired) == (old.table.evicted, old.expired)
    assert new.evicted > 0 and expired > 0


@pytest.mark.parametrize("seed", range(4))
def test_count_tables_keep_the_old_tables_first_in_first_out_order(seed):
    """Users, products and brands: new keys go last and never move; the oldest go past the cap."""
    rng = random.Random(seed)
    cap = rng.choice([1, 3, 30])
    new, old = CountTable(cap, 3), _Capped(cap)
    for step in range(3000):
        key = f"k{rng.randrange(100)}"
        if rng.random() < 0.05:
            new.cap = old.cap = rng.choice([1, 3, 30])
        elif rng.random() < 0.05:
            new = pickle.loads(pickle.dumps(new))
        slot = new.index.get(key)
        if slot is None:
            slot = new.add(key)
            old.put(key, [0, 0, 0])
        column = rng.randrange(3)
        new.columns[column][slot] += step
        old[key][column] += step
    assert _rows(new) == _rows(old) and new.evicted == old.evicted > 0


def test_a_pickled_table_keeps_its_slots_and_goes_on_exactly():
    table = SessionTable(cap=50)
    for i in range(200):
        slot = table.index.get(f"s{i % 70}")
        if slot is None:
            table.add(f"s{i % 70}", float(i))
        else:
            table.touch(slot)
    copy = pickle.loads(pickle.dumps(table))
    assert copy.index == table.index and copy.keys == table.keys and copy._free == table._free
    for twin in (table, copy):
        twin.add("new", 999.0)
        twin.expire(160.0)
    assert pickle.dumps(copy) == pickle.dumps(table) and _rows(copy) == _rows(table)


def test_slots_are_reused_and_never_grow_past_the_cap():
    table = SessionTable(cap=3)
    for i in range(1000):
        table.add(f"s{i}", float(i))
    assert len(table) == 3 and len(table.keys) == 3 and table.evicted == 997
    assert [key for key, _ in table.items()] == ["s997", "s998", "s999"]


def _events(n, seed):
    return sorted((event_from_record(record) for record in generate(n, seed=seed, days=3.0)),
                  key=lambda event: event.event_time)


@pytest.mark.parametrize("caps", [FeatureCaps(), FeatureCaps(sessions=5, session_products=2, session_ttl=900.0)],
                         ids=["default", "small"])
def test_feature_state_pickled_with_the_old_tables_loads_and_goes_on_as_before(caps):
    """A checkpoint or artifact from before: its sessions, users, products and brands are
    `_Capped`s of rows. Loaded, the features equal the old code's, bit for bit, on the events
    that follow."""
    events = _events(3000, 7)
    old = Reference(caps)   # the old code, with the old table
    for event in events[:2000]:
        old.transform(event)
        old.learn(event)
    names = ("sessions", "users", "products", "brands")
    assert all(isinstance(getattr(old, name), _Capped) for name in names)
    loaded = ShopFeatures.__new__(ShopFeatures)
    loaded.__setstate__(pickle.loads(pickle.dumps(old.__dict__)))
    assert isinstance(loaded.sessions, SessionTable)
    assert all(isinstance(getattr(loaded, name), CountTable) for name in names[1:])
    for name in names:
        new_table, old_table = getattr(loaded, name), getattr(old, name)
        assert _rows(new_table) == _rows(old_table) and new_table.evicted == old_table.evicted
    for event in events[2000:]:
        assert _bits(loaded.transform(event)) == _bits(old.transform(event))
        loaded.learn(event)
        old.learn(event)
    assert all(_rows(getattr(loaded, name)) == _rows(getattr(old, name)) for name in names)
    assert loaded.evicted == old.evicted


def test_tables_compare_by_rows_in_order_not_by_slots():
    left, right = SessionTable(cap=3), SessionTable(cap=3)
    for key, t in (("a", 1.0), ("b", 2.0)):
        left.add(key, t)
    right.add("x", 0.0)
    right.add("y", 0.2)
    right.expire(0.5)                 # both leave, slot 1 freed last: "a" takes it, "b" slot 0
    for key, t in (("a", 1.0), ("b", 2.0)):
        right.add(key, t)
    assert left == right and left.keys != right.keys
    right.touch(right.index["a"])
    assert left != right


def test_tables_have_no_attribute_dict_for_a_pickle_to_slow_down():
    """Pickling an object asks for its `__dict__`, and on CPython 3.11-3.12 every later attribute
    load of that object is slower (model_state.py); the features load the tables' columns per
    event, and checkpoints pickle them: every table class keeps `__slots__`."""
    for table in (SessionTable(2), CountTable(2, 3)):
        table.add("k", 1.0) if isinstance(table, SessionTable) else table.add("k")
        copy = pickle.loads(pickle.dumps(table))
        assert not hasattr(table, "__dict__") and not hasattr(copy, "__dict__") and copy == table
