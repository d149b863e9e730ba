#!/usr/bin/env bash
# The main job: build kiln, then parse and lint the example Dockerfile (testdata/example).
# Works offline as root on a fresh Debian 12 machine that has a Rust toolchain (cargo >= 1.88).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p kiln-cli
kiln=target/release/kiln

echo "== kiln check testdata/example"
"$kiln" check testdata/example
echo
echo "== kiln debug parse testdata/example/Dockerfile"
"$kiln" debug parse testdata/example/Dockerfile
