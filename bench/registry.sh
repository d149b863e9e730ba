#!/usr/bin/env bash
# Registry: kiln push / kiln pull against docker push / docker pull of the same ~500 MB image of
# ten 50 MB layers (incompressible content) through Debian's docker-registry on a loopback port
# (release build of kiln; Docker talks plain HTTP to 127.0.0.0/8 registries by default).
#
# Builds a Docker archive with python3 (ten layers of random bytes), `kiln load`s it and
# `docker load`s the same archive (the same image ID in both), then times RUNS times (default 3),
# reporting the median wall time and the largest peak RSS:
#   kiln push     first push of a freshly loaded image into an empty registry: kiln keeps
#                 loaded layers uncompressed and pushes them gzip-compressed, as Docker does; the
#                 gzip variant of each layer is made (before any upload) and kept by the store
#   kiln push     into an empty registry again (the gzip variants exist: upload only)
#   kiln push     again (every blob HEADed, nothing uploaded)
#   docker push   into an empty registry (Docker gzips every layer as it pushes)
#   docker push   again (Docker remembers the compressed digests and HEADs them)
#   kiln pull     into an empty store, of kiln's push (uncompressed blobs) and of Docker's (gzip)
#   docker pull   after `docker rmi` of the image, of kiln's push and of Docker's
#   skopeo copy   docker://... to an OCI layout (download only, no unpacking): a Go client for scale
# Peak RSS: kiln's own (`/usr/bin/time -v`); for Docker, the engine's (dockerd's VmRSS sampled
# every 0.1 s, the peak minus its value before the run; the docker CLI itself stays near 40 MB).
# The Docker rows are skipped, saying why, when `/usr/bin/docker info` fails.
# Usage: bench/registry.sh [WORKDIR]  (default: a new directory under /var/tmp; removed after
#        unless KEEP=1). The kiln binary is CARGO_TARGET_DIR/release/kiln (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
work="${1:-$(mktemp -d /var/tmp/kiln-registry.XXXXXX)}"
mkdir -p "$work"
registry_pid=
docker_images=
cleanup() {
    [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
    # shellcheck disable=SC2086
    [ -z "$docker_images" ] || /usr/bin/docker rmi -f $docker_images >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -p kiln-cli >&2
kiln="${CARGO_TARGET_DIR:-$PWD/target}/release/kiln"
docker=/usr/bin/docker
if "$docker" info >/dev/null 2>&1; then
    with_docker=1
else
    with_docker=
    echo "skipping the Docker rows: \`$docker info\` fails" >&2
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break
    sleep 0.1
done
image="127.0.0.1:$port/bench/big:1"
docker_image="127.0.0.1:$port/bench/docker:1"

if [ ! -f "$work/image.tar" ]; then
    echo "building the input archive in $work" >&2
    python3 - "$work/image.tar" <<'EOF'
import hashlib, io, json, os, sys, tarfile
layers, diff_ids, names = [], [], []
out = tarfile.open(sys.argv[1], "w")
for n in range(10):
    data = os.urandom(50 * 1024 * 1024)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as layer:
        info = tarfile.TarInfo(f"layer{n}/data.bin"); info.size = len(data); info.mtime = 0
        layer.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    info = tarfile.TarInfo(f"{digest}/layer.tar"); info.size = len(blob)
    out.addfile(info, io.BytesIO(blob))
    diff_ids.append("sha256:" + digest); names.append(f"{digest}/layer.tar")
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
cid = hashlib.sha256(config).hexdigest()
for name, data in ((f"{cid}.json", config),
                   ("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": [],
                                                 "Layers": names}]).encode())):
    info = tarfile.TarInfo(name); info.size = len(data); out.addfile(info, io.BytesIO(data))
out.close()
EOF
fi

"$kiln" --root "$work/source" load -q -i "$work/image.tar"
"$kiln" --root "$work/source" tag "$("$kiln" --root "$work/source" images -q | head -1)" "$image"

# Prints "SECONDS RSS_KB" for one run of one of the functions below (in a child bash, which
# waits for the command: the peak RSS is the largest of its children's). With DOCKERD=1 the RSS is
# dockerd's peak VmRSS while the command runs, less its VmRSS before.
measure() {
    local sampler= dockerd_pid= base=0
    rm -f "$work/stop-sampler" "$work/dockerd-peak"
    if [ -n "${DOCKERD:-}" ]; then
        dockerd_pid=$(pidof dockerd)
        base=$(awk '/^VmRSS/ {print $2}' "/proc/$dockerd_pid/status")
        (
            peak=0
            while [ ! -e "$work/stop-sampler" ]; do
                kb=$(awk '/^VmRSS/ {print $2}' "/proc/$dockerd_pid/status")
                [ "$kb" -gt "$peak" ] && peak=$kb && echo "$peak" >"$work/dockerd-peak"
                sleep 0.1
            done
        ) &
        sampler=$!
    fi
    /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/stderr" || {
        cat "$work/stderr" >&2
        exit 1
    }
    if [ -n "$sampler" ]; then
        touch "$work/stop-sampler"
        wait "$sampler"
        rm -f "$work/stop-sampler"
        local peak
        peak=$(cat "$work/dockerd-peak" 2>/dev/null || echo "$base")
        echo "$(cut -d' ' -f1 "$work/time") $((peak > base ? peak - base : 0))"
    else
        cat "$work/time"
    fi
}

report() {
    local label=$1
    shift
    local times=() rss=0
    for _ in $(seq "$runs"); do
        "$@" prepare
        read -r seconds kb < <(measure "$@")
        times+=("$seconds")
        [ "$kb" -gt "$rss" ] && rss=$kb
    done
    local median
    median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p")
    printf '%-40s median %6.2f s   peak RSS %6d MB   (runs: %s)\n' "$label" "$median" "$((rss / 1024))" "${times[*]}"
}

restart_registry() {
    kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true
    rm -rf "$work/registry-data"
    docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break
        sleep 0.1
    done
}

push_first() {
    if [ "${1:-}" = prepare ]; then
        restart_registry
        rm -rf "$work/first"
        "$kiln" --root "$work/first" load -q -i "$work/image.tar" >/dev/null
        "$kiln" --root "$work/first" tag "$image_id" "$image"
        sync
        return
    fi
    "$kiln" --root "$work/first" push "$image"
}
push_fresh() {
    if [ "${1:-}" = prepare ]; then restart_registry; return; fi
    "$kiln" --root "$work/source" push "$image"
}
push_again() {
    [ "${1:-}" = prepare ] && return
    "$kiln" --root "$work/source" push "$image"
}
pull_fresh() {
    if [ "${1:-}" = prepare ]; then rm -rf "$work/target"; sync; return; fi
    "$kiln" --root "$work/target" pull "$image"
}
pull_docker_pushed() {
    if [ "${1:-}" = prepare ]; then rm -rf "$work/target"; sync; return; fi
    "$kiln" --root "$work/target" pull "$docker_image"
}
docker_push_fresh() {
    if [ "${1:-}" = prepare ]; then restart_registry; return; fi
    /usr/bin/docker push "$docker_image"
}
docker_push_again() {
    [ "${1:-}" = prepare ] && return
    /usr/bin/docker push "$docker_image"
}
# Removes the image (every tag: kiln's and Docker's pushes have the same config, so the same ID)
# and so its layers, then pulls.
docker_pull_kiln_pushed() {
    if [ "${1:-}" = prepare ]; then /usr/bin/docker rmi -f "$image_id" >/dev/null 2>&1 || true; sync; return; fi
    /usr/bin/docker pull "$image"
}
docker_pull_docker_pushed() {
    if [ "${1:-}" = prepare ]; then /usr/bin/docker rmi -f "$image_id" >/dev/null 2>&1 || true; sync; return; fi
    /usr/bin/docker pull "$docker_image"
}
skopeo_copy() {
    if [ "${1:-}" = prepare ]; then rm -rf "$work/oci"; sync; return; fi
    skopeo copy --src-tls-verify=false "docker://$image" "oci:$work/oci:bench"
}

image_id=$("$kiln" --root "$work/source" images -q --no-trunc "$image")
if [ -n "$with_docker" ]; then
    docker_images="$image_id"
    /usr/bin/docker load -q -i "$work/image.tar" >&2
    /usr/bin/docker tag "$image_id" "$docker_image"
fi

echo "machine: $(nproc) cores, $(uname -r), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
export kiln work image docker_image image_id
export -f push_first push_fresh push_again pull_fresh pull_docker_pushed skopeo_copy
export -f docker_push_fresh docker_push_again docker_pull_kiln_pushed docker_pull_docker_pushed
report "kiln push (first: gzip + upload)" push_first
rm -rf "$work/first"
# Makes the source store's gzip variants (unmeasured): the rows below measure the upload alone.
"$kiln" --root "$work/source" push -q "$image" >/dev/null
report "kiln push (empty registry)" push_fresh
report "kiln push (all blobs present)" push_again
if [ -n "$with_docker" ]; then
    DOCKERD=1 report "docker push (empty registry)" docker_push_fresh
    DOCKERD=1 report "docker push (all blobs present)" docker_push_again
    # Docker's push above left only its own image in the registry: put kiln's back.
    "$kiln" --root "$work/source" push -q "$image" >/dev/null
fi
report "kiln pull (kiln's push)" pull_fresh
if [ -n "$with_docker" ]; then
    report "kiln pull (docker's push)" pull_docker_pushed
    DOCKERD=1 report "docker pull (kiln's push)" docker_pull_kiln_pushed
    DOCKERD=1 report "docker pull (docker's push)" docker_pull_docker_pushed
fi
if command -v skopeo >/dev/null; then
    report "skopeo copy to oci: (no unpack)" skopeo_copy
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
