"""Chaos: events stream in while a driver kill -9s random workers at random moments,
restarts them, and adds and removes a worker to force rebalances. Afterwards every
partition's final state equals one uninterrupted run over the same events: no event
learned twice, none skipped, same predictions on a probe set.

CI runs a small version. The full campaign is the same test with bigger numbers:

    SHOPSTREAM_CHAOS_EVENTS=200000 SHOPSTREAM_CHAOS_KILLS=20 \\
        python -m pytest tests/test_chaos_kafka.py -s -p no:cacheprovider
"""

import os
import random
import signal
import subprocess
import threading
import time

import msgspec
import pytest

from conftest import WORKER_ENV, free_port, worker_command
from helpers import (Scraper, assert_same_engine, checkpointed_engines, paced, read_topic, reference_engines,
                     send_records)
from shopstream.events import decode_event
from shopstream.generator import generate

pytestmark = pytest.mark.kafka
EVENTS = int(os.environ.get("SHOPSTREAM_CHAOS_EVENTS", "40000"))
KILLS = int(os.environ.get("SHOPSTREAM_CHAOS_KILLS", "5"))
RATE = float(os.environ.get("SHOPSTREAM_CHAOS_RATE", "2000"))
encode = msgspec.json.Encoder().encode


@pytest.mark.parametrize("store", ["dir", "kafka"])
def test_chaos_kill_9_and_rebalances(kafka, new_topic, tmp_path, store):
    rng = random.Random(7 if store == "dir" else 8)
    topic = new_topic(4)
    records = list(generate(EVENTS, seed=121))
    checkpoints = tmp_path / "ckpt"
    command = worker_command(kafka, topic, checkpoints, "--until-idle", "10",
                             "--checkpoint-every", "1000", "--checkpoint-seconds", "2",
                             "--checkpoint-store", store, "--checkpoint-topic", f"{topic}-ckpt",
                             # forked checkpoints with the Kafka store; with the directory, the default:
                             # pickled in the loop, acknowledged, fsynced and renamed by a thread
                             "--checkpoint-background", "on" if store == "kafka" else "auto")
    scraper = Scraper().__enter__()  # every worker's /metrics scraped without pause

    def start():
        port = scraper.add(free_port())
        return subprocess.Popen(command + ["--metrics-port", str(port)], env=WORKER_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    feeder = threading.Thread(target=lambda: send_records(kafka, topic, paced(records, RATE)), daemon=True)
    feeder.start()
    workers = [start(), start()]
    kills = rebalances = 0
    extra = None
    started = time.time()
    while kills < KILLS:
        time.sleep(rng.uniform(1.0, 4.0))
        victim = rng.randrange(len(workers))
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        workers[victim] = start()
        kills += 1
        if kills % 3 == 1 and extra is None:          # a third worker joins ...
            extra, rebalances = start(), rebalances + 1
        elif extra is not None and kills % 3 == 0:   # ... and leaves cleanly
            extra.send_signal(signal.SIGTERM)
            extra.wait(timeout=120)
            extra, rebalances = None, rebalances + 1
    feeder.join()
    chaos_seconds = time.time() - started
    try:
        for worker in workers + ([extra] if extra else []):
            assert worker.wait(timeout=600) == 0
    finally:
        scraper.__exit__()
    assert scraper.scrapes > 10  # scraped throughout (hundreds to thousands; fewer on a loaded machine)

    where = {"checkpoints": checkpoints} if store == "dir" else {"kafka": kafka, "checkpoint_topic": f"{topic}-ckpt",
                                                                   "group": f"g-{topic}"}
    actual = checkpointed_engines(**where)
    expected = reference_engines(kafka, topic)
    probes = [expected[0].features.transform(decode_event(encode(r))) for r in records[-300:]]
    sizes = {}
    for record in read_topic(kafka, topic):
        sizes[record.partition] = sizes.get(record.partition, 0) + 1
    print(f"\nchaos ({store} store): {EVENTS} events at {RATE:.0f}/s, {kills} kill -9, {rebalances} joins/leaves "
          f"in {chaos_seconds:.0f} s, {scraper.scrapes} scrapes")
    for partition in sorted(expected):
        engine = actual[partition]
        print(f"  partition {partition}: {sizes[partition]} messages, consumed {engine.counts['consumed']}, "
              f"resolved {engine.counts['resolved']}, learned {engine.counts['learned']}")
        assert engine.counts["consumed"] == sizes[partition], "an event skipped or consumed twice"
        assert engine.counts["learned"] == engine.counts["resolved"] == expected[partition].counts["resolved"]
        assert_same_engine(engine, expected[partition], probes)
    assert sorted(actual) == [0, 1, 2, 3] and kills == KILLS
