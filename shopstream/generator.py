"""A synthetic shop: users in segments, products in categories, view -> cart -> purchase
funnels whose purchase propensity depends on what the features can see.

Deterministic for a seed. Drift scenarios change the shop at a point in time:

- ``checkout_incident@START-END[:platform]``: purchases on one platform (default
  android) almost stop between the two fractions of the time span, then recover;
- ``price_shock@START``: prices rise 40% from then on and buyers react to price.

>>> events = list(generate(2000, seed=1))
>>> len(events), events[0]["event_type"], events == list(generate(2000, seed=1))
(2000, 'view', True)
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import msgspec

CATEGORIES = ("electronics.smartphone", "electronics.audio", "computers.notebook", "appliances.kitchen",
              "apparel.shoes", "furniture.living_room", "construction.tools", "kids.toys",
              "sport.bicycle", "accessories.bag")
PLATFORMS = ("web", "ios", "android")
CHANNELS = ("organic", "ads", "email", "social")
CHANNEL_LIFT = {"organic": 0.0, "ads": -0.6, "email": 0.8, "social": -0.3}
SEGMENTS = ("bargain", "regular", "premium")
START = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class Drift:
    """A change of the shop between two fractions of the generated time span."""

    kind: str
    start: float
    end: float = 1.0
    platform: str = "android"

    @classmethod
    def parse(cls, text: str) -> "Drift":
        """ "checkout_incident@0.5-0.7:ios" -> Drift(...).

        >>> Drift.parse("checkout_incident@0.5-0.7:ios")
        Drift(kind='checkout_incident', start=0.5, end=0.7, platform='ios')
        """
        kind, _, rest = text.partition("@")
        if kind not in ("checkout_incident", "price_shock") or not rest:
            raise ValueError(f"drift {text!r}: use checkout_incident@START-END[:platform] or price_shock@START")
        span, _, platform = rest.partition(":")
        start, _, end = span.partition("-")
        try:
            drift = cls(kind, float(start), float(end) if end else 1.0, platform or "android")
        except ValueError:
            raise ValueError(f"drift {text!r}: START and END are fractions like 0.6") from None
        if not 0.0 <= drift.start < drift.end <= 1.0 or drift.platform not in PLATFORMS:
            raise ValueError(f"drift {text!r}: need 0 <= START < END <= 1 and a platform in {PLATFORMS}")
        return drift


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Default cap on one user's share of the sessions: real traffic is heavy-tailed, but no
#: single user is half of it (the Pareto draw this replaced gave one user 55.6% of events,
#: and so one of two workers 88.6% of the work).
MAX_USER_SHARE = 0.01


def user_weights(n_users: int, max_share: float = MAX_USER_SHARE, exponent: float = 1.1) -> list[float]:
    """Zipf-like session weights per user (heavy-tailed), each capped at `max_share` of the
    total (at least 2 / n_users, so a cap is reachable with few users); 1.0: no cap.

    >>> w = user_weights(1000)
    >>> round(max(w) / sum(w), 3), round(sum(w[:10]) / sum(w), 2)
    (0.01, 0.1)
    """
    weights = [1.0 / (i + 1) ** exponent for i in range(n_users)]
    cap_share = max(max_share, 2.0 / n_users)
    for _ in range(100):  # clamp to the cap of the remaining total until nothing moves
        limit = cap_share * sum(weights)
        clamped = [min(w, limit) for w in weights]
        if clamped == weights:
            break
        weights = clamped
    return weights


def generate(n_events: int, seed: int = 7, days: float = 30.0, drifts: tuple[Drift, ...] = (),
             n_users: Optional[int] = None, n_products: Optional[int] = None,
             max_user_share: float = MAX_USER_SHARE) -> Iterator[dict]:
    """Yield `n_events` event dicts in event-time order."""
    rng = random.Random(seed)
    n_users = n_users or max(50, n_events // 20)
    n_products = n_products or max(50, n_events // 100)
    span = days * 86400.0

    products = []
    for i in range(n_products):
        category_index = rng.randrange(len(CATEGORIES))
        brand = f"brand{rng.randrange(40)}"
        base_price = math.exp(rng.gauss(3.0 + 0.35 * category_index, 0.6))
        quality = rng.gauss(0.0, 0.8)  # latent appeal: learnable through product conversion
        products.append((str(100000 + i), CATEGORIES[category_index], brand, round(base_price, 2), quality,
                         category_index))
    users = []
    for i in range(n_users):
        segment = rng.choices(SEGMENTS, weights=(3, 5, 2))[0]
        platform = rng.choices(PLATFORMS, weights=(5, 3, 4))[0]
        favourite = rng.randrange(len(CATEGORIES))
        users.append((str(500000 + i), segment, platform, favourite))
    by_category = [[p for p in products if p[5] == c] or products for c in range(len(CATEGORIES))]
    cumulative = list(itertools.accumulate(user_weights(n_users, max_user_share)))

    events: list[tuple] = []
    session_number = 0
    while len(events) < n_events:
        user_id, segment, platform, favourite = users[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]
        session_number += 1
        session = f"{seed}-{session_number}"
        channel = rng.choices(CHANNELS, weights=(5, 3, 1, 2))[0]
        t = START + rng.random() * span
        fraction = (t - START) / span
        hour = ((t % 86400.0) / 3600.0)
        evening = 0.4 if 18 <= hour < 23 else 0.0
        price_factor, checkout_ok = 1.0, True
        for drift in drifts:
            if drift.start <= fraction < drift.end:
                if drift.kind == "price_shock":
                    price_factor = 1.4
                elif platform == drift.platform:
                    checkout_ok = False
        intent = rng.gauss(0.0, 1.0) + CHANNEL_LIFT[channel] + evening
        for _ in range(1 + int(rng.expovariate(1 / 2.5))):
            pool = by_category[favourite] if rng.random() < 0.7 else products
            product_id, category, brand, base_price, quality, _ = pool[rng.randrange(len(pool))]
            price = round(base_price * price_factor, 2)
            sensitivity = {"bargain": 1.6, "regular": 0.8, "premium": 0.2}[segment] * price_factor
            relative_price = math.log(price) - (3.0 + 0.35 * CATEGORIES.index(category))
            appeal = quality + intent - sensitivity * relative_price + (0.7 if segment == "premium" else 0.0)
            common = (product_id, category, brand, price, platform, channel, user_id, session)
            for _ in range(1 + int(rng.expovariate(2.0))):
                t += rng.expovariate(1 / 40.0)
                events.append((t, "view", *common))
            if rng.random() < _sigmoid(appeal - 1.5):
                t += rng.expovariate(1 / 60.0)
                events.append((t, "cart", *common))
                if rng.random() < 0.1:
                    events.append((t + rng.expovariate(1 / 30.0), "remove_from_cart", *common))
                elif checkout_ok and rng.random() < _sigmoid(appeal + 0.5):
                    # Most buyers pay within minutes; some come back after the window closes.
                    delay = rng.expovariate(1 / 240.0) if rng.random() < 0.9 else 1800 + rng.expovariate(1 / 1800.0)
                    events.append((t + delay, "purchase", *common))
            t += rng.expovariate(1 / 30.0)

    events.sort(key=lambda e: e[0])
    for number, (t, kind, product_id, category, brand, price, platform, channel, user_id, session) in enumerate(
        events[:n_events]
    ):
        yield {
            "event_id": f"{seed}-{number}",
            "event_time": _iso(t),
            "event_type": kind,
            "product_id": product_id,
            "category_code": category,
            "brand": brand,
            "price": price,
            "user_id": user_id,
            "user_session": session,
            "platform": platform,
            "channel": channel,
        }


def write_jsonl(events, path: str | Path) -> int:
    """Write event dicts as JSON lines; return how many."""
    encoder = msgspec.json.Encoder()
    count = 0
    with open(path, "wb") as out:
        for event in events:
            out.write(encoder.encode(event) + b"\n")
            count += 1
    return count
