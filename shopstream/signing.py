"""Authenticate pickles before loading them: HMAC-SHA256 with a key from the environment.

Unpickling runs code, so a file that could have been written by someone else must be
proved ours first. With SHOPSTREAM_SIGNING_KEY set, artifacts and checkpoints are
written with an HMAC of their bytes and refused on load unless the HMAC matches; a
plain sha256 only catches accidents (truncation, torn writes), not forgery.

>>> tag = sign(b"model bytes", b"k")
>>> verify(b"model bytes", tag, b"k", "x")
>>> verify(b"model bytez", tag, b"k", "x")
Traceback (most recent call last):
...
shopstream.signing.SignatureError: x: HMAC does not match: forged or modified, refusing to load it
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional

KEY_ENV = "SHOPSTREAM_SIGNING_KEY"


class SignatureError(RuntimeError):
    """A pickle whose origin cannot be proved."""


def signing_key() -> Optional[bytes]:
    key = os.environ.get(KEY_ENV)
    return key.encode() if key else None


def sign(payload: bytes, key: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, tag: Optional[str], key: bytes, what: str) -> None:
    if not tag:
        raise SignatureError(f"{what}: not signed, but {KEY_ENV} is set: refusing to load it")
    if not hmac.compare_digest(sign(payload, key), tag):
        raise SignatureError(f"{what}: HMAC does not match: forged or modified, refusing to load it")
