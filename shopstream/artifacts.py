"""Versioned model artifacts: a pickle and a metadata file that holds the pickle's sha256.

Layout under the artifacts directory::

    <model>/<version>/model.pkl   pickled {"model": ..., "features": ...}
    <model>/<version>/meta.json   version, created_at, versions, data range, metrics, sha256
    DEFAULT                       "<model>/<version>" of the best model

Nothing is unpickled before its size and sha256 match the metadata, so a truncated or
modified file is refused with `ArtifactError`; so is metadata this version cannot use (a
newer `format`, a field missing or of another type) and a pickle it cannot load (a class
from a newer version, another shape) or one that names anything a catalog model and its feature
state are not made of (`RestrictedUnpickler`, `MODEL_NAMES`: with or without a key). With a
signing key (the commands' setting `signing_key`, given to each function here as `key`), the
metadata also holds an HMAC of the
pickle and one of the metadata itself, and DEFAULT a second line with an HMAC of its first;
loading requires all three (`signing.py`). A function not given its key uses `signing_key()`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy
import river

from .files import write_atomically
from .signing import FROM_ENVIRONMENT, Key, key_of, sign, verify

#: numpy's own scalar(dtype, data) (numpy._core from numpy 2 on, numpy.core before)
numpy_scalar = (getattr(numpy, "_core", None) or numpy.core).multiarray.scalar

DEFAULT_POINTER = "DEFAULT"
#: The meta.json layout this version writes and the newest it reads (one without "format" is 1).
FORMAT = 1
#: meta.json and DEFAULT hold a few KB: a larger one is not ours, and is not read whole.
MAX_TEXT_BYTES = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact that is missing, incomplete or does not match its checksum."""


def name_table(*entries: str) -> dict[str, frozenset]:
    """{"module": frozenset(names)} from "module name name ..." lines."""
    table: dict[str, set] = {}
    for entry in entries:
        module, *names = entry.split()
        table.setdefault(module, set()).update(names)
    return {module: frozenset(names) for module, names in table.items()}


#: Every (module, name) a pickle of a catalog model and its feature state may name: what is
#: unpickled here, and the core of what a checkpoint may (`stream/checkpointing/migration.py`
#: adds the engine's and the partition's own classes). Found, not guessed: every catalog model
#: (mlp, hat and arf trained until their trees split and their drift detectors fired) under both
#: feature sets, bootstrapped and checkpointed, and every artifact and checkpoint the tests
#: load, each read by an unpickler that recorded what it was asked for (RELIABILITY.md).
#: Explicit names only, never a package: all of `numpy` holds `numpy.memmap`, which writes any
#: file it is given; all of `builtins`, `bytearray(300_000_000)` from a 38-byte pickle. Pickle
#: protocol 5 (what shopstream has always written) names no bytes, bytearray, set or range: its
#: opcodes build them, from as many bytes as the payload holds.
MODEL_NAMES = name_table(
    "builtins bool int float complex str list tuple dict set frozenset",   # defaultdict's factories
    "collections Counter OrderedDict defaultdict deque",
    "functools partial",   # River's trees: defaultdict(partial(...))
    "array array _array_reconstructor",
    "random Random",
    # numpy's arrays (from a buffer), dtypes, scalars and random generators; numpy.core before numpy 2
    "numpy dtype",
    "numpy._core.numeric _frombuffer", "numpy.core.numeric _frombuffer",
    "numpy._core.multiarray scalar", "numpy.core.multiarray scalar",
    "numpy.random._pickle __bit_generator_ctor __generator_ctor",
    "numpy.random._pcg64 PCG64",
    "numpy.random.bit_generator SeedSequence __pyx_unpickle_SeedSequence",
    # River: the catalog's pipelines, optimizers, trees, forests and what they hold
    "river._river_rust.drift AdaptiveWindowing",
    "river._river_rust.vectordict VectorDict",
    "river.compose.pipeline Pipeline",
    "river.drift.adwin ADWIN",
    "river.forest.adaptive_random_forest ARFClassifier BaseTreeClassifier",
    "river.linear_model.log_reg LogisticRegression",
    "river.metrics.accuracy Accuracy",
    "river.metrics.confusion ConfusionMatrix",
    "river.optim.ada_grad AdaGrad",
    "river.optim.adam Adam",
    "river.optim.initializers Zeros",
    "river.optim.losses Log",
    "river.optim.schedulers Constant InverseScaling",
    "river.optim.sgd SGD",
    "river.preprocessing.scale StandardScaler",
    "river.proba.gaussian Gaussian",
    "river.stats.mean Mean",
    "river.stats.var Var",
    "river.tree.hoeffding_adaptive_tree_classifier HoeffdingAdaptiveTreeClassifier",
    # every classification leaf, branch and splitter of River's trees: nominal ones appear only when raw features
    # bring text values (the search above missed them: a hat or arf worker refused its own checkpoint)
    "river.tree.nodes.arf_htc_nodes RandomLeafMajorityClass RandomLeafNaiveBayes RandomLeafNaiveBayesAdaptive",
    "river.tree.nodes.branch NominalBinaryBranch NominalMultiwayBranch NumericBinaryBranch NumericMultiwayBranch",
    "river.tree.nodes.hatc_nodes AdaLeafClassifier AdaNomBinaryBranchClass AdaNomMultiwayBranchClass "
    "AdaNumBinaryBranchClass AdaNumMultiwayBranchClass",
    "river.tree.nodes.htc_nodes LeafMajorityClass LeafNaiveBayes LeafNaiveBayesAdaptive",
    "river.tree.splitter.gaussian_splitter GaussianSplitter",
    "river.tree.splitter.nominal_splitter_classif NominalSplitterClassif",
    # ours: the catalog's own models and the feature sets
    "shopstream.averaged AveragedLogisticRegression",
    "shopstream.delayed FakeNegativeWeighted",
    "shopstream.mlp MLPClassifier",
    "shopstream.features FeatureCaps RawFeatures ShopFeatures _Capped",
    "shopstream.session_table SessionTable",
    "shopstream.slot_table CountTable",
)


def refused(module: str, name: str, found: Any = None) -> Optional[str]:
    """Why a pickle may not have `module.name` (`found`: what that is, once imported) beyond not
    being listed; None if it may. An ndarray subclass (numpy.memmap opens and writes files,
    recarray, matrix...) never, whatever a list says: only ndarray itself is data."""
    if isinstance(found, type) and issubclass(found, numpy.ndarray) and found is not numpy.ndarray:
        return "a subclass of numpy.ndarray"
    return None


class _DType:
    """What a pickle's `numpy.dtype(spec, align, copy)` gets instead of a dtype: the spec and the
    state pickle sets, checked before a dtype is made (`made`). A real dtype takes any state: one that
    says a void dtype holds objects made ndarray.__setstate__ read past its buffer (a segfault)."""

    def __init__(self, spec: Any, align: bool = False, copy: bool = False):
        self.made = numpy.dtype(spec, align, copy)
        if self.made.hasobject or self.made.fields is not None or self.made.subdtype is not None:
            raise pickle.UnpicklingError(f"a pickle may not make dtype {spec!r}: only plain numbers are data")

    def __setstate__(self, state: Any) -> None:
        made = self.made
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">") and made.byteorder != "|":
            made = made.newbyteorder(state[1])
        if state != made.__reduce__()[2]:
            raise pickle.UnpicklingError(f"a pickle may not give dtype {made} the state {state!r}")
        self.made = made


def _made(dtype: Any) -> Any:
    if type(dtype) is not _DType:
        raise pickle.UnpicklingError(f"a pickle's numpy array needs a dtype, not {type(dtype).__name__}")
    return dtype.made


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> Any:
    """numpy's own, of a checked dtype (the array then holds no more than the buffer's bytes)."""
    return numpy.frombuffer(buffer, dtype=_made(dtype)).reshape(shape, order=order)


def _scalar(dtype: Any, *data: Any) -> Any:
    return numpy_scalar(_made(dtype), *data)


#: What a pickle gets for a listed name that is not to be handed over as it is.
STAND_INS = {("numpy", "dtype"): _DType,
             ("numpy._core.numeric", "_frombuffer"): _frombuffer, ("numpy.core.numeric", "_frombuffer"): _frombuffer,
             ("numpy._core.multiarray", "scalar"): _scalar, ("numpy.core.multiarray", "scalar"): _scalar}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what `names` lists ({module: names}; a dotted name never matches one), a
    defence in depth under the sha256 and HMAC checks, and the only one when no key is set."""

    names: Mapping[str, frozenset] = MODEL_NAMES
    what = "an artifact"
    unlisted = "not part of a model or its feature state"

    def find_class(self, module: str, name: str) -> Any:
        if name in self.names.get(module, ()):   # (refused before its module is even imported)
            found = super().find_class(module, name)
            why = refused(module, name, found)
            if why is None:
                return STAND_INS.get((module, name), found)
        else:
            why = self.unlisted
        raise pickle.UnpicklingError(f"{self.what} may not name {module}.{name}: {why}")


def restricted_loads(data: bytes) -> Any:
    """`pickle.loads` of a model's pickle through `RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


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
        state = restricted_loads(payload)
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
