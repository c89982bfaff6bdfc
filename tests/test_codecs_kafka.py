"""Producers compress as they please (`compression.type`): a worker reads every codec Kafka has, on both
clients, and a codec it cannot read costs the batches that use it, dead-lettered with the reason, not
the worker (kafka-python without lz4's library died at the first lz4 batch, at every restart)."""

from __future__ import annotations

import subprocess

import msgspec
import pytest
from kafka import KafkaProducer

from conftest import WORKER_ENV, worker_command
from helpers import read_topic
from shopstream.generator import generate
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.outputs import REASON_HEADER

pytestmark = pytest.mark.kafka
CODECS = ("gzip", "snappy", "lz4", "zstd", None)
PER_CODEC = 400


def fill(kafka: str, topic: str) -> int:
    """`PER_CODEC` events per codec, in codec order (offsets 0-399 gzip, ..., 1600-1999 uncompressed)."""
    events = list(generate(PER_CODEC * len(CODECS), seed=305))
    encode = msgspec.json.Encoder().encode
    for i, codec in enumerate(CODECS):
        producer = KafkaProducer(bootstrap_servers=kafka, compression_type=codec, acks="all")
        for record in events[i * PER_CODEC:(i + 1) * PER_CODEC]:
            producer.send(topic, key=str(record["user_id"]).encode(), value=encode(record))
        producer.flush()
        producer.close()
    return len(events)


def run_worker(kafka, topic, checkpoints, client, env=WORKER_ENV):
    done = subprocess.run(worker_command(kafka, topic, checkpoints, "--until-idle", "3", "--metrics-port", "-1",
                                         "--group", f"g-{checkpoints.name}", "--kafka-client", client),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [state] = DirectoryCheckpointStore(checkpoints).load_all().values()
    return state, done.stderr


def test_every_codec_is_read_and_one_without_its_library_costs_its_batches_not_the_worker(kafka, new_topic,
                                                                                          tmp_path):
    topic = new_topic(1)
    sent = fill(kafka, topic)
    for client in ("kafka-python", "confluent"):
        state, _ = run_worker(kafka, topic, tmp_path / f"all-{client}", client)
        assert (state.next_offset, state.engine.counts["consumed"], state.dead_lettered) == (sent, sent, 0), client

    # lz4's library missing, as in an environment installed without shopstream's dependencies
    hidden = tmp_path / "hidden"
    (hidden / "lz4").mkdir(parents=True)
    (hidden / "lz4" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**WORKER_ENV, "PYTHONPATH": f"{hidden}:{WORKER_ENV.get('PYTHONPATH', '')}".rstrip(":")}
    state, log = run_worker(kafka, topic, tmp_path / "no-lz4", "kafka-python", env)
    lz4 = range(2 * PER_CODEC, 3 * PER_CODEC)
    assert (state.next_offset, state.dead_lettered, state.engine.counts["consumed"]) == \
           (sent, len(lz4), sent - len(lz4))
    letters = read_topic(kafka, f"{topic}-dlq")
    assert letters, log[-3000:]
    reasons = {dict(letter.headers)[REASON_HEADER].decode() for letter in letters}
    assert all("cannot be decompressed (lz4): UnsupportedCodecError: Libraries for lz4 compression codec not found"
               in reason for reason in reasons), reasons
    covered = set()
    for letter in letters:
        headers = dict(letter.headers)
        first, last = int(headers["shopstream.source.offset"]), int(headers["shopstream.source.last_offset"])
        covered |= set(range(first, last + 1))
    assert covered == set(lz4)
    assert "cannot be parsed" in log
    assert "kafka-python finds no library for lz4 here: batches a producer compressed with lz4 are dead-lettered" in log
