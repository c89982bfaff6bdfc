"""Fixtures for tests against the real Kafka broker that scripts/kafka.sh runs.

`kafka` makes sure a broker answers on SHOPSTREAM_TEST_KAFKA (default 127.0.0.1:9092),
starting it with scripts/kafka.sh when it does not; `new_topic` creates a fresh,
uniquely named topic per call, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("SHOPSTREAM_TEST_KAFKA", "127.0.0.1:9092")
sys.path.insert(0, str(ROOT / "scripts"))  # kafka_tools, shared with benchmarks/

from kafka_tools import ensure_kafka  # noqa: E402


@pytest.fixture(scope="session")
def kafka() -> str:
    ensure_kafka(BOOTSTRAP)
    return BOOTSTRAP


@pytest.fixture
def new_topic(kafka, request):
    """new_topic(partitions=1) -> a fresh topic name, created and ready."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka)
    created = []

    def make(partitions: int = 1, suffix: str = "") -> str:
        name = f"t-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}{suffix}".replace("[", "-").replace("]", "")
        # Kept whole (retention.ms -1): a test that dates its records weeks back (a generated history's
        # own times) gets a segment per 7 days of them, and the broker's next retention check (every
        # 5 min) deleted all but the last week's, when it fell between the produce and the worker's read.
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs={"retention.ms": "-1"})])
        deadline = time.time() + 20
        while time.time() < deadline:
            # Ready = every partition has a leader: a producer that starts earlier waits, and on a
            # loaded machine its first batches can expire.
            [described] = admin.describe_topics([name])
            ready = described["partitions"] if described["error_code"] == 0 else []
            if len(ready) == partitions and all(p["leader_id"] >= 0 for p in ready):
                created.append(name)
                return name
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} not ready")

    yield make
    try:
        admin.delete_topics(created)
    except Exception:  # cleanup only: a leftover topic harms nothing
        pass
    admin.close()


# A test that needs none of these is in-process and quick: the fast lane (`pytest -m fast`).
NOT_FAST = ("kafka", "prometheus", "compose", "slow")


def pytest_collection_modifyitems(items):
    """Mark the fast lane, and run the compose test last: it is the slowest, and a runtime
    problem there should not hide what every other test found."""
    for item in items:
        if not any(item.get_closest_marker(name) for name in NOT_FAST):
            item.add_marker(pytest.mark.fast)
    items.sort(key=lambda item: item.get_closest_marker("compose") is not None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reusable_port() -> int:
    """A free port below the kernel's ephemeral range, for a server that is stopped and started
    again on it: while it is down, no outgoing connection can be given the port as its own
    (a free_port() was, once: a private broker's restart failed with "Address already in use")."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 10000 and {low}")


def worker_command(bootstrap: str, topic: str, checkpoints: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli", "worker", "--bootstrap-servers", bootstrap,
            "--topic", topic, "--group", f"g-{topic}", "--checkpoints", str(checkpoints),
            "--predictions-topic", f"{topic}-predictions", "--dead-letter-topic", f"{topic}-dlq", *extra]


class LoggedProcess:
    """A long-running command (a worker) whose stderr goes to a file, `log_path`, not to a pipe:
    a pipe read only at the end holds 64 KiB, and a worker that logs more before the test reads
    blocks on its next log line, its consumer's IO thread too (a red CI run, tests/test_deploy.py).

    `copy_from_pipe`: a pipe still, emptied into the file at once by a thread of the test, for a
    worker whose own file writes the test limits (RLIMIT_FSIZE): that would cut its log file too."""

    def __init__(self, command: list[str], log_path: Path, env: dict, copy_from_pipe: bool = False):
        self.log_path = log_path
        self._copier = None
        if copy_from_pipe:
            out = open(log_path, "wb")
            self.proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
            self._copier = threading.Thread(target=self._copy, args=(out,), daemon=True)
            self._copier.start()
        else:
            with open(log_path, "wb") as log_file:
                self.proc = subprocess.Popen(command, env=env, stderr=log_file)

    def _copy(self, out) -> None:
        with out, self.proc.stderr:
            while chunk := os.read(self.proc.stderr.fileno(), 65536):
                out.write(chunk)
                out.flush()

    def log(self) -> str:
        """The log so far; all of it once the process has ended."""
        if self._copier is not None and self.proc.poll() is not None:
            self._copier.join(timeout=30)   # to the pipe's end: the last lines
        return self.log_path.read_text(errors="replace")

    def finish(self, timeout: float | None = None) -> str:
        """Waits for the process to end (TimeoutExpired past `timeout`, as communicate()); its whole log."""
        self.proc.wait(timeout=timeout)
        return self.log()


# Test groups rebalance within seconds: a join still unfinished after a minute is a stuck client.
WORKER_ENV = {**os.environ, "SHOPSTREAM_SESSION_TIMEOUT_MS": "6000", "SHOPSTREAM_REJOIN_DEADLINE": "60",
              "PYTHONUNBUFFERED": "1"}


class PrivateBroker:
    """A second broker of this test module's own, with a SASL listener: it can be stopped
    and restarted (outage tests) without disturbing the shared one."""

    def __init__(self, data_dir: Path):
        ports: list[int] = []
        while len(ports) < 3:   # three distinct ones: none is held until the broker binds it
            port = reusable_port()
            ports += [port] if port not in ports else []
        self.port, self.controller_port, self.sasl_port = ports
        self.env = {**os.environ, "SHOPSTREAM_KAFKA_DATA": str(data_dir), "KAFKA_PORT": str(self.port),
                    "KAFKA_CONTROLLER_PORT": str(self.controller_port), "KAFKA_SASL_PORT": str(self.sasl_port),
                    "KAFKA_SASL_USER": "shop", "KAFKA_SASL_PASSWORD": "pa55-word"}
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_bootstrap = f"127.0.0.1:{self.sasl_port}"

    def script(self, command: str) -> None:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), command], check=True, env=self.env)


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory):
    broker = PrivateBroker(tmp_path_factory.mktemp("private-kafka"))
    broker.script("start")
    yield broker
    broker.script("wipe")


def may_raise_priority() -> bool:
    """Whether this process may lower a nice value again (a checkpoint copy's `hurry`): CAP_SYS_NICE,
    or an RLIMIT_NICE that allows the worker's own priority."""
    import os
    import resource

    try:
        with open("/proc/self/status") as status:
            caps = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
        if caps >> 23 & 1:   # CAP_SYS_NICE
            return True
    except (OSError, StopIteration, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - os.getpriority(os.PRIO_PROCESS, 0) <= soft
