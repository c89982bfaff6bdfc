"""The engine is River's progressive validation, exactly, for labelled streams."""

import pytest
from river import datasets, evaluate, metrics

from shopstream.engine import Engine
from shopstream.events import Event
from shopstream.models import build_model


def labelled_events(dataset):
    for i, (x, y) in enumerate(dataset):
        yield Event(1.6e9 + i, "view", str(i), "u", "s", event_id=str(i), features=x, label=y)


RIVER_METRICS = {
    "accuracy": metrics.Accuracy,
    "precision": metrics.Precision,
    "recall": metrics.Recall,
    "f1": metrics.F1,
    "roc_auc": metrics.ROCAUC,
    "log_loss": metrics.LogLoss,
}


@pytest.mark.parametrize("dataset", [datasets.Phishing(), datasets.Bananas()], ids=["phishing", "bananas"])
def test_engine_matches_progressive_val_score(dataset):
    engine = Engine.fresh("logreg", "raw", metric_window=100)
    predictions = [engine.process(event) for event in labelled_events(dataset)]

    river_predictions = [
        step["Prediction"][True]
        for step in evaluate.iter_progressive_val_score(
            dataset, build_model("logreg"), metrics.ROCAUC(), step=1, yield_predictions=True
        )
    ]
    assert predictions == river_predictions  # bit for bit, every row

    ours = engine.champion_slot.scores.cumulative.values()
    for name, metric in RIVER_METRICS.items():
        theirs = evaluate.progressive_val_score(dataset, build_model("logreg"), metric())
        assert ours[name] == theirs.get(), name
    # Several metrics at once (River then passes probabilities and argmax labels).
    combined = evaluate.progressive_val_score(
        dataset, build_model("logreg"), metrics.Accuracy() + metrics.F1() + metrics.LogLoss()
    )
    assert [ours["accuracy"], ours["f1"], ours["log_loss"]] == [m.get() for m in combined]
    assert engine.counts["learned"] == engine.counts["resolved"] == len(predictions)


def test_rolling_scores_match_river_rolling_metrics():
    dataset = datasets.Phishing()
    engine = Engine.fresh("logreg", "raw", metric_window=50)
    for event in labelled_events(dataset):
        engine.process(event)
    rolling = engine.champion_slot.scores.rolling.values()
    for name, metric in RIVER_METRICS.items():
        from river import utils

        theirs = evaluate.progressive_val_score(dataset, build_model("logreg"), utils.Rolling(metric, window_size=50))
        assert rolling[name] == pytest.approx(theirs.get(), abs=1e-12), name
