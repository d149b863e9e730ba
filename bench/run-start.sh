#!/usr/bin/env bash
# Runtime: container start. `kiln run --rm busybox true` timed with hyperfine, with runc's
# create-to-delete (`runc run --rm` of a bundle made from the same busybox rootfs) beside it
# when runc is installed.
#
# Release build in $CARGO_TARGET_DIR (default target/); the busybox image comes from
# scripts/busybox-rootfs.sh. Prints the load average before and after, since on the 2-core
# machines the figures move with whatever else runs.
# Usage: bench/run-start.sh [WORKDIR]   (default: a new directory under /var/tmp, removed after)
#        RUNS=60 WARMUP=5 to change hyperfine's counts. Needs root and hyperfine.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-60}
warmup=${WARMUP:-5}
work="${1:-$(mktemp -d /var/tmp/kiln-run-start.XXXXXX)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

cargo build --release --locked -p kiln-cli >&2
kiln="${CARGO_TARGET_DIR:-$PWD/target}/release/kiln"

scripts/busybox-rootfs.sh > "$work/busybox.tar"
"$kiln" --root "$work/store" import "$work/busybox.tar" busybox:latest >/dev/null
# One run first, so the image's snapshots exist and nothing is unpacked while timing.
"$kiln" --root "$work/store" run --rm busybox true

commands=("$kiln --root $work/store run --rm busybox true")
if command -v runc >/dev/null; then
    bundle="$work/bundle"
    mkdir -p "$bundle/rootfs"
    tar -C "$bundle/rootfs" -xf "$work/busybox.tar"
    (cd "$bundle" && runc spec && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"true"/' config.json)
    commands+=("runc --root $work/runc run --bundle $bundle bench")
fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N --warmup "$warmup" --runs "$runs" --export-json "$work/results.json" "${commands[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/results.json" <<'PY'
import json, statistics, sys
for result in json.load(open(sys.argv[1]))["results"]:
    times = [t * 1000 for t in result["times"]]
    print(f"{result['command'].split()[0].rsplit('/', 1)[-1]}: mean {statistics.mean(times):.1f} ms, "
          f"median {statistics.median(times):.1f} ms, min {min(times):.1f} ms")
PY
