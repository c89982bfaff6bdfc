"""Versioned model artifacts: a pickle and a metadata file that holds the pickle's sha256.

Layout under the artifacts directory::

    <model>/<version>/model.pkl   pickled {"model": ..., "features": ...}
    <model>/<version>/meta.json   version, created_at, versions, data range, metrics, sha256
    DEFAULT                       "<model>/<version>" of the best model

Nothing is unpickled before its sha256 matches the metadata, so a truncated or
modified file is refused with `ArtifactError`. With a signing key (the commands' setting
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
        lines = pointer.read_text().splitlines() or [""]
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
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):   # [] gave a TypeError
            raise ValueError("not a JSON object with a sha256 string")
        expected = meta["sha256"]
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{meta_path}: unreadable metadata ({exc})") from None
    payload = model_path.read_bytes()
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise ArtifactError(
            f"{model_path}: sha256 {actual[:12]}... does not match metadata {expected[:12]}...; "
            "the file is truncated or was modified, refusing to unpickle it"
        )
    if secret is not None:
        verify(_canonical(meta), meta.get(META_HMAC), secret, str(meta_path))
        verify(payload, meta.get("hmac_sha256"), secret, str(model_path))
    if meta.get("river_version") != river.__version__:
        print(f"warning: {directory} was made with River {meta.get('river_version')}, "
              f"this is River {river.__version__}", file=sys.stderr)
    state = pickle.loads(payload)
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
            default = (pointer.read_text().splitlines() or [""])[0].strip()   # an empty DEFAULT points nowhere
        except (OSError, ValueError) as exc:
            listed.append({"unreadable": f"{pointer}: {exc}"})
    for meta_path in sorted(root.glob("*/*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
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
