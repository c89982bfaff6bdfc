"""Helpers for the Kafka tests: send, read back, and the uninterrupted reference run."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import msgspec
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from kafka_tools import read_topic  # noqa: F401 (the tests import it from here)
from shopstream.engine import Engine
from shopstream.events import InvalidEvent, decode_event
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.checkpointing.kafka_store import KafkaCheckpointStore
from stream.outputs import decode_predictions
from stream.served import decode_served, served_header


class NotUtf8(str):
    """A header key that kafka-python writes as bytes that are not UTF-8 (as a client in another language
    may): kafka-python cannot parse the batch that holds it (a `CorruptRecordError` at every poll)."""

    def encode(self, *args, **kwargs):
        return b"\xff\xfe-key"


def send_unreadable(bootstrap: str, topic: str, key: Optional[bytes] = None) -> int:
    """One record in a batch of its own that kafka-python cannot read; its offset (`key`: a compacted
    topic takes no record without one)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        return producer.send(topic, key=key, value=b"x", headers=[(NotUtf8("k"), b"v")]).get(timeout=30).offset
    finally:
        producer.close()


def send(bootstrap: str, topic: str, messages, partition=None) -> int:
    """messages: (key, value) or (key, value, timestamp_ms) tuples, sent in order.

    Every send is checked: a batch the broker never took (expired under a loaded CI
    machine, say) fails the test here, naming why, not later as a puzzling count."""
    # One request in flight: a retried batch can never land behind a later one (order is what
    # most tests compare), and pipelined idempotent batches cannot fail out of sequence.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=262_144,
                             max_in_flight_requests_per_connection=1)
    futures = []
    for key, value, *timestamp in messages:
        futures.append(producer.send(topic, key=key, value=value, partition=partition,
                                     timestamp_ms=timestamp[0] if timestamp else None))
    producer.flush()
    producer.close()
    failed = [f.exception for f in futures if f.failed()]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(futures)} records were not delivered to {topic}: "
                             f"first error {type(failed[0]).__name__}: {failed[0]}")
    return len(futures)


def send_records(bootstrap: str, topic: str, records, partition=None) -> int:
    encode = msgspec.json.Encoder().encode
    return send(bootstrap, topic, ((str(r["user_id"]).encode(), encode(r)) for r in records), partition)


def reference_engines(bootstrap: str, topic: str, model: str = "logreg", features: str = "shop",
                      make=None, **engine_options) -> dict[int, Engine]:
    """One uninterrupted engine per partition over that partition's messages, in order;
    `make()` builds each partition's engine (default: a fresh `model` on `features`)."""
    engines: dict[int, Engine] = {}
    for record in read_topic(bootstrap, topic):
        engine = engines.get(record.partition)
        if engine is None:
            engine = engines[record.partition] = make() if make else Engine.fresh(model, features,
                                                                                   **engine_options)
        try:
            event = decode_event(record.value)
            carried = served_header(record.headers) if record.headers else None
            served = decode_served(carried) if carried is not None else None
        except InvalidEvent:
            continue
        engine.process(event, record.offset, served)   # a score answered when written: as it was served
    return engines


def checkpointed_engines(checkpoints: Path | None = None, kafka: str | None = None,
                         checkpoint_topic: str | None = None, group: str = "") -> dict[int, Engine]:
    """Final engines by partition, from a checkpoint directory or a checkpoint topic
    (whose keys are scoped by the workers' consumer group)."""
    if checkpoint_topic:
        store = KafkaCheckpointStore({"bootstrap_servers": [kafka]}, checkpoint_topic, group=group)
        states = store.load_all()
        store.close()
    else:
        states = DirectoryCheckpointStore(checkpoints).load_all()
    return {partition: state.engine for (_, partition), state in states.items()}


def probe_predictions(engine: Engine, probes) -> list:
    return [engine.champion_slot.model.predict_proba_one(x) for x in probes]


def assert_same_engine(actual: Engine, expected: Engine, probes) -> None:
    """Same events learned once each: equal counts, equal scores, equal predictions."""
    assert actual.counts == expected.counts
    assert actual.joiner.counts == expected.joiner.counts
    assert actual.champion_slot.scores.cumulative.counts() == expected.champion_slot.scores.cumulative.counts()
    assert actual.champion_slot.scores.cumulative.values() == expected.champion_slot.scores.cumulative.values()
    assert probe_predictions(actual, probes) == probe_predictions(expected, probes)


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll `predicate` until true (return the time) or raise TimeoutError naming `what`.
    A predicate that raises OSError (a server not up yet) counts as false."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return time.time()
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def readyz(port: int):
    """HTTP status of a worker's /readyz, or None when nothing answers."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def scrape(port: int) -> dict:
    """A worker's /metrics as {(name, sorted labels): value}, or {} when nothing answers."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class Scraper:
    """Scrapes every registered worker's /metrics without pause (a 1 ms breath) in a
    thread, the way a too-eager Prometheus would: a scrape must never change a result."""

    def __init__(self):
        import threading

        self.ports: list[int] = []
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def add(self, port: int) -> int:
        self.ports.append(port)
        return port

    def _run(self) -> None:
        while not self._stop.is_set():
            for port in list(self.ports):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                    self.scrapes += 1
                except (OSError, http.client.HTTPException):
                    pass  # not up yet, or killed mid-answer
            self._stop.wait(0.001)


def paced(records, rate: float):
    """Yield records at `rate` per second (a live stream for chaos tests)."""
    started = time.monotonic()
    for number, record in enumerate(records):
        ahead = number / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
        yield record


def read_predictions(bootstrap: str, topic: str, expected: int | None = None, timeout: float = 30.0) -> list[dict]:
    """Every prediction published to `topic`, in either format (`decode_predictions`), as
    dicts in (source partition, offset) order; waits until `expected` predictions arrived."""
    deadline = time.time() + timeout
    while True:
        records = read_topic(bootstrap, topic, timeout=max(1.0, deadline - time.time()))
        found = [msgspec.structs.asdict(p) for r in records for p in decode_predictions(r)]
        if expected is None or len(found) >= expected or time.time() >= deadline:
            return sorted(found, key=lambda p: (p["partition"], p["offset"]))
        time.sleep(0.2)
