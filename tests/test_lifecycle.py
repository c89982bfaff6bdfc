"""Model lifecycle on a shop with a checkout incident: online learning beats the frozen
bootstrap model, recovers after the incident, detects it, and promotes only the better model.
"""

from statistics import mean

import pytest
from river import dummy, linear_model, optim

from offline.bootstrap import bootstrap
from shopstream.config import EngineConfig
from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.features import build_features
from shopstream.generator import START, Drift, generate, write_jsonl
from shopstream.lineup import Lineup, PromotionPolicy, build_engine
from shopstream.models import build_model

pytestmark = pytest.mark.slow  # every test here shares a module fixture of 10+ s

EVENTS = 150_000
DRIFT = Drift.parse("checkout_incident@0.5-0.65:web")
DAYS = 30.0
BOOTSTRAP_FRACTION = 0.3


def run(engine, records, every=250):
    """Process records; sample (resolved, event time, {slot: rolling roc auc}) every `every` resolved."""
    points, next_at = [], every
    for record in records:
        engine.process(event_from_record(record))
        if engine.counts["resolved"] >= next_at:
            next_at = engine.counts["resolved"] + every
            points.append((engine.counts["resolved"], engine.joiner.max_time,
                           {s.name: s.scores.rolling.values()["roc_auc"] for s in engine.slots}))
    return points


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    records = list(generate(EVENTS, seed=12, days=DAYS, drifts=(DRIFT,)))
    split = int(len(records) * BOOTSTRAP_FRACTION)
    root = tmp_path_factory.mktemp("lifecycle")
    write_jsonl(records[:split], root / "history.jsonl")
    bootstrap(root / "history.jsonl", root / "artifacts", models=["logreg"], progress=False)
    starts, ends = (START + f * DAYS * 86400 for f in (DRIFT.start, DRIFT.end))
    return records[split:], root / "artifacts", starts, ends


def resolved_at(points, t):
    return next(resolved for resolved, time, _ in points if time >= t)


def test_online_champion_beats_frozen_baseline_recovers_and_detects_the_incident(shop):
    stream, artifacts, drift_start, drift_end = shop
    engine, origin = build_engine(str(artifacts))
    assert origin.startswith("artifact:") and [s.role for s in engine.slots] == ["champion", "baseline"]
    points = run(engine, stream)
    start, end = resolved_at(points, drift_start), resolved_at(points, drift_end)

    def auc(slot, low, high):
        return mean(p[2][slot] for p in points if low < p[0] <= high)

    during = (auc("logreg", start + 1000, end), auc("logreg_baseline", start + 1000, end))
    pre_drift = auc("logreg", start - 5000, start)
    recovered = [p[2]["logreg"] for p in points if end < p[0] <= end + 5000]
    print(f"\nrolling ROC AUC: pre-drift champion {pre_drift:.3f}; during the incident champion "
          f"{during[0]:.3f} vs frozen baseline {during[1]:.3f}; best within 5k resolved after it "
          f"{max(recovered):.3f} ({max(recovered) / pre_drift:.1%} of pre-drift)")
    assert during[0] > during[1] + 0.05, "online learning must adapt to the incident"
    assert max(recovered) >= 0.95 * pre_drift
    assert auc("logreg", end + 5000, end + 15000) >= 0.95 * pre_drift  # and it stays recovered

    detections = [h["resolved"] for h in engine.history if h["kind"] == "drift" and h["model"] == "logreg"]
    print(f"champion drift detections at resolved {detections}; incident {start}..{end}")
    assert not [d for d in detections if d < start], "no false alarm before the incident"
    assert any(start <= d <= start + 3000 for d in detections), "incident start detected within 3000"
    assert any(end <= d <= end + 2000 for d in detections), "incident end detected within 2000"
    assert engine.slot("logreg_baseline").learn is False


def test_a_clearly_better_challenger_is_promoted_a_worse_one_is_not(shop):
    stream, _, _, _ = shop
    # A weak champion: plain SGD with a tiny step on unscaled features.
    weak = linear_model.LogisticRegression(optimizer=optim.SGD(0.0005))
    engine = Engine(weak, build_features("shop"), model_name="weak", promotion=PromotionPolicy())
    engine.add_slot("logreg", build_model("logreg"), "challenger")          # clearly better
    engine.add_slot("prior", dummy.PriorClassifier(), "challenger")         # no ranking at all
    run(engine, stream[:60_000])
    promotions = [h for h in engine.history if h["kind"] == "promotion"]
    print(f"\npromotions: {promotions}")
    assert [p["new"] for p in promotions] == ["logreg"]
    policy = engine.promotion
    assert promotions[0]["reason"] == "automatic" and promotions[0]["z"] >= policy.z_critical(2)  # two challengers
    assert promotions[0]["resolved"] >= policy.min_resolved  # not on a handful of labels
    assert engine.champion_slot.name == "logreg" and engine.slot("prior").role == "challenger"
    assert engine.slot("weak").role == "challenger" and engine.counts["promotions"] == 1


def test_manual_promotion_and_rollback_are_recorded(shop):
    stream, artifacts, _, _ = shop
    engine, _ = build_engine(str(artifacts), lineup=Lineup(challengers=("logreg_tuned",)))
    run(engine, stream[:5000])
    engine.promote("logreg_tuned")
    assert engine.champion_slot.name == "logreg_tuned" and engine.slot("logreg").role == "challenger"
    with pytest.raises(ValueError, match="frozen baseline"):
        engine.promote("logreg_baseline")
    with pytest.raises(ValueError, match="no model named 'nope'"):
        engine.promote("nope")
    engine.rollback(build_model("logreg_tuned"), "logreg_tuned-old")
    assert engine.champion_slot.version == "logreg_tuned-old"
    assert [h["kind"] for h in engine.history if h["kind"] != "drift"] == ["promotion", "rollback"]


@pytest.mark.parametrize("reaction", ["challenger", "reset"])
def test_drift_reactions(shop, reaction):
    stream, artifacts, drift_start, _ = shop
    engine, _ = build_engine(str(artifacts), EngineConfig(drift_reaction=reaction))
    points = run(engine, stream[:int(len(stream) * 0.45)])    # through the start of the incident
    start = resolved_at(points, drift_start)
    [drift] = [h for h in engine.history if h["kind"] == "drift" and h["role"] == "champion"]
    assert drift["resolved"] >= start
    if reaction == "challenger":
        fresh = engine.slot("logreg_since_drift1")
        assert fresh.role == "challenger" and fresh.version == "fresh" and len(fresh.scores.cumulative) > 0
    else:
        [reset] = [h for h in engine.history if h["kind"] == "rollback"]
        assert reset["reason"] == "drift" and reset["new"] == engine.slot("logreg_baseline").version
        # a copy: the baseline stays frozen
        assert engine.champion_slot.model is not engine.slot("logreg_baseline").model
