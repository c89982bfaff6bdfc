"""Authenticate pickles before loading them: HMAC-SHA256 with the command's signing key.

Unpickling runs code, so a file that could have been written by someone else must be
proved ours first. With a signing key (the setting `signing_key`: SHOPSTREAM_SIGNING_KEY,
or the file --signing-key-file names), artifacts and checkpoints are written with an HMAC
of their bytes and refused on load unless the HMAC matches; a plain sha256 only catches
accidents (truncation, torn writes), not forgery. The key is never an option on the
command line (``ps`` shows those), never in a repr, a log line or ``--help``.

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
from dataclasses import field
from typing import Any, Optional, Union

from .options import environ, secret_bytes

KEY_ENV = "SHOPSTREAM_SIGNING_KEY"
#: How a refusal names the key, which may have come from either place.
KEY_IS_SET = f"a signing key is set ({KEY_ENV} or --signing-key-file)"


class SignatureError(RuntimeError):
    """A pickle whose origin cannot be proved."""


def key_setting() -> Any:
    """The `signing_key` field of every command that signs or verifies: never an option (only
    its variable, SHOPSTREAM_SIGNING_KEY, or --signing-key-file), never in a repr."""
    return field(default=None, repr=False, metadata={"env_only": True, "about": (
        "key that signs and verifies artifacts, checkpoints, control commands and learn records (HMAC-SHA256; "
        "without one they carry a sha256 only)")})


class _FromEnvironment:
    """The default `key` of library functions (tests, tools, the demo): `signing_key()`. Every
    command hands its settings' key down explicitly."""

    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


FROM_ENVIRONMENT = _FromEnvironment()
Key = Union[bytes, None, _FromEnvironment]

def signing_key() -> Optional[bytes]:
    """The environment's key, for library callers not handed one (the settings read it the same way)."""
    key = environ(KEY_ENV)
    return secret_bytes(KEY_ENV, None, key.encode()) if key else None


def key_of(key: Key) -> Optional[bytes]:
    """`key` itself, or `signing_key()` for `FROM_ENVIRONMENT`."""
    return signing_key() if isinstance(key, _FromEnvironment) else key


def sign(payload: bytes, key: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, tag: object, key: bytes, what: str) -> None:
    """SignatureError unless `tag` is the HMAC of `payload`. `tag` may come straight from a
    file's JSON, so anything but a str (a number, an object) is refused, not compared."""
    if tag is None or tag == "":
        raise SignatureError(f"{what}: not signed, but {KEY_IS_SET}: refusing to load it")
    if not isinstance(tag, str):
        raise SignatureError(f"{what}: HMAC is not a string ({type(tag).__name__}): forged or malformed, "
                             "refusing to load it")
    # compare_digest refuses a str with non-ASCII characters (TypeError): a flipped byte is a mismatch
    if not tag.isascii() or not hmac.compare_digest(sign(payload, key), tag):
        raise SignatureError(f"{what}: HMAC does not match: forged or modified, refusing to load it")
