#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace.
# Works offline as root on a fresh Debian 12 machine that has a Rust toolchain (cargo >= 1.89).
# Installs what the tests need first (idempotent); registry tests start their own docker-registry.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need: busybox-static (a base image for runtime tests, made locally),
# skopeo and umoci (read kiln's archives and OCI layouts in interop tests); tar for fixtures;
# docker-registry (a real distribution registry on loopback for pull/push tests); git (ADD of
# git repositories, served by git-daemon in a test).
packages=(busybox-static skopeo umoci tar docker-registry git)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
