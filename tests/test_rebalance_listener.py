"""The worker's rebalance callbacks off kafka-python's event loop (stream/rebalance_listener.py), on
kafka-python 3.0.12's own event loop (`NetworkSelector`, on its IO thread as in a consumer), without a
broker: the loop goes on while a callback runs, and the callback's outcome reaches the coroutine that
awaits it. The broker test is in test_faults_kafka.py."""

from __future__ import annotations

import inspect
import threading

import pytest
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener, ConsumerRebalanceListener
from kafka.net.selector import NetworkSelector

from fakes import FakeConsumer
from stream.rebalance_listener import OffLoopListener, for_consumer

pytestmark = pytest.mark.fast
TPS = {TopicPartition("events", 0), TopicPartition("events", 1)}
WAIT = 10.0   # a bound on every wait: a broken listener fails the test instead of hanging it


class Recorder(ConsumerRebalanceListener):
    """A sync listener, as the worker is: records where each callback ran; `revoked` waits for
    `go` (set by a task on the loop, which must therefore keep running meanwhile)."""

    def __init__(self):
        self.calls: list = []
        self.go = threading.Event()
        self.fail: BaseException | None = None

    def on_partitions_revoked(self, revoked):
        self.calls.append(("revoked", sorted(revoked), threading.current_thread()))
        if not self.go.wait(WAIT):
            raise TimeoutError("the loop did not run while the callback waited")
        if self.fail is not None:
            raise self.fail
        return len(revoked)

    def on_partitions_assigned(self, assigned):
        self.calls.append(("assigned", sorted(assigned), threading.current_thread()))


@pytest.fixture
def net():
    selector = NetworkSelector()
    selector.start()   # as KafkaConsumer does: the loop on an IO thread of its own
    yield selector
    selector.close()


def test_kafka_python_awaits_its_callbacks_as_coroutines():
    listener = OffLoopListener(Recorder(), NetworkSelector())
    assert isinstance(listener, AsyncConsumerRebalanceListener)
    # what kafka/coordinator/consumer.py `_invoke_rebalance_listener_async` asks before awaiting
    for name in ("on_partitions_revoked", "on_partitions_assigned", "on_partitions_lost"):
        assert inspect.iscoroutinefunction(getattr(listener, name)), name


def test_the_loop_runs_on_while_a_callback_runs_in_a_thread_of_its_own(net):
    recorder = Recorder()
    listener = OffLoopListener(recorder, net)
    loop_threads = []

    async def heartbeat():   # stands for kafka-python's heartbeat task: it must run during the callback
        loop_threads.append(threading.current_thread())
        recorder.go.set()

    async def join():   # kafka-python's join awaiting the listener (`_on_join_prepare_async`)
        loop_threads.append(threading.current_thread())
        net.call_soon(heartbeat)
        return await listener.on_partitions_revoked(TPS)

    assert net.run(join) == 2
    [(_, partitions, ran_on)] = recorder.calls
    assert partitions == sorted(TPS)
    assert loop_threads[0] is loop_threads[1] is net._io_thread
    assert ran_on not in (net._io_thread, threading.current_thread())


def test_a_callbacks_exception_reaches_the_coroutine_that_awaits_it(net):
    recorder = Recorder()
    recorder.go.set()
    recorder.fail = ValueError("restoring failed")

    async def join():
        return await OffLoopListener(recorder, net).on_partitions_revoked(TPS)

    with pytest.raises(ValueError, match="restoring failed"):
        net.run(join)


def test_lost_partitions_go_to_the_listeners_on_partitions_lost(net):
    recorder = Recorder()
    recorder.go.set()

    async def lose():
        await OffLoopListener(recorder, net).on_partitions_lost(TPS)

    net.run(lose)
    assert [call[:2] for call in recorder.calls] == [("revoked", sorted(TPS))]   # the sync default delegates


def test_a_callback_that_ends_after_the_loop_stopped_is_only_logged(caplog):
    selector = NetworkSelector()
    recorder = Recorder()
    done = OffLoopListener(recorder, selector).in_thread(recorder.on_partitions_revoked, TPS)
    [thread] = [t for t in threading.enumerate() if t.name == "rebalance-on_partitions_revoked"]
    selector.close()   # e.g. a consumer closed meanwhile: nobody awaits `done` any more
    recorder.go.set()
    thread.join(WAIT)
    assert not thread.is_alive() and not done.is_done
    assert "finished after the Kafka client's event loop stopped" in caplog.text


def test_only_kafka_pythons_consumer_gets_the_listener_off_its_loop():
    recorder = Recorder()
    consumer = FakeConsumer("events", {0: []}, [])
    assert for_consumer(consumer, recorder) is recorder   # librdkafka's consumer and the tests' stand-in
    assert for_consumer(consumer, None) is None

    class KafkaPythonLike:
        _net = NetworkSelector()

    wrapped = for_consumer(KafkaPythonLike(), recorder)
    assert isinstance(wrapped, OffLoopListener) and wrapped.listener is recorder
    assert wrapped.net is KafkaPythonLike._net


def _kafka_python_warns_of(listener_class) -> list:
    """What kafka-python 3.0.12's own timing of a listener logs for one call of `listener_class`'s
    `on_partitions_assigned`, through its logger and `OffLoopNote` as the worker sets them up (the
    threshold lowered so that a quick call is "slow")."""
    import asyncio
    import logging
    from types import SimpleNamespace

    from kafka.coordinator.consumer import ConsumerCoordinator

    from stream.rebalance_listener import OffLoopNote

    coordinator = SimpleNamespace(_subscription=SimpleNamespace(rebalance_listener=listener_class()),
                                  group_id="g", _REBALANCE_LISTENER_WARN_SECS=-1.0)
    logger = logging.getLogger("kafka.coordinator.consumer")
    seen: list = []
    handler = logging.Handler()
    handler.emit = seen.append
    note = OffLoopNote()
    logger.addHandler(handler)
    logger.addFilter(note)
    try:
        asyncio.new_event_loop().run_until_complete(
            ConsumerCoordinator._invoke_rebalance_listener_async(coordinator, "on_partitions_assigned", set()))
    finally:
        logger.removeFilter(note)
        logger.removeHandler(handler)
    return [(record.levelname, record.getMessage()) for record in seen]


def test_kafka_pythons_warning_of_a_sync_listener_is_said_right_for_ours_and_kept_for_others():
    """kafka-python says any listener over 1 s blocks its event loop and heartbeats; ours does not
    (it runs the callback in a thread): an INFO line with the time instead. Another's is kept."""
    import logging

    class OffLoopListener:   # named as ours: kafka-python names the listener by its class
        def on_partitions_assigned(self, assigned):
            return None

    class Blocking(OffLoopListener):
        pass

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        [(level_name, text)] = _kafka_python_warns_of(OffLoopListener)
        assert level_name == "INFO" and "in a thread of its own: heartbeats went on" in text, text
        assert text.startswith("rebalance callback on_partitions_assigned for group g took ")
        [(level_name, text)] = _kafka_python_warns_of(Blocking)
        assert level_name == "WARNING" and "Sync listeners block the consumer event loop" in text
        root.setLevel(logging.WARNING)   # --log-level WARNING: the INFO line is not shown
        assert _kafka_python_warns_of(OffLoopListener) == []
    finally:
        root.setLevel(level)
