"""The Python side of scripts/kafka.sh, shared by tests/ and benchmarks/ (neither ships in
the package): does a broker answer, start the project's broker when none does, read a
topic back. Import it with scripts/ on sys.path (tests/conftest.py and
benchmarks/common.py put it there)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

KAFKA_SH = Path(__file__).resolve().parent / "kafka.sh"


def kafka_answers(bootstrap: str) -> bool:
    """True when a broker at host:port accepts a connection and an admin client."""
    host, port = bootstrap.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000).close()
        return True
    except (OSError, KafkaError):
        return False


def ensure_kafka(bootstrap: str) -> None:
    """Start the project's broker (scripts/kafka.sh) on bootstrap's port if nothing answers
    there. Never stops it."""
    if kafka_answers(bootstrap):
        return
    port = bootstrap.rsplit(":", 1)[1]
    subprocess.run(["bash", str(KAFKA_SH), "start"], check=True, env={**os.environ, "KAFKA_PORT": port})
    if not kafka_answers(bootstrap):
        raise RuntimeError(f"no Kafka broker answers on {bootstrap}")


def read_topic(bootstrap: str, topic: str, expected: int | None = None, timeout: float = 30.0) -> list:
    """Every record of every partition of `topic` (kafka-python ConsumerRecords, each
    partition in offset order), from the beginning to the end offsets when called, or on
    until `expected` records have arrived; whatever arrived when `timeout` seconds pass."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        deadline = time.time() + timeout
        partitions = None
        while partitions is None and time.time() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list = []
        while time.time() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=50_000).values():
                records.extend(batch)
            done = all(consumer.position(tp) >= ends[tp] for tp in tps)
            if done and (expected is None or len(records) >= expected):
                break
            if done and expected is not None:
                ends = consumer.end_offsets(tps)
        return records
    finally:
        consumer.close()
