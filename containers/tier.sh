#!/usr/bin/env bash
# Run the container tier: `containers/tier.sh <pytest command...>`.
#
# With a Docker engine: the official images (apache/kafka, postgres, python) and `docker compose`.
# Without one: podman from Debian (installed when missing and root), configured as in
# docs/containers.md, its Docker-compatible API on a socket for testcontainers, the local images
# built (or reused) by containers/build-images.sh, and podman-compose. A podman service this script
# started is stopped at the end; containers are removed by the tests themselves.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
log() { printf '\033[1m[container tier]\033[0m %s\n' "$*" >&2; }

export ESCTL_CONTAINER_TIER=1

if docker info >/dev/null 2>&1; then
    log "Docker engine found: official images, docker compose"
    export COMPOSE_CMD="${COMPOSE_CMD:-docker compose}" CONTAINER_CLI=docker
    exec "$@"
fi

. "$HERE/packages.env"
absent=()
for pkg in $CONTAINER_PACKAGES; do dpkg -s "$pkg" >/dev/null 2>&1 || absent+=("$pkg"); done
if ((${#absent[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing ${absent[*]} (Debian packages, see containers/packages.env)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${absent[@]}" >/dev/null
    elif ! command -v podman >/dev/null; then
        log "no Docker engine and no podman: install podman (or Docker) to run this tier"
        exit 2
    else
        log "missing Debian packages ${absent[*]} (run as root to install them): continuing with what is here"
    fi
fi

CONF=/etc/containers/containers.conf
if [ "$(id -u)" = 0 ] && ! grep -q 'runtime = "runc"' "$CONF" 2>/dev/null; then
    log "configuring podman for this machine ($CONF: runc, cgroupfs, lower ulimits)"
    mkdir -p /etc/containers
    cat >"$CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
fi

SOCK=/run/podman/podman.sock
STARTED=""
if ! curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
    mkdir -p /run/podman
    podman system service --time=0 "unix://$SOCK" >/tmp/esctl-podman-service.log 2>&1 &
    STARTED=$!
    for _ in $(seq 1 50); do
        curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    log "podman API on $SOCK (pid $STARTED)"
fi
cleanup() {
    if [ -n "$STARTED" ]; then kill "$STARTED" 2>/dev/null || true; fi
}
trap cleanup EXIT

if [ -x "$ROOT/.venv/bin/python" ]; then export PYTHON_BIN="$ROOT/.venv/bin/python"; fi
bash "$HERE/build-images.sh"

export DOCKER_HOST="unix://$SOCK"
export TESTCONTAINERS_RYUK_DISABLED=true             # the reaper image cannot be pulled here
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
export KAFKA_IMAGE=localhost/esctl-kafka:4.1.1
export POSTGRES_IMAGE=localhost/esctl-postgres:15
export PYTHON_IMAGE=localhost/esctl-python:3.11
export SERVICE_IMAGE=localhost/kafka-es-blog:latest
export CONTAINER_CLI=podman
export COMPOSE_CMD="${COMPOSE_CMD:-$ROOT/.venv/bin/podman-compose}"
"$@"
