"""ShopFeatures' `learn` reuses what `transform` of the same event looked up (`_looked_up`):
it must give what looking each up again gave, under evictions, session expiry, what-if
transforms in between and catalog folds (shared learning). The reference below is the
feature set as it was before (main at a99919a), kept verbatim, with its tables as they were
then too: rows of objects in `OrderedDict`s (`_Capped`), where `ShopFeatures` now keeps its
sessions, users, products and brands as columns (`SessionTable`, `CountTable`)."""

import math
import pickle
import random
from typing import Any

import pytest

from shopstream.events import Event, event_from_record
from shopstream.features import _MAX_PRICE_RATIO, _MIN_CATEGORY_PRICE, _TOPS, _TWO_PI_OVER_DAY, FeatureCaps, \
    ShopFeatures, _Capped, _top_category
from shopstream.generator import generate


class Reference(ShopFeatures):
    """transform, learn and learn_catalog as they were: every table looked up in each."""

    def __init__(self, caps: FeatureCaps = FeatureCaps()):
        super().__init__(caps)
        self.sessions: Any = _Capped(caps.sessions)   # session -> [start, views, carts, carted, viewed, last]
        self.users: Any = _Capped(caps.users)         # user -> [sessions, purchases]
        self.products: Any = _Capped(caps.products)   # product -> [views, carts, purchases]
        self.brands: Any = _Capped(caps.brands)       # brand -> [views, purchases]

    def transform(self, event: Event) -> dict:
        session = self.sessions.get(event.user_session)
        user = self.users.get(event.user_id)
        product = self.products.get(event.product_id)
        t: float = event.event_time  # type: ignore[assignment]  # validated: epoch seconds (no cast: a call)
        seconds_of_day = t % 86400.0
        code = event.category_code
        top = _TOPS.get(code) or _top_category(event)
        template, platforms, channels, categories = self._one_hot_columns or self._one_hot()
        # One dict copy gives every key in its place: the first three, then every known one-hot
        # column at 0.0 (fields and values in order); assignments below keep that order.
        x = template.copy()
        x["is_cart"] = 1.0 if event.event_type == "cart" else 0.0
        x["hour_sin"] = math.sin(seconds_of_day * _TWO_PI_OVER_DAY)
        x["hour_cos"] = math.cos(seconds_of_day * _TWO_PI_OVER_DAY)
        name = platforms.get(event.platform)   # the event's own values are 1.0
        if name is not None:
            x[name] = 1.0
        name = channels.get(event.channel)
        if name is not None:
            x[name] = 1.0
        name = categories.get(top)
        if name is not None:
            x[name] = 1.0
        brand = self.brands.get(event.brand) if event.brand else None
        if brand is not None:
            x["brand_views"] = math.log1p(brand[0])
            x["brand_conversion"] = (brand[1] + 1.0) / (brand[0] + 50.0)
        price = event.price
        if price is not None:
            x["log_price"] = math.log1p(price)
            stats = self.category_price.get(top)
            if stats is not None and stats[1] > 0:
                x["price_vs_category"] = min(price / max(stats[1], _MIN_CATEGORY_PRICE), _MAX_PRICE_RATIO)
        if session is not None:
            x["session_views"] = float(session[1])
            x["session_carts"] = float(session[2])
            x["session_seconds"] = float(t - session[0])   # float even for an unvalidated int time
            x["carted_before"] = 1.0 if event.product_id in session[3] else 0.0
            x["product_views_in_session"] = float(session[4].get(event.product_id, 0))
        else:
            x["session_views"] = 0.0
        if user is not None:
            x["user_sessions"] = float(user[0])
            x["user_purchases"] = float(user[1])
        if product is not None:
            views, carts, purchases = product
            x["product_views"] = math.log1p(views)
            x["product_cart_rate"] = (carts + 1.0) / (views + 20.0)
            x["product_conversion"] = (purchases + 1.0) / (views + 50.0)
        return x

    def learn(self, event: Event) -> None:
        t: float = event.event_time  # type: ignore[assignment]  # validated: epoch seconds
        key = event.user_session
        sessions = self.sessions
        session: Any = sessions.get(key)  # [start, views, carts, carted, viewed, last seen]
        new_session = session is None
        if new_session:
            session = sessions.put(key, [t, 0, 0, set(), {}, t])
        else:
            if t > session[5]:
                session[5] = t
            sessions.move_to_end(key)
        # Expire sessions idle past the TTL (the head is the least recently active); usually none.
        horizon = t - self.caps.session_ttl
        while sessions and next(iter(sessions.values()))[5] < horizon:
            sessions.popitem(last=False)
            self.expired_sessions += 1
        users = self.users
        user = users.get(event.user_id)
        if user is None:
            user = users.put(event.user_id, [0, 0])
        if new_session:
            user[0] += 1
        kind = event.event_type
        if kind == "view":
            session[1] += 1
            views = session[4]
            product_id = event.product_id
            count = views.get(product_id)
            if count is not None:
                views[product_id] = count + 1
            elif len(views) < self.caps.session_products:
                views[product_id] = 1
            else:
                self.evicted_session_products += 1
        elif kind == "cart":
            session[2] += 1
            carted = session[3]
            if len(carted) < self.caps.session_products or event.product_id in carted:
                carted.add(event.product_id)
            else:
                self.evicted_session_products += 1
        elif kind == "purchase":
            user[1] += 1
        self.learn_catalog(event)

    def learn_catalog(self, event: Event) -> None:
        """The shop-wide part of `learn`: products, brands, category prices, vocabularies (the
        session and user tables are the partition's own; shared learning folds other
        partitions' events in through this)."""
        kind = event.event_type
        products = self.products
        product = products.get(event.product_id)
        if product is None:
            product = products.put(event.product_id, [0, 0, 0])
        if kind == "view":
            product[0] += 1
        elif kind == "cart":
            product[1] += 1
        elif kind == "purchase":
            product[2] += 1
        code = event.category_code
        top = _TOPS.get(code) or _top_category(event)
        # A value not yet in its vocabulary (the column names know every one) may grow it.
        _, platforms, channels, categories = self._one_hot_columns or self._one_hot()
        platform, channel = event.platform, event.channel
        if platform not in platforms and platform is not None:
            self._grow("platform", platform)
        if channel not in channels and channel is not None:
            self._grow("channel", channel)
        if top not in categories:
            self._grow("category", top)
        brand_name = event.brand
        if brand_name:
            brands = self.brands
            brand = brands.get(brand_name)
            if brand is None:
                brand = brands.put(brand_name, [0, 0])
            if kind == "view":
                brand[0] += 1
            elif kind == "purchase":
                brand[1] += 1
        price = event.price
        if price is not None and kind == "view":
            stats = self.category_price.get(top)
            if stats is None:
                stats = self.category_price.put(top, [0, 0.0])
            stats[0] += 1
            stats[1] += (price - stats[1]) / stats[0]


def _bits(x: dict) -> list:
    return [(name, value.hex()) for name, value in x.items()]


def _state(features: ShopFeatures) -> tuple:
    tables = [list(table.items()) for table in (features.sessions, features.users, features.products,
                                                 features.brands, features.category_price)]
    return (tables, features.vocabulary, features.evicted)


def _events(n, seed, days=3.0):
    return sorted((event_from_record(record) for record in generate(n, seed=seed, days=days)),
                  key=lambda event: event.event_time)


# Small caps: every table evicts, sessions expire (a 10-minute TTL), sessions track few products.
SMALL = FeatureCaps(sessions=4, users=30, products=25, brands=6, categories=4, one_hot=3, session_products=2,
                    session_ttl=600.0)


@pytest.mark.parametrize("caps", [FeatureCaps(), SMALL], ids=["default", "small"])
@pytest.mark.parametrize("seed", [3, 11])
def test_learn_after_transform_equals_looking_everything_up_again(caps, seed):
    events = _events(4000, seed)
    rng = random.Random(seed)
    fast, slow = ShopFeatures(caps), Reference(caps)
    for i, event in enumerate(events):
        predicted = event.event_type != "purchase" or rng.random() < 0.3
        if predicted:
            x, expected = fast.transform(event), slow.transform(event)
            assert _bits(x) == _bits(expected), i
        if rng.random() < 0.1:   # a what-if on the live state between transform and learn
            other = events[rng.randrange(len(events))]
            assert _bits(fast.transform(other)) == _bits(slow.transform(other))
        if rng.random() < 0.05:   # another partition's event folded in (shared learning)
            other = events[rng.randrange(len(events))]
            fast.learn_catalog(other)
            slow.learn_catalog(other)
        fast.learn(event)
        slow.learn(event)
        if rng.random() < 0.02:   # the same event learned again: nothing of the first transform is reused
            fast.learn(event)
            slow.learn(event)
    assert _state(fast) == _state(slow)
    if caps is SMALL:
        evicting = ("sessions", "sessions_expired", "users", "products", "categories", "brands", "session_products")
        assert all(fast.evicted[name] > 0 for name in evicting)


def test_a_catalog_fold_between_transform_and_learn_is_seen_by_learn():
    """transform found no product p; another partition's view of p is folded in; learn must
    count the event on that entry, not replace it."""
    fast, slow = ShopFeatures(), Reference()
    view = Event(1.7e9, "view", "p", "u", "s", brand="b", price=5.0, category_code="a.b")
    other = Event(1.7e9, "view", "p", "", "", brand="b", price=7.0, category_code="a.b")
    for features in (fast, slow):
        features.transform(view)
        features.learn_catalog(other)
        features.learn(view)
    assert _state(fast) == _state(slow) and fast.products["p"] == [2, 0, 0] and fast.brands["b"] == [2, 0]


def test_the_lookups_are_not_state():
    """A pickle (checkpoint, artifact, deep copy) holds what main's did, and a restored state
    (main's pickles carry no lookups) behaves the same."""
    events = _events(1500, 5)
    features, reference = ShopFeatures(), Reference()
    for event in events[:1000]:
        features.transform(event)
        features.learn(event)
        reference.transform(event)
        reference.learn(event)
    features.transform(events[1000])
    assert features._looked_up is not None
    state = pickle.loads(pickle.dumps(features)).__dict__
    assert "_looked_up" not in state and "_looked_up" in features.__dict__
    clone = ShopFeatures.__new__(ShopFeatures)
    clone.__dict__.update((k, v) for k, v in features.__dict__.items() if k != "_looked_up")
    assert pickle.dumps(features) == pickle.dumps(clone)   # byte for byte: what main wrote
    main = ShopFeatures.__new__(ShopFeatures)
    main.__setstate__({k: v for k, v in pickle.loads(pickle.dumps(reference)).__dict__.items()
                       if k != "_looked_up"})   # as a pickle from main unpickles
    restored = pickle.loads(pickle.dumps(features))
    for event in events[1000:]:
        for one in (restored, main, reference):
            one.transform(event)
        expected = _bits(reference.transform(event))
        assert _bits(restored.transform(event)) == expected and _bits(main.transform(event)) == expected
        for one in (restored, main, reference):
            one.learn(event)
    assert _state(restored) == _state(main) == _state(reference)
