#!/usr/bin/env bash
# Store: kiln save / kiln load against docker save / docker load, on one ~1.2 GB image of ten
# layers made from directories of this machine (release build).
#
# Builds a Docker 1.10–24 style archive (`<id>/layer.tar` entries, uncompressed layers, the format
# Docker 20.10 writes) with GNU tar, then times each step RUNS times (default 3) and reports the
# median wall time and the largest peak RSS:
#   load  of that archive   kiln: into an empty store (hashed, gzipped, unpacked)
#                           docker: after `docker rmi`, so every layer is unpacked again
#   save  -o of the image   kiln: gzip blobs from the store; docker: uncompressed layer.tar files
#   load  of kiln's archive (gzip layers) into an empty store / after `docker rmi`
# kiln's peak RSS is `/usr/bin/time -v`'s. Docker's work happens in dockerd, not in the client:
# its figure is dockerd's peak RSS during the step (VmHWM, reset through /proc/PID/clear_refs; needs
# root), which leaves out the short-lived `docker-applyLayer` children that unpack layers.
# Needs /usr/bin/docker answering (shared/tools/reference-engines.sh start); without it only kiln
# is measured.
# Usage: bench/save-load.sh [WORKDIR]   (default: a new directory under /var/tmp; removed after
#        unless KEEP=1; an existing WORKDIR/docker.tar is reused)
set -euo pipefail
cd "$(dirname "$0")/.."

layers=(usr/bin usr/include usr/lib/gcc usr/share/doc usr/sbin usr/share/man usr/lib/python3.11
    usr/lib/python3 usr/lib/postgresql usr/share/vim)
runs=${RUNS:-3}
image=kiln-bench/save-load:1
docker=/usr/bin/docker
work="${1:-$(mktemp -d /var/tmp/kiln-save-load.XXXXXX)}"
mkdir -p "$work"
cleanup() {
    [ -n "${KEEP:-}" ] || rm -rf "$work"
    [ -z "${have_docker:-}" ] || "$docker" rmi "$image" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cargo build --release --locked -p kiln-cli >&2
kiln="$PWD/target/release/kiln"

if [ ! -f "$work/docker.tar" ]; then
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
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":[%s]}]\n' "$config_hex" "$image" "$(join "${paths[@]}")" >"$archive/manifest.json"
    tar --sort=name -C "$archive" -cf "$work/docker.tar" .
    rm -rf "$archive"
fi

have_docker=
"$docker" info >/dev/null 2>&1 && have_docker=1
dockerd_pid() { pgrep -x dockerd | head -1; }

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
max() { sort -n | tail -1; }

# time_kiln NAME PREPARE COMMAND: runs PREPARE (untimed) then COMMAND, RUNS times; sets
# kiln_wall (median s) and kiln_rss (max MB).
time_kiln() {
    local prepare="$2" command="$3" walls=() rsses=()
    for _ in $(seq "$runs"); do
        eval "$prepare"
        sync
        /usr/bin/time -f '%e %M' -o "$work/time.txt" sh -c "$command"
        read -r wall rss <"$work/time.txt"
        walls+=("$wall")
        rsses+=("$((rss / 1024))")
    done
    kiln_wall=$(printf '%s\n' "${walls[@]}" | median)
    kiln_rss=$(printf '%s\n' "${rsses[@]}" | max)
    echo "  kiln $1: ${walls[*]} s, ${rsses[*]} MB" >&2
}

# time_docker NAME PREPARE COMMAND: as time_kiln, with dockerd's peak RSS.
time_docker() {
    local prepare="$2" command="$3" walls=() rsses=() pid start end
    pid=$(dockerd_pid)
    for _ in $(seq "$runs"); do
        eval "$prepare"
        sync
        echo 5 >"/proc/$pid/clear_refs"
        start=$(date +%s.%N)
        sh -c "$command"
        end=$(date +%s.%N)
        walls+=("$(echo "$end - $start" | bc)")
        rsses+=("$(($(awk '/VmHWM/ {print $2}' "/proc/$pid/status") / 1024))")
    done
    docker_wall=$(printf '%s\n' "${walls[@]}" | median)
    docker_rss=$(printf '%s\n' "${rsses[@]}" | max)
    echo "  docker $1: ${walls[*]} s, ${rsses[*]} MB" >&2
}

row() { # step
    if [ -n "$have_docker" ]; then
        printf '| %s | %.1f s | %s MB | %.1f s | %s MB | %.2f |\n' "$1" "$kiln_wall" "$kiln_rss" \
            "$docker_wall" "$docker_rss" "$(echo "$docker_wall / $kiln_wall" | bc -l)"
    else
        printf '| %s | %.1f s | %s MB | – | – | – |\n' "$1" "$kiln_wall" "$kiln_rss"
    fi
}

input_mb=$(($(stat -c %s "$work/docker.tar") / 1000000))
forget() { "$docker" rmi "$image" >/dev/null 2>&1 || true; }
results="$work/results.md"
{
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs (nproc), $(uname -sr), $(rustc --version)"
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cache cli || echo ' plus uncommitted changes')"
    echo "Docker: $([ -n "$have_docker" ] && "$docker" version --format '{{.Server.Version}}' || echo 'not running')"
    echo "Input: ${#layers[@]} layers (${layers[*]}), Docker-style archive of $input_mb MB; median of $runs runs"
    echo
    echo "| step | kiln | kiln peak RSS | docker | dockerd peak RSS | docker / kiln |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
} >"$results"

time_kiln "load" "rm -rf '$work/store'" "'$kiln' --root '$work/store' load -q -i '$work/docker.tar'"
[ -z "$have_docker" ] || time_docker "load" forget "$docker load -q -i '$work/docker.tar' >/dev/null"
row "load of the uncompressed archive" >>"$results"

time_kiln "save" "rm -f '$work/kiln.tar'" "'$kiln' --root '$work/store' save -o '$work/kiln.tar' $image"
[ -z "$have_docker" ] || time_docker "save" "rm -f '$work/docker-saved.tar'" "$docker save -o '$work/docker-saved.tar' $image"
row "save -o" >>"$results"

time_kiln "load kiln archive" "rm -rf '$work/store2'" "'$kiln' --root '$work/store2' load -q -i '$work/kiln.tar'"
[ -z "$have_docker" ] || time_docker "load kiln archive" forget "$docker load -q -i '$work/kiln.tar' >/dev/null"
row "load of kiln's archive (gzip layers)" >>"$results"

{
    echo
    echo "Archives: kiln $(($(stat -c %s "$work/kiln.tar") / 1000000)) MB$([ -n "$have_docker" ] && echo ", docker $(($(stat -c %s "$work/docker-saved.tar") / 1000000)) MB")"
} >>"$results"
cat "$results"
