"""Abuse: a million distinct sessions that view and never buy. Open predictions stay at
their cap, feature state at its caps, and memory stops growing once the caps are reached."""

import gc

import pytest

from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.events import Event
from shopstream.features import FeatureCaps, ShopFeatures
from shopstream.models import build_model

pytestmark = pytest.mark.slow  # a million events

EVENTS = 1_000_000
CAP = 50_000


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_a_million_sessions_that_never_buy_stay_within_the_caps():
    features = ShopFeatures(FeatureCaps(sessions=CAP, users=CAP, products=CAP))
    engine = Engine(build_model("logreg"), features, EngineConfig(max_open=CAP, window=10**7), model_name="logreg")
    t0 = 1.7e9
    rss = {}
    for i in range(EVENTS):
        engine.process(Event(t0 + i * 0.01, "view", f"p{i}", f"u{i}", f"s{i}", price=10.0, platform="web"))
        if i + 1 in (EVENTS // 4, EVENTS):
            gc.collect()
            rss[i + 1] = rss_mb()
    assert engine.open_predictions == CAP
    assert engine.joiner.counts["evicted"] == EVENTS - CAP
    assert len(features.sessions) == len(features.users) == len(features.products) == CAP
    growth = rss[EVENTS] - rss[EVENTS // 4]
    print(f"\nRSS after {EVENTS // 4} events {rss[EVENTS // 4]:.0f} MB, after {EVENTS}: {rss[EVENTS]:.0f} MB")
    assert growth < 40, f"memory grew {growth:.0f} MB after the caps were reached"
