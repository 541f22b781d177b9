#!/usr/bin/env bash
# Toxiproxy (Shopify's TCP fault proxy) for the network fault tests (tests/faults/test_network.py).
#
# `go install`s a pinned version of toxiproxy-server into the cache outside the checkout, next to
# the Kafka jars ($ESCTL_CACHE_DIR, default ~/.cache/esctl), and does nothing when it is already
# there. Prints the path of the binary. Needs Go (1.22+) and the Go module proxy (or a module
# cache that holds the version).
set -euo pipefail

VERSION="${TOXIPROXY_VERSION:-v2.5.0}"
CACHE="${ESCTL_CACHE_DIR:-$HOME/.cache/esctl}"
DEST="$CACHE/toxiproxy-$VERSION/bin"
BIN="$DEST/toxiproxy-server"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi
GO="$(command -v go || true)"
if [[ -z "$GO" && -x /usr/local/go/bin/go ]]; then
    GO=/usr/local/go/bin/go
fi
if [[ -z "$GO" ]]; then
    echo "toxiproxy.sh: Go is needed to install toxiproxy-server $VERSION (https://go.dev/dl, or apt-get install golang-go)" >&2
    exit 1
fi
mkdir -p "$DEST"
# a temporary GOBIN: a half-built binary never sits where the check above would take it for done
tmp="$(mktemp -d "$CACHE/toxiproxy-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" GOFLAGS=-mod=mod "$GO" install "github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION" >&2
mv "$tmp/server" "$BIN"
echo "$BIN"
