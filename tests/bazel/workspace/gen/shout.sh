#!/bin/sh
# Appends an exclamation mark to every line of stdin.
sed 's/$/!/'
