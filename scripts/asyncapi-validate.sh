#!/usr/bin/env bash
# Validate the AsyncAPI document with the AsyncAPI project's own CLI (@asyncapi/cli), pinned by
# tools/asyncapi/package-lock.json.
#
#   bash scripts/asyncapi-validate.sh [FILE]   (default: schemas/asyncapi.yaml)
#
# Exit 0: valid, no error and no warning (`--fail-severity warn`); 1: the validator found
# problems (listed); 2: node/npm missing or no such file.
#
# The CLI (1268 npm packages, 450 MB) is installed with `npm ci` once per lock file, outside the
# checkout like the Kafka jars: $ESCTL_CACHE_DIR (default ~/.cache/esctl)/asyncapi-cli-<hash of
# the lock>/, so fresh clones and worktrees on one machine share it; a changed lock file gets a
# directory of its own. The install happens in a temporary directory moved into place when
# complete, so an interrupted one is never mistaken for an install.
# The CLI's usage analytics are off: it reads them from a config file, here one of ours saying
# disabled (ASYNCAPI_METRICS_CONFIG_PATH), never ~/.asyncapi-analytics.
set -euo pipefail
cd "$(dirname "$0")/.."

DOC=${1:-schemas/asyncapi.yaml}
LOCK=tools/asyncapi/package-lock.json

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "error: node and npm are needed to validate $DOC with @asyncapi/cli (Node.js 20 or" \
        "newer: apt-get install nodejs npm, or https://nodejs.org); they are not on PATH" >&2
    exit 2
fi
if [ ! -f "$DOC" ]; then
    echo "error: $DOC does not exist: run \`make schemas\`" >&2
    exit 2
fi

CACHE=${ESCTL_CACHE_DIR:-$HOME/.cache/esctl}
HOME_DIR="$CACHE/asyncapi-cli-$(sha256sum "$LOCK" | cut -c1-16)"
BIN=$HOME_DIR/node_modules/.bin/asyncapi
if [ ! -x "$BIN" ]; then
    echo "installing @asyncapi/cli into $HOME_DIR (npm ci, once per lock file)" >&2
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$HOME_DIR.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cp tools/asyncapi/package.json "$LOCK" "$tmp/"
    # --ignore-scripts: its postinstall only adds shell completion to the user's rc files
    npm ci --prefix "$tmp" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
    echo '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"ci"}' \
        >"$tmp/asyncapi-analytics.json"
    # another run may have finished first: keep its install, drop ours
    mv -T "$tmp" "$HOME_DIR" 2>/dev/null || true
fi

export ASYNCAPI_METRICS_CONFIG_PATH="$HOME_DIR/asyncapi-analytics.json"
export SUPPRESS_NO_CONFIG_WARNING=1 SUPPRESS_STRICTNESS_CHECK=1 # node-config notices about ./config

"$BIN" validate "$DOC" --fail-severity warn
