#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (Python deps,
# Debian's prometheus + promtool and docker-compose for the deployment checks, a C compiler, the Kafka
# jars, podman and the stand-in images for the compose test), runs ruff and mypy, starts
# the real Kafka broker, runs pytest, stops the broker.
#
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "test.sh: $*" >&2; }

say "installing shopstream and its test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"

# Lint and types first: a minute at most, and a failure here names the line.
say "ruff (pycodestyle, pyflakes, bugbear) and mypy (every package)"
python3 -m ruff check .
python3 -m mypy

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v cc >/dev/null || missing+=(gcc libc6-dev)   # tests/test_compiled.py compiles the engine
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tests/test_compose.py runs docker-compose.yml under podman: install it and build the stand-in
# images now (cached; a few minutes on a fresh machine). A failure here does not stop the suite:
# that test prepares again and fails with the reason.
say "preparing the container runtime for tests/test_compose.py"
bash scripts/compose/runtime.sh prepare || say "container runtime NOT prepared: tests/test_compose.py will fail"

# A broker we start, we stop; one that was already running is left alone.
started_kafka=0
if ! bash scripts/kafka.sh status >/dev/null 2>&1; then
  bash scripts/kafka.sh start
  started_kafka=1
fi
cleanup() { ((started_kafka)) && bash scripts/kafka.sh stop || true; }
trap cleanup EXIT

python3 -m pytest "$@"
