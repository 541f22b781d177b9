#!/usr/bin/env bash
# Build the local container images on a machine without an image registry, with podman:
#
#   localhost/esctl-base:bookworm    Debian bookworm (debootstrap) with a JRE, Python 3.11, PostgreSQL
#   localhost/esctl-kafka:4.1.1      the base + the broker jars resolved by Maven + a KRaft start script
#                                    that reads the same KAFKA_* variables as the official apache/kafka
#   localhost/esctl-postgres:15      the base + an entry point that reads the same POSTGRES_* variables
#                                    as the official postgres image
#   localhost/esctl-python:3.11      the base with `python` and pip usable like the official python image
#   localhost/kafka-es-blog:latest   the project's Dockerfile built on esctl-python (PYTHON_IMAGE)
#
# Images are reused when they were built from the same inputs (a label holds their hash; the
# service image's tag holds the hash of the sources); FORCE=1 rebuilds all. Needs root, podman,
# debootstrap.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${ESCTL_CACHE_DIR:-$HOME/.cache/esctl}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KAFKA_VERSION="4.1.1"
BASE=localhost/esctl-base:bookworm
KAFKA=localhost/esctl-kafka:$KAFKA_VERSION
POSTGRES=localhost/esctl-postgres:15
PYTHON=localhost/esctl-python:3.11
SERVICE=localhost/kafka-es-blog:latest
PODMAN=(podman)

log() { printf '\033[1m[images]\033[0m %s\n' "$*" >&2; }

exists() { [ "${FORCE:-0}" != 1 ] && "${PODMAN[@]}" image exists "$1"; }

# current IMAGE HASH: the image exists and was built from inputs with this hash (its label).
current() {
    exists "$1" && [ "$("${PODMAN[@]}" image inspect --format '{{index .Labels "esctl.inputs"}}' "$1")" = "$2" ]
}

inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }

build_base() {
    if exists "$BASE"; then log "$BASE exists"; return; fi
    local rootfs="$CACHE/images/bookworm-rootfs"
    log "debootstrap of Debian bookworm into $rootfs (a few minutes the first time)"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    debootstrap --variant=minbase \
        --include=openjdk-17-jre-headless,python3,python3-pip,python3-venv,postgresql,ca-certificates,procps \
        bookworm "$rootfs" "$MIRROR" >"$CACHE/images/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/images/debootstrap.log"; exit 1; }
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/*
    log "importing $BASE"
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE" >/dev/null
    rm -rf "$rootfs"
}

build_kafka() {
    local sum
    sum="$(inputs_hash "$HERE"/kafka/*)"
    if current "$KAFKA" "$sum"; then log "$KAFKA is current"; return; fi
    local libs="$CACHE/kafka-$KAFKA_VERSION/libs"
    if [ ! -d "$libs" ]; then
        log "resolving the Kafka jars with Maven"
        (cd "$ROOT" && "${PYTHON_BIN:-python3}" -m esctl kafka install)
    fi
    local ctx
    ctx="$(mktemp -d)"
    cp -r "$libs" "$ctx/libs"
    cp "$HERE/kafka/run.sh" "$ctx/run.sh"
    cp "$HERE/kafka/Containerfile" "$HERE/kafka/log4j2.properties" \
        "$HERE/kafka/kafka-broker-api-versions.sh" "$ctx/"
    log "building $KAFKA"
    "${PODMAN[@]}" build -q --label esctl.inputs="$sum" --build-arg BASE="$BASE" -t "$KAFKA" "$ctx" >/dev/null
    rm -rf "$ctx"
}

build_postgres() {
    local sum
    sum="$(inputs_hash "$HERE"/postgres/*)"
    if current "$POSTGRES" "$sum"; then log "$POSTGRES is current"; return; fi
    log "building $POSTGRES"
    "${PODMAN[@]}" build -q --label esctl.inputs="$sum" --build-arg BASE="$BASE" -t "$POSTGRES" "$HERE/postgres" >/dev/null
}

build_python() {
    local sum
    sum="$(inputs_hash "$HERE"/python/* /usr/local/share/ca-certificates/*.crt 2>/dev/null)"
    if current "$PYTHON" "$sum"; then log "$PYTHON is current"; return; fi
    log "building $PYTHON"
    local ctx
    ctx="$(mktemp -d)"
    cp "$HERE/python/Containerfile" "$ctx/"
    mkdir -p "$ctx/certs"
    cp /usr/local/share/ca-certificates/*.crt "$ctx/certs/" 2>/dev/null || true
    "${PODMAN[@]}" build -q --label esctl.inputs="$sum" --build-arg BASE="$BASE" -t "$PYTHON" "$ctx" >/dev/null
    rm -rf "$ctx"
}

build_service() {
    # The tag carries a hash of what the image is built from (its base image, the Dockerfile and
    # every file it copies, tracked by git or not): a changed or added source, a new image.
    local sum
    sum="$({ "${PODMAN[@]}" image inspect --format '{{.Id}}' "$PYTHON"; bash "$HERE/source-hash.sh" "$ROOT"; } | sha256sum | cut -c1-12)"
    local tagged="localhost/kafka-es-blog:src-$sum"
    if exists "$tagged"; then
        log "$tagged exists"
    else
        log "building $tagged from the Dockerfile on $PYTHON"
        "${PODMAN[@]}" build -q --network=host --build-arg PYTHON_IMAGE="$PYTHON" -t "$tagged" "$ROOT" >/dev/null
    fi
    "${PODMAN[@]}" tag "$tagged" "$SERVICE"
    # older builds of the sources are of no use: keep the disk bounded
    "${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' localhost/kafka-es-blog \
        | grep ':src-' | grep -v "^$tagged\$" | xargs -r "${PODMAN[@]}" rmi >/dev/null 2>&1 || true
}

main() {
    mkdir -p "$CACHE/images"
    build_base
    build_kafka
    build_postgres
    build_python
    build_service
    log "ready: $KAFKA $POSTGRES $PYTHON $SERVICE"
}

main "$@"
