"""`shopstream produce`: keyed by user, invalid rows counted, everything sent arrives."""

import json
import subprocess
import sys
from collections import defaultdict

import pytest

from helpers import read_topic
from shopstream.generator import generate, write_jsonl

pytestmark = pytest.mark.kafka


def test_produce_file_validated_keyed_by_user(kafka, new_topic, tmp_path):
    topic = new_topic(3)
    path = tmp_path / "events.jsonl"
    write_jsonl(generate(3000, seed=61), path)
    with open(path, "a") as out:
        out.write('{"event_type": "view"}\n')
        out.write('{"event_time": "2026-01-01T00:00:00Z", "event_type": "view", "product_id": "p", '
                  '"user_id": "u", "user_session": "s", "price": -1}\n')
    result = subprocess.run([sys.executable, "-m", "cli", "produce", "--bootstrap-servers", kafka,
                             "--topic", topic, "--file", str(path), "--validate", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sent 3000 events" in result.stdout and "rejected 2" in result.stdout
    assert "price: must be a finite number in 0..1e+09" in result.stderr

    records = read_topic(kafka, topic, expected=3000)
    assert len(records) == 3000
    partitions_of_user = defaultdict(set)
    for record in records:
        user = json.loads(record.value)["user_id"]
        assert record.key == user.encode()
        partitions_of_user[user].add(record.partition)
    assert all(len(p) == 1 for p in partitions_of_user.values())  # a user's events stay together
    assert len({r.partition for r in records}) == 3


def test_produce_from_generator_at_a_rate(kafka, new_topic):
    topic = new_topic(1)
    result = subprocess.run([sys.executable, "-m", "cli", "produce", "--bootstrap-servers", kafka,
                             "--topic", topic, "--events", "600", "--rate", "1000", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sent 600 events" in result.stdout
    records = read_topic(kafka, topic, expected=600)
    spread_ms = records[-1].timestamp - records[0].timestamp
    assert spread_ms >= 400  # paced: 600 events at 1000/s take about 0.6 s, not a burst
