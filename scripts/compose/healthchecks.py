"""Run podman healthchecks on schedule: podman 4.3 relies on systemd timers for that, and there
is no systemd here, so without this loop no container ever becomes healthy and compose's
`depends_on: condition: service_healthy` waits forever.

Every running container with a healthcheck gets `podman healthcheck run` once per its
configured interval (podman itself applies timeout, retries and start period). Stops on SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

running = True


def stop(*_):
    global running
    running = False


def seconds(value) -> float:
    """A healthcheck interval as podman prints it: nanoseconds, or a Go duration like 1m30s."""
    if isinstance(value, (int, float)):
        return value / 1e9 if value > 1000 else float(value)
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ns|us|µs|ms|s|m|h)", str(value)):
        total += float(number) * {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total or 30.0


def healthchecked() -> dict[str, float]:
    """id -> interval (s) of running containers that have a healthcheck."""
    ids = subprocess.run(["podman", "ps", "-q", "--no-trunc"], capture_output=True, text=True).stdout.split()
    if not ids:
        return {}
    result = subprocess.run(["podman", "inspect", *ids], capture_output=True, text=True)
    try:
        containers = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        return {}
    out = {}
    for container in containers:
        check = (container.get("Config") or {}).get("Healthcheck") or {}
        test = check.get("Test") or []
        if test and test[0] != "NONE":
            out[container["Id"]] = max(1.0, seconds(check.get("Interval") or 30))
    return out


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    due: dict[str, float] = {}
    while running:
        now = time.monotonic()
        for cid, interval in healthchecked().items():
            if due.get(cid, 0.0) <= now and running:
                subprocess.run(["podman", "healthcheck", "run", cid], capture_output=True, timeout=120)
                due[cid] = time.monotonic() + interval
        time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
