"""With SHOPSTREAM_SIGNING_KEY set, forged or unsigned pickles are refused before loading."""

import json

import pytest

from offline.bootstrap import bootstrap
from shopstream.artifacts import _canonical, load_artifact, save_artifact
from shopstream.engine import Engine
from shopstream.generator import generate, write_jsonl
from shopstream.signing import KEY_ENV, SignatureError, sign, verify
from stream.checkpointing.format import CheckpointError, decode_state, encode_state
from stream.checkpointing.stores import DirectoryCheckpointStore
from stream.partition import Partition as PartitionState


def test_checkpoints_signed_verified_and_lineage_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    store = DirectoryCheckpointStore(tmp_path)
    state = PartitionState("events", 3, Engine.fresh("logreg", "shop"), next_offset=10, started_from="fresh")
    store.save(state)
    path = store.path("events", 3)
    first_id = state.checkpoint_id
    state.next_offset = 20
    store.save(state)
    loaded = store.load("events", 3)
    assert loaded.next_offset == 20 and loaded.parent_checkpoint == first_id
    assert loaded.started_from == "fresh" and loaded.versions["river"] == "0.26.1"
    assert b"hmac-sha256:" in path.read_bytes()[:100]

    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    with pytest.raises(SignatureError, match="HMAC does not match"):
        decode_state(bytes(data), "forged")
    monkeypatch.setenv(KEY_ENV, "another key")
    with pytest.raises(SignatureError, match="HMAC does not match"):
        store.load("events", 3)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(SignatureError, match="signed checkpoint, but SHOPSTREAM_SIGNING_KEY is not set"):
        store.load("events", 3)
    unsigned = encode_state(state)   # written without a key: a sha256 only
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with pytest.raises(SignatureError, match="not signed"):
        decode_state(unsigned, "unsigned")
    monkeypatch.delenv(KEY_ENV)
    broken = bytearray(unsigned)
    broken[-5] ^= 1
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        decode_state(bytes(broken), "torn")


def test_artifacts_signed_and_refused_when_forged(tmp_path, monkeypatch):
    history = tmp_path / "h.jsonl"
    write_jsonl(generate(3000, seed=5), history)
    monkeypatch.setenv(KEY_ENV, "s3cret")
    bootstrap(history, tmp_path / "out", models=["logreg"], progress=False)
    assert load_artifact(tmp_path / "out").meta["hmac_sha256"]
    monkeypatch.setenv(KEY_ENV, "wrong")
    with pytest.raises(SignatureError, match="HMAC does not match"):
        load_artifact(tmp_path / "out")
    monkeypatch.delenv(KEY_ENV)
    bootstrap(history, tmp_path / "plain", models=["logreg"], progress=False)
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with pytest.raises(SignatureError, match="not signed"):
        load_artifact(tmp_path / "plain")


@pytest.mark.parametrize("tag", [12345, {"hmac": "x"}, ["ab"], True])
def test_tag_that_is_not_a_string_is_refused(tmp_path, tag):
    """A forged HMAC of another JSON type gave AttributeError ('int' object has no attribute 'isascii')."""
    with pytest.raises(SignatureError, match=rf"x: HMAC is not a string \({type(tag).__name__}\): forged"):
        verify(b"payload", tag, b"k", "x")
    directory = save_artifact(tmp_path, "logreg", {"w": 1}, None, {}, key=b"k")
    meta = json.loads((directory / "meta.json").read_text())
    meta["meta_hmac_sha256"] = tag
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SignatureError, match=r"meta.json: HMAC is not a string"):
        load_artifact(directory, key=b"k")
    meta["hmac_sha256"] = tag   # the pickle's: the metadata re-signed, so that its own HMAC passes
    meta["meta_hmac_sha256"] = sign(_canonical(meta), b"k")
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SignatureError, match=r"model.pkl: HMAC is not a string"):
        load_artifact(directory, key=b"k")
