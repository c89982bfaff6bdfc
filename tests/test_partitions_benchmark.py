"""benchmarks/partitions.py, tiny: its exact ROC AUC, its partitioner, and a sweep that runs."""

import random
import sys
from pathlib import Path

import numpy as np
from kafka.partitioner.default import DefaultPartitioner

from shopstream.generator import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from partitions import exact_auc, partition_of, run  # noqa: E402


def test_exact_auc_is_the_share_of_correctly_ordered_pairs_ties_counting_half():
    rng = random.Random(4)
    y = np.array([rng.random() < 0.3 for _ in range(300)])
    p = np.array([rng.choice([0.1, 0.2, 0.5, rng.random()]) for _ in range(300)])  # many ties
    pos, neg = p[y], p[~y]
    pairs = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    assert abs(exact_auc(y, p) - pairs / (len(pos) * len(neg))) < 1e-12


class Cluster:  # the metadata kafka-python's partitioner reads: one topic of 16 partitions
    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return set(range(16))

    available_partitions_for_topic = partitions_for_topic


def test_events_go_where_kafka_pythons_producer_sends_them():
    for user in ("1", "42", "u-9", "123456"):
        key = user.encode()
        assert partition_of(user, 16) == DefaultPartitioner().partition("t", key, key, None, None, Cluster())


def test_a_shared_sweep_learns_every_label_once_and_scores_every_prediction():
    records = list(generate(3000, seed=2))
    alone, shared = run(records, 4, "partition", 0), run(records, 4, "log+catalog", 5)
    assert alone["n"] == shared["n"] > 1000
    assert shared["learned"] > 0 and 0.5 < shared["auc"] < 1
