#!/usr/bin/env bash
# The Prometheus configuration and alert rules of this directory, checked with promtool (Debian's
# `prometheus` package; scripts/system-packages.sh installs it): both scrape configurations
# (`promtool check config`, which also checks the rules they load) and the rules' unit tests
# (`promtool test rules rules.test.yml`). Run by `make test-contracts`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v promtool >/dev/null 2>&1 || {
  echo "promtool not found: install Debian's prometheus package (bash scripts/system-packages.sh as root)" >&2
  exit 1
}
# promtool check config wants the scrape token file to exist: check a copy with a stand-in token,
# so that no real token is needed (nor written) here
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here"/*.yml "$work"/
echo "stand-in-token-for-promtool-check-config" >"$work/operator.token"
for config in prometheus.yml prometheus-compose.yml; do
  (cd "$work" && promtool check config "$config")
done
cd "$here"
promtool test rules rules.test.yml
