"""The scoreboard's inline log loss equals River's LogLoss bit for bit, cumulative and
rolling (update and revert), clamped probabilities included."""

import pickle
import random
from pathlib import Path

from river import metrics

from shopstream.scoring import BinaryScores, Scoreboard


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


def _updates(seed, n):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.random() < 0.4
        p = rng.random()
        out.append((y, p, p > 0.5))
    return out


def test_reads_far_apart_fold_exactly_what_every_update_would_have_given():
    """Updates are buffered and folded when read: a read after 1 or after 700 updates (more
    than the window) gives River's numbers, log loss bit for bit."""
    rng = random.Random(11)
    board = Scoreboard(window=50)
    ref_cumulative, ref_rolling, recent = metrics.LogLoss(), metrics.LogLoss(), []
    next_read = 1
    for i, (y, p, y_pred) in enumerate(_updates(4, 6000), start=1):
        board.update(y, p, y_pred)
        ref_cumulative.update(y, p)
        ref_rolling.update(y, p)
        recent.append((y, p, y_pred))
        if len(recent) > 50:
            ref_rolling.revert(*recent.pop(0)[:2])
        if i == next_read:
            next_read += rng.choice([1, 3, 49, 50, 51, 700])
            assert board.cumulative.values()["log_loss"] == ref_cumulative.get()
            assert board.rolling.values()["log_loss"] == ref_rolling.get()
            tp = sum(1 for y_, _, pred in recent if y_ and pred)
            fp = sum(1 for y_, _, pred in recent if not y_ and pred)
            fn = sum(1 for y_, _, pred in recent if y_ and not pred)
            assert board.rolling.counts() == (tp, fp, len(recent) - tp - fp - fn, fn)
            roc = metrics.ROCAUC()
            for y_, p_, _ in recent:
                roc.update(y_, {True: p_, False: 1 - p_})
            assert board.rolling.values()["roc_auc"] == roc.get()
    assert len(board.cumulative) == 6000


def test_a_scoreboard_checkpointed_before_compact_buffers_reads_and_goes_on_the_same():
    """tests/data/scoreboard_ckpt3.pickle: a Scoreboard(window=30) after 100 updates, pickled by
    the code of CKPT-3 checkpoints before this format (rolling window as a deque of tuples)."""
    old = pickle.loads((Path(__file__).parent / "data" / "scoreboard_ckpt3.pickle").read_bytes())
    updates = _updates(5, 160)
    new = Scoreboard(window=30)
    for u in updates[:100]:
        new.update(*u)
    assert old.cumulative.values() == new.cumulative.values()
    assert old.rolling.values() == new.rolling.values()
    for u in updates[100:]:
        old.update(*u)
        new.update(*u)
    assert (old.cumulative.values(), old.rolling.values()) == (new.cumulative.values(), new.rolling.values())
    assert old.rolling.counts() == new.rolling.counts() and len(old.cumulative) == 160
    again = pickle.loads(pickle.dumps(old))   # pending updates are folded into the checkpoint
    assert again.rolling.values() == new.rolling.values() and not again._p


# -- the fold's fast paths against the computation they replaced ---------------------------

def _old_losses(p, cells):
    """The fold's log losses before numpy clamped them: River's clamp and formula, one by one."""
    import math

    low, high = 1e-15, 1 - 1e-15
    clamped = (high if q > high else low if q < low else q for q in p)
    return [-math.log(q) if c & 2 else -math.log(1 - q) for q, c in zip(clamped, cells)]


def _bits(values):
    import struct

    return [struct.pack("<d", v) for v in values]


def test_the_folds_log_losses_are_the_same_bits_as_one_by_one():
    from array import array

    from shopstream.scoring import _losses

    rng = random.Random(21)
    edges = [0.0, -0.0, 1.0, 1e-15, 1 - 1e-15, 1e-16, 1 - 1e-16, 5e-324, 2.2250738585072014e-308, 0.5,
             1 + 1e-12, -3.0, 7.0, float("inf"), float("-inf"), float("nan"), 0.9999999999999999]
    values = edges + [rng.random() for _ in range(20000)] + [rng.random() ** 40 for _ in range(2000)] \
        + [1 - rng.random() ** 40 for _ in range(2000)]
    p = array("d", values * 2)
    cells = bytearray([c for c in range(4) for _ in range(len(values) // 2)] * 4)[:len(p)]
    cells += bytearray(rng.randrange(4) for _ in range(len(p) - len(cells)))
    assert _bits(_losses(p, cells)) == _bits(_old_losses(p, cells))
    assert _bits(_losses(p[:0], cells[:0])) == [] and _bits(_losses(list(p[:50]), list(cells[:50]))) == \
        _bits(_old_losses(p[:50], cells[:50]))


def _old_log_loss(window, chunks):
    """The rolling log loss's (n, mean) folded as before the full window's fast loop: River's
    update and revert, one step at a time, over the same chunks."""
    n = m = 0.0
    recent: list = []
    for chunk in chunks:
        for loss in _old_losses(*zip(*chunk)) if chunk else []:
            recent.append(loss)
            n += 1.0
            m += (1.0 / n) * (loss - m)
            if len(recent) > window:
                gone = recent.pop(0)
                n -= 1.0
                if n > 0:
                    m -= (1.0 / n) * (gone - m)
                elif n == 0:
                    m = 0.0
    return n, m


def test_the_rolling_folds_full_window_loop_is_the_same_bits_as_step_by_step():
    rng = random.Random(5)
    for window in (1, 2, 3, 50, 1000):
        board, chunks = Scoreboard(window=window), []
        for _ in range(40):
            chunk = [(rng.random() ** rng.choice([1, 1, 30]), rng.randrange(4))
                     for _ in range(rng.choice([0, 1, 2, window - 1, window, window + 1, 3 * window + 7, 900]))]
            for p, cell in chunk:
                board.update(bool(cell & 2), p, bool(cell & 1))
            chunks.append(chunk)
            mean = board.rolling.log_loss._mean
            assert _bits([mean.n, mean._mean]) == _bits(_old_log_loss(window, chunks)), window
