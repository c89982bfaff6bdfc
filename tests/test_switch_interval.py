"""The GIL switch interval a worker runs at (stream/switch_interval.py) and its setting."""

from __future__ import annotations

import math

import pytest

from shopstream.config import ConfigError
from stream.settings import WorkerSettings
from stream.switch_interval import MAX_SECONDS, PYTHON_DEFAULT, SERVING, STREAMING, interval_for


def test_auto_is_long_for_a_streaming_kafka_python_worker_and_short_for_a_serving_one():
    assert interval_for(0.0, serving=False) == STREAMING == 0.05
    assert interval_for(0.0, serving=True) == SERVING == 0.001
    assert interval_for(0.0, serving=True, client="confluent") == SERVING
    assert interval_for(0.0, serving=False, client="confluent") == PYTHON_DEFAULT == 0.005   # no Python IO threads
    assert interval_for(0.2, serving=False) == 0.2 and interval_for(0.2, serving=True, client="confluent") == 0.2


@pytest.mark.parametrize("bad", [-0.001, MAX_SECONDS * 2, 1e-9, math.nan, math.inf])
def test_a_value_out_of_range_is_refused_by_name(bad):
    with pytest.raises(ConfigError, match="switch_interval"):
        WorkerSettings.from_options(switch_interval=bad)


def test_the_setting_defaults_to_auto_and_is_read_from_the_environment(monkeypatch, capsys):
    from cli import main

    assert WorkerSettings.from_options().switch_interval == 0.0
    assert WorkerSettings.from_options(switch_interval=MAX_SECONDS).switch_interval == MAX_SECONDS
    monkeypatch.setenv("SHOPSTREAM_SWITCH_INTERVAL", "1")   # the variable is the option too, held to its range
    assert main(["worker"]) == 2
    assert "switch-interval 1.0 must be 0 (auto) or 0.000001..0.2 seconds" in capsys.readouterr().err
