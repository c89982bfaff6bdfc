"""The synthetic shop is deterministic for a seed and learnable."""

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import Drift, generate

import pytest


def test_same_seed_same_events_other_seed_other_events():
    assert list(generate(3000, seed=5)) == list(generate(3000, seed=5))
    assert list(generate(3000, seed=5)) != list(generate(3000, seed=6))


def test_events_are_valid_and_in_time_order():
    events = [event_from_record(r) for r in generate(5000, seed=2)]
    times = [e.event_time for e in events]
    assert times == sorted(times)
    kinds = {e.event_type for e in events}
    assert kinds == {"view", "cart", "remove_from_cart", "purchase"}


@pytest.mark.slow
def test_learnable_a_model_clearly_beats_the_base_rate():
    engine = Engine.fresh("logreg", "shop")
    for record in generate(40_000, seed=9):
        engine.process(event_from_record(record))
    scores = engine.champion_slot.scores.cumulative
    tp, fp, tn, fn = scores.counts()
    base_rate = (tp + fn) / len(scores)
    values = scores.values()
    assert 0.05 < base_rate < 0.5
    assert values["roc_auc"] > 0.7
    assert values["accuracy"] > 1 - base_rate  # beats always saying "no purchase"


def test_checkout_incident_collapses_conversion_on_its_platform_only():
    drift = Drift.parse("checkout_incident@0.4-0.6:android")
    records = list(generate(60_000, seed=4, drifts=(drift,)))
    times = sorted({r["event_time"] for r in records})
    low, high = times[int(len(times) * 0.42)], times[int(len(times) * 0.58)]

    def purchases(platform):
        return sum(1 for r in records if r["event_type"] == "purchase" and r["platform"] == platform
                   and low <= r["event_time"] <= high)
    assert purchases("android") < 0.1 * purchases("web")
    with pytest.raises(ValueError, match="START < END"):
        Drift.parse("checkout_incident@0.7-0.2")


@pytest.mark.slow
def test_traffic_per_user_is_heavy_tailed_but_capped_so_partitions_get_comparable_load():
    from collections import Counter

    from kafka.partitioner.default import murmur2

    records = list(generate(100_000, seed=7))
    users = Counter(r["user_id"] for r in records)
    top = users.most_common(1)[0][1] / len(records)
    top_tenth = sum(n for _, n in users.most_common(len(users) // 10)) / len(records)
    loads = Counter((murmur2(str(r["user_id"]).encode()) & 0x7FFFFFFF) % 4 for r in records)
    print(f"\ntop user {top:.2%} of events, top 10% of users {top_tenth:.0%}, partitions {sorted(loads.values())}")
    assert top < 0.02               # no user near half the traffic (the Pareto draw gave 55.6%)
    assert top_tenth > 0.4          # still heavy-tailed: a tenth of the users make much of it
    assert max(loads.values()) < 1.6 * min(loads.values())
    skewed = Counter(r["user_id"] for r in generate(100_000, seed=7, max_user_share=1.0))
    assert skewed.most_common(1)[0][1] / 100_000 > 0.1  # the skewed scenario on request
