#!/usr/bin/env bash
# A real container runtime for tests/test_compose.py, on a machine with no Docker engine and
# no image registry: Debian's podman (as root) behind a Docker-compatible socket, driven by
# Debian's docker-compose 1.29, with stand-in images for the public images the compose file
# names, built from a debootstrapped Debian bookworm.
#
#   scripts/compose/runtime.sh prepare   install packages, write containers.conf, build images
#   scripts/compose/runtime.sh start     podman system service + healthcheck loop (idempotent)
#   scripts/compose/runtime.sh stop      stop what `start` started
#   scripts/compose/runtime.sh env       the variables that point docker-compose and podman here
#   scripts/compose/runtime.sh status
#
# Nothing under /etc is changed: podman reads $STATE/containers.conf through CONTAINERS_CONF.
# Everything is cached in $STATE (SHOPSTREAM_COMPOSE_STATE, default /var/tmp/shopstream-compose)
# and in podman's image store: a second `prepare` only checks. Each stand-in image carries a
# label with the hash of its build context, so editing one rebuilds that one.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
STATE=${SHOPSTREAM_COMPOSE_STATE:-/var/tmp/shopstream-compose}
SOCKET=$STATE/podman.sock
BASE=localhost/shopstream-debian:bookworm
MIRROR=${SHOPSTREAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The names the compose file and the Dockerfile use (a stand-in is tagged with each).
# (every stage of the Dockerfile starts FROM the same python image: "FROM image [AS stage]")
PYTHON_IMAGE=docker.io/library/$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$ROOT/Dockerfile" | sort -u | head -n1)
KAFKA_IMAGE=docker.io/$(sed -n 's/^ *image: *\(apache\/kafka:[^ ]*\).*/\1/p' "$ROOT/docker-compose.yml")
PROMETHEUS_IMAGE=docker.io/$(sed -n 's/^ *image: *\(prom\/prometheus:[^ ]*\).*/\1/p' "$ROOT/docker-compose.yml")

export CONTAINERS_CONF=$STATE/containers.conf

say() { echo "compose-runtime: $*" >&2; }
die() { say "$*"; exit 1; }

packages() {
  local missing=() pkg
  for pkg in podman runc debootstrap docker-compose netavark aardvark-dns conmon iptables; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

config() {
  mkdir -p "$STATE"
  # podman 4.3 as root here: limits root cannot raise, crun 1.8 refuses the hybrid cgroups,
  # no systemd (cgroupfs manager, events to a file).
  cat >"$STATE/containers.conf.tmp" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  mv "$STATE/containers.conf.tmp" "$STATE/containers.conf"
}

# sha256 over a build context's files (names and contents), plus extra strings.
context_hash() {
  local dir=$1; shift
  { (cd "$dir" && find . -type f ! -name host-ca-bundle.crt -print0 | sort -z | xargs -0 sha256sum); printf '%s\n' "$@"; } \
    | sha256sum | cut -c1-16
}

image_hash() { podman image inspect --format '{{index .Labels "shopstream.context"}}' "$1" 2>/dev/null || true; }

base_image() {
  local want=bookworm-minbase-2
  [[ $(image_hash "$BASE") == "$want" ]] && return 0
  local rootfs=$STATE/rootfs
  say "debootstrap --variant=minbase bookworm from $MIRROR (a few minutes, once)"
  rm -rf "$rootfs" "$STATE/rootfs.tar"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  # As Debian's official images: no services started by package scripts, no apt caches.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d" && chmod +x "$rootfs/usr/sbin/policy-rc.d"
  echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/90shopstream"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" --numeric-owner -cf "$STATE/rootfs.tar" .
  podman import --change 'CMD ["/bin/bash"]' --change "LABEL shopstream.context=$want" \
    "$STATE/rootfs.tar" "$BASE" >/dev/null 2>&1
  rm -rf "$rootfs" "$STATE/rootfs.tar"
}

# build NAME CONTEXT TAG...: build the stand-in unless its context hash (files, base image,
# the host's CA bundle) is unchanged.
build() {
  local name=$1 context=$2; shift 2
  local hash; hash=$(context_hash "$context" "$(podman image inspect --format '{{.Id}}' "$BASE")" \
    "$(sha256sum <"$(host_ca)")")
  local tag
  if [[ $(image_hash "$1") == "$hash" ]]; then
    for tag in "$@"; do podman image exists "$tag" || podman tag "$1" "$tag"; done
    return 0
  fi
  say "building the $name stand-in ($*)"
  local args=()
  for tag in "$@"; do args+=(-t "$tag"); done
  # --network host: package downloads go out as the host's own do.
  podman build --network host --label "shopstream.context=$hash" "${args[@]}" "$context" \
    >"$STATE/build-$name.log" 2>&1 \
    || { tail -n 30 "$STATE/build-$name.log" >&2; die "building $name failed (log: $STATE/build-$name.log)"; }
}

host_ca() {
  local bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  [[ -f $bundle ]] || bundle=/etc/ssl/certs/ca-certificates.crt
  [[ -f $bundle ]] || die "no CA bundle on the host ($bundle)"
  echo "$bundle"
}

images() {
  base_image
  local work=$STATE/contexts
  rm -rf "$work" && mkdir -p "$work"
  # python: the host's CA bundle enters the build context only for the build.
  cp -r "$HERE/images/python" "$work/python"
  cp "$(host_ca)" "$work/python/host-ca-bundle.crt"
  build python "$work/python" "$PYTHON_IMAGE" "localhost/shopstream-python:stand-in"
  rm -f "$work/python/host-ca-bundle.crt"
  # kafka: the jars scripts/kafka.sh fetches from Maven Central.
  bash "$ROOT/scripts/kafka.sh" install
  local libs=${SHOPSTREAM_KAFKA_HOME:-$HOME/.cache/shopstream/kafka-$(sed -n 's/^KAFKA_VERSION=//p' "$ROOT/scripts/kafka.sh")}/libs
  cp -r "$HERE/images/kafka" "$work/kafka"
  cp -r "$libs" "$work/kafka/libs"
  build kafka "$work/kafka" "$KAFKA_IMAGE" "localhost/shopstream-kafka:stand-in"
  cp -r "$HERE/images/prometheus" "$work/prometheus"
  build prometheus "$work/prometheus" "$PROMETHEUS_IMAGE" "localhost/shopstream-prometheus:stand-in"
  rm -rf "$work"
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

api_answers() { curl -sf --max-time 5 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; }

start() {
  [[ -f $CONTAINERS_CONF ]] || config
  if ! pid_alive "$STATE/service.pid"; then
    rm -f "$SOCKET"
    setsid nohup podman system service --time=0 "unix://$SOCKET" >>"$STATE/service.log" 2>&1 </dev/null &
    echo $! >"$STATE/service.pid"
    say "podman system service on $SOCKET (pid $!)"
  fi
  local i
  for ((i = 0; i < 60; i++)); do api_answers && break; sleep 0.5; done
  api_answers || { tail -n 20 "$STATE/service.log" >&2; die "podman API not answering on $SOCKET"; }
  if ! pid_alive "$STATE/healthchecks.pid"; then
    # podman 4.3 schedules healthchecks with systemd timers; there is no systemd here.
    setsid nohup python3 "$HERE/healthchecks.py" >>"$STATE/healthchecks.log" 2>&1 </dev/null &
    echo $! >"$STATE/healthchecks.pid"
    say "healthcheck loop (pid $!)"
  fi
}

stop() {
  local name pid
  for name in healthchecks service; do
    if pid_alive "$STATE/$name.pid"; then
      pid=$(cat "$STATE/$name.pid")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      say "stopped $name (pid $pid)"
    fi
    rm -f "$STATE/$name.pid"
  done
}

env_vars() {
  cat <<EOF
export CONTAINERS_CONF=$CONTAINERS_CONF
export DOCKER_HOST=unix://$SOCKET
export COMPOSE_DOCKER_CLI_BUILD=0
export DOCKER_BUILDKIT=0
EOF
}

status() {
  pid_alive "$STATE/service.pid" && api_answers && echo "podman API: $SOCKET" || { echo "podman API: down"; return 1; }
  pid_alive "$STATE/healthchecks.pid" && echo "healthcheck loop: pid $(cat "$STATE/healthchecks.pid")" || echo "healthcheck loop: down"
}

case ${1:-} in
  prepare) t0=$SECONDS; packages; config; images; say "ready in $((SECONDS - t0)) s" ;;
  start) start ;;
  stop) stop ;;
  env) env_vars ;;
  status) status ;;
  *) echo "usage: $0 prepare|start|stop|env|status" >&2; exit 2 ;;
esac
