"""The benchmark harness runs end to end (tiny sizes): every row of the table gets a figure.
Speed targets are checked by reading BENCHMARKS.md from a full run, not here."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.kafka


@pytest.mark.timeout(900)
def test_benchmark_harness_smoke(kafka, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--events", "5000",
               "--bootstrap-events", "20000", "--open-predictions", "20000", "--latency-seconds", "3",
               "--repeat", "1", "--out", str(tmp_path / "BENCH.md"), "--workdir", str(tmp_path / "work")]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=720, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:  # say which stage hung, and show the workers' logs
        logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in (tmp_path / "work").glob("*.log"))
        pytest.fail(f"harness still running after 720 s:\n{(exc.stderr or b'').decode()[-3000:]}{logs}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "BENCH.md").read_text()
    for row in ("1", "2", "3", "3c", "4", "6"):
        assert re.search(rf"^\| {row} \|[^|]+\| [\d,]+ \|", table, re.M), f"row {row} has no events/s:\n{table}"
    assert re.search(r"^\| 5 \|[^|]+\| [\d.]+ ms / [\d.]+ ms \|", table, re.M), table
    assert re.search(r"^\| 7 \|[^|]+\| [\d,]+ MiB", table, re.M), table
