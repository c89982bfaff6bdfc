"""The scoreboard's inline log loss equals River's LogLoss bit for bit, cumulative and
rolling (update and revert), clamped probabilities included."""

import random

from river import metrics

from shopstream.scoring import BinaryScores


def test_inline_log_loss_equals_river_bit_for_bit():
    rng = random.Random(3)
    rolling, cumulative = BinaryScores(window=50), BinaryScores()
    ref_rolling, ref_cumulative, recent = metrics.LogLoss(), metrics.LogLoss(), []
    for _ in range(5000):
        y = rng.random() < 0.3
        p = rng.choice([rng.random(), 0.0, 1.0, 1e-20, 1 - 1e-17])
        rolling.update(y, p, p > 0.5)
        cumulative.update(y, p, p > 0.5)
        ref_cumulative.update(y, p)
        ref_rolling.update(y, p)
        recent.append((y, p))
        if len(recent) > 50:
            ref_rolling.revert(*recent.pop(0))
        assert rolling.values()["log_loss"] == ref_rolling.get()
        assert cumulative.values()["log_loss"] == ref_cumulative.get()
