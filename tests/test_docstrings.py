"""Every docstring example runs, imported by its installed name (shopstream.stream.worker,
never a second copy as a top-level `stream.worker`)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ("shopstream", "shopstream.stream", "shopstream.offline", "shopstream.cli")


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules(path) if info.name != "__main__"]
    return sorted(names)


def test_every_stage_installs_under_the_shopstream_namespace(tmp_path):
    """Outside the checkout (no folder on sys.path), only shopstream.* is importable."""
    script = ("import importlib.util as u, shopstream.stream.worker, shopstream.offline.bootstrap, shopstream.cli;"
              "print([name for name in ('stream', 'offline', 'cli') if u.find_spec(name)])")
    found = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
    assert "shopstream.stream.settings" in module_names()


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
