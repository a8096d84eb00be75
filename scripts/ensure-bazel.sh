#!/usr/bin/env bash
# Installs Bazel 2.1.0 (the Remote Execution API client the end-to-end tests drive) into
# target/bazel-2.1.0/, idempotently, and prints the path of the binary on stdout.
#
# Bazel comes from the npm registry: the package @bazel/bazel-linux_x64@2.1.0 ships the release
# binary, which embeds its own JDK. npm checks the package's integrity; we also pin the binary's
# SHA-256 so a changed package cannot slip in.
#
# Run Bazel with --output_user_root under target/ or a temp dir and --bazelrc=/dev/null
# (see tests/e2e/bazel.rs and tests/bazel/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

BAZEL_VERSION=2.1.0
BAZEL_SHA256=e13581d44faad6ac807dd917e682fef20359d26728166ac35dadd8ee653a580d
dir=target/bazel-$BAZEL_VERSION
bin=$dir/bazel

installed() {
  [ -x "$bin" ] && echo "$BAZEL_SHA256  $bin" | sha256sum --check --status
}

if ! installed; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "installing npm (Debian)" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm >/dev/null
  fi
  echo "installing Bazel $BAZEL_VERSION from npm (@bazel/bazel-linux_x64) into $dir" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "@bazel/bazel-linux_x64@$BAZEL_VERSION" >/dev/null)
  tar -xzf "$tmp"/bazel-bazel-linux_x64-"$BAZEL_VERSION".tgz -C "$tmp"
  mkdir -p "$dir"
  install -m 0755 "$tmp/package/bazel-$BAZEL_VERSION-linux-x86_64" "$bin.partial"
  mv -f "$bin.partial" "$bin"
  if ! installed; then
    echo "ensure-bazel: $bin does not have the expected SHA-256 $BAZEL_SHA256" >&2
    rm -f "$bin"
    exit 1
  fi
fi

echo "$PWD/$bin"
