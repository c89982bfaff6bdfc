"""How long the loop holds the GIL before a waiting thread takes it (`sys.setswitchinterval`).

A worker is one Python process: its main loop and the Kafka client's threads share one GIL. A
thread that waits for it longer than the switch interval makes the holder drop it. kafka-python
runs its network in Python threads (the producer's sender, the consumer's IO loop). At CPython's
default of 5 ms they took the GIL from the busy loop in the middle of events, and the loop waited
for their Python work and came back to a colder cache. At 50 ms they run mostly when the loop lets
go of the GIL anyway (a poll's wait, a socket write): its voluntary context switches fell by half
with raw features and by two thirds with shop features, where it handled 2-4% more events per
second (`benchmarks/switch_interval.py`; BENCHMARKS.md, *Analysis*, "Issue 21, 2026-12-07 (stop
51)"). A thread waits at most one interval for its turn (kafka-python heartbeats every 2 s against
a 10 s session timeout).

A worker that serves the scoring API needs the opposite: a request crosses four threads, each
crossing waits up to one interval, so it runs at 1 ms. A librdkafka worker has no network thread
in Python and keeps Python's 5 ms. `--switch-interval` overrides all three. At most 0.2 s: a
metrics scrape or a health check waits up to a few intervals while the loop works (at 1 s, 6-8 s:
past the compose file's health-check timeout).

>>> interval_for(0.0, serving=False), interval_for(0.0, serving=True), interval_for(0.02, serving=True)
(0.05, 0.001, 0.02)
>>> interval_for(0.0, serving=False, client="confluent")
0.005
"""

from __future__ import annotations

#: A kafka-python worker that only streams: its client's threads wait for the loop's own pauses.
STREAMING = 0.05
#: A worker that serves the scoring API: a request's four thread crossings wait at most this each.
SERVING = 0.001
#: Python's own, for a librdkafka worker that does not serve (its network threads are not Python's).
PYTHON_DEFAULT = 0.005
#: The longest interval accepted: a thread may wait a few of them for the GIL (a scrape, a health check).
MAX_SECONDS = 0.2


def interval_for(setting: float, serving: bool, client: str = "kafka-python") -> float:
    """The interval `--switch-interval setting` means (0: automatic) for a worker on `client`
    (`--kafka-client`) that serves the scoring API or not."""
    if setting:
        return setting
    if serving:
        return SERVING
    return STREAMING if client == "kafka-python" else PYTHON_DEFAULT
