"""Shared pieces of the benchmark scripts: the event stream, the ceiling recorder,
Kafka topics, worker subprocesses, and reading timestamps back from Kafka.

Only public tools are used: the shopstream package as installed, the `shopstream`
CLI, kafka-python and River. Nothing here is imported by the package or its tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Optional

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # kafka_tools, shared with tests/
import kafka_tools  # noqa: E402
BOOTSTRAP = os.environ.get("SHOPSTREAM_BENCH_KAFKA", "127.0.0.1:9092")
SEED = 7
CACHE = Path(os.environ.get("SHOPSTREAM_BENCH_CACHE", Path.home() / ".cache" / "shopstream-bench"))

_encode = msgspec.json.Encoder().encode


# -- the event stream ------------------------------------------------------------------

def time_calls(owner, name: str, spent: list, clock=time.time) -> None:
    """Wrap `owner.name` so that each call appends (start, seconds) to `spent` (the traces of
    worker_variant.py and request_trace.py time the worker's own methods this way)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append((start, clock() - start))

    setattr(owner, name, wrapper)


def make_messages(n: int, seed: int = SEED) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs exactly as `shopstream produce` sends them: key = user_id,
    value = the generator's event as JSON."""
    from shopstream.generator import generate

    return [(str(r["user_id"]).encode(), _encode(r)) for r in generate(n, seed=seed)]


def paced_records(n: int, events_per_second: float, seed: int = 7) -> list[dict]:
    """The generator's `n` events with event time advancing one second per `events_per_second` events,
    as a live shop's clock does at that feed rate (`serving.py`'s feed: 1,500)."""
    from shopstream.generator import generate

    return list(generate(n, seed=seed, days=n / events_per_second / 86400))


def paced_backlog(n: int, events_per_second: float, seed: int = 7) -> list[dict]:
    """The first `n` of 20% more `paced_records`: a state built from them ends as a live shop's
    does, with predictions open (the generator's last events jump ahead and expire everything)."""
    return paced_records(int(n * 1.2), events_per_second, seed)[:n]


def history_file(n: int, seed: int = SEED) -> Path:
    """A cached JSONL history of `n` generated events (what `shopstream generate` writes)."""
    from shopstream.generator import generate, write_jsonl

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"history-{n}-seed{seed}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_jsonl(generate(n, seed=seed), tmp)
        tmp.rename(path)
    return path


# -- the ceiling: the engine's own model calls, recorded --------------------------------

def record_model_calls(events, model: str = "logreg", features: str = "shop", **engine_options):
    """Run the engine once and record every model call it makes.

    Returns (xs, ys, ops, engine): xs[i] is the feature dict of the i-th prediction,
    ys[i] the label it was resolved with (None if still open at the end), and ops the
    calls in the engine's own order: i >= 0 predicts xs[i], ~i learns xs[i] with ys[i]."""
    from shopstream.engine import Engine

    xs: list = []
    ys: list = []
    ops: list = []

    class RecordingEngine(Engine):
        def _predict(self, event, ref):
            prediction = super()._predict(event, ref)
            prediction.ref = len(xs)          # index into xs (the benchmark needs no offsets)
            ops.append(len(xs))
            xs.append(prediction.x)
            ys.append(None)
            return prediction

        def _resolve(self, prediction, y_true, now):
            i = prediction.ref
            ys[i] = y_true
            ops.append(~i)
            super()._resolve(prediction, y_true, now)

    engine = RecordingEngine.fresh(model, features, **engine_options)
    for event in events:
        engine.process(event)
    return xs, ys, ops, engine


# -- Kafka --------------------------------------------------------------------------------

def ensure_kafka(bootstrap: str = BOOTSTRAP) -> None:
    """Start the project's broker (scripts/kafka.sh) if nothing answers. Never stops it."""
    kafka_tools.ensure_kafka(bootstrap)


class Topics:
    """Create uniquely named topics and delete them all at the end."""

    def __init__(self, bootstrap: str = BOOTSTRAP):
        from kafka import KafkaAdminClient

        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self.created: list[str] = []

    def new(self, prefix: str, partitions: int = 1, configs: Optional[dict] = None,
            name: Optional[str] = None) -> str:
        from kafka.admin import NewTopic

        name = name or f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
        self.admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
        self.created.append(name)
        deadline = time.time() + 30
        while time.time() < deadline:
            if name in self.admin.list_topics():
                return name
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} not ready")

    def for_worker(self, prefix: str, partitions: int = 1, predictions_configs: Optional[dict] = None) -> str:
        """An events topic plus its -predictions, -dlq and -control topics (created up front so the
        worker's first send does not wait for auto-creation inside the measurement)."""
        topic = self.new(prefix, partitions)
        self.new("", 1, predictions_configs, name=f"{topic}-predictions")
        self.new("", 1, name=f"{topic}-dlq")
        self.new("", 1, name=f"{topic}-control")
        return topic

    def close(self) -> None:
        try:
            if self.created:
                self.admin.delete_topics(self.created)
        except Exception:  # a leftover topic harms nothing
            pass
        self.admin.close()


def producer(bootstrap: str = BOOTSTRAP, **config):
    from kafka import KafkaProducer

    options = {"linger_ms": 20, "batch_size": 256 * 1024, "acks": "all"}  # as `shopstream produce`
    options.update(config)
    return KafkaProducer(bootstrap_servers=bootstrap, **options)


def prefill(topic: str, messages, bootstrap: str = BOOTSTRAP) -> float:
    """Send all messages (keyed) before any worker starts; return seconds taken."""
    from stream.produce import send_all

    started = time.perf_counter()
    p = producer(bootstrap)
    try:
        send_all(p, topic, messages)
    finally:
        p.close()
    return time.perf_counter() - started


def read_all(topic: str, bootstrap: str = BOOTSTRAP, timeout: float = 300.0) -> list:
    """Every record of every partition of `topic`, from the beginning to the current end."""
    return kafka_tools.read_topic(bootstrap, topic, timeout=timeout)


def prediction_refs(records: list) -> list[tuple[int, int, int]]:
    """(source partition, source offset, prediction timestamp ms), in timestamp order, from
    records of either prediction format (`stream.outputs.decode_predictions`)."""
    from stream.outputs import decode_predictions

    refs = [(p.partition, p.offset, r.timestamp) for r in records for p in decode_predictions(r)]
    refs.sort(key=lambda t: (t[2], t[0], t[1]))
    return refs


# -- workers as subprocesses ---------------------------------------------------------------

def worker_command(topic: str, group: str, checkpoints: Path, *extra: str, bootstrap: str = BOOTSTRAP,
                   python: Optional[list[str]] = None) -> list[str]:
    """The production command line: `python -m cli worker ...`, with the run's own
    predictions, dead-letter and control topics (the control channel stays on, as deployed)."""
    return [*(python or [sys.executable]), "-m", "cli", "worker", "--bootstrap-servers", bootstrap,
            "--topic", topic, "--group", group, "--checkpoints", str(checkpoints),
            "--predictions-topic", f"{topic}-predictions", "--dead-letter-topic", f"{topic}-dlq",
            "--control-topic", f"{topic}-control", "--metrics-port", "-1", "--rejoin-deadline", "60", *extra]


def worker_env() -> dict:
    # The CLI reads SHOPSTREAM_* as defaults: run workers with none of the caller's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    def __init__(self, command: list[str], log_path: Path, env: Optional[dict] = None):
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=env or worker_env())

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if re.search(pattern, self.log()):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ stream\.worker: (.*)$", re.M)  # its logger


def log_events(text: str) -> list[tuple[float, str]]:
    """(epoch seconds, message) of the worker's own log lines (asctime is local time).

    >>> log_events("2026-12-03 10:00:00,250 INFO stream.worker: handled 5 events")[0][1]
    'handled 5 events'
    """
    out = []
    for stamp, message in _LOG_LINE.findall(text):
        moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        out.append((moment.timestamp(), message))
    return out


def handled_count(text: str) -> Optional[int]:
    found = re.findall(r"handled (\d+) events", text)
    return int(found[-1]) if found else None


# -- the machine -----------------------------------------------------------------------------

def machine() -> dict:
    import platform

    info = {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0))}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
        mhz = re.search(r"^cpu MHz\s*:\s*(.*)$", cpuinfo, re.M)
        info["cpu"] = model.group(1).strip() if model else platform.processor()
        if mhz:
            info["cpu_mhz"] = float(mhz.group(1))
    except OSError:
        info["cpu"] = platform.processor()
    try:
        meminfo = Path("/proc/meminfo").read_text()
        info["ram_gib"] = round(int(re.search(r"MemTotal:\s*(\d+)", meminfo).group(1)) / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    info["os"] = f"{platform.system()} {platform.release()}"
    info["python"] = platform.python_version()
    from shopstream.compiled import compiled

    info["compiled"] = compiled()   # what scripts/compile.py built: the workers, children of this checkout, run it too
    from importlib.metadata import version

    for dist in ("river", "kafka-python", "msgspec", "prometheus-client", "numpy"):
        try:
            info[dist] = version(dist)
        except Exception:
            info[dist] = "?"
    script = (ROOT / "scripts" / "kafka.sh").read_text()
    found = re.search(r"^KAFKA_VERSION=(\S+)", script, re.M)
    info["kafka broker"] = f"Apache Kafka {found.group(1) if found else '?'} (scripts/kafka.sh, single node, loopback)"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True)
        info["git"] = head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return info


def rss_mb() -> tuple[float, float]:
    """(current VmRSS, peak VmHWM) of this process in MiB (2^20 bytes)."""
    status = Path("/proc/self/status").read_text()
    rss = int(re.search(r"VmRSS:\s*(\d+) kB", status).group(1))
    hwm = int(re.search(r"VmHWM:\s*(\d+) kB", status).group(1))
    return rss / 1024, hwm / 1024


def say(*parts) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def make_raw_messages(n: int, seed: int = SEED, width: int = 8) -> list[tuple[bytes, bytes]]:
    """Labelled events with raw features (`--features raw`, a generic labelled stream):
    `width` floats and a label drawn from a fixed logistic model; each event is predicted
    and learned at once, as in river.evaluate.progressive_val_score."""
    import math
    import random

    import msgspec

    rng = random.Random(seed)
    weights = [rng.uniform(-2, 2) for _ in range(width)]
    out = []
    for i in range(n):
        x = {f"f{j}": rng.gauss(0.0, 1.0) for j in range(width)}
        z = sum(w * v for w, v in zip(weights, x.values()))
        y = rng.random() < 1 / (1 + math.exp(-z))
        row = {"event_id": f"r{i}", "event_time": 1.7e9 + i * 0.01, "event_type": "view", "product_id": str(i % 1000),
               "user_id": f"u{i % 5000}", "user_session": f"s{i % 20000}", "features": x, "label": y}
        out.append((row["user_id"].encode(), msgspec.json.encode(row)))
    return out
