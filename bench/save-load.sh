#!/usr/bin/env bash
# Store: save and load of a ~1 GB multi-layer image built from local files (release build).
#
# Builds a Docker 1.10–24 style archive (`<id>/layer.tar` entries, uncompressed layers) from
# directories of this machine, then measures with /usr/bin/time -v (wall time, peak RSS):
#   1. kiln load of that archive     (uncompressed layers: hashed, gzipped, unpacked)
#   2. kiln save -o of the image      (gzip blobs streamed from the store)
#   3. kiln save to a pipe            (stdout, into /dev/null)
#   4. kiln load of kiln's archive    (gzip layers stored as they are, unpacked)
# Usage: bench/save-load.sh [WORKDIR]   (default: a new directory under /var/tmp; removed after)
set -euo pipefail
cd "$(dirname "$0")/.."

layers=(usr/bin usr/libexec usr/share usr/local)
work="${1:-$(mktemp -d /var/tmp/kiln-save-load.XXXXXX)}"
mkdir -p "$work"
cleanup() { [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --locked -p kiln-cli >&2
kiln="$PWD/target/release/kiln"

echo "building the input archive in $work" >&2
archive="$work/archive"
mkdir -p "$archive"
diff_ids=()
paths=()
for index in "${!layers[@]}"; do
    dir="${layers[$index]}"
    id=$(printf 'layer %s' "$index" | sha256sum | cut -d' ' -f1)
    mkdir -p "$archive/$id"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C / -cf "$archive/$id/layer.tar" "$dir"
    printf '1.0' >"$archive/$id/VERSION"
    printf '{"id":"%s"}' "$id" >"$archive/$id/json"
    diff_ids+=("\"sha256:$(sha256sum "$archive/$id/layer.tar" | cut -d' ' -f1)\"")
    paths+=("\"$id/layer.tar\"")
done
join() { local IFS=,; echo "$*"; }
config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2024-01-01T00:00:00Z\",\"config\":{},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$(join "${diff_ids[@]}")]}}"
config_hex=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" >"$archive/$config_hex.json"
printf '[{"Config":"%s.json","RepoTags":["bench:1"],"Layers":[%s]}]\n' "$config_hex" "$(join "${paths[@]}")" >"$archive/manifest.json"
tar --sort=name -C "$archive" -cf "$work/docker.tar" .
rm -rf "$archive"

measure() { # name, command...
    local name="$1"
    shift
    sync
    /usr/bin/time -v -o "$work/time.txt" "$@"
    local wall rss
    wall=$(grep 'Elapsed (wall clock)' "$work/time.txt" | awk '{print $NF}')
    rss=$(grep 'Maximum resident set size' "$work/time.txt" | awk '{print $NF}')
    printf '| %s | %s | %s MB |\n' "$name" "$wall" "$((rss / 1024))"
}

input_mb=$(($(stat -c %s "$work/docker.tar") / 1000000))
echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs, $(uname -sr), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "Input: ${#layers[@]} layers (${layers[*]}), Docker-style archive of $input_mb MB"
echo
echo "| step | wall time | peak RSS |"
echo "| --- | --- | --- |"
measure "load Docker ≤24 archive (uncompressed → gzip)" "$kiln" --root "$work/store" load -q -i "$work/docker.tar"
measure "save -o (gzip blobs)" "$kiln" --root "$work/store" save -o "$work/kiln.tar" bench:1
measure "save to stdout (pipe)" sh -c "'$kiln' --root '$work/store' save bench:1 | cat >/dev/null"
measure "load kiln archive (gzip kept)" "$kiln" --root "$work/store2" load -q -i "$work/kiln.tar"
echo
echo "Archive written by kiln: $(($(stat -c %s "$work/kiln.tar") / 1000000)) MB"
