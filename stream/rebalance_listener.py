"""The worker's rebalance callbacks, run where they do not stop kafka-python's heartbeats.

kafka-python 3.0.12 calls a sync `ConsumerRebalanceListener` inline on the IO thread of its
consumer (``kafka/coordinator/consumer.py`` `_invoke_rebalance_listener_async`), the thread
whose event loop also sends the heartbeats. The worker's callbacks checkpoint every revoked
partition and restore every assigned one: seconds each for a large state (a 237k-open-prediction
checkpoint took 2.8 s to load). Past the session timeout, the broker drops the member: after an
assignment, the group rebalances again, and the member, dropped again after its next restore,
never settles (RELIABILITY.md, "Rebalance callbacks off the IO loop"); during a revocation, the
broker completes the rebalance without it, and another member may restore a partition whose
checkpoint is still being written.

`OffLoopListener` is an `AsyncConsumerRebalanceListener`: kafka-python awaits its coroutines,
each of which runs the worker's sync callback in a thread of its own and awaits a
`kafka.future.Future` that the thread resolves through the loop
(``NetworkSelector.call_soon_threadsafe``). The loop stays free meanwhile: heartbeats flow.
Nothing else changes: kafka-python still awaits the callback before it sends JoinGroup (revoked)
or returns the assignment to `poll` (assigned), so the worker's thread stays blocked in
``consumer.poll`` for as long as before, and a revoked partition is checkpointed, its offset
commit queued, before this member rejoins. librdkafka heartbeats from a thread of its own and
runs the callbacks inside ``consume()``: its consumer gets the worker's listener as it is
(`for_consumer`).

kafka-python warns of any callback over 1 s that "Sync listeners block the consumer event loop
(including heartbeats)", whatever ran it; for `OffLoopListener` that is not so, and a large
restore printed it at every start. `OffLoopNote` (a logging filter) rewrites that warning, for
this listener only, into an INFO line that says how long the callback took and where it ran.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable

from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.future import Future

log = logging.getLogger(__name__)


class OffLoopListener(AsyncConsumerRebalanceListener):
    """`listener`'s callbacks, each run in a new thread while `net` (the consumer's event loop)
    awaits it."""

    def __init__(self, listener, net):
        self.listener = listener
        self.net = net

    async def on_partitions_revoked(self, revoked):
        return await self.in_thread(self.listener.on_partitions_revoked, revoked)

    async def on_partitions_assigned(self, assigned):
        return await self.in_thread(self.listener.on_partitions_assigned, assigned)

    async def on_partitions_lost(self, lost):
        return await self.in_thread(self.listener.on_partitions_lost, lost)

    def in_thread(self, method: Callable[[Any], Any], partitions) -> Future:
        """A Future of `method(partitions)` run in a new thread, resolved on the loop's thread (its
        waiters resume there), with the method's result or the exception it raised."""
        done = Future()

        def run() -> None:
            try:
                result, error = method(partitions), None
            except BaseException as exc:  # the awaiting coroutine raises it: kafka-python logs it, poll raises
                result, error = None, exc

            async def settle():
                if error is None:
                    done.success(result)
                else:
                    done.failure(error)

            try:
                self.net.call_soon_threadsafe(settle)
            except Exception as exc:  # the loop stopped or crashed meanwhile: no one awaits the callback any more
                log.warning("rebalance callback %s finished after the Kafka client's event loop stopped (%s: %s)",
                            getattr(method, "__name__", method), type(exc).__name__, exc)

        threading.Thread(target=run, name=f"rebalance-{getattr(method, '__name__', 'callback')}", daemon=True).start()
        return done


def for_consumer(consumer, listener):
    """The listener to subscribe `consumer` with: `OffLoopListener` around `listener` for
    kafka-python's consumer (it has an event loop, ``_net``, that other threads can schedule on),
    `listener` itself for any other (librdkafka's, a test's stand-in)."""
    net = getattr(consumer, "_net", None)
    if listener is None or not callable(getattr(net, "call_soon_threadsafe", None)):
        return listener
    return OffLoopListener(listener, net)


_SYNC_WARNING = re.compile(r"Rebalance listener OffLoopListener\.(\w+) for group (.*) took ([0-9.]+)s\. Sync listeners")


class OffLoopNote(logging.Filter):
    """kafka-python's warning of a slow rebalance listener, said right for `OffLoopListener`
    (module docstring): an INFO line, the time kept, shown as the worker's own INFO lines are.
    Others' pass unchanged.

    >>> record = logging.LogRecord("kafka.coordinator.consumer", logging.WARNING, "", 0,
    ...     "Rebalance listener %s.%s for group %s took %.3fs. Sync listeners block the consumer event loop",
    ...     ("OffLoopListener", "on_partitions_assigned", "g", 2.5), None)
    >>> _ = OffLoopNote().filter(record)
    >>> record.levelname
    'INFO'
    >>> record.getMessage()
    'rebalance callback on_partitions_assigned for group g took 2.5 s, in a thread of its own: heartbeats went on'
    """

    def filter(self, record: logging.LogRecord) -> bool:
        found = _SYNC_WARNING.match(record.getMessage())
        if found is not None:
            record.msg = "rebalance callback %s for group %s took %.1f s, in a thread of its own: heartbeats went on"
            record.args = (found.group(1), found.group(2), float(found.group(3)))
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)   # the worker's --log-level, as its own lines
        return True
