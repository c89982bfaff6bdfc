"""The joiner's deadline queue is two (a deque for predictions opened in deadline order, a
heap for the others): predictions must expire, resolve and be evicted exactly as from one
heap, in (deadline, seq) order, across checkpoints (whole, or with the entries apart), also out of order;
and the oldest open prediction the metrics read is always a live one."""

import gc
import pickle
import random

import pytest

from shopstream.labels import LabelJoiner, OpenPrediction


class Naive:
    """The rule, by brute force: every live prediction in a list."""

    def __init__(self, window, lateness, max_open):
        self.window, self.lateness, self.max_open = window, lateness, max_open
        self.max_time = float("-inf")
        self.live = []   # [deadline, seq, key, event_time]
        self.seq = 0

    def open(self, key, t):
        if t + self.window < self.max_time - self.lateness:
            return False, []
        self.live.append((t + self.window, self.seq, key, t))
        self.seq += 1
        evicted = []
        if len(self.live) > self.max_open:
            first = min(self.live)
            self.live.remove(first)
            evicted.append(first[1])
        return True, evicted

    def advance(self, t):
        self.max_time = max(self.max_time, t)
        due = sorted(e for e in self.live if e[0] < self.max_time - self.lateness)
        self.live = [e for e in self.live if e not in due]
        return [e[1] for e in due]

    def purchase(self, key, t):
        hit = sorted((e for e in self.live if e[2] == key and e[3] <= t <= e[3] + self.window), key=lambda e: e[1])
        self.live = [e for e in self.live if e not in hit]
        return [e[1] for e in hit]


@pytest.mark.parametrize("seed", range(6))
def test_two_queues_expire_resolve_and_evict_as_one_heap(seed):
    rng = random.Random(seed)
    window, lateness, max_open = rng.choice([5.0, 30.0]), rng.choice([0.0, 3.0]), rng.choice([8, 40, 10_000])
    joiner, naive = LabelJoiner(window, lateness, max_open, max_jump=0.0), Naive(window, lateness, max_open)
    clock = 0.0
    seqs: dict = {}   # id(prediction) -> its seq in the naive joiner
    for _ in range(3000):
        clock += rng.random()
        op = rng.random()
        t = clock - (rng.random() * 20 if rng.random() < 0.3 else 0.0)   # often out of order
        t = round(t, 1)   # ties in deadlines: seq decides
        key = (f"s{rng.randrange(6)}", f"p{rng.randrange(3)}")
        if op < 0.5:
            prediction = OpenPrediction(key, t, {"a": 1.0}, [(0.5, False)])
            before = dict(joiner.counts)
            opened, evicted = naive.open(key, t)
            assert joiner.open(prediction) is opened
            if opened:
                seqs[id(prediction)] = prediction.seq
            assert joiner.counts["evicted"] - before["evicted"] == len(evicted)
        elif op < 0.8:
            assert [seqs[id(p)] for p in joiner.advance(t)] == naive.advance(t)
        elif op < 0.95:
            got = [seqs[id(p)] for p in joiner.purchase(key, t)]
            assert got == naive.purchase(key, t)
        elif op < 0.975:
            joiner = pickle.loads(pickle.dumps(joiner))   # a checkpoint: one heap again
            seqs = {id(p): p.seq for p in joiner.open_predictions()}
        else:
            # a checkpoint's payload: the joiner, its entries apart (in batches of 1, 7 or all)
            with joiner.entries_apart(rng.choice([0, 1, 7])) as batches:
                copy = pickle.loads(pickle.dumps(joiner))
                batch = [entry for part in batches for entry in pickle.loads(pickle.dumps(part))]
            assert len(copy) == 0
            copy.attach(batch)
            joiner = copy
            seqs = {id(p): p.seq for p in joiner.open_predictions()}
        assert len(joiner) == len(naive.live)
        # the metrics' read of the queues' head: a removed prediction never stands there
        assert joiner.oldest_open_time() == (min(naive.live)[0] - window if naive.live else None)
        assert all(p.deadline == p.event_time + window for p in joiner.open_predictions())
        assert sorted(p.seq for p in joiner.open_predictions()) == sorted(e[1] for e in naive.live)
    assert joiner.counts["expired"] + joiner.counts["evicted"] > 100 and joiner.counts["positive"] > 10


@pytest.mark.parametrize("enabled", [True, False])
def test_a_checkpoints_batches_are_made_without_collections_and_leave_the_collector_as_found(enabled):
    """The deque's predictions get their entry tuples when a checkpoint's batch is made; a million
    new tuples would otherwise set off hundreds of collections (of the whole heap, some)."""
    joiner = LabelJoiner(window=60.0)
    for i in range(5000):
        joiner.open(OpenPrediction((f"s{i}", "p"), float(i), {"a": 1.0}, [(0.5, False)]))
    thresholds = gc.get_threshold()
    was = gc.isenabled()
    try:
        gc.set_threshold(100)
        (gc.enable if enabled else gc.disable)()
        before = gc.get_stats()[0]["collections"]
        with joiner.entries_apart(5000) as batches:
            [batch] = batches
        assert gc.get_stats()[0]["collections"] - before <= 10   # 45 without the pause (tried)
        assert gc.isenabled() is enabled
    finally:
        gc.set_threshold(*thresholds)
        (gc.enable if was else gc.disable)()
    assert [(d, s) for d, s, _ in batch] == [(i + 60.0, i) for i in range(5000)]
