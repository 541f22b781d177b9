#!/usr/bin/env bash
# The Debian packages this project needs, installed when missing (as root; otherwise the missing
# ones are named and the script fails). Called by `make` before anything else (`make up`,
# `make test`, `make check` on a new machine) and by `.ci/run`; idempotent and quick when all
# are there. With --containers, also the container tier's packages (containers/packages.env;
# containers/tier.sh installs them on its own too).
#
#   make, python3-venv     the build and the project's virtual environment
#   openjdk-17-jre-headless, maven   the Kafka broker (its jars resolved by Maven) for `esctl up`
#                          and the tests
#   postgresql             the PostgreSQL tests (a local server started by the fixtures)
#   kcat                   the non-Python Kafka client of the end-to-end tests
#   prometheus             for its `promtool`: `make test-contracts` checks the scrape configuration
#                          and unit-tests the alert rules (deploy/prometheus/check.sh). On a host
#                          run by systemd the package also enables and starts a Prometheus server
#                          (port 9090); when this script installed it, it stops and disables
#                          that server again (in a container, policy-rc.d keeps it from starting)
# Installed with --no-install-recommends: every package used is named, none comes by accident.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v make >/dev/null 2>&1 || missing+=(make)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [[ "${1:-}" == "--containers" ]] && ! { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then
  . containers/packages.env
  for pkg in $CONTAINER_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing system packages: ${missing[*]} (install them, or run as root on Debian)" >&2
    exit 1
  fi
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]]; then
    # only promtool is wanted: not a Prometheus server running (and starting at boot) beside it
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    echo "installed prometheus for promtool; its server (prometheus.service) is stopped and disabled"
  fi
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "Python >= 3.11 is required (python3 is $(python3 -V 2>&1))" >&2
  exit 1
}
