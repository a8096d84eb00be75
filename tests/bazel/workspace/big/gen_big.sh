#!/bin/sh
# Writes 10 MiB (1048576 lines of 10 bytes) of deterministic, non-repeating text to $1.
set -eu
seq -f '%09.0f' 0 1048575 > "$1"
