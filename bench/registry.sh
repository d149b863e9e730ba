#!/usr/bin/env bash
# Registry: kiln push / kiln pull of a ~500 MB image of ten 50 MB layers (incompressible content,
# uncompressed layer blobs) through Debian's docker-registry on a loopback port (release build).
#
# Builds a Docker archive with python3 (ten layers of random bytes), `kiln load`s it, then times
# RUNS times (default 3), reporting the median wall time and the largest peak RSS
# (`/usr/bin/time -v`):
#   push   into an empty registry (every blob uploaded)
#   push   again (every blob HEADed, nothing uploaded)
#   pull   into an empty store (every layer downloaded, verified and unpacked)
#   skopeo copy docker://... to an OCI layout (download only, no unpacking): a Go client for scale
# Docker itself is not measured here (its engine is not running on these machines); compare with
# `docker push`/`docker pull` where one is.
# Usage: bench/registry.sh [WORKDIR]  (default: a new directory under /var/tmp; removed after
#        unless KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
work="${1:-$(mktemp -d /var/tmp/kiln-registry.XXXXXX)}"
mkdir -p "$work"
registry_pid=
cleanup() {
    [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -p kiln-cli >&2
kiln="$PWD/target/release/kiln"

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
# waits for the command: the peak RSS is the largest of its children's).
measure() {
    /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/stderr" || {
        cat "$work/stderr" >&2
        exit 1
    }
    cat "$work/time"
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
    printf '%-34s median %6.2f s   peak RSS %6d MB   (runs: %s)\n' "$label" "$median" "$((rss / 1024))" "${times[*]}"
}

push_fresh() {
    if [ "${1:-}" = prepare ]; then
        kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true
        rm -rf "$work/registry-data"
        docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
        registry_pid=$!
        for _ in $(seq 100); do
            python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break
            sleep 0.1
        done
        return
    fi
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
skopeo_copy() {
    if [ "${1:-}" = prepare ]; then rm -rf "$work/oci"; sync; return; fi
    skopeo copy --src-tls-verify=false "docker://$image" "oci:$work/oci:bench"
}

export kiln work image
export -f push_fresh push_again pull_fresh skopeo_copy
report "kiln push (empty registry)" push_fresh
report "kiln push (all blobs present)" push_again
report "kiln pull (empty store)" pull_fresh
if command -v skopeo >/dev/null; then
    report "skopeo copy to oci: (no unpack)" skopeo_copy
fi
