#!/bin/sh
# Checks the 10 MiB file against its size, its last line and the digest another action computed.
set -eu
data=$1
digest=$2
test "$(wc -c < "$data")" = 10485760
test "$(tail -n 1 "$data")" = 001048575
test "$(sha256sum < "$data" | cut -d ' ' -f 1)" = "$(cat "$digest")"
echo ok
