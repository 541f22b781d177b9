#!/usr/bin/env bash
# Validate the AsyncAPI document with the AsyncAPI project's own CLI (@asyncapi/cli), pinned in
# tools/asyncapi/package-lock.json and installed there (`npm ci`) on the first run; later runs
# reuse the install while the lock file is unchanged.
#
#   bash scripts/asyncapi-validate.sh [FILE]   (default: schemas/asyncapi.yaml)
#
# Exit 0: valid, no error and no warning (`--fail-severity warn`); non-zero otherwise.
# The CLI's usage analytics are off: it reads them from a config file, here one of ours under
# the install dir (ASYNCAPI_METRICS_CONFIG_PATH) saying disabled, never ~/.asyncapi-analytics.
set -euo pipefail
cd "$(dirname "$0")/.."

DOC=${1:-schemas/asyncapi.yaml}
TOOLS=tools/asyncapi
BIN=$TOOLS/node_modules/.bin/asyncapi
STAMP=$TOOLS/node_modules/.installed-lock

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "error: node and npm are needed to validate $DOC with @asyncapi/cli (Node.js 20 or" \
        "newer: apt-get install nodejs npm, or https://nodejs.org); they are not on PATH" >&2
    exit 2
fi
if [ ! -f "$DOC" ]; then
    echo "error: $DOC does not exist: run \`make schemas\`" >&2
    exit 2
fi

lock_hash=$(sha256sum "$TOOLS/package-lock.json" | cut -d' ' -f1)
if [ ! -x "$BIN" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$lock_hash" ]; then
    echo "installing @asyncapi/cli into $TOOLS (npm ci, once per lock file)" >&2
    # --ignore-scripts: its postinstall only adds shell completion to the user's rc files
    npm ci --prefix "$TOOLS" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
    echo "$lock_hash" >"$STAMP"
fi

analytics=$TOOLS/node_modules/.asyncapi-analytics
if [ ! -f "$analytics" ]; then
    echo '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"ci"}' >"$analytics"
fi
export ASYNCAPI_METRICS_CONFIG_PATH="$PWD/$analytics"
export SUPPRESS_NO_CONFIG_WARNING=1 SUPPRESS_STRICTNESS_CHECK=1 # node-config notices about ./config

exec "$BIN" validate "$DOC" --fail-severity warn
