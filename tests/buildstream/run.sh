#!/usr/bin/env bash
# BuildStream remote execution against a scoot-rs cluster.
#
#   tests/buildstream/run.sh http://127.0.0.1:9099
#
# The argument is the scheduler's REAPI endpoint (Execution, CAS, ByteStream, ActionCache,
# Capabilities on one port): http://HOST:PORT or grpc://HOST:PORT for plain gRPC (a bare
# HOST:PORT means http://). The script copies tests/buildstream/project to a temp dir, generates
# the busybox sysroot that base.bst imports, points BuildStream's remote execution (execution,
# storage and action cache) at the endpoint, builds hello.bst (a manual element whose commands
# run remotely), checks out its artifact and checks every file in it. Exits 0 when all is as
# expected, else non-zero with the reason on stderr.
#
# BuildStream also needs a working local buildbox-run at start-up, even though nothing runs
# locally: the bundled one needs bubblewrap's `bwrap` on PATH (Debian's bubblewrap), or bst
# stops with "Error instantiating platform". scripts/ensure-bst.sh installs it.
#
# Environment:
#   BST          the bst executable (default: target/bst-venv/bin/bst, as scripts/ensure-bst.sh
#                installs it, else `bst` on PATH)
#   BUSYBOX      a static busybox (default: /bin/busybox, Debian's busybox-static)
#   BST_TIMEOUT  seconds each bst command may take (default: 600)
#   BST_KEEP     non-empty: keep the temp dir (config, logs, checkout) and print where it is
#   BST_ARGS     extra options for every bst command, e.g. --debug (buildbox-casd then logs
#                each call it makes to the server)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# What hello.bst must have installed, file by file.
expected_greeting="hello from a remotely built manual element"
expected_ids="0:0"      # project.conf's sandbox build-uid:build-gid (platform unixUID/unixGID)
expected_root="sysroot" # the action's / was its input root, not the worker's filesystem

fail() {
  echo "buildstream test: FAILED: $*" >&2
  exit 1
}

[ $# -eq 1 ] || fail "usage: $0 http://HOST:PORT (the scheduler's REAPI endpoint)"
endpoint=$1
case "$endpoint" in
  http://* | https://* | grpc://* | grpcs://*) ;; # all four are buildbox-casd's
  *://*) fail "endpoint $endpoint: use http:// or grpc:// (plain gRPC), https:// or grpcs://" ;;
  *) endpoint="http://$endpoint" ;;
esac

if [ -z "${BST:-}" ]; then
  if [ -x "$repo/target/bst-venv/bin/bst" ]; then
    BST=$repo/target/bst-venv/bin/bst
  else
    BST=$(command -v bst || true)
  fi
fi
if [ -z "$BST" ] || [ ! -x "$BST" ]; then
  fail "no bst executable (set BST, or run scripts/ensure-bst.sh to install BuildStream)"
fi
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || fail "no busybox at $BUSYBOX (apt-get install busybox-static, or set BUSYBOX)"
BST_TIMEOUT=${BST_TIMEOUT:-600}
command -v timeout >/dev/null || fail "coreutils' timeout is missing"
command -v bwrap >/dev/null \
  || fail "no bwrap on PATH: bst's start-up check of buildbox-run needs it (apt-get install bubblewrap)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/scoot-bst.XXXXXX")

# Processes that bst started and left behind (buildbox-casd runs in its own process group, with
# its working directory in our cache): those whose working directory is inside $tmp.
leftovers() {
  local p cwd
  for p in /proc/[0-9]*; do
    cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
    case "$cwd" in "$tmp" | "$tmp"/*) echo "${p#/proc/}" ;; esac
  done
}

stop_leftovers() {
  local pids deadline
  pids=$(leftovers)
  [ -n "$pids" ] || return 0
  echo "buildstream test: stopping leftover processes $pids" >&2
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while [ -n "$(leftovers)" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  pids=$(leftovers)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

cleanup() {
  local status=$?
  stop_leftovers
  if [ "$status" -ne 0 ] && [ -d "$tmp/logs" ]; then
    # bst prints the failing step's last lines itself; buildbox-casd's log holds the gRPC
    # errors from the server, which bst only summarises.
    local log
    for log in "$tmp"/logs/_casd/*.log; do
      [ -f "$log" ] || continue
      echo "---- last lines of $log" >&2
      tail -n 40 "$log" >&2
    done
  fi
  if [ -n "${BST_KEEP:-}" ]; then
    echo "buildstream test: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# The project, with the sysroot base.bst imports: busybox and a relative bin/ link per applet.
project=$tmp/project
cp -R "$here/project" "$project"
sysroot=$project/sysroot
mkdir -p "$sysroot/bin"
cp "$BUSYBOX" "$sysroot/bin/busybox"
chmod 0755 "$sysroot/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$sysroot/bin/$applet"
done
[ -L "$sysroot/bin/sh" ] || fail "$BUSYBOX has no sh applet"

# The user configuration: everything of BuildStream's under $tmp, every build step remote.
config=$tmp/buildstream.conf
cat >"$config" <<EOF
cachedir: $tmp/cache
sourcedir: $tmp/sources
logdir: $tmp/logs
workspacedir: $tmp/workspaces

scheduler:
  builders: 1
  network-retries: 0
  on-error: terminate

logging:
  error-lines: 40

remote-execution:
  execution-service:
    url: $endpoint
  storage-service:
    url: $endpoint
  action-cache-service:
    url: $endpoint
EOF

# Keep BuildStream away from the invoking user's own configuration and caches.
export XDG_CONFIG_HOME=$tmp/xdg/config XDG_CACHE_HOME=$tmp/xdg/cache XDG_DATA_HOME=$tmp/xdg/data

bst() {
  local status=0
  # shellcheck disable=SC2086
  timeout --kill-after=30 "$BST_TIMEOUT" "$BST" --no-interactive --no-colors ${BST_ARGS:-} \
    --config "$config" --directory "$project" "$@" || status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    fail "bst $* did not finish within ${BST_TIMEOUT}s"
  fi
  return "$status"
}

echo "buildstream test: $("$BST" --version 2>&1 | head -n 1) against $endpoint, work dir $tmp" >&2

bst build hello.bst || fail "bst build hello.bst failed (remote execution at $endpoint)"

out=$tmp/checkout
bst artifact checkout hello.bst --directory "$out" || fail "bst artifact checkout hello.bst failed"

# Exactly the three files, each with its expected content.
found=$(cd "$out" && find . -mindepth 1 | LC_ALL=C sort | tr '\n' ' ')
[ "$found" = "./hello.txt ./ids.txt ./root.txt " ] \
  || fail "the artifact holds [$found], expected [./hello.txt ./ids.txt ./root.txt ]"

check_file() {
  local name=$1 want=$2 got
  [ -f "$out/$name" ] || fail "$name is not a regular file in the artifact"
  got=$(cat "$out/$name")
  [ "$got" = "$want" ] || fail "$name holds '$got', expected '$want'"
}
check_file hello.txt "$expected_greeting"
check_file ids.txt "$expected_ids"
check_file root.txt "$expected_root"

echo "buildstream test: hello.bst built remotely at $endpoint; artifact content as expected" >&2
