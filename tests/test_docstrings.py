"""Every docstring example runs, imported by its installed name, which is its path."""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

PACKAGES = ("shopstream", "stream", "offline", "cli")
ROOT = Path(__file__).parents[1]


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names += [info.name for info in pkgutil.walk_packages(path, prefix=f"{package}.")
                  if not info.name.endswith(".__main__")]
    return sorted(names)


def file_of(name: str) -> str:
    """Where module `name` lives: a package is its folder's __init__.py."""
    path = name.replace(".", "/")
    return f"{path}/__init__.py" if (ROOT / path).is_dir() else f"{path}.py"


def test_the_import_tree_is_the_source_tree(tmp_path):
    """Outside the checkout (no folder on sys.path), every package imports from its install, and
    each module's name is its file's path: stream.worker is stream/worker.py."""
    script = ("import importlib, json, sys; names = json.loads(sys.argv[1]);"
              "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))")
    names = module_names()
    found = subprocess.run([sys.executable, "-c", script, json.dumps(names)], cwd=tmp_path,
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    files = json.loads(found.stdout)
    assert "stream.settings" in files and "cli.commands" in files and "offline.bootstrap" in files
    assert {name: Path(*Path(source_of(path)).parts[-len(Path(file_of(name)).parts):]).as_posix()
            for name, path in files.items()} == {name: file_of(name) for name in names}


def source_of(path: str) -> str:
    """The source beside a module's file: itself, or for a module compiled by scripts/compile.py
    (shopstream/engine.cpython-311-x86_64-linux-gnu.so) the .py it was compiled from."""
    for suffix in EXTENSION_SUFFIXES:
        if path.endswith(suffix):
            return path[:-len(suffix)] + ".py"
    return path


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_a_built_package_holds_every_package_of_the_tree():
    """The image installs a wheel, not the checkout: what pyproject's package search finds
    must be every folder with an __init__.py (a missing subpackage fails only in the image)."""
    import tomllib

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[1]
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(where=str(root), include=include))
    tree = {".".join(init.parent.relative_to(root).parts) for package in PACKAGES
            for init in (root / package).rglob("__init__.py")}
    assert "stream.checkpointing" in tree and found == tree
