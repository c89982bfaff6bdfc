#!/usr/bin/env python3
"""Compile the engine's hot modules with Cython, in place, or remove them again.

    pip install -e ".[fast]"               # Cython (a C compiler and Python's headers too)
    python scripts/compile.py              # shopstream/{engine,events,...}.*.so + compiled.json
    python scripts/compile.py --clean      # back to the sources alone

What it compiles and why: shopstream/compiled.py. The sources are compiled as they are, with
`annotation_typing` off (a `float` annotation must not turn a Python float into a C double
nor refuse an int): the same objects, the same arithmetic, the same results. An extension
shadows its source, so a source edited after this is refused at import until it is compiled
again (`shopstream.compiled.check`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clean(package: Path, names) -> list[Path]:
    """Remove every extension module and the manifest from `package` (`names`: its compiled.py)."""
    removed = list(names.extensions(package).values())
    manifest = package / names.MANIFEST
    if manifest.exists():
        removed.append(manifest)
    for path in removed:
        path.unlink()
    return removed


def compile_modules(package: Path, names, jobs: int) -> dict[str, str]:
    """Build every module of `names.MODULES` into `package`, in place; return {name: source SHA-256}."""
    from Cython import __version__ as cython_version
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    digests = {name: names.source_digest(package / f"{name}.py") for name in names.MODULES}
    with tempfile.TemporaryDirectory(prefix="shopstream-compile-") as build:
        extensions = [Extension(f"shopstream.{name}", [str(package / f"{name}.py")]) for name in names.MODULES]
        modules = cythonize(extensions, build_dir=build, nthreads=jobs, quiet=True,
                            compiler_directives={"language_level": 3, "annotation_typing": False})
        distribution = Distribution({"name": "shopstream-compiled", "ext_modules": modules})
        command = distribution.get_command_obj("build_ext")
        command.inplace, command.build_temp, command.parallel = False, build, jobs
        command.build_lib = str(Path(build) / "lib")
        distribution.run_command("build_ext")
        for output in command.get_outputs():   # build/lib/shopstream/<name>.<suffix> -> package/
            Path(output).replace(package / Path(output).name)
    # Written last: a build that failed half way leaves extensions no manifest vouches for (refused).
    (package / names.MANIFEST).write_text(json.dumps({"cython": cython_version, "modules": digests}, indent=1) + "\n")
    return digests


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules and the manifest")
    parser.add_argument("--package", type=Path, default=ROOT / "shopstream",
                        help="the shopstream package folder to build in (default: this checkout's)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compilations")
    args = parser.parse_args(argv)
    package = args.package.resolve()
    # The names, loaded from the file itself: importing `shopstream` would refuse a stale build.
    names = _load(package / "compiled.py")
    if args.clean:
        removed = clean(package, names)
        print(f"compile.py: removed {len(removed)} files from {package}")
        return 0
    try:
        import Cython  # noqa: F401
    except ImportError:
        parser.error('Cython is not installed: pip install -e ".[fast]"')
    clean(package, names)   # what an earlier build left (a module since dropped from MODULES too)
    started = time.perf_counter()
    digests = compile_modules(package, names, args.jobs)
    print(f"compile.py: compiled {len(digests)} modules in {package} in {time.perf_counter() - started:.0f} s: "
          f"{', '.join(digests)}")
    return 0


def _load(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("shopstream_compiled_names", path)
    module = importlib.util.module_from_spec(spec)   # type: ignore[arg-type]
    spec.loader.exec_module(module)   # type: ignore[union-attr]
    return module


if __name__ == "__main__":
    sys.exit(main())
