"""Hostile input: 10k malformed messages of many kinds among good events. The worker
survives, dead-letters every bad one with a reason, learns every good one exactly as a
clean run would, and its memory stays bounded."""

import random
import time
from collections import Counter

import msgspec
import pytest

from conftest import WORKER_ENV, LoggedProcess, worker_command
from helpers import assert_same_engine, checkpointed_engines, read_topic, reference_engines, send
from shopstream.events import decode_event
from shopstream.generator import generate

pytestmark = pytest.mark.kafka
encode = msgspec.json.Encoder().encode


def malformed(rng: random.Random, good: dict) -> tuple[str, bytes]:
    """One message that is invalid by construction, and its kind."""
    kind = rng.choice(KINDS)
    body = encode(good)
    if kind == "random bytes":
        return kind, b"\x00" + rng.randbytes(rng.randrange(1, 300))
    if kind == "truncated json":
        return kind, body[:rng.randrange(1, len(body) - 1)]
    if kind == "deep nesting":
        depth = rng.randrange(1000, 10000)
        return kind, b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "huge string":
        return kind, encode({**good, "user_session": "s" * rng.randrange(70_000, 120_000)})  # over 64 KiB
    if kind == "huge number":
        return kind, body.replace(b'"price":', b'"price":1' + b"0" * rng.randrange(400, 5000) + b",\"x\":")
    if kind == "wrong type":
        field, value = rng.choice([("user_session", 1.5), ("event_type", 7), ("features", [1]), ("label", "yes"),
                                   ("price", "12.0"), ("product_id", None), ("event_time", True),
                                   ("features", {"f": {"nested": 1}})])
        return kind, encode({**good, field: value})
    if kind == "nan or infinity":
        bad = rng.choice([b"NaN", b"Infinity", b"-Infinity"])
        return kind, body.replace(b'"price":', b'"price":' + bad + b",\"x\":")
    if kind == "bad time":
        bad = rng.choice(["yesterday", "2026-13-45T99:00:00", 1.7e12, -5, "", "1e999"])
        return kind, encode({**good, "event_time": bad})
    if kind == "unknown event type":
        return kind, encode({**good, "event_type": rng.choice(["click", "VIEW", "", "purchase "])})
    if kind == "negative price":
        return kind, encode({**good, "price": -rng.random() * 100 - 0.01})
    if kind == "invalid utf-8":
        return kind, body.replace(good["brand"].encode(), b"\xc3\x28\xa0\xa1", 1)
    if kind == "empty":
        return kind, rng.choice([b"", b" ", b"\n"])
    if kind == "not an object":
        return kind, rng.choice([b"null", b"[]", b"42", b'"text"', b"true"])
    raise AssertionError(kind)


KINDS = ["random bytes", "truncated json", "deep nesting", "huge string", "huge number", "wrong type",
         "nan or infinity", "bad time", "unknown event type", "negative price", "invalid utf-8", "empty",
         "not an object"]


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_fuzz_10k_malformed_messages(kafka, new_topic, tmp_path):
    rng = random.Random(2026)
    goods = list(generate(20_000, seed=111))
    messages, kinds, bad_offsets = [], Counter(), set()
    for good in goods:
        key = str(good["user_id"]).encode()
        messages.append((key, encode(good)))
        if rng.random() < 0.1:                       # a redelivered duplicate: valid, dropped by event_id
            messages.append((key, encode(good)))
        if rng.random() < 0.1:                       # unknown fields are ignored, not an error
            messages.append((key, encode({**good, "event_id": good["event_id"] + "x", "extra": {"a": [1, 2]}})))
        while rng.random() < 0.34:
            kind, value = malformed(rng, good)
            kinds[kind] += 1
            bad_offsets.add(len(messages))
            messages.append((rng.choice([None, key]), value))
    assert len(bad_offsets) >= 10_000 and len(kinds) == len(KINDS)
    topic = new_topic(1)
    send(kafka, topic, messages)

    worker = LoggedProcess(worker_command(kafka, topic, tmp_path / "ckpt", "--until-idle", "5",
                                          "--metrics-port", "-1", "--checkpoint-every", "5000"),
                           tmp_path / "worker.log", WORKER_ENV)
    peak = 0.0
    while worker.proc.poll() is None:
        try:
            peak = max(peak, peak_rss_mb(worker.proc.pid))
        except OSError:
            break
        time.sleep(0.2)
    log = worker.finish()
    assert worker.proc.returncode == 0, log[-3000:]

    dead = read_topic(kafka, f"{topic}-dlq", expected=len(bad_offsets), timeout=120)
    dead_offsets = {int(dict(d.headers)["shopstream.source.offset"]) for d in dead}
    assert dead_offsets == bad_offsets, "exactly the malformed messages, each once"
    assert len(dead) == len(bad_offsets)
    reasons = Counter(dict(d.headers)["shopstream.reason"].decode().split(":")[1].strip() for d in dead)
    assert all(dict(d.headers)["shopstream.reason"].startswith(b"invalid event: ") for d in dead)
    print(f"\n{len(bad_offsets)} malformed messages by kind: {dict(kinds)}")
    print(f"dead-letter reasons by field: {dict(reasons)}; worker peak RSS {peak:.0f} MB")

    [engine] = checkpointed_engines(tmp_path / "ckpt").values()
    clean_topic = new_topic(1)
    send(kafka, clean_topic, [m for offset, m in enumerate(messages) if offset not in bad_offsets])
    [expected] = reference_engines(kafka, clean_topic).values()
    probes = [expected.features.transform(decode_event(encode(g))) for g in goods[-100:]]
    assert_same_engine(engine, expected, probes)
    assert engine.counts["duplicate"] > 1000
    assert peak < 700, f"worker peak RSS {peak:.0f} MB"
