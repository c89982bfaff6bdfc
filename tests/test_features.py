"""Features only look backwards: what comes later never changes a prediction's features."""

from shopstream.events import Event
from shopstream.features import FeatureCaps, RawFeatures, ShopFeatures, build_features
from shopstream.generator import generate
from shopstream.events import event_from_record

import pickle
import pytest


def stream(n=3000, seed=11):
    return [event_from_record(record) for record in generate(n, seed=seed)]


def test_no_leakage_features_equal_with_or_without_the_future():
    events = stream()
    cut = len(events) // 2
    full, prefix = ShopFeatures(), ShopFeatures()
    full_x = []
    for event in events:
        full_x.append(full.transform(event))
        full.learn(event)
    # A run that never sees the second half (its purchases included) computes the same
    # features for the first half: nothing from later events leaked backwards.
    for i, event in enumerate(events[:cut]):
        assert prefix.transform(event) == full_x[i]
        prefix.learn(event)
    assert any(e.event_type == "purchase" for e in events[cut:])


def test_a_purchase_reaches_only_later_features():
    shop = ShopFeatures()
    shop.learn(Event(1.7e9 - 3600, "view", "p", "u", "s0", price=10.0))  # user and product have a history
    view = Event(1.7e9, "view", "p", "u", "s", price=10.0)
    purchase = Event(1.7e9 + 60, "purchase", "p", "u", "s", price=10.0)
    before = shop.transform(view)
    computed = dict(before)
    assert before["user_purchases"] == 0.0 and before["product_conversion"] == 1.0 / 51.0  # 1 view, 0 buys
    shop.learn(view)
    # The purchase is the label: its own features (computed before it is learned) hold no trace of it.
    assert shop.transform(purchase)["user_purchases"] == 0.0
    shop.learn(purchase)
    assert before == computed  # features handed out earlier do not change afterwards
    later = shop.transform(Event(1.7e9 + 120, "view", "p", "u", "s2"))
    assert later["user_purchases"] == 1.0
    assert later["product_conversion"] > before["product_conversion"]


def test_raw_features_pass_the_event_features_unchanged():
    features = {"a": 1.0, "b": "x"}
    assert RawFeatures().transform(Event(1.7e9, "view", "p", "u", "s", features=features)) is features
    assert RawFeatures().transform(Event(1.7e9, "view", "p", "u", "s")) == {}


def test_feature_state_is_bounded_and_picklable():
    shop = ShopFeatures(FeatureCaps(sessions=100, users=50, products=30))
    for event in stream(2000):
        shop.learn(event)
    assert len(shop.sessions) <= 100 and len(shop.users) <= 50 and len(shop.products) <= 30
    copy = pickle.loads(pickle.dumps(shop))
    assert copy.sessions.cap == 100 and list(copy.sessions.items()) == list(shop.sessions.items())


def test_unknown_feature_set_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown feature set 'bogus'"):
        build_features("bogus")


def test_one_hot_columns_follow_the_vocabulary_in_order_also_after_a_restore():
    """The one-hot columns are built once per vocabulary change, not per event: each event
    still gets every known value's column, fields and values in order of first appearance,
    1.0 for its own; restored state (which holds no columns: they are built again) reads the same,
    and names them with the one object per name that a restored model maps its copies to."""
    features = ShopFeatures()
    for i, record in enumerate(generate(3000, seed=3)):
        event = event_from_record(record)
        x = features.transform(event)
        top = event.category_code.partition(".")[0] if event.category_code else "unknown"
        own = {"platform": event.platform, "channel": event.channel, "category": top}
        expected = [(f"{field}={known}", 1.0 if known == own[field] else 0.0)
                    for field in ("platform", "channel", "category") for known in features.vocabulary[field]]
        assert [(k, v) for k, v in x.items() if "=" in k] == expected
        features.learn(event)
        if i == 1500:
            features = pickle.loads(pickle.dumps(features))
            assert "_one_hot_columns" not in features.__dict__
    assert all(features.vocabulary.values())
    assert all(name is ShopFeatures.share_names([name.encode().decode()])[0] for name in x)


def test_shop_features_are_floats_only_as_they_declare_even_for_an_int_event_time():
    """Open predictions pack shop features as doubles without checking them (`floats_only`):
    every value must be a float, also when an unvalidated event carries an int time."""
    assert ShopFeatures.floats_only and not RawFeatures.floats_only
    shop = ShopFeatures()
    events = stream(2000) + [Event(1_600_000_000 + i, "view", "p1", "u1", "s-int", price=3, platform="web")
                             for i in range(3)]
    for event in events:
        x = shop.transform(event)
        assert {type(v) for v in x.values()} == {float}, x
        shop.learn(event)
    assert x["session_seconds"] == 2.0


def test_state_pickled_with_the_previous_one_hot_cache_transforms_the_same():
    """Feature state pickled by earlier code holds `_one_hot_columns`, as (zeros, names) or as
    (template, names per field): restored, they are built again and give the same dicts, key order
    included."""
    events = stream(1500)
    shop = ShopFeatures()
    for event in events[:1000]:
        shop.transform(event)
        shop.learn(event)
    state = pickle.loads(pickle.dumps(shop)).__dict__
    assert "_one_hot_columns" not in state
    older = dict(state, _one_hot_columns=({"platform=web": 0.0}, {"platform": {"web": "platform=web"}}))
    state["_one_hot_columns"] = ({"is_cart": 0.0, "platform=web": 0.0}, {"web": "platform=web"}, {}, {})
    old = ShopFeatures.__new__(ShopFeatures)
    old.__setstate__(older)
    assert old.transform(events[1000]) == shop.transform(events[1000])
    restored = ShopFeatures.__new__(ShopFeatures)
    restored.__setstate__(state)
    for event in events[1000:]:
        expected, got = shop.transform(event), restored.transform(event)
        assert list(got.items()) == list(expected.items())
        shop.learn(event)
        restored.learn(event)


def test_sharing_raw_names_leaves_msgspecs_key_cache_holding_the_names_events_bring():
    """msgspec keeps one key per place of its cache: a restored model's other strings (River's own)
    decoded there would push a feature name out, and every later event would bring a new object for
    it, equal but not the model's. `share_names` decodes the names seen, nothing else."""
    import msgspec

    from shopstream.events import decode_event

    def name_in_an_event():
        return next(iter(decode_event(b'{"event_time": 1e9, "event_type": "view", "product_id": "p", "user_id": "u", '
                                      b'"user_session": "s", "features": {"clicks": 1.0}}').features))

    def pushes_out(text):   # decoded, does it take the place of "clicks"?
        held = name_in_an_event()
        msgspec.json.decode(msgspec.json.encode({text: 0}))
        return name_in_an_event() is not held

    rival = next(text for text in (f"k{i}" for i in range(100_000)) if pushes_out(text))
    raw = RawFeatures()
    raw.transform(Event(1e9, "view", "p", "u", "s", features={"clicks": 1.0}))
    shared = raw.share_names(["".join(["cli", "cks"]), rival])
    assert shared[0] is name_in_an_event() and shared[0] == "clicks" and shared[1] == rival
