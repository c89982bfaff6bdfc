"""The layers import downwards only: the core (shopstream/) nothing of the stages, the
stages (offline/, stream/) nothing of each other or of the command line (cli/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder (= its package) -> (its package, the packages it must never import)
LAYERS = {
    "shopstream": ("shopstream", ("stream", "offline", "cli")),
    "offline": ("offline", ("stream", "cli")),
    "stream": ("stream", ("offline", "cli")),
}


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of everything a module imports, relative imports resolved."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def violations(folder: str) -> list[str]:
    _, forbidden = LAYERS[folder]
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):   # subpackages too (stream/checkpointing/)
        package = ".".join(path.relative_to(ROOT).parent.parts)
        for name in sorted(imported_modules(path, package)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_no_layer_imports_a_layer_above_it(folder):
    assert violations(folder) == []


def test_the_check_sees_a_relative_import_of_a_stage(tmp_path, monkeypatch):
    core = tmp_path / "shopstream"
    core.mkdir()
    (core / "leak.py").write_text("from stream.worker import Worker\nimport cli\nfrom . import engine\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert sorted(violations("shopstream")) == ["shopstream/leak.py imports cli",
                                                "shopstream/leak.py imports stream.worker",
                                                "shopstream/leak.py imports stream.worker.Worker"]


def test_the_check_reads_subpackages_and_resolves_their_relative_imports(tmp_path, monkeypatch):
    sub = tmp_path / "stream" / "deep"
    sub.mkdir(parents=True)
    (sub / "leak.py").write_text("from ...offline import bootstrap\nfrom . import sibling\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert violations("stream") == ["stream/deep/leak.py imports offline",
                                    "stream/deep/leak.py imports offline.bootstrap"]
