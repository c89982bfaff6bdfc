"""The worker's collector modes (stream/gc_mode.py), and why promotion loses no memory: the engine makes no
reference cycles."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from shopstream.config import ConfigError
from shopstream.engine import GC_THRESHOLDS
from stream.gc_mode import LATENCY_THRESHOLDS, GcControl, GcMode
from stream.settings import WorkerSettings


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_collector():
    before, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.set_threshold(*before)
    gc.callbacks[:] = callbacks


def test_auto_is_latency_for_a_worker_serving_on_librdkafka_and_throughput_otherwise():
    assert GcMode.choose("auto", serving=True, client="confluent") == GcMode("latency", LATENCY_THRESHOLDS, 5.0)
    # kafka-python lost a quarter of its throughput to young collections this frequent
    assert GcMode.choose("auto", serving=True, client="kafka-python") == GcMode("throughput", GC_THRESHOLDS, 0.0)
    assert GcMode.choose("auto", serving=False, client="confluent").name == "throughput"
    assert GcMode.choose("throughput", serving=True, client="confluent").name == "throughput"
    assert GcMode.choose("latency", serving=False).name == "latency"
    with pytest.raises(ValueError, match="gc: 'fast' must be one of"):
        GcMode.choose("fast", serving=False)


def test_the_setting_is_checked_and_read_from_the_environment(monkeypatch, capsys):
    from cli import main

    with pytest.raises(ConfigError, match="gc 'fast' must be one of"):
        WorkerSettings.from_options(gc="fast")
    assert WorkerSettings.from_options().gc == "auto"
    monkeypatch.setenv("SHOPSTREAM_GC", "fast")   # the variable is the option too, held to its choices
    with pytest.raises(SystemExit) as stopped:
        main(["worker"])
    assert stopped.value.code == 2
    assert "SHOPSTREAM_GC='fast': must be one of auto, throughput, latency" in capsys.readouterr().err


def test_start_applies_the_thresholds_and_stop_gives_the_previous_ones_back(restore_collector):
    gc.set_threshold(700, 10, 10)
    registry = CollectorRegistry()
    control = GcControl(GcMode.choose("latency", serving=False), registry).start()
    assert gc.get_threshold() == LATENCY_THRESHOLDS
    assert control._on_collection in gc.callbacks
    assert registry.get_sample_value("shopstream_gc_info", {"mode": "latency"}) == 1
    control.stop()
    assert gc.get_threshold() == (700, 10, 10)
    assert control._on_collection not in gc.callbacks
    control.start()
    gc.set_threshold(900, 10, 10)   # set by someone else since: theirs stays
    control.stop()
    assert gc.get_threshold() == (900, 10, 10)


def test_latency_promotes_every_tracked_object_on_time_and_never_while_a_checkpoint_shares_the_heap(
        restore_collector):
    clock, frozen = Clock(), [False]
    registry = CollectorRegistry()
    control = GcControl(GcMode.choose("latency", serving=True), registry, frozen=lambda: frozen[0], clock=clock)
    gc.disable()   # no collection of its own may move `young` meanwhile
    try:
        young = [object()]   # a tracked container, just made: in the youngest generation
        assert any(o is young for o in gc.get_objects(generation=0))
        assert not control.tick(clock.now + 4.9)
        frozen[0] = True
        assert not control.tick(clock.now + 5.0)   # a checkpoint child still shares the frozen heap
        assert any(o is young for o in gc.get_objects(generation=0))
        frozen[0] = False
        assert control.tick(clock.now + 5.0)
        assert any(o is young for o in gc.get_objects(generation=2))
        assert not any(o is young for o in gc.get_objects(generation=0))
        assert not control.tick(clock.now + 9.9)   # the next one is 5 s after this one
        assert control.tick(clock.now + 10.0)
    finally:
        gc.enable()
    assert registry.get_sample_value("shopstream_gc_promotions_total") == 2


def test_throughput_never_promotes():
    control = GcControl(GcMode.choose("throughput", serving=False), CollectorRegistry(), frozen=lambda: False)
    assert not any(control.tick(t) for t in (0.0, 1e3, 1e6))


def test_every_collection_pause_is_observed_by_generation(restore_collector):
    registry = CollectorRegistry()
    control = GcControl(GcMode.choose("latency", serving=True), registry).start()
    try:
        gc.collect(0)
        gc.collect(2)
        control.tick(0.0)   # the pauses are observed between polls, not inside the collection
    finally:
        control.stop()

    def count(generation: int) -> float:
        return registry.get_sample_value("shopstream_gc_pause_seconds_count", {"generation": str(generation)})

    assert count(0) >= 1 and count(2) >= 1
    assert registry.get_sample_value("shopstream_gc_pause_seconds_sum", {"generation": "2"}) > 0


@pytest.mark.parametrize("features", ["raw", "shop"])
def test_the_engine_makes_no_reference_cycles(features):
    """Promotion leaves cycles to a full collection; the engine, which allocates almost everything a
    worker does, leaves none for it: after 20,000 events with the collector off, nothing is unreachable.
    In a process of its own: threads other tests left behind may make cycles of theirs."""
    script = f"""
import gc, msgspec
from shopstream.engine import Engine
from shopstream.events import decode_event
from shopstream.generator import generate
events = [decode_event(msgspec.json.encode(r)) for r in generate(20_000, seed=5)]
engine = Engine.fresh("logreg", {features!r})
gc.collect()
gc.disable()
for event in events:
    engine.process(event)
print(engine.counts["learned"], gc.collect())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    learned, unreachable = map(int, done.stdout.split())
    assert learned > 1000 and unreachable == 0
