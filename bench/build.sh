#!/usr/bin/env bash
# Builder: `kiln build` against `docker build` with BuildKit (Docker 20.10), on the four speed
# targets of the builder issue (release build of kiln):
#   cached   fully cached rebuild of a 20,000-file context (COPY src then RUN); kiln keeps its
#            context stat cache in the store, so rebuilds stat the files and read none (but those
#            written less than 2 s before the untimed first build's end)
#   run20    a 20-step RUN-only Dockerfile, without the cache; per-step overhead derived from a
#            FROM-only build of the same base
#   copy200  COPY of a 200 MB context (200 files of 1 MB, incompressible), without the cache;
#            kiln's peak RSS from /usr/bin/time
#   stages   three stages that each sleep 2 s and a final stage copying from all three, without
#            the cache (they must overlap: under 3 s)
# Each case runs RUNS times (default 5); the median wall time is reported. The base image is the
# busybox rootfs of scripts/busybox-rootfs.sh, imported into kiln's store and into Docker.
# Needs /usr/bin/docker answering (shared/tools/reference-engines.sh start) for the ratios;
# without it only kiln is measured.
# Usage: bench/build.sh [WORKDIR]   (default: a new directory under /var/tmp; removed after unless
#        KEEP=1). KILN=path uses that kiln binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-5}
docker=/usr/bin/docker
base=kiln-bench/busybox:1
work="${1:-$(mktemp -d /var/tmp/kiln-build-bench.XXXXXX)}"
mkdir -p "$work"
have_docker=
"$docker" info >/dev/null 2>&1 && have_docker=1
cleanup() {
    [ -n "${KEEP:-}" ] || rm -rf "$work"
    if [ -n "$have_docker" ]; then
        "$docker" rmi -f "$base" kiln-bench/out:1 >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

if [ -z "${KILN:-}" ]; then
    cargo build --release --locked -p kiln-cli >&2
    KILN="${CARGO_TARGET_DIR:-$PWD/target}/release/kiln"
fi
store="$work/store"
kiln() { "$KILN" --root "$store" "$@"; }

scripts/busybox-rootfs.sh >"$work/busybox.tar"
kiln import "$work/busybox.tar" "$base" >/dev/null
[ -z "$have_docker" ] || "$docker" import "$work/busybox.tar" "$base" >/dev/null

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

# measure NAME COMMAND: runs COMMAND RUNS times, sets `wall` (median seconds) and `rss` (max
# peak RSS in MB of the command itself).
measure() {
    local walls=() rsses=() start end
    for _ in $(seq "$runs"); do
        start=$(now)
        /usr/bin/time -f '%M' -o "$work/rss.txt" sh -c "$2" >/dev/null 2>"$work/err.txt" || {
            cat "$work/err.txt" >&2
            echo "$1 failed" >&2
            exit 1
        }
        end=$(now)
        walls+=("$(echo "$end - $start" | bc)")
        rsses+=("$(($(tail -1 "$work/rss.txt") / 1024))")
    done
    wall=$(printf '%s\n' "${walls[@]}" | median)
    rss=$(printf '%s\n' "${rsses[@]}" | sort -n | tail -1)
    echo "  $1: ${walls[*]} s; peak RSS ${rsses[*]} MB" >&2
}

kiln_build() { echo "'$KILN' --root '$store' build -q -t kiln-bench/out:1 $*"; }
docker_build() { echo "DOCKER_BUILDKIT=1 $docker build -q -t kiln-bench/out:1 $*"; }

results="$work/results.md"
{
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs (nproc), $(uname -sr), $(rustc --version)"
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- builder cache cli runtime || echo ' plus uncommitted changes'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "kiln: $KILN ($("$KILN" --version 2>/dev/null | head -1)); the commit above describes the checkout, which KILN may not be built from"
    echo "Docker: $([ -n "$have_docker" ] && "$docker" version --format '{{.Server.Version}}' || echo 'not running') (BuildKit); median of $runs runs"
    echo
    echo "| case | kiln | kiln peak RSS | docker build | docker / kiln |"
    echo "| --- | ---: | ---: | ---: | ---: |"
} >"$results"
row() { # case
    if [ -n "$have_docker" ]; then
        printf '| %s | %.3f s | %s MB | %.3f s | %.1f |\n' "$1" "$kiln_wall" "$kiln_rss" "$docker_wall" \
            "$(echo "$docker_wall / $kiln_wall" | bc -l)"
    else
        printf '| %s | %.3f s | %s MB | – | – |\n' "$1" "$kiln_wall" "$kiln_rss"
    fi >>"$results"
}
both() { # NAME KILN-ARGS DOCKER-ARGS
    measure "kiln $1" "$(kiln_build "$2")"
    kiln_wall=$wall kiln_rss=$rss
    if [ -n "$have_docker" ]; then
        measure "docker $1" "$(docker_build "$3")"
        docker_wall=$wall
    fi
}

# --- cached: 20,000 files in 200 directories, then rebuilds that hit the cache -----------------
ctx="$work/cached"
mkdir -p "$ctx/src"
for d in $(seq 200); do
    mkdir -p "$ctx/src/d$d"
    for f in $(seq 100); do printf 'file %s/%s\n' "$d" "$f" >"$ctx/src/d$d/f$f.txt"; done
done
printf 'FROM %s\nCOPY src /src\nRUN find /src -type f | wc -l > /count\n' "$base" >"$ctx/Dockerfile"
echo "cached: first builds (untimed)" >&2
sh -c "$(kiln_build "$ctx")" >/dev/null
[ -z "$have_docker" ] || sh -c "$(docker_build "$ctx")" >/dev/null
both "cached rebuild" "$ctx" "$ctx"
row "fully cached rebuild, 20,000-file context"

# --- run20 --------------------------------------------------------------------------------------
ctx="$work/run20"
mkdir -p "$ctx"
{
    printf 'FROM %s\n' "$base"
    for n in $(seq 20); do printf 'RUN echo %s > /step%s\n' "$n" "$n"; done
} >"$ctx/Dockerfile"
printf 'FROM %s\nLABEL x=1\n' "$base" >"$ctx/Dockerfile.empty"
both "from-only" "--no-cache -f $ctx/Dockerfile.empty $ctx" "--no-cache -f $ctx/Dockerfile.empty $ctx"
kiln_empty=$kiln_wall docker_empty=${docker_wall:-0}
both "run20" "--no-cache $ctx" "--no-cache $ctx"
row "20 RUN steps, no cache"
{
    printf '| per RUN step (20 steps minus a FROM-only build, / 20) | %.1f ms | | ' \
        "$(echo "($kiln_wall - $kiln_empty) * 50" | bc -l)"
    if [ -n "$have_docker" ]; then
        printf '%.1f ms | %.1f |\n' "$(echo "($docker_wall - $docker_empty) * 50" | bc -l)" \
            "$(echo "($docker_wall - $docker_empty) / ($kiln_wall - $kiln_empty)" | bc -l)"
    else
        printf '– | – |\n'
    fi
} >>"$results"

# --- copy200 ------------------------------------------------------------------------------------
ctx="$work/copy200"
mkdir -p "$ctx/data"
for f in $(seq 200); do head -c 1000000 /dev/urandom >"$ctx/data/blob$f"; done
printf 'FROM %s\nCOPY data /data\n' "$base" >"$ctx/Dockerfile"
both "copy200" "--no-cache $ctx" "--no-cache $ctx"
row "COPY of a 200 MB context, no cache"

# --- stages -------------------------------------------------------------------------------------
ctx="$work/stages"
mkdir -p "$ctx"
cat >"$ctx/Dockerfile" <<EOF
FROM $base AS a
RUN sleep 2 && echo a > /a
FROM $base AS b
RUN sleep 2 && echo b > /b
FROM $base AS c
RUN sleep 2 && echo c > /c
FROM $base
COPY --from=a /a /a
COPY --from=b /b /b
COPY --from=c /c /c
EOF
both "stages" "--no-cache $ctx" "--no-cache $ctx"
row "three 2 s stages in parallel + a final COPY stage, no cache"

cat "$results"
