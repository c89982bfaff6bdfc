"""benchmarks/peers.py's rounds: alternating order, the median run, ratios paired by round."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402

pytestmark = pytest.mark.fast


def test_rounds_alternate_the_order_so_a_drifting_load_favours_no_system():
    systems = ["river", "shopstream_confluent", "bytewax"]
    assert [peers.round_order(systems, r) for r in range(3)] == [
        systems, list(reversed(systems)), systems]


def test_a_system_is_shown_by_its_median_run_and_a_failed_run_is_not_counted():
    runs = [{"events_per_s": 30.0}, {"error": "boom"}, {"events_per_s": 10.0}, {"events_per_s": 20.0}]
    assert peers.median_run(runs) == {"events_per_s": 20.0}
    assert peers.median_run([{"events_per_s": 2.0}, {"events_per_s": 1.0}]) == {"events_per_s": 1.0}
    assert peers.median_run([{"error": "a"}, {"error": "b"}]) == {"error": "b"}


def test_paired_ratios_are_taken_within_each_round():
    results = {"a": {"runs": [110.0, 90.0, 105.0, None]}, "b": {"runs": [100.0, 100.0, 100.0, 100.0]}}
    line = peers.paired(results, "a", "b")
    assert "1.100, 0.900, 1.050" in line
    assert "ahead in 2 of 3" in line          # the round where a failed is left out
    assert line.endswith("median 1.050")
    assert "no round" in peers.paired({"a": {"runs": [None]}, "b": {"runs": [1.0]}}, "a", "b")
