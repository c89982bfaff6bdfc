"""The engine's hot modules, optionally compiled with Cython (`python scripts/compile.py`).

Compiled, each of `MODULES` is a C extension beside its source (`engine.cpython-311-...so` beside
`engine.py`). It runs the same Python code (no types added: `annotation_typing` off, so the
semantics and every float are the source's) without the interpreter's dispatch per bytecode:
about 30% of the engine's own time per event (BENCHMARKS.md, *Analysis*, stop 48). The pure
modules are a checkout's default and the reference; the image compiles them (the Dockerfile's
first stage); the tests hold the two to the same results.

Python imports an extension before a source of the same name, so an edited source beside an
old build would silently run the old code. `check` (run when `shopstream` is imported) refuses
that: the build writes each source's SHA-256 into `MANIFEST`, and an extension whose source
has changed since, or that no manifest vouches for, is an ImportError that says what to run.

A profiler that reads Python frames (py-spy, cProfile) does not see into a compiled module:
profile the sources (`python scripts/compile.py --clean`).

`shopstream --version` and each worker's first log line say which modules run compiled;
`require()` fails unless all of `MODULES` do (the image's build checks its own that way).

>>> check(Path(__file__).parent) is None   # this checkout: pure, or compiled from these sources
True
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

#: What `scripts/compile.py` compiles: the per-event path in process (decode, features, labels, engine, scores).
MODULES = ("engine", "events", "features", "labels", "recent_ids", "scoring", "session_table", "slot_table")
#: Written by the build beside the modules: {"modules": {name: SHA-256 of the source compiled}, "cython": version}.
MANIFEST = "compiled.json"


class StaleBuild(ImportError):
    """A compiled module that does not match its source."""


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extensions(package: Path) -> dict[str, Path]:
    """module name -> its compiled file, for every extension module in `package` (one folder)."""
    found = {}
    for entry in os.listdir(package):
        for suffix in EXTENSION_SUFFIXES:
            if entry.endswith(suffix):
                found[entry[:-len(suffix)]] = package / entry
                break
    return found


def check(package: Path) -> None:
    """StaleBuild if an extension module in `package` was not compiled from its source as it is now."""
    built = extensions(package)
    if not built:
        return
    try:
        manifest = json.loads((package / MANIFEST).read_text())["modules"]
        if not isinstance(manifest, dict):
            raise TypeError(f"its modules are a {type(manifest).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StaleBuild(f"{package}: compiled modules {sorted(built)} without a readable {MANIFEST} "
                         f"({type(exc).__name__}); run `python scripts/compile.py --clean` to run the sources, "
                         f"or `python scripts/compile.py` to compile them again") from None
    for name, path in sorted(built.items()):
        source = package / f"{name}.py"
        if not source.exists() or manifest.get(name) != source_digest(source):
            raise StaleBuild(f"{path.name} was not compiled from {source} as it is now (edited since?): "
                             f"run `python scripts/compile.py` to compile it again, or "
                             f"`python scripts/compile.py --clean` to run the sources")


def compiled() -> list[str]:
    """The names of `MODULES` that run compiled in this process's import of shopstream."""
    import importlib

    return [name for name in MODULES
            if not importlib.import_module(f"shopstream.{name}").__file__.endswith(".py")]  # type: ignore[union-attr]


def describe() -> str:
    """One line for a log: which of `MODULES` run compiled in this process."""
    names = compiled()
    if not names:
        return "the sources (python scripts/compile.py compiles the hot modules)"
    missing = [name for name in MODULES if name not in names]
    return f"compiled: {', '.join(names)}" + (f" (sources: {', '.join(missing)})" if missing else "")


def require() -> None:
    """SystemExit naming what runs from source unless every one of `MODULES` runs compiled."""
    if compiled() != list(MODULES):
        raise SystemExit(f"shopstream engine: {describe()}; expected every module compiled: {', '.join(MODULES)}")
