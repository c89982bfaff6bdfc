"""The optional compiled engine (scripts/compile.py, shopstream/compiled.py): a build that does not
match its sources is refused, and a compiled build gives the results of the sources, bit for bit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import shopstream.compiled as compiled_module
from shopstream.compiled import MANIFEST, MODULES, StaleBuild, check, source_digest

ROOT = Path(__file__).parents[1]


def _package(tmp_path: Path, sources: dict[str, str], built: list[str]) -> Path:
    package = tmp_path / "shopstream"
    package.mkdir()
    for name, text in sources.items():
        (package / f"{name}.py").write_text(text)
    for name in built:   # check() reads names and digests only: an empty file stands for a build
        (package / f"{name}{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    return package


def _manifest(package: Path, names: list[str]) -> None:
    digests = {name: source_digest(package / f"{name}.py") for name in names}
    (package / MANIFEST).write_text(json.dumps({"cython": "3", "modules": digests}))


def test_sources_alone_and_a_build_of_these_sources_are_accepted(tmp_path):
    package = _package(tmp_path, {"engine": "x = 1\n", "labels": "y = 2\n"}, [])
    assert check(package) is None
    (package / f"engine{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    _manifest(package, ["engine"])
    assert check(package) is None


def test_a_source_edited_after_its_build_is_refused_with_what_to_run(tmp_path):
    package = _package(tmp_path, {"engine": "x = 1\n", "labels": "y = 2\n"}, ["engine", "labels"])
    _manifest(package, ["engine", "labels"])
    (package / "labels.py").write_text("y = 3\n")
    with pytest.raises(StaleBuild, match=r"labels\..*so was not compiled from .*labels\.py as it is now.*"
                                         r"scripts/compile\.py"):
        check(package)


@pytest.mark.parametrize("manifest", [None, "{not json", '{"modules": ["engine"]}', '{"other": 1}'])
def test_a_build_without_a_readable_manifest_is_refused(tmp_path, manifest):
    package = _package(tmp_path, {"engine": "x = 1\n"}, ["engine"])
    if manifest is not None:
        (package / MANIFEST).write_text(manifest)
    with pytest.raises(StaleBuild, match=rf"compiled modules \['engine'\] without a readable {MANIFEST}"):
        check(package)


def test_a_build_of_a_module_the_manifest_does_not_name_or_without_its_source_is_refused(tmp_path):
    package = _package(tmp_path, {"engine": "x = 1\n"}, ["engine"])
    _manifest(package, ["engine"])
    (package / f"features{EXTENSION_SUFFIXES[0]}").write_bytes(b"")   # no manifest entry, no source
    with pytest.raises(StaleBuild, match=r"features\..*so was not compiled from"):
        check(package)


@pytest.mark.parametrize("running, line", [
    ([], "the sources"),
    (list(MODULES), "compiled: " + ", ".join(MODULES)),
    (["engine", "labels"], "compiled: engine, labels (sources: "),
])
def test_the_log_line_says_what_runs_compiled_and_require_refuses_anything_less_than_all(monkeypatch, running, line):
    monkeypatch.setattr(compiled_module, "compiled", lambda: running)
    assert compiled_module.describe().startswith(line)
    if running == list(MODULES):
        assert compiled_module.require() is None
    else:
        with pytest.raises(SystemExit, match=f"shopstream engine: {re.escape(line)}.*expected every module compiled"):
            compiled_module.require()


def test_the_image_compiles_in_a_stage_of_its_own_from_the_python_image_the_compose_runtime_stands_in_for():
    """scripts/compose/runtime.sh builds one stand-in for the Dockerfile's base image: every stage must
    name that one image. A local build stays out of the build context (the image compiles its own)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and len({stage[0] for stage in stages}) == 1, stages
    assert stages[0][1:] == ["AS", "compiled"] and "COPY --from=compiled " in dockerfile
    assert "scripts/compile.py --package shopstream" in dockerfile and "require()" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**/*.so" in ignored and f"shopstream/{MANIFEST}" in ignored


# One script, run compiled and pure: the engine over generated events, a checkpoint half way (the
# worker's own format), then what the second half gives; or, with a checkpoint, only the second half.
_RUN = """
import json, sys
from shopstream.compiled import compiled
from shopstream.engine import Engine
from shopstream.events import decode_event, encode_event, event_from_record
from shopstream.generator import generate
from stream.checkpointing.format import decode_state, encode_state
from stream.partition import Partition

events = [decode_event(encode_event(event_from_record(r))) for r in generate(6000, seed=11)]
checkpoint_in, checkpoint_out = sys.argv[1], sys.argv[2]
if checkpoint_in:
    engine = decode_state(open(checkpoint_in, "rb").read(), checkpoint_in, None).engine
else:
    engine = Engine.fresh("logreg", "shop", 3)
    for event in events[:3000]:
        engine.process(event)
    open(checkpoint_out, "wb").write(encode_state(Partition("t", 0, engine), None))
outputs = [engine.process(event) for event in events[3000:]]
slot = engine.champion_slot
print(json.dumps({"compiled": compiled(), "outputs": outputs, "counts": engine.counts,
                  "scores": slot.scores.cumulative.values(), "rolling": slot.scores.rolling.values()}))
"""


def _copy_checkout(to: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", MANIFEST, ".hypothesis")
    for part in ("shopstream", "stream", "offline", "cli", "tests", "scripts", "benchmarks", "dashboards", "deploy",
                 "data"):
        if (ROOT / part).exists():
            shutil.copytree(ROOT / part, to / part, ignore=ignore)
    for name in ("pyproject.toml", "docker-compose.yml", "Dockerfile", ".dockerignore", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, to / name)


def _run(cwd: Path, checkpoint_in: str, checkpoint_out: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSTREAM_")}
    done = subprocess.run([sys.executable, "-c", _RUN, checkpoint_in, checkpoint_out], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_compiled_engine_gives_the_sources_results_and_passes_the_fast_lane(tmp_path):
    """Compiles a copy of the checkout (about 25 s on 2 cores), then: the engine compiled and pure give
    the same predictions, counts and scores, each resuming from the other's checkpoint; and the whole
    fast lane (River parity, the features, labels and checkpoints, every docstring) passes compiled."""
    pytest.importorskip("Cython")
    pure, copy = tmp_path / "pure", tmp_path / "compiled"
    _copy_checkout(pure)   # the sources alone, whether or not this checkout is compiled
    shutil.copytree(pure, copy)
    built = subprocess.run([sys.executable, "scripts/compile.py"], cwd=copy, capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]

    compiled_run = _run(copy, "", str(tmp_path / "compiled.ckpt"))
    pure_run = _run(pure, "", str(tmp_path / "pure.ckpt"))
    assert compiled_run["compiled"] == list(MODULES) and pure_run["compiled"] == []
    assert compiled_run["counts"]["resolved"] > 1000 and any(p is not None for p in compiled_run["outputs"])
    assert compiled_run == {**pure_run, "compiled": list(MODULES)}
    assert _run(pure, str(tmp_path / "compiled.ckpt"), "") == pure_run          # pure, on a compiled checkpoint
    assert _run(copy, str(tmp_path / "pure.ckpt"), "") == compiled_run          # and the other way

    lane = subprocess.run([sys.executable, "-m", "pytest", "-m", "fast", "-q", "-p", "no:cacheprovider", "-x",
                           "tests"], cwd=copy, capture_output=True, text=True, timeout=1200)
    assert lane.returncode == 0, lane.stdout[-4000:] + lane.stderr[-2000:]
    assert " passed" in lane.stdout.splitlines()[-1]
