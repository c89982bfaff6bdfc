"""kafka-python 3.0.12's fetcher, mended so that records it has buffered are never slept on.

``Fetcher.fetch_records`` drains the buffered records, then sends the next fetches on the client's
IO thread, then waits on the fetches in flight. A fetch response handled on the IO thread between
the drain and the send leaves its records buffered (so the partition is not fetched again) and its
future done (so it is dropped): nothing is in flight, and the answer is "idle". The consumer then
sleeps ``retry_backoff_ms`` (100 ms) before it polls again, with the records in its own buffer.
Traced in the latency row (BENCHMARKS.md, stop 47): every stop of 100-220 ms inside a measured
window was one or two such sleeps, one after another.

`mend_idle_fetch` patches one consumer's fetcher (an instance attribute, nothing global): an idle
answer while responses are buffered drains them again and returns their records. It says whether
it could; a client without these internals (another version, librdkafka's) is left as it is.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NEEDED = ("fetch_records", "fetched_records", "_completed_fetches")


def mend_idle_fetch(consumer) -> bool:
    """Mend `consumer`'s fetcher (module docstring). Returns whether it applied."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not all(hasattr(fetcher, name) for name in NEEDED):
        log.debug("fetcher left as it is: %s has no kafka-python 3.0.12 fetcher", type(consumer).__name__)
        return False
    fetch_records = fetcher.fetch_records

    def fetch_records_unless_buffered(max_records=None, update_offsets=True, timeout_ms=None):
        records, idle = fetch_records(max_records, update_offsets=update_offsets, timeout_ms=timeout_ms)
        if idle and not records and fetcher._completed_fetches:   # buffered after the drain: drain again
            records, _ = fetcher.fetched_records(max_records, update_offsets=update_offsets)
            if records:
                return records, False
        return records, idle

    fetcher.fetch_records = fetch_records_unless_buffered
    return True
