#!/usr/bin/env bash
# The container image, built from this checkout and run as an operator would (issue 13),
# on a machine without a container registry. .ci/run runs it after `cargo test`.
#
#   deploy/test-container.sh          as root; installs podman when it is missing
#   deploy/test-container.sh --fleet  parts 1-3 and 6 only
#
# 1. podman, podman-compose, runc and mmdebstrap from Debian, when missing.
# 2. Base images, when they cannot be pulled: `debian:<release>-slim` from mmdebstrap, and
#    stand-ins of `rust:<version>-<release>`, of the compose file's `curlimages/curl` and
#    of the fleet compose file's `postgres:...` and `haproxy:...` (deploy/stand-ins/), made
#    from that base, Debian's packages and the host's Rust toolchain.
# 3. `podman build .`: the Dockerfile as users run it, on what .dockerignore lets through;
#    the builder's own `cargo build --release --locked` included.
# 4. The image run on the host's network against the test fakes of Entra and Exchange on
#    loopback (tests/it/container.rs): read-only, no capabilities, uid 10001, healthy,
#    the CLI, a STARTTLS login from the host verifying the relay's certificate, the message
#    upstream, SIGTERM with a session open, state kept by a new container; and the error
#    without a key.
# 5. docker-compose.yml with podman-compose, as the README's steps, from the image of part 3
#    (deploy/compose-check.sh): the relay, its admin endpoint and token, the CLI in one-off
#    containers, and the application (`legacy-app`), which reaches `relay` by name over
#    STARTTLS with the exported certificate and the password given to `up`.
# 6. deploy/compose-fleet.yml with podman-compose, from the same image
#    (deploy/compose-fleet-check.sh): PostgreSQL with its certificate, both relays healthy on
#    it, `state migrate` and `state status` and the CLI in one-off containers, logins
#    through HAProxy (PROXY v2) logged with the client's address, and relay-2 serving them
#    once relay-1 is stopped.
#
# Needs the ports of config/docker.toml (1587, 1465, 1143, 1993, 1110, 1995, 9587) and 9588
# free: part 4 runs on the host's network, part 5 publishes 127.0.0.1:9587, part 6 the mail
# ports (HAProxy) and 127.0.0.1:9587-9588.
#
# Any failure stops it with a message and a non-zero exit; it never skips a part (but
# --fleet leaves out parts 4 and 5, as asked). Prints
# the time of each part. Leaves the images (a later run reuses them and podman's layer
# cache), removes its containers, volumes and networks.
set -euo pipefail
FLEET_ONLY=
case ${1:-} in
"") ;;
--fleet) FLEET_ONLY=yes ;;
*) echo "usage: $0 [--fleet]" >&2 && exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT=$PWD
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}

T0=$SECONDS
LAST=$SECONDS
TIMES=()
fail() {
    echo "container test FAILED: $*" >&2
    exit 1
}
step() {
    echo "== container test [$((SECONDS - T0)) s]: $*"
}
took() {
    TIMES+=("$(printf '%4d s  %s' $((SECONDS - LAST)) "$1")")
    LAST=$SECONDS
}

[ "$(id -u)" = 0 ] || fail "run it as root (podman as root; the key is chowned to uid 10001)"

# What the Dockerfile and the compose file build from.
arg() { sed -n "s/^ARG $1=//p" Dockerfile; }
RUST_VERSION=$(arg RUST_VERSION)
DEBIAN_RELEASE=$(arg DEBIAN_RELEASE)
[ -n "$RUST_VERSION" ] && [ -n "$DEBIAN_RELEASE" ] || fail "no ARG RUST_VERSION/DEBIAN_RELEASE"
DEBIAN_IMAGE=docker.io/library/debian:$DEBIAN_RELEASE-slim
RUST_IMAGE=docker.io/library/rust:$RUST_VERSION-$DEBIAN_RELEASE
APP_IMAGE=docker.io/$(sed -n 's/^ *image: *\(curlimages\/curl:.*\)$/\1/p' docker-compose.yml)
[ "$APP_IMAGE" != docker.io/ ] || fail "docker-compose.yml names no curlimages/curl image"
fleet_image() {
    local image
    image=$(sed -n "s/^ *image: *\($1:.*\)\$/\1/p" deploy/compose-fleet.yml | sort -u)
    [ -n "$image" ] || fail "deploy/compose-fleet.yml names no $1 image"
    echo "docker.io/library/$image"
}
POSTGRES_IMAGE=$(fleet_image postgres)
HAPROXY_IMAGE=$(fleet_image haproxy)
IMAGE=localhost/m365-relay:latest

WORK=$(mktemp -d /tmp/m365-relay-container-test.XXXXXX)
PROJECT=m365-relay-ct$$
compose_down() {
    if [ -f "$WORK/compose/docker-compose.yml" ]; then
        (cd "$WORK/compose" && podman-compose -p "$PROJECT" down -v >/dev/null 2>&1) || true
        # What podman-compose 1.0.3's `down` may leave: a container in its restart loop, the
        # volumes then, and always the networks.
        local c
        for c in relay_1 legacy-app_1; do
            podman rm --force --time 0 "${PROJECT}_$c" >/dev/null 2>&1 || true
        done
        podman volume rm --force "${PROJECT}_state" "${PROJECT}_certs" >/dev/null 2>&1 || true
        podman network rm "${PROJECT}_mail" "${PROJECT}_default" >/dev/null 2>&1 || true
    fi
}
cleanup() {
    compose_down
    rm -rf "$WORK"
}
trap cleanup EXIT

# === 1. podman ===
step "podman"
if ! command -v podman >/dev/null || ! command -v podman-compose >/dev/null \
    || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        podman podman-compose runc mmdebstrap netavark aardvark-dns \
        containernetworking-plugins slirp4netns uidmap
fi
podman --version
podman info --format '{{.Host.OCIRuntime.Name}}' | grep -qx runc || fail "podman does not use runc"
took "podman"

# === 2. base images ===
# An image that is neither here nor pullable is made locally; $2 is the command that makes it.
ensure_image() {
    if podman image exists "$1"; then
        return
    fi
    if timeout 120 podman pull -q "$1" >/dev/null 2>&1; then
        echo "pulled $1"
        return
    fi
    echo "cannot pull $1: making it locally"
    "${@:2}" || fail "could not make $1"
    podman image exists "$1" || fail "$1 was not made"
}
debian_base() {
    mmdebstrap --quiet --variant=minbase --format=tar "$DEBIAN_RELEASE" - \
        | podman import - "$DEBIAN_IMAGE"
}
rust_stand_in() {
    command -v rustup >/dev/null || fail "no rustup on the host for the Rust stand-in"
    rustup toolchain list | grep -q "^$RUST_VERSION-" \
        || rustup toolchain install "$RUST_VERSION" --profile minimal
    local sysroot host_ca=/usr/local/share/ca-certificates
    sysroot=$(rustup run "$RUST_VERSION" rustc --print sysroot)
    [ -d "$host_ca" ] || host_ca=$WORK
    podman build --format docker --pull=never -t "$RUST_IMAGE" \
        --volume "$sysroot:/toolchain:ro" --volume "$host_ca:/host-ca:ro" \
        -f deploy/stand-ins/rust.Dockerfile deploy/stand-ins
}
stand_in() {
    podman build --format docker --pull=never -t "$1" -f "deploy/stand-ins/$2" deploy/stand-ins
}
step "base images"
ensure_image "$DEBIAN_IMAGE" debian_base
ensure_image "$RUST_IMAGE" rust_stand_in
ensure_image "$APP_IMAGE" stand_in "$APP_IMAGE" curl.Dockerfile
ensure_image "$POSTGRES_IMAGE" stand_in "$POSTGRES_IMAGE" postgres.Dockerfile
ensure_image "$HAPROXY_IMAGE" stand_in "$HAPROXY_IMAGE" haproxy.Dockerfile
took "base images (made only when missing)"

# === 3. the image ===
step "podman build . (the Dockerfile as users run it)"
podman build --format docker --pull=never -t "$IMAGE" . \
    || fail "podman build . failed"
health=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
case $health in
*"m365-relay"*"health"*) ;;
*) fail "the image has no HEALTHCHECK (podman build needs --format docker): $health" ;;
esac
took "podman build ."

if [ -z "$FLEET_ONLY" ]; then
# === 4. the image against the fakes ===
step "the image on the host network against the fakes (tests/it/container.rs)"
M365_RELAY_IMAGE=$IMAGE cargo test --test it container -- --ignored --test-threads=1 \
    2>&1 | tee "$WORK/it.log" || fail "tests/it/container.rs failed"
grep -q "test result: ok. 2 passed" "$WORK/it.log" \
    || fail "tests/it/container.rs did not run its 2 tests"
took "run checks against the fakes"

# === 5. docker-compose.yml ===
step "docker-compose.yml with podman-compose (README, Deployment)"
# A copy of the compose file and its config, so that the checkout's own secrets/ and
# relay-ca/ are never touched; the image is the one built in part 3.
mkdir -p "$WORK/compose"
cp -r docker-compose.yml config "$WORK/compose/"
deploy/compose-check.sh "$WORK/compose" "$PROJECT" || fail "docker-compose.yml"
compose_down
took "docker-compose.yml"
fi

# === 6. deploy/compose-fleet.yml ===
step "deploy/compose-fleet.yml with podman-compose (README, With docker compose)"
# A copy of the fleet's files (the compose file finds the key in ../secrets); it removes
# its own containers, volumes and networks.
mkdir -p "$WORK/fleet/deploy"
cp deploy/compose-fleet.yml deploy/fleet.toml deploy/haproxy.cfg "$WORK/fleet/deploy/"
FLEET_CLIENT_IMAGE=$APP_IMAGE deploy/compose-fleet-check.sh "$WORK/fleet" "m365-relay-fleet$$" \
    || fail "deploy/compose-fleet.yml"
took "deploy/compose-fleet.yml"

echo "== container test passed in $((SECONDS - T0)) s:"
printf '%s\n' "${TIMES[@]}"
