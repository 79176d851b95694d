#!/usr/bin/env bash
# padim's container image, with podman and no container registry: `make image` and `make image-test`.
#
#   scripts/image.sh build IMAGE   the image: FROM a Debian 12 base made here with debootstrap (from
#                                  Debian's archive) and `podman import`, with the release binary, the
#                                  libtorch libraries it loads (ldd says which) and nothing else of torch
#   scripts/image.sh test IMAGE    the main job inside the image (data, weights and the run location
#                                  mounted) against the same job run outside: metrics.json must be the
#                                  same bytes; then one extract shard of an s3:// job from inside the
#                                  image against moto on the host network, credentials only as -e
#
# Needs root (or sudo) once, to install podman, runc and debootstrap from Debian. PADIM names the
# binary (default: the release build); CONTAINERS_CONF is set to scripts/containers.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/image.sh build|test IMAGE"
command=${1:?$usage}
image=${2:-padim:latest}
base=padim-base:bookworm
padim=${PADIM:-${CARGO_TARGET_DIR:-target}/release/padim}
export CONTAINERS_CONF=$PWD/scripts/containers.conf
sudo=$([ "$(id -u)" = 0 ] || echo sudo)

tools() {
    local missing=""
    for tool in podman runc debootstrap; do command -v $tool >/dev/null || missing+=" $tool"; done
    if [ -n "$missing" ]; then
        echo "installing$missing (Debian packages)"
        $sudo apt-get update -qq && $sudo apt-get install -y -q --no-install-recommends$missing
    fi
}

# The base: Debian 12 minbase with what the binary needs beside libtorch (OpenBLAS for fit and score,
# DejaVu Sans for the report's pictures, CA certificates for https object stores).
base_image() {
    if $sudo podman image exists $base; then return; fi
    local mirror root
    # The machine's own Debian mirror (uncommented lines of apt's sources), else Debian's.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -E '^[[:space:]]*(URIs:|deb[[:space:]])' | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)
    root=$(mktemp -d)
    echo "debootstrap bookworm from ${mirror:-http://deb.debian.org/debian} into $root"
    $sudo debootstrap --variant=minbase --include=libopenblas0-pthread,fonts-dejavu-core,ca-certificates \
        bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    # No package lists or caches in the image.
    $sudo rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    $sudo tar -C "$root" -c . | $sudo podman import - $base >/dev/null
    $sudo rm -rf "$root"
}

build() {
    [ -x "$padim" ] || { echo "$padim is missing: run make build" >&2; exit 1; }
    tools
    base_image
    local context=.cache/image/context
    rm -rf $context && mkdir -p $context/lib
    # Without its debug information (the release profile keeps it: 570 MB of the binary's size).
    strip --strip-debug -o $context/padim "$padim"
    # Exactly the libraries the binary loads from outside the system's folders: libtorch_cpu, c10,
    # libtorch's OpenMP and the two small CUDA runtime stubs libtorch_cpu links (no GPU code).
    ldd "$padim" | awk '$3 ~ /^\// && $3 !~ /^\/(usr\/)?lib/ { print $3 }' | while read -r lib; do
        cp -L "$lib" $context/lib/
    done
    if [ ! -e $context/lib/libtorch_cpu.so ]; then
        echo "ldd $padim names no libtorch_cpu.so outside the system folders" >&2
        exit 1
    fi
    cp Containerfile $context/
    $sudo podman build --quiet --build-arg BASE=$base -t "$image" -f $context/Containerfile $context >/dev/null
    echo "built $image: $($sudo podman image inspect "$image" --format '{{.Size}}' | awk '{ printf "%.0f MB", $1 / 1e6 }')" \
        "(libtorch libraries $(du -sm $context/lib | cut -f1) MB, base $($sudo podman image inspect $base --format '{{.Size}}' | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

# A copy of the main job with absolute paths: DATA, WEIGHTS (a folder) and OUTPUT.
job_copy() {
    sed -e "s|^output = .*|output = \"$3\"|" -e "s|^root = .*|root = [\"$1\"]|" \
        -e "s|^weights = .*|weights = \"$2/efficientnet-lite0.safetensors\"|" configs/concrete-crack-lite0.toml
}

test_image() {
    $sudo podman image exists "$image" || { echo "$image does not exist: run make image" >&2; exit 1; }
    local data
    data=$(realpath ../shared/data/concrete-crack)
    # Globals: the EXIT trap runs after this function has returned.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/inside" "$work/outside" "$work/jobs" "$work/weights"
    # A copy the container's user may read, whatever the mode of the exported file.
    install -m 644 weights/efficientnet-lite0.safetensors "$work/weights/"
    chmod a+rwx "$work/inside"
    job_copy /data /weights /runs >"$work/jobs/main.toml"
    job_copy "$data" "$PWD/weights" "$work/outside" >"$work/jobs/outside.toml"

    echo "main job inside $image"
    local clock=$SECONDS
    $sudo podman run --rm --network none -v "$data:/data:ro" -v "$work/weights:/weights:ro" \
        -v "$work/jobs:/jobs:ro" -v "$work/inside:/runs" "$image" run /jobs/main.toml --quiet | tail -1
    echo "  $((SECONDS - clock)) s"
    echo "main job outside"
    clock=$SECONDS
    "$padim" run "$work/jobs/outside.toml" --quiet | tail -1
    echo "  $((SECONDS - clock)) s"
    if cmp "$work/inside/report/metrics.json" "$work/outside/report/metrics.json"; then
        echo "metrics.json: the same bytes inside and outside the container"
    else
        diff <(python3 -m json.tool "$work/inside/report/metrics.json") \
            <(python3 -m json.tool "$work/outside/report/metrics.json") | head -20
        echo "metrics.json differs between the container and the host" >&2
        exit 1
    fi

    echo "one extract shard of an s3:// job inside $image against moto on the host network"
    local port
    port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    .venv/bin/moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    moto=$!
    trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
    # Short-lived test credentials, given to the container at run time only.
    local credentials=(AWS_ACCESS_KEY_ID=image-test AWS_SECRET_ACCESS_KEY=image-test-secret AWS_REGION=us-east-1)
    local s3="env ${credentials[*]} AWS_ENDPOINT_URL=http://127.0.0.1:$port .venv/bin/python scripts/s3_check.py"
    for _ in $(seq 100); do $s3 create padim-image-test 2>/dev/null && break; sleep 0.1; done
    job_copy /data /weights s3://padim-image-test/runs/image >"$work/jobs/s3.toml"
    local env_args=()
    for pair in "${credentials[@]}" "AWS_ENDPOINT_URL=http://127.0.0.1:$port"; do env_args+=(-e "$pair"); done
    $sudo podman run --rm --network host "${env_args[@]}" -v "$data:/data:ro" -v "$work/weights:/weights:ro" \
        -v "$work/jobs:/jobs:ro" "$image" extract /jobs/s3.toml --shard 0/8 --quiet
    $s3 expect padim-image-test runs/image/extract/done-00000-of-00008.json runs/image/extract/embeddings-00000-of-00008.parquet
    # Nothing of the credentials in the image's configuration or layers.
    if $sudo podman image inspect "$image" | grep -q image-test-secret \
        || $sudo podman image save "$image" 2>/dev/null | grep -aq image-test-secret; then
        echo "the image holds the test credentials" >&2
        exit 1
    fi
    echo "image test passed"
}

case $command in
build) build ;;
test) test_image ;;
*) echo "$usage" >&2; exit 2 ;;
esac
