#!/usr/bin/env bash
# The main job: build kiln, check and parse the example Dockerfile (testdata/example), make a
# busybox base image offline (from Debian's busybox-static), build the example image from the
# Dockerfile (twice: the second build comes from the cache) and run it.
# Works offline as root on a fresh Debian 12 machine that has a Rust toolchain (cargo >= 1.89).
# The store is $KILN_ROOT (default: /var/lib/kiln).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p kiln-cli
kiln="${CARGO_TARGET_DIR:-target}/release/kiln"

echo "== kiln check testdata/example"
"$kiln" check testdata/example
echo
echo "== kiln debug parse testdata/example/Dockerfile"
"$kiln" debug parse testdata/example/Dockerfile
echo
echo "== kiln import (busybox from busybox-static) and kiln run"
scripts/busybox-rootfs.sh | "$kiln" import -c 'CMD ["sh"]' -m "busybox-static base" - busybox:latest
"$kiln" images busybox
"$kiln" run --rm -e GREETING=hello busybox sh -c 'echo "$GREETING from a kiln container: pid $$, host $(hostname)"; id'
echo
echo "== kiln build -t kiln-example testdata/example"
"$kiln" build -t kiln-example testdata/example
echo
echo "== kiln build again: every step comes from the build cache"
"$kiln" build -t kiln-example testdata/example
echo
echo "== kiln run --rm kiln-example"
"$kiln" run --rm kiln-example
"$kiln" history kiln-example
