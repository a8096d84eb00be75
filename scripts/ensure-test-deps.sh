#!/usr/bin/env bash
# Installs what the tests need beyond cargo, idempotently:
#   - Debian's thrift-compiler (drift check, Python bindings for the cross-client tests)
#   - a venv at target/pyenv with Apache's `thrift` package from PyPI
#   - iproute2's `ip` (the network-namespace test harness, scoot_local_cluster::netns)
#   - Debian's chromium (the scheduler's web pages in a headless browser, tests/e2e/ui.rs)
#   - Debian's postgresql-15 (the PostgreSQL saga log: tests start private servers from its
#     binaries, scoot_local_cluster::postgres)
# With the argument `thrift`, only the compiler is ensured.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! command -v thrift >/dev/null 2>&1; then
  echo "installing thrift-compiler (Debian)"
  apt_install thrift-compiler
fi
[ "${1:-}" = thrift ] && exit 0

# Often in sbin, which a user's PATH may lack; the harness looks there too.
if ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
  echo "installing iproute2 (Debian)"
  apt_install iproute2
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (Debian)"
  apt_install chromium
fi

if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  echo "installing postgresql-15 (Debian)"
  apt_install postgresql-15
fi

PYTHON_THRIFT_VERSION=0.25.0
venv=target/pyenv
if ! "$venv/bin/python" -c "import thrift" >/dev/null 2>&1; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "thrift==$PYTHON_THRIFT_VERSION"
  echo "created $venv with thrift==$PYTHON_THRIFT_VERSION"
fi

# The metrics tests parse /metrics with Prometheus's own Python client.
PYTHON_PROMETHEUS_VERSION=0.21.1
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus_client') != '$PYTHON_PROMETHEUS_VERSION')" >/dev/null 2>&1; then
  "$venv/bin/pip" install -q --disable-pip-version-check "prometheus_client==$PYTHON_PROMETHEUS_VERSION"
  echo "installed prometheus_client==$PYTHON_PROMETHEUS_VERSION in $venv"
fi
