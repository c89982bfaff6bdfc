"""Feature sets: event -> feature dict, with state that only ever looks backwards.

The engine calls `transform(event)` (features as known *before* the event) and then
`learn(event)` (fold the event into the state), so no feature can see the future or
a label: a purchase only reaches the features of events that come after it.

- ``raw``: the event's own ``features`` object, unchanged, and nothing else;
- ``shop``: log price, price against its category, time of day, one-hot platform,
  channel and top-level category, and per-session, per-user, per-product and per-brand
  aggregates (views, carts, purchases, conversion).

Scaling belongs to the model pipeline (``StandardScaler``), not here. That is why the
one-hot columns are *dense*: every value seen so far is emitted, 1.0 or 0.0. River's
StandardScaler only learns from the keys present in an event, so a sparse one-hot key
(always 1.0 when present) would have zero variance and be scaled to nothing.

>>> from shopstream.events import Event
>>> shop = ShopFeatures()
>>> web = Event(1.0e9, "view", "p1", "u1", "s1", price=10.0, platform="web")
>>> x = shop.transform(web); shop.learn(web)
>>> x["session_views"], shop.transform(web)["session_views"], shop.transform(web)["platform=web"]
(0.0, 1.0, 1.0)
>>> shop.transform(Event(1.0e9, "view", "p1", "u2", "s2", platform="ios"))["platform=web"]
0.0
"""

from __future__ import annotations

import math
from collections import OrderedDict

from .events import Event


class RawFeatures:
    """The event's ``features`` object as is: for generic labelled streams."""

    name = "raw"

    def transform(self, event: Event) -> dict:
        return event.features if event.features is not None else {}

    def learn(self, event: Event) -> None:
        pass


class _Capped(OrderedDict):
    """A dict that forgets its oldest keys past `cap`: bounded state for endless streams.
    (An OrderedDict: a plain dict's `next(iter(d))` slows down as its head fills with
    deleted slots, O(cap) per eviction.)"""

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def __reduce__(self):
        return (self.__class__, (self.cap,), None, None, iter(self.items()))

    def slot(self, key, make):
        value = self.get(key)
        if value is None:
            value = self[key] = make()
            if len(self) > self.cap:
                self.popitem(last=False)
        return value


_TWO_PI_OVER_DAY = 2.0 * math.pi / 86400.0


class ShopFeatures:
    """Clickstream features for "will this session buy this product?"."""

    name = "shop"

    def __init__(self, max_sessions: int = 200_000, max_users: int = 1_000_000,
                 max_products: int = 1_000_000, max_categories: int = 16):
        # session -> [start time, views, carts, set of carted products, {product: views}]
        self.sessions = _Capped(max_sessions)
        self.users = _Capped(max_users)        # user -> [sessions, purchases]
        self.products = _Capped(max_products)  # product -> [views, carts, purchases]
        self.brands = _Capped(max_products)    # brand -> [views, purchases]
        self.category_price = {}               # top category -> [n, mean price]
        # One-hot vocabularies, in order of first appearance; past the cap a value is "other" (all 0).
        self.max_categories = max_categories
        self.vocabulary = {"platform": [], "channel": [], "category": []}

    def transform(self, event: Event) -> dict:
        session = self.sessions.get(event.user_session)
        user = self.users.get(event.user_id)
        product = self.products.get(event.product_id)
        t = event.event_time
        seconds_of_day = t % 86400.0
        x = {
            "is_cart": 1.0 if event.event_type == "cart" else 0.0,
            "hour_sin": math.sin(seconds_of_day * _TWO_PI_OVER_DAY),
            "hour_cos": math.cos(seconds_of_day * _TWO_PI_OVER_DAY),
        }
        top = _top_category(event)
        for field, value in (("platform", event.platform), ("channel", event.channel), ("category", top)):
            for known in self.vocabulary[field]:
                x[f"{field}={known}"] = 1.0 if known == value else 0.0
        brand = self.brands.get(event.brand) if event.brand else None
        if brand is not None:
            x["brand_views"] = math.log1p(brand[0])
            x["brand_conversion"] = (brand[1] + 1.0) / (brand[0] + 50.0)
        price = event.price
        if price is not None:
            x["log_price"] = math.log1p(price)
            stats = self.category_price.get(top)
            if stats is not None and stats[1] > 0:
                x["price_vs_category"] = price / stats[1]
        if session is not None:
            x["session_views"] = float(session[1])
            x["session_carts"] = float(session[2])
            x["session_seconds"] = t - session[0]
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
        new_session = event.user_session not in self.sessions
        session = self.sessions.slot(event.user_session, lambda: [event.event_time, 0, 0, set(), {}])
        user = self.users.slot(event.user_id, lambda: [0, 0])
        product = self.products.slot(event.product_id, lambda: [0, 0, 0])
        if new_session:
            user[0] += 1
        kind = event.event_type
        if kind == "view":
            session[1] += 1
            product[0] += 1
            views = session[4]
            views[event.product_id] = views.get(event.product_id, 0) + 1
        elif kind == "cart":
            session[2] += 1
            session[3].add(event.product_id)
            product[1] += 1
        elif kind == "purchase":
            user[1] += 1
            product[2] += 1
        top = _top_category(event)
        for field, value in (("platform", event.platform), ("channel", event.channel), ("category", top)):
            known = self.vocabulary[field]
            if value is not None and value not in known and len(known) < self.max_categories:
                known.append(value)
        if event.brand:
            brand = self.brands.slot(event.brand, lambda: [0, 0])
            if kind == "view":
                brand[0] += 1
            elif kind == "purchase":
                brand[1] += 1
        if event.price is not None and kind == "view":
            stats = self.category_price.setdefault(top, [0, 0.0])
            stats[0] += 1
            stats[1] += (event.price - stats[1]) / stats[0]


def _top_category(event: Event) -> str:
    return event.category_code.partition(".")[0] if event.category_code else "unknown"


FEATURE_SETS = {"raw": RawFeatures, "shop": ShopFeatures}


def build_features(name: str):
    """A fresh feature set by name (see `FEATURE_SETS`)."""
    try:
        return FEATURE_SETS[name]()
    except KeyError:
        raise ValueError(f"unknown feature set {name!r}; choose from {sorted(FEATURE_SETS)}") from None
