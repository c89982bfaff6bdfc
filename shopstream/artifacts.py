"""Versioned model artifacts: a pickle and a metadata file that holds the pickle's sha256.

Layout under the artifacts directory::

    <model>/<version>/model.pkl   pickled {"model": ..., "features": ...}
    <model>/<version>/meta.json   version, created_at, versions, data range, metrics, sha256
    DEFAULT                       "<model>/<version>" of the best model

Nothing is unpickled before its size and sha256 match the metadata, so a truncated or
modified file is refused with `ArtifactError`; so is metadata this version cannot use (a
newer `format`, a field missing or of another type) and a pickle it cannot load (a class
from a newer version, another shape). With a signing key (the commands' setting
`signing_key`, given to each function here as `key`), the metadata also holds an HMAC of the
pickle and one of the metadata itself, and DEFAULT a second line with an HMAC of its first;
loading requires all three (`signing.py`). A function not given its key uses `signing_key()`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import river

from .files import write_atomically
from .signing import FROM_ENVIRONMENT, Key, key_of, sign, verify

DEFAULT_POINTER = "DEFAULT"
#: The meta.json layout this version writes and the newest it reads (one without "format" is 1).
FORMAT = 1
#: meta.json and DEFAULT hold a few KB: a larger one is not ours, and is not read whole.
MAX_TEXT_BYTES = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact that is missing, incomplete or does not match its checksum."""


@dataclass
class Artifact:
    model: Any       # a catalog classifier
    features: Any    # its feature set, with the state the bootstrap left
    meta: dict
    path: Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` whole or not at all (see `files.write_atomically`)."""
    write_atomically(path, lambda out: out.write(data))


def save_artifact(root: str | Path, model_name: str, model, features, meta: dict,
                  key: Key = FROM_ENVIRONMENT) -> Path:
    """Write one versioned artifact; return its directory."""
    payload = pickle.dumps({"model": model, "features": features}, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(payload).hexdigest()
    created = datetime.now(timezone.utc)
    version = f"{model_name}-{created:%Y%m%dT%H%M%S}-{digest[:8]}"
    directory = Path(root) / model_name / version
    full_meta = {
        "format": FORMAT,
        "version": version,
        "model": model_name,
        "created_at": created.isoformat(),
        "river_version": river.__version__,
        "python_version": platform.python_version(),
        "sha256": digest,
        "size_bytes": len(payload),
        **meta,
    }
    secret = key_of(key)
    if secret is not None:
        full_meta["hmac_sha256"] = sign(payload, secret)
        full_meta[META_HMAC] = sign(_canonical(full_meta), secret)
    atomic_write(directory / "model.pkl", payload)
    atomic_write(directory / "meta.json", json.dumps(full_meta, indent=2, default=str).encode())
    return directory


META_HMAC = "meta_hmac_sha256"


def _canonical(meta: dict) -> bytes:
    """The metadata as signed: every field but its own HMAC, in a stable form."""
    return json.dumps({k: v for k, v in meta.items() if k != META_HMAC}, sort_keys=True, default=str).encode()


def _read_text(path: Path) -> str:
    """A small UTF-8 file's text; ValueError saying why not (too large, not UTF-8)."""
    with open(path, "rb") as file:
        data = file.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise ValueError(f"larger than {MAX_TEXT_BYTES} bytes, not one this version wrote")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text, byte 0x{data[exc.start]:02x} at offset {exc.start}") from None


#: meta.json's fields the loader and its callers use: (name, type, what it must be, required).
_META_FIELDS = (("sha256", str, "a string", True), ("version", str, "a string", True),
                ("model", str, "a string", True), ("engine", dict, "an object", False),
                ("size_bytes", int, "an integer", False), ("format", int, "an integer", False))

_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _check_meta(meta: Any) -> dict:
    """`meta` if it is metadata this version can use; else ValueError naming the field."""
    if not isinstance(meta, dict):   # [] gave a TypeError
        raise ValueError("not a JSON object")
    for name, kind, what, required in _META_FIELDS:
        if name not in meta:
            if required:
                raise ValueError(f"no {name!r}")
        elif not isinstance(meta[name], kind) or isinstance(meta[name], bool):   # JSON true is no size
            raise ValueError(f"{name!r} is {_JSON_KINDS.get(type(meta[name]), 'a number')}, not {what}")
    return meta


def set_default(root: str | Path, artifact_dir: Path, key: Key = FROM_ENVIRONMENT) -> None:
    root = Path(root)
    target = str(artifact_dir.relative_to(root))
    secret = key_of(key)
    signature = f"hmac-sha256:{sign(target.encode(), secret)}\n" if secret is not None else ""
    atomic_write(root / DEFAULT_POINTER, f"{target}\n{signature}".encode())


def resolve(path: str | Path, key: Key = FROM_ENVIRONMENT) -> Path:
    """An artifact directory, or an artifacts root (then its DEFAULT, verified with a key)."""
    path = Path(path)
    pointer = path / DEFAULT_POINTER
    if pointer.is_file():
        try:
            lines = _read_text(pointer).splitlines() or [""]
        except ValueError as exc:
            raise ArtifactError(f"{pointer}: unreadable pointer ({exc})") from None
        target = lines[0].strip()
        secret = key_of(key)
        if secret is not None:
            tag = lines[1].strip().partition("hmac-sha256:")[2] if len(lines) > 1 else None
            verify(target.encode(), tag, secret, str(pointer))
        if not target or target.startswith("/") or ".." in Path(target).parts:
            raise ArtifactError(f"{pointer}: {target!r} is not an artifact of this directory")
        return path / target
    return path


def load_artifact(path: str | Path, key: Key = FROM_ENVIRONMENT) -> Artifact:
    """Load and verify an artifact (directory or artifacts root)."""
    secret = key_of(key)
    directory = resolve(path, secret)
    meta_path, model_path = directory / "meta.json", directory / "model.pkl"
    if not meta_path.is_file() or not model_path.is_file():
        raise ArtifactError(f"{directory}: not an artifact (needs meta.json and model.pkl)")
    try:
        meta = _check_meta(json.loads(_read_text(meta_path)))
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{meta_path}: unreadable metadata ({exc})") from None
    if meta.get("format", 1) > FORMAT:
        raise ArtifactError(f"{meta_path}: artifact format {meta['format']}, this version reads format {FORMAT} "
                            "at most: load it with the version that made it, or a newer one")
    # Checked before reading: a file of another size is not this artifact, and may not fit in memory
    size, expected_size = model_path.stat().st_size, meta.get("size_bytes")
    if expected_size is not None and size != expected_size:
        raise ArtifactError(f"{model_path}: {size} bytes, metadata says {expected_size}; "
                            "the file is truncated or was modified, refusing to unpickle it")
    payload = model_path.read_bytes()
    actual, expected = hashlib.sha256(payload).hexdigest(), meta["sha256"]
    if actual != expected:
        raise ArtifactError(
            f"{model_path}: sha256 {actual[:12]}... does not match metadata {expected[:12]}...; "
            "the file is truncated or was modified, refusing to unpickle it"
        )
    if secret is not None:
        verify(_canonical(meta), meta.get(META_HMAC), secret, str(meta_path))
        verify(payload, meta.get("hmac_sha256"), secret, str(model_path))
    made_with = meta.get("river_version")
    try:   # a class or module this version lacks (a newer one's artifact), a River that changed its classes
        state = pickle.loads(payload)
    except Exception as exc:
        raise ArtifactError(f"{model_path}: not loadable by this version (made with River {made_with}): "
                            f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{model_path}: holds a {type(state).__name__}, not a dict of 'model' and 'features'")
    missing = [name for name in ("model", "features") if name not in state]
    if missing:
        raise ArtifactError(f"{model_path}: holds a dict without {' or '.join(map(repr, missing))}")
    if made_with != river.__version__:
        print(f"warning: {directory} was made with River {made_with}, this is River {river.__version__}",
              file=sys.stderr)
    return Artifact(state["model"], state["features"], meta, directory)


def latest(root: str | Path, model_name: str) -> Optional[Path]:
    """The newest artifact directory of `model_name` under `root`, if any."""
    versions = sorted((Path(root) / model_name).glob(f"{model_name}-*/meta.json"))
    return versions[-1].parent if versions else None


def list_versions(root: str | Path) -> list[dict]:
    """Every artifact's metadata under `root`, oldest model name first, each with
    ``is_default`` (what DEFAULT points at). Unverified: for listing, never for loading. One that
    cannot be read is listed as ``{"unreadable": "<meta.json path>: <reason>"}`` (the others still are)."""
    root = Path(root)
    pointer = root / DEFAULT_POINTER
    listed: list[dict] = []
    default = ""
    if pointer.is_file():
        try:
            default = (_read_text(pointer).splitlines() or [""])[0].strip()   # an empty DEFAULT points nowhere
        except (OSError, ValueError) as exc:
            listed.append({"unreadable": f"{pointer}: {exc}"})
    for meta_path in sorted(root.glob("*/*/meta.json")):
        try:
            meta = json.loads(_read_text(meta_path))
            if not isinstance(meta, dict) or not isinstance(meta.get("version"), str):
                raise ValueError("not a JSON object with a version string")
        except (OSError, ValueError, RecursionError) as exc:
            listed.append({"unreadable": f"{meta_path}: {exc}"})
            continue
        listed.append({**meta, "is_default": bool(default) and default.endswith(meta["version"])})
    return listed


def find_version(root: str | Path, version: str) -> Path:
    """The artifact directory of an exact version id, e.g. for a rollback."""
    model_name = version.rsplit("-", 2)[0]
    directory = Path(root) / model_name / version
    if not (directory / "meta.json").is_file():
        raise ArtifactError(f"no artifact version {version!r} under {root}")
    return directory
