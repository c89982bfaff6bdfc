"""Feature sets: event -> feature dict, with state that only ever looks backwards.

The engine calls `transform(event)` (features as known *before* the event) and then
`learn(event)` (fold the event into the state), so no feature can see the future or
a label: a purchase only reaches the features of events that come after it.

- ``raw``: the event's own ``features`` object, unchanged, and nothing else;
- ``shop``: log price, price against its category, time of day, one-hot platform,
  channel and top-level category, and per-session, per-user, per-product and per-brand
  aggregates (views, carts, purchases, conversion).

Every table keyed by something the shop's clients send (sessions, users, products,
brands, categories, the products of one session, raw feature names) has a cap in
`FeatureCaps`, and per-session state also expires after `session_ttl` seconds of
event time without activity: an endless stream of new keys cannot grow the state.
Evictions are counted in `evicted` (exported as shopstream_state_evictions_total).
Values are bounded too: a ratio's denominator has a floor, so no feature is inf.

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
import sys
from collections import OrderedDict
from dataclasses import dataclass, fields
from dataclasses import field as setting
from typing import Any, Optional

import msgspec

from .events import Event
from .options import check, option_meta as _help
from .session_table import SessionTable
from .slot_table import CountTable


@dataclass(frozen=True)
class FeatureCaps:
    """Bounds on the feature state; each with ``help`` is a worker option (--max-sessions, ...).
    The bootstrap uses these defaults, and a worker applies its own to an artifact's state
    (`set_caps`)."""

    sessions: int = setting(default=200_000, metadata=_help("sessions the features remember", flag="--max-sessions"))
    users: int = setting(default=1_000_000, metadata=_help("users the features remember", flag="--max-users"))
    products: int = setting(default=1_000_000, metadata=_help("products the features remember",
                                                            flag="--max-products"))
    brands: int = setting(default=100_000, metadata=_help("brands the features remember", flag="--max-brands"))
    categories: int = setting(default=10_000, metadata=_help("categories with a price average",
                                                           flag="--max-categories"))
    one_hot: int = 16               # values per one-hot field (platform, channel, category)
    session_products: int = setting(default=1_000, metadata=_help("distinct products one session tracks",
                                                                flag="--max-session-products"))
    session_ttl: float = setting(default=86_400.0, metadata=_help(
        "seconds of event time a quiet session is remembered"))
    raw_features: int = setting(default=10_000, metadata=_help("distinct raw feature names a model sees",
                                                             flag="--max-raw-features"))

    def __post_init__(self):
        check(self, [(f.name, getattr(self, f.name) > 0, "must be > 0") for f in fields(self)])


class RawFeatures:
    """The event's ``features`` object as is: for generic labelled streams.

    Names past `caps.raw_features` distinct ones are dropped (counted), so a stream of
    ever-new names cannot grow a linear model's weights without bound.

    >>> raw = RawFeatures(FeatureCaps(raw_features=2))
    >>> raw.transform(Event(1e9, "view", "p", "u", "s", features={"a": 1.0, "b": 2.0}))
    {'a': 1.0, 'b': 2.0}
    >>> raw.transform(Event(1e9, "view", "p", "u", "s", features={"a": 1.0, "c": 3.0})), raw.evicted
    ({'a': 1.0}, {'raw_features': 1})
    """

    name = "raw"
    floats_only = False   # the client's values: any JSON type

    def __init__(self, caps: FeatureCaps = FeatureCaps()):
        self.caps = caps
        self.names: set = set()
        self.evicted = {"raw_features": 0}

    def set_caps(self, caps: FeatureCaps) -> None:
        self.caps = caps

    def size(self) -> int:
        """Entries of state (the names seen): what pickling it takes grows with it."""
        return len(self.names)

    def transform(self, event: Event) -> dict:
        x = event.features
        if not x:
            return {}
        names = self.names
        if len(names) + len(x) <= self.caps.raw_features:  # room for every name: River's dict as is
            names.update(x)
            return x
        kept = {}
        for name, value in x.items():
            if name in names:
                kept[name] = value
            elif len(names) < self.caps.raw_features:
                names.add(name)
                kept[name] = value
            else:
                self.evicted["raw_features"] += 1
        return kept

    def peek(self, event: Event) -> dict:
        """What `transform` would give, keeping only the names already seen (a what-if score). A
        what-if changes nothing: a name never seen would also be new to the models, and River
        adds an entry for it (StandardScaler's `means` and `vars` are defaultdicts), so the state
        would grow with every what-if."""
        x = event.features
        if not x:
            return {}
        names = self.names
        return {name: value for name, value in x.items() if name in names}

    def learn(self, event: Event) -> None:
        pass

    def unfit(self, x: dict) -> Optional[str]:
        """Why a served prediction's features (`stream/served.py`) cannot be what `peek` gives here,
        or None: a name no event brought would grow every model by one weight per forged name, past
        `caps.raw_features` (the events that grew `names` before it was served come before it)."""
        names = self.names
        for name in x:
            if name not in names:
                return f"feature {name[:40]!r} is not one this partition's events brought"
        return None

    def share_names(self, strings: list) -> list:
        """`strings` as the objects the events will bring for them: msgspec's key cache hands every
        event one object per short name (up to 32 ASCII bytes), which decoding the names once finds.
        Only the feature names seen are decoded: the cache has one place per hash, and another
        string decoded there would push out a name (the next event would bring a new object). A
        name the cache cannot keep (longer, not ASCII, or pushed out by another name in every event)
        gains nothing. Each checkpoint maps the model again (`ModelSlot.keep_as_good`), so a name
        pushed out once (a scoring request's, a control message's) is shared again after it.
        River finds a name at once in its dicts when it is the object they hold (`model_state.keep`).

        >>> from shopstream.events import decode_event
        >>> event = decode_event(b'{"event_time": 1e9, "event_type": "view", "product_id": "p", '
        ...                      b'"user_id": "u", "user_session": "s", "features": {"clicks": 1.0}}')
        >>> raw = RawFeatures()
        >>> _ = raw.transform(event)
        >>> copy = "".join(["cli", "cks"])
        >>> copy is next(iter(event.features)), raw.share_names([copy])[0] is next(iter(event.features))
        (False, True)
        """
        names = self.names
        found = msgspec.json.decode(msgspec.json.encode(dict.fromkeys([s for s in strings if s in names], 0)))
        shared = dict(zip(found, found))
        return [shared.get(text, text) for text in strings]

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if isinstance(state.get("names"), set):   # the names events bring (`share_names`): faster set lookups
            self.names = set(self.share_names(list(self.names)))


class _Capped(OrderedDict):
    """A dict that forgets its oldest keys past `cap`: bounded state for endless streams.
    (An OrderedDict: a plain dict's `next(iter(d))` slows down as its head fills with
    deleted slots, O(cap) per eviction.)"""

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap
        self.evicted = 0

    def __reduce__(self):
        return (self.__class__, (self.cap,), {"evicted": self.evicted}, None, iter(self.items()))

    def put(self, key, value):
        """Add `key` (known absent) and forget the oldest keys past the cap; return `value`."""
        self[key] = value
        while len(self) > self.cap:
            self.popitem(last=False)
            self.evicted += 1
        return value


_TWO_PI_OVER_DAY = 2.0 * math.pi / 86400.0
# A category's mean price below a cent makes "price against its category" meaningless
# (5e-324 then 1.7e308 gave inf): floor the denominator, cap the ratio.
_MIN_CATEGORY_PRICE = 0.01
_MAX_PRICE_RATIO = 1e4


#: The names `ShopFeatures.transform` sets besides its one-hot columns and the first three (`_one_hot`).
_SHOP_NAMES = frozenset({
    "brand_views", "brand_conversion", "log_price", "price_vs_category", "session_views", "session_carts",
    "session_seconds", "carted_before", "product_views_in_session", "user_sessions", "user_purchases",
    "product_views", "product_cart_rate", "product_conversion"})


class ShopFeatures:
    """Clickstream features for "will this session buy this product?"."""

    name = "shop"
    #: Every value `transform` gives is a float: open predictions pack them without checking (labels.py).
    floats_only = True
    _one_hot_columns: tuple[dict, dict, dict, dict] | None = None   # see _one_hot; never pickled (built again)
    #: (event, session, user, product and brand slots, category price stats, top category) as the last `transform`
    #: found them: the engine calls `learn` of the same event right after, which uses them instead of
    #: looking each up again. Only `learn` and `learn_catalog` change the tables, and both drop it, so it
    #: is never stale; one tuple, read once, so a `transform` from another thread (a what-if) cannot give
    #: `learn` half of its lookups. Never pickled (`__getstate__`).
    _looked_up: tuple | None = None

    def __init__(self, caps: FeatureCaps = FeatureCaps()):
        self.caps = caps
        # session -> start time, views, carts, carted products, {product: views}, last seen, as
        # columns (see session_table.py); least recently active first, so expired sessions go first.
        self.sessions = SessionTable(caps.sessions)
        self.users = CountTable(caps.users, 2)          # user -> sessions, purchases
        self.products = CountTable(caps.products, 3)    # product -> views, carts, purchases
        self.brands = CountTable(caps.brands, 2)        # brand -> views, purchases
        self.category_price = _Capped(caps.categories)  # top category -> [n, mean price]
        # One-hot vocabularies, in order of first appearance; past the cap a value is "other" (all 0).
        self.vocabulary: dict[str, list[str]] = {"platform": [], "channel": [], "category": []}
        self.evicted_session_products = 0
        self.expired_sessions = 0
        self._one_hot_columns = None
        self._looked_up = None

    def set_caps(self, caps: FeatureCaps) -> None:
        """New caps for restored state (an artifact's): tables over a cap shrink as they grow."""
        self.caps = caps
        self._looked_up = None
        for table, cap in ((self.sessions, caps.sessions), (self.users, caps.users), (self.products, caps.products),
                           (self.brands, caps.brands), (self.category_price, caps.categories)):
            table.cap = cap

    def size(self) -> int:
        """Entries of state (rows of every table): what pickling it takes grows with it."""
        return (len(self.sessions) + len(self.users) + len(self.products) + len(self.brands)
                + len(self.category_price))

    @property
    def evicted(self) -> dict:
        """Entries dropped from each table to stay within the caps (counters)."""
        return {"sessions": self.sessions.evicted, "sessions_expired": self.expired_sessions,
                "users": self.users.evicted, "products": self.products.evicted, "brands": self.brands.evicted,
                "categories": self.category_price.evicted, "session_products": self.evicted_session_products}

    def transform(self, event: Event) -> dict:
        sessions, users, products = self.sessions, self.users, self.products
        session = sessions.index.get(event.user_session)   # slots in the tables' columns
        user = users.index.get(event.user_id)
        product_id = event.product_id
        product = products.index.get(product_id)
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
        brands = self.brands
        brand = brands.index.get(event.brand) if event.brand else None
        if brand is not None:
            brand_views, brand_purchases = brands.columns
            views = brand_views[brand]
            x["brand_views"] = math.log1p(views)
            x["brand_conversion"] = (brand_purchases[brand] + 1.0) / (views + 50.0)
        price = event.price
        stats = None
        if price is not None:
            x["log_price"] = math.log1p(price)
            stats = self.category_price.get(top)
            if stats is not None:
                mean = stats[1]
                if mean > 0:   # min(price / max(mean, floor), cap), without the two calls (no NaN here)
                    ratio = price / (_MIN_CATEGORY_PRICE if mean < _MIN_CATEGORY_PRICE else mean)
                    x["price_vs_category"] = _MAX_PRICE_RATIO if ratio > _MAX_PRICE_RATIO else ratio
        # int + 0.0 is float(int), bit for bit (an int is never -0), without a call
        if session is not None:
            x["session_views"] = sessions.views[session] + 0.0
            x["session_carts"] = sessions.carts[session] + 0.0
            x["session_seconds"] = t - sessions.starts[session]   # a float: the column holds doubles
            carted = sessions.carted[session]
            x["carted_before"] = 1.0 if carted is not None and product_id in carted else 0.0
            viewed = sessions.viewed[session]
            x["product_views_in_session"] = (viewed.get(product_id, 0) if viewed is not None else 0) + 0.0
        else:
            x["session_views"] = 0.0
        if user is not None:
            user_sessions, user_purchases = users.columns
            x["user_sessions"] = user_sessions[user] + 0.0
            x["user_purchases"] = user_purchases[user] + 0.0
        if product is not None:
            product_views, product_carts, product_purchases = products.columns
            views, carts, purchases = product_views[product], product_carts[product], product_purchases[product]
            x["product_views"] = math.log1p(views)
            x["product_cart_rate"] = (carts + 1.0) / (views + 20.0)
            x["product_conversion"] = (purchases + 1.0) / (views + 50.0)
        # What `learn` of this same event looks up again: it folds the event in right after.
        self._looked_up = (event, session, user, product, brand, stats, top)
        return x

    def _one_hot(self) -> tuple[dict, dict, dict, dict]:
        """The columns every event starts from ("is_cart", "hour_sin", "hour_cos", then each one-hot
        "field=value" at 0.0, fields and values in order) and, per field, value -> column name:
        built when a vocabulary grows (`_one_hot_columns` is then None), not per event."""
        template: dict[str, float] = {"is_cart": 0.0, "hour_sin": 0.0, "hour_cos": 0.0}
        names: list[dict] = []
        for field in ("platform", "channel", "category"):
            names.append({})
            for known in self.vocabulary[field]:
                # Interned: the one object a model restored from a file maps its copy to (`share_names`).
                name = sys.intern(f"{field}={known}")
                template[name] = 0.0
                names[-1][known] = name
        cached = self._one_hot_columns = (template, names[0], names[1], names[2])
        return cached

    def unfit(self, x: dict) -> Optional[str]:
        """Why a served prediction's features (`stream/served.py`) cannot be what `transform` gives
        here, or None. Open predictions pack them as doubles without a look (`floats_only`): a text
        value would fail every later checkpoint. A name must be one `transform` sets: a fixed one,
        or a one-hot column of the vocabularies, which only grow (the events that grew them before
        it was served come before it); so a forged one cannot add weights to the models."""
        template = (self._one_hot_columns or self._one_hot())[0]
        for name, value in x.items():
            if value.__class__ is not float:
                return f"feature {name[:40]!r} is {type(value).__name__}, not a number"
            if name not in template and name not in _SHOP_NAMES:
                return f"feature {name[:40]!r} is not one the shop features give here"
        return None

    @staticmethod
    def share_names(strings: list) -> list:
        """`strings` as the objects the events will bring for them (equal strings): the names
        `transform` sets are the code's literals, which Python interns, and the one-hot names are
        interned as they are built (`_one_hot`). River finds a name at once in its dicts when it is
        the object they hold (`model_state.keep`).

        >>> names = list(ShopFeatures().transform(Event(1.0e9, "view", "p", "u", "s", price=5.0, platform="web")))
        >>> copies = [name.encode().decode() for name in names]   # equal strings, as unpickled
        >>> all(map(str.__eq__, copies, names)), any(c is n for c, n in zip(copies, names))
        (True, False)
        >>> all(s is n for s, n in zip(ShopFeatures.share_names(copies), names))
        True
        """
        return [sys.intern(text) for text in strings]

    def __getstate__(self) -> dict:
        state = self.__dict__
        if "_looked_up" in state or "_one_hot_columns" in state:
            # Not state: the last transform's lookups (the same pickle as before them), and the one-hot
            # columns, built again from the vocabularies with the names the models share (`_one_hot`).
            state = state.copy()
            state.pop("_looked_up", None)
            state.pop("_one_hot_columns", None)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        for name, width in (("sessions", 0), ("users", 2), ("products", 3), ("brands", 2)):
            old = state.get(name)
            if isinstance(old, _Capped):   # pickled before the slot tables: the same rows in the same order
                table = CountTable(old.cap, width) if width else SessionTable(old.cap)
                state[name] = table.fill(old.items(), old.evicted)
        state.pop("_one_hot_columns", None)   # (checkpoints from before 2026-12-07 hold them: built again)
        self.__dict__.update(state)

    def learn(self, event: Event) -> None:
        looked = self._looked_up
        if looked is not None and looked[0] is event:
            # transform's lookups of this very event, nothing changed since (see `_looked_up`)
            _, session, user, product, brand, stats, top = looked
        else:
            session, user, product, brand, stats, top = self._look_up(event)
        self._looked_up = None
        t: float = event.event_time  # type: ignore[assignment]  # validated: epoch seconds
        sessions = self.sessions
        new_session = session is None   # session: its slot in the table's columns
        if new_session:
            session = sessions.add(event.user_session, t)
        else:
            if t > sessions.lasts[session]:
                sessions.lasts[session] = t
            sessions.touch(session)
        # Expire sessions idle past the TTL (the oldest is the least recently active); usually none.
        horizon = t - self.caps.session_ttl
        if sessions.lasts[sessions.oldest] < horizon:
            self.expired_sessions += sessions.expire(horizon)
        users = self.users
        if user is None:
            user = users.add(event.user_id)
        if new_session:
            users.columns[0][user] += 1
        kind = event.event_type
        if kind == "view":
            sessions.views[session] += 1
            views = sessions.viewed[session]
            if views is None:
                views = sessions.viewed[session] = {}
            product_id = event.product_id
            count = views.get(product_id)
            if count is not None:
                views[product_id] = count + 1
            elif len(views) < self.caps.session_products:
                views[product_id] = 1
            else:
                self.evicted_session_products += 1
        elif kind == "cart":
            sessions.carts[session] += 1
            carted = sessions.carted[session]
            if carted is None:
                carted = sessions.carted[session] = set()
            if len(carted) < self.caps.session_products or event.product_id in carted:
                carted.add(event.product_id)
            else:
                self.evicted_session_products += 1
        elif kind == "purchase":
            users.columns[1][user] += 1
        self._fold_catalog(event, kind, product, brand, stats, top)

    def _look_up(self, event: Event) -> tuple:
        """(session, user, product and brand slots, category price stats, top category) of `event`, each
        None when absent (stats: also when the event has no price): what `transform` found."""
        brand_name, price, code = event.brand, event.price, event.category_code
        top = _TOPS.get(code) or _top_category(event)
        return (self.sessions.index.get(event.user_session), self.users.index.get(event.user_id),
                self.products.index.get(event.product_id), self.brands.index.get(brand_name) if brand_name else None,
                self.category_price.get(top) if price is not None else None, top)

    def learn_catalog(self, event: Event) -> None:
        """The shop-wide part of `learn`: products, brands, category prices, vocabularies (the
        session and user tables are the partition's own; shared learning folds other
        partitions' events in through this)."""
        self._looked_up = None   # what a transform looked up may change here
        _, _, product, brand, stats, top = self._look_up(event)
        self._fold_catalog(event, event.event_type, product, brand, stats, top)

    def _fold_catalog(self, event: Event, kind: str, product: Any, brand: Any, stats: Any, top: str) -> None:
        """`learn_catalog` with the event's entries already looked up (`_look_up`)."""
        products = self.products
        if product is None:
            product = products.add(event.product_id)
        if kind == "view":
            products.columns[0][product] += 1
        elif kind == "cart":
            products.columns[1][product] += 1
        elif kind == "purchase":
            products.columns[2][product] += 1
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
            if brand is None:
                brand = brands.add(brand_name)
            if kind == "view":
                brands.columns[0][brand] += 1
            elif kind == "purchase":
                brands.columns[1][brand] += 1
        price = event.price
        if price is not None and kind == "view":
            if stats is None:
                stats = self.category_price.put(top, [0, 0.0])
            stats[0] += 1
            stats[1] += (price - stats[1]) / stats[0]

    def _grow(self, field: str, value: str) -> None:
        """Add `value` to `field`'s one-hot vocabulary unless it is full (then it is "other")."""
        known = self.vocabulary[field]
        if value not in known and len(known) < self.caps.one_hot:
            known.append(value)
            self._one_hot_columns = None


def _top_category(event: Event) -> str:
    """The top level of the category code ("unknown" if none), remembered for the next events."""
    code = event.category_code
    top = code.partition(".")[0] if code else "unknown"
    if len(_TOPS) >= _MAX_TOPS:   # codes are the clients': bound the memo
        _TOPS.clear()
    _TOPS[code] = top
    return top


# category_code -> its top level: computed once per code, not twice per event.
_TOPS: dict = {}
_MAX_TOPS = 10_000


FEATURE_SETS = {"raw": RawFeatures, "shop": ShopFeatures}


def build_features(name: str, caps: FeatureCaps = FeatureCaps()):
    """A fresh feature set by name (see `FEATURE_SETS`)."""
    try:
        return FEATURE_SETS[name](caps)
    except KeyError:
        raise ValueError(f"unknown feature set {name!r}; choose from {sorted(FEATURE_SETS)}") from None
