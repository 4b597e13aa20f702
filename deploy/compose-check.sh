#!/usr/bin/env bash
# docker-compose.yml brought up with podman-compose as README "Deployment" does it, in DIR
# (a copy of docker-compose.yml and the build context) as compose project PROJECT. Part of
# deploy/test-container.sh, which has built the images `m365-relay:latest` and the
# application's; hermetic: no mailbox is signed in, so nothing goes to Microsoft 365.
#
#   deploy/compose-check.sh DIR PROJECT
#
# Checks: the relay comes up healthy; the CLI registers a mailbox through `run --rm`;
# `legacy-app` reaches the relay as `relay` over the internal network, over STARTTLS,
# verifying the certificate exported from the relay's volume, and gets the relay's answer
# to its login (the mailbox has no token, so the relay refuses it, as it must).
set -euo pipefail
DIR=$1
PROJECT=$2
MAILBOX=alice@contoso.com
RELAY=${PROJECT}_relay_1
APP=${PROJECT}_legacy-app_1
cd "$DIR"

fail() {
    echo "compose check FAILED: $*" >&2
    echo "--- relay log" >&2
    podman logs "$RELAY" 2>&1 | tail -n 30 >&2 || true
    echo "--- legacy-app log" >&2
    podman logs "$APP" 2>&1 | tail -n 30 >&2 || true
    exit 1
}
# podman-compose, its own chatter in compose.log; the command's output on stdout. A service's
# own `ulimits` replace podman's defaults (deploy/containers.conf), nproc included, which
# this kind of host cannot raise: it is given again.
compose() {
    podman-compose -p "$PROJECT" --podman-run-args="--ulimit nofile=8192:8192 --ulimit nproc=4096:4096" "$@" \
        2>>compose.log
}

# 1. The key, readable by uid 10001 only.
mkdir -p secrets relay-ca
(umask 077 && head -c 32 /dev/urandom | base64 >secrets/m365-relay.key)
chown 10001:10001 secrets/m365-relay.key

# 2. Start the relay; healthy (no systemd here runs the check: run it).
compose up -d relay >>compose.log || fail "podman-compose up -d relay"
healthy=
for _ in $(seq 60); do
    if podman healthcheck run "$RELAY" >/dev/null 2>&1; then
        healthy=yes
        break
    fi
    sleep 0.5
done
[ -n "$healthy" ] || fail "the relay is not healthy after 30 s"
echo "relay healthy: $(podman inspect --format '{{.State.Health.Status}}' "$RELAY")"

# 3. A mailbox and its local password, with one-off containers; listed by the running one.
compose run --rm relay mailbox add "$MAILBOX" --tenant contoso.onmicrosoft.com \
    --client-id 6731de76-14a6-49ae-97bc-6eba6914391e >>compose.log \
    || fail "podman-compose run --rm relay mailbox add"
password=$(compose run --rm relay mailbox password "$MAILBOX" --generate | tail -n 1) \
    || fail "podman-compose run --rm relay mailbox password"
[ "${#password}" -ge 16 ] || fail "no generated password"
podman exec "$RELAY" m365-relay mailbox list | grep -q "$MAILBOX" \
    || fail "$MAILBOX not listed by the running relay"

# 4. The application trusts the exported certificate; start it.
podman cp "$RELAY:/var/lib/m365-relay/certs/relay.crt" relay-ca/relay.crt \
    || fail "cannot copy the relay's certificate out"
chmod 644 relay-ca/relay.crt
SMTP_PASSWORD=$password compose up -d >>compose.log || fail "podman-compose up -d"

# 5. Its first attempt: through DNS, STARTTLS and the certificate check to the login.
answer=
for _ in $(seq 60); do
    answer=$(podman logs "$APP" 2>&1 | grep -E '^(curl: |sent to )' | head -n 1) || true
    [ -z "$answer" ] || break
    sleep 1
done
echo "legacy-app: ${answer:-nothing}"
case $answer in
"curl: (67) Login denied"*) ;;
"") fail "legacy-app tried nothing within 60 s" ;;
*) fail "legacy-app did not get to the relay's login answer: $answer" ;;
esac
podman logs "$RELAY" 2>&1 | grep -q "$MAILBOX" \
    || fail "the relay's log does not show the login of $MAILBOX"
echo "compose check passed"
