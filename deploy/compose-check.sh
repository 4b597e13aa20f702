#!/usr/bin/env bash
# docker-compose.yml brought up with podman-compose as README "Deployment" does it, in DIR
# (a copy of docker-compose.yml and config/) as compose project PROJECT. Part of
# deploy/test-container.sh, which has built the images `m365-relay:latest` and the
# application's: nothing here builds (podman-compose would build without `--format docker`,
# losing the HEALTHCHECK, and for tens of minutes). Hermetic: no mailbox is signed in, so
# nothing goes to Microsoft 365.
#
#   deploy/compose-check.sh DIR PROJECT
#
# Checks: the relay comes up healthy from the image just tested; /healthz and /readyz on the
# published admin port, /status only with the token the relay made in its `certs` volume; the
# CLI registers a mailbox and its password in one-off containers (`run`); `legacy-app`
# reaches the relay as `relay` over the internal network, over STARTTLS, verifying the
# certificate exported from the relay's volume, with the password given to `up`, and gets
# the relay's answer to its login (the mailbox has no token, so the relay refuses the right
# password, as it must).
set -euo pipefail
DIR=$1
PROJECT=$2
MAILBOX=alice@contoso.com
RELAY=${PROJECT}_relay_1
APP=${PROJECT}_legacy-app_1
IMAGE=localhost/m365-relay:latest
ADMIN=http://127.0.0.1:9587
cd "$DIR"

fail() {
    echo "compose check FAILED: $*" >&2
    echo "--- relay log" >&2
    podman logs "$RELAY" 2>&1 | tail -n 30 >&2 || true
    echo "--- legacy-app log" >&2
    podman logs "$APP" 2>&1 | tail -n 30 >&2 || true
    echo "--- podman-compose (compose.log)" >&2
    tail -n 30 compose.log >&2 || true
    exit 1
}

# The limits of deploy/containers.conf, given to every `podman run` again: a service's own
# `ulimits` (the relay's nofile) replace podman's defaults, nproc included, and podman's
# built-in nproc is above what this kind of host can raise.
ulimits=$(sed -n 's/^default_ulimits *= *\[\(.*\)\]$/\1/p' "${CONTAINERS_CONF:?}" | tr -d '",')
[ -n "$ulimits" ] || fail "no default_ulimits in $CONTAINERS_CONF"
run_args=$(printf -- '--ulimit %s ' $ulimits)

# podman-compose; it prints its own podman commands and their exit codes on stdout, and
# does not return a container's exit code: both go to compose.log, outcomes are checked.
compose() {
    echo "## podman-compose $*" >>compose.log
    podman-compose -p "$PROJECT" --podman-run-args="$run_args" "$@" </dev/null >>compose.log 2>&1
}

# `docker compose run --rm relay ARGS...` of the README: a one-off container with the
# relay's config, volumes and key; its standard output. `--no-deps`, because podman-compose
# 1.0.3's `run` would otherwise build the image again and start every service. Its exit code
# is the one podman-compose prints after the `podman run` line it prints (unbuffered, so in
# order); the container's output is between the two.
relay_run() {
    local out=run.out code
    echo "## podman-compose run --rm --no-deps -T relay $*" >>compose.log
    PYTHONUNBUFFERED=1 podman-compose -p "$PROJECT" --podman-run-args="$run_args" \
        run --rm --no-deps -T relay "$@" </dev/null >"$out" 2>>compose.log \
        || fail "podman-compose run relay $1 $2"
    cat "$out" >>compose.log
    code=$(sed -n 's/^exit code: //p' "$out" | tail -n 1)
    [ "$code" = 0 ] || fail "relay $1 $2 in a one-off container: exit code ${code:-none}"
    sed -n '/^podman run /,/^exit code: /p' "$out" | sed '1d;$d'
}

# 1. The key, readable by uid 10001 only.
mkdir -p secrets relay-ca
(umask 077 && head -c 32 /dev/urandom | base64 >secrets/m365-relay.key)
chown 10001:10001 secrets/m365-relay.key

# 2. Start the relay from the image built before; healthy (no systemd here runs the check).
podman image exists "$IMAGE" || fail "no image $IMAGE: build it first"
compose up -d relay || fail "podman-compose up -d relay"
! grep -q '^podman build' compose.log || fail "podman-compose built the image again"
[ "$(podman inspect --format '{{.Image}}' "$RELAY")" = "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ] \
    || fail "$RELAY does not run $IMAGE"
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

# 3. The admin port on the host's loopback: probes open, the rest only with the token the
#    relay created in its certs volume (which `m365-relay status` inside finds).
curl -fsS --max-time 10 "$ADMIN/healthz" >/dev/null || fail "$ADMIN/healthz from the host"
curl -fsS --max-time 10 "$ADMIN/readyz" >/dev/null || fail "$ADMIN/readyz from the host"
code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$ADMIN/status") || true
[ "$code" = 401 ] || fail "$ADMIN/status without the token answered $code, not 401"
podman exec "$RELAY" test -s /var/lib/m365-relay/certs/admin.token \
    || fail "no admin.token in the certs volume"
podman exec "$RELAY" m365-relay status >/dev/null || fail "m365-relay status inside the relay"

# 4. A mailbox and its local password, with one-off containers; listed by the running one.
relay_run mailbox add "$MAILBOX" --tenant contoso.onmicrosoft.com \
    --client-id 6731de76-14a6-49ae-97bc-6eba6914391e >/dev/null
password=$(relay_run mailbox password "$MAILBOX" --generate | tail -n 1)
[ "${#password}" -ge 16 ] || fail "no generated password"
podman exec "$RELAY" m365-relay mailbox list | grep -q "$MAILBOX" \
    || fail "$MAILBOX not listed by the running relay"

# 5. The application trusts the exported certificate; start it.
podman cp "$RELAY:/var/lib/m365-relay/certs/relay.crt" relay-ca/relay.crt \
    || fail "cannot copy the relay's certificate out"
chmod 644 relay-ca/relay.crt
SMTP_PASSWORD=$password compose up -d || fail "podman-compose up -d"
! grep -q '^podman build' compose.log || fail "podman-compose built an image"

# 6. Its first attempt: through DNS, STARTTLS and the certificate check to the login.
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
# The password got through (compose passed it on) and was right: the relay refused the
# login only for the missing token.
login=$(podman logs "$RELAY" 2>&1 | grep "login failed user=$MAILBOX" | head -n 1) || true
case $login in
*"no usable token for $MAILBOX"*) ;;
"") fail "the relay's log shows no login of $MAILBOX" ;;
*) fail "the relay refused the login of $MAILBOX for another reason: $login" ;;
esac
echo "compose check passed"
