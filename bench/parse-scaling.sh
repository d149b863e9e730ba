#!/usr/bin/env bash
# Runs the parser benchmark and prints what BENCHMARKS.md records with it: the machine, the
# toolchain, the date. Usage: bench/parse-scaling.sh [divan filter, default: realistic]
#
# Read the `realistic` rows: throughput (the MB/s column) must stay roughly constant from 100 KB to
# 4 MB. Run on an otherwise idle machine; divan reports medians, so a few outliers do not matter.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) CPUs)"
echo "kernel:  $(uname -r)"
echo "rustc:   $(rustc --version)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
echo
cargo bench -p kiln-parser --bench parse -- "${1:-realistic}"
