#!/bin/sh
# Compares the listing of the tree artifact (path and size of every file) with the expected one.
set -eu
if ! diff -u "$2" "$1"; then
  echo "the tree artifact's listing differs from $2"
  exit 1
fi
echo ok
