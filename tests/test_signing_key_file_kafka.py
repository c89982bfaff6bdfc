"""A worker given its signing key by --signing-key-file (no SHOPSTREAM_SIGNING_KEY at all) signs its
checkpoints with that key: the same worker refuses them under another key, and a key never
shows in its output."""

from __future__ import annotations

import subprocess

import pytest
from conftest import WORKER_ENV, worker_command
from helpers import send_records

from shopstream.generator import generate
from shopstream.signing import KEY_ENV

pytestmark = pytest.mark.kafka

KEY = "file-k3y-of-this-test"


def test_a_worker_keyed_by_file_signs_its_checkpoints_with_that_key(kafka, new_topic, tmp_path):
    topic = new_topic(1)
    send_records(kafka, topic, generate(1500, seed=94))
    key_file, other_file = tmp_path / "signing.key", tmp_path / "other.key"
    key_file.write_text(KEY + "\n")
    other_file.write_text("another key\n")
    env = {k: v for k, v in WORKER_ENV.items() if k != KEY_ENV}
    checkpoints = tmp_path / "ckpt"
    command = worker_command(kafka, topic, checkpoints, "--until-idle", "3", "--metrics-port", "-1")
    first = subprocess.run([*command, "--signing-key-file", str(key_file)], env=env, capture_output=True,
                           text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-2000:]
    assert list(checkpoints.glob("*.ckpt"))
    again = subprocess.run([*command, "--signing-key-file", str(key_file)], env=env, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    refused = subprocess.run([*command, "--signing-key-file", str(other_file)], env=env, capture_output=True,
                             text=True, timeout=180)
    # signed (the environment holds no key): another key finds its HMAC wrong, no key refuses it
    assert refused.returncode == 2 and "HMAC does not match" in refused.stderr, refused.stderr[-2000:]
    assert KEY not in first.stdout + first.stderr + again.stderr + refused.stderr
