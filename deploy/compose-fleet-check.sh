#!/usr/bin/env bash
# deploy/compose-fleet.yml brought up with podman-compose as README "With docker compose"
# does it, in DIR (a copy holding deploy/compose-fleet.yml, deploy/fleet.toml and
# deploy/haproxy.cfg) as compose project PROJECT. Part of deploy/test-container.sh, which has
# built `m365-relay:latest` and the images the file names (`postgres:...`, `haproxy:...`, or
# their local stand-ins, deploy/stand-ins/): nothing here builds. Hermetic: no mailbox is
# signed in, so nothing goes to Microsoft 365. Removes its containers, volumes and networks.
#
#   deploy/compose-fleet-check.sh DIR PROJECT
#
# Checks: the database's certificate made by `postgres-tls`; PostgreSQL healthy; both relays
# healthy on it over verified TLS; `state migrate` and `state status` in one-off containers;
# a mailbox and its password registered by the CLI in one-off containers and seen by both
# relays; a client on the network `front` logging in through HAProxy (PROXY v2) to a relay
# that logs the client's own address, with HAProxy's as the balancer; relay-1 stopped, and
# the logins served by relay-2.
#
# podman-compose 1.0.3 (Debian bookworm's) differs from docker compose in two things the file
# uses, which the steps below make up for as an operator on podman would:
# - it ignores `depends_on` conditions, so the services are started one after the other,
#   each once the one before is healthy (or, for `postgres-tls`, done);
# - it ignores a network's `ipam`, so the network `fleet` is created first with the subnet
#   of the file (proxy_protocol_from in fleet.toml); podman-compose uses it as it is.
set -euo pipefail
DIR=$1
PROJECT=$2
COMPOSE_FILE=deploy/compose-fleet.yml
MAILBOX=alice@contoso.com
IMAGE=localhost/m365-relay:latest
APP_IMAGE=${FLEET_CLIENT_IMAGE:-docker.io/curlimages/curl:8.11.1}
SERVICES=(postgres-tls postgres relay-1 relay-2 relay)
cd "$DIR"

name() { echo "${PROJECT}_$1_1"; }
RELAY1=$(name relay-1)
RELAY2=$(name relay-2)
HAPROXY=$(name relay)
POSTGRES=$(name postgres)
CLIENT=${PROJECT}_client

fail() {
    echo "fleet compose check FAILED: $*" >&2
    local s
    for s in "${SERVICES[@]}"; do
        echo "--- $s log" >&2
        podman logs "$(name "$s")" 2>&1 | tail -n 25 >&2 || true
    done
    echo "--- podman-compose (compose.log)" >&2
    tail -n 30 compose.log >&2 || true
    exit 1
}

teardown() {
    if [ -f "$COMPOSE_FILE" ]; then
        podman-compose -p "$PROJECT" -f "$COMPOSE_FILE" down -v </dev/null >>compose.log 2>&1 || true
    fi
    local s
    for s in "${SERVICES[@]}"; do
        podman rm --force --time 0 "$(name "$s")" >/dev/null 2>&1 || true
    done
    podman rm --force --time 0 "$CLIENT" >/dev/null 2>&1 || true
    for s in state-1 state-2 certs postgres-data postgres-tls; do
        podman volume rm --force "${PROJECT}_$s" >/dev/null 2>&1 || true
    done
    for s in fleet front setup default; do
        podman network rm --force "${PROJECT}_$s" >/dev/null 2>&1 || true
    done
}
trap teardown EXIT

# The limits of deploy/containers.conf for every `podman run` (see compose-check.sh).
ulimits=$(sed -n 's/^default_ulimits *= *\[\(.*\)\]$/\1/p' "${CONTAINERS_CONF:?}" | tr -d '",')
[ -n "$ulimits" ] || fail "no default_ulimits in $CONTAINERS_CONF"
run_args=$(printf -- '--ulimit %s ' $ulimits)

compose() {
    echo "## podman-compose $*" >>compose.log
    podman-compose -p "$PROJECT" -f "$COMPOSE_FILE" --podman-run-args="$run_args" "$@" \
        </dev/null >>compose.log 2>&1
}

# `docker compose run --rm relay-1 ARGS...`: a one-off container with relay-1's config,
# volumes, networks and key; its standard output (see relay_run in compose-check.sh).
relay_run() {
    local out=run.out code
    echo "## podman-compose run --rm --no-deps -T relay-1 $*" >>compose.log
    PYTHONUNBUFFERED=1 podman-compose -p "$PROJECT" -f "$COMPOSE_FILE" \
        --podman-run-args="$run_args" run --rm --no-deps -T relay-1 "$@" \
        </dev/null >"$out" 2>>compose.log || fail "podman-compose run relay-1 $1 $2"
    cat "$out" >>compose.log
    code=$(sed -n 's/^exit code: //p' "$out" | tail -n 1)
    [ "$code" = 0 ] || fail "relay-1 $1 $2 in a one-off container: exit code ${code:-none}"
    sed -n '/^podman run /,/^exit code: /p' "$out" | sed '1d;$d'
}

# (`grep >/dev/null`, not `grep -q`, after a pipe: -q stops reading at the first match, and
# the writer's SIGPIPE then fails the pipeline under pipefail.)

# Waits up to $2 half-seconds for container $1's health check to pass.
await_healthy() {
    local _
    for _ in $(seq "$2"); do
        if podman healthcheck run "$1" >/dev/null 2>&1; then
            echo "$1 healthy"
            return
        fi
        sleep 0.5
    done
    fail "$1 is not healthy after $(($2 / 2)) s"
}

# 1. The key (README), the database password, and the network `fleet` with its subnet.
mkdir -p secrets relay-ca
(umask 077 && head -c 32 /dev/urandom | base64 >secrets/m365-relay.key)
chown 10001:10001 secrets/m365-relay.key
POSTGRES_PASSWORD=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export POSTGRES_PASSWORD
for image in "$IMAGE" $(sed -n 's/^ *image: *\([a-z].*\)$/\1/p' "$COMPOSE_FILE" | sort -u); do
    podman image exists "$image" || fail "no image $image: make it first"
done
subnet=$(sed -n 's/^ *- subnet: *\([0-9./]*\).*$/\1/p' "$COMPOSE_FILE")
[ -n "$subnet" ] || fail "$COMPOSE_FILE gives the network fleet no subnet"
grep -q "^proxy_protocol_from = \[\"$subnet\"\]" deploy/fleet.toml \
    || fail "fleet.toml's proxy_protocol_from is not the network fleet ($subnet)"
podman network create --internal --subnet "$subnet" \
    --label "io.podman.compose.project=$PROJECT" --label "com.docker.compose.project=$PROJECT" \
    "${PROJECT}_fleet" >/dev/null || fail "podman network create ${PROJECT}_fleet"

# 2. The database's certificate, once, then the database.
compose up -d postgres-tls || fail "podman-compose up -d postgres-tls"
! grep -q '^podman build' compose.log || fail "podman-compose built an image"
for _ in $(seq 60); do
    [ "$(podman inspect --format '{{.State.Status}}' "$(name postgres-tls)")" = exited ] && break
    sleep 0.5
done
[ "$(podman inspect --format '{{.State.ExitCode}}' "$(name postgres-tls)")" = 0 ] \
    || fail "postgres-tls did not make the certificate"
podman logs "$(name postgres-tls)" 2>&1 | grep "made a certificate for postgres" >/dev/null \
    || fail "postgres-tls made no certificate"
compose up -d postgres || fail "podman-compose up -d postgres"
await_healthy "$POSTGRES" 120
podman logs "$POSTGRES" 2>&1 | grep "init process complete" >/dev/null \
    || fail "the database was not created from POSTGRES_USER/POSTGRES_DB/POSTGRES_PASSWORD"

# 3. The schema, by hand as after a new image, and its version.
migrated=$(relay_run state migrate)
echo "state migrate: $migrated"
case $migrated in
"database "*"schema migrated from version 0 to "*) ;;
*) fail "state migrate on the new database: $migrated" ;;
esac
status=$(relay_run state status)
echo "state status: $(echo "$status" | tr '\n' ' ')"
echo "$status" | grep -x "reachable: yes" >/dev/null || fail "state status: $status"
echo "$status" | grep -x "mailboxes: 0" >/dev/null || fail "state status: $status"

# 4. The relays, each once the one before is healthy (relay-1 makes the shared certificate
#    and admin token); the same image as tested before.
compose up -d relay-1 || fail "podman-compose up -d relay-1"
await_healthy "$RELAY1" 120
compose up -d relay-2 || fail "podman-compose up -d relay-2"
await_healthy "$RELAY2" 120
for relay in "$RELAY1" "$RELAY2"; do
    [ "$(podman inspect --format '{{.Image}}' "$relay")" = "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ] \
        || fail "$relay does not run $IMAGE"
done
for port in 9587 9588; do
    curl -fsS --max-time 10 "http://127.0.0.1:$port/readyz" >/dev/null \
        || fail "127.0.0.1:$port/readyz from the host"
done

# 5. A mailbox and its password from one-off containers; both running relays list it.
relay_run mailbox add "$MAILBOX" --tenant contoso.onmicrosoft.com \
    --client-id 6731de76-14a6-49ae-97bc-6eba6914391e >/dev/null
password=$(relay_run mailbox password "$MAILBOX" --generate | tail -n 1)
[ "${#password}" -ge 16 ] || fail "no generated password"
relay_run state status | grep -x "mailboxes: 1" >/dev/null || fail "state status does not count $MAILBOX"
# A command in a relay's container is a new process with its own connections: on a loaded
# machine its first connection may miss state.timeout_secs, as an operator's may; an
# operator runs it again, and so does this check (3 tries, the output of the last shown).
listed() {
    local relay=$1 try out
    for try in 1 2 3; do
        out=$(podman exec "$relay" m365-relay mailbox list 2>&1) || true
        if printf '%s\n' "$out" | grep -F "$MAILBOX" >/dev/null; then
            return 0
        fi
        echo "mailbox list in $relay, try $try: $out" >&2
        sleep 2
    done
    return 1
}
for relay in "$RELAY1" "$RELAY2"; do
    listed "$relay" || fail "$MAILBOX not listed by $relay"
done

# 6. HAProxy, with the relays' exported certificate for the clients.
compose up -d relay || fail "podman-compose up -d relay"
! grep -q '^podman build' compose.log || fail "podman-compose built an image"
podman cp "$RELAY1:/var/lib/m365-relay/certs/relay.crt" relay-ca/relay.crt \
    || fail "cannot copy the relays' certificate out"
chmod 644 relay-ca/relay.crt
front=$(podman network inspect --format '{{range .Subnets}}{{.Subnet}}{{end}}' "${PROJECT}_front") \
    || fail "no network ${PROJECT}_front"
CLIENT_IP=${front%.*/*}.200

# One SMTP login as `alice` from a client on `front` at CLIENT_IP, to `relay` (HAProxy) over
# STARTTLS verifying the certificate; curl's answer. The mailbox has no token, so the
# relay refuses the right password: `curl: (67) Login denied`.
login() {
    podman run --rm --name "$CLIENT" --network "${PROJECT}_front" --ip "$CLIENT_IP" \
        --read-only --cap-drop ALL -v "$DIR/relay-ca:/relay-ca:ro" "$APP_IMAGE" \
        -sS --max-time 30 --ssl-reqd --cacert /relay-ca/relay.crt --url smtp://relay:1587 \
        --user "$MAILBOX:$password" --mail-from "$MAILBOX" --mail-rcpt "$MAILBOX" \
        --upload-file /dev/null 2>&1 | grep '^curl: ' || true
}
# The relay's log lines of those logins: from the client's address, through HAProxy.
logins() {
    podman logs "$1" 2>&1 | grep "peer=$CLIENT_IP:" | grep "balancer=${subnet%.*}\." \
        | grep -c "login failed user=$MAILBOX.*no usable token for $MAILBOX" || true
}
answer=
for _ in $(seq 30); do
    answer=$(login)
    case $answer in "curl: (67) Login denied"*) break ;; esac
    sleep 1
done
echo "client through HAProxy: ${answer:-nothing}"
case $answer in
"curl: (67) Login denied"*) ;;
*) fail "no login through HAProxy reached a relay: ${answer:-nothing}" ;;
esac
for _ in 1 2 3; do
    answer=$(login)
    case $answer in "curl: (67) Login denied"*) ;; *) fail "login through HAProxy: $answer" ;; esac
done
seen1=$(logins "$RELAY1")
seen2=$(logins "$RELAY2")
echo "logins with the client's address: relay-1 $seen1, relay-2 $seen2"
echo "e.g. $(podman logs "$RELAY2" 2>&1 | grep "peer=$CLIENT_IP:" | grep -m 1 "login failed")"
[ $((seen1 + seen2)) -ge 4 ] || fail "the relays logged $((seen1 + seen2)) of 4 logins with peer=$CLIENT_IP"

# 7. relay-1 stopped: once HAProxy's check has taken it out, relay-2 serves every login.
#    Its address is gone, so each check waits its 5 s connect timeout: two failed checks
#    (haproxy.cfg: inter 5s fall 2) take 15-25 s.
podman stop --time 45 "$RELAY1" >/dev/null || fail "podman stop $RELAY1"
# Before HAProxy's check has noticed: after the 5 s connect timeout to relay-1, if the
# connection went there, retried on relay-2 (haproxy.cfg: option redispatch).
answer=$(login)
case $answer in
"curl: (67) Login denied"*) ;;
*) fail "login right after relay-1 stopped: ${answer:-nothing}" ;;
esac
relay1_out() { podman logs "$HAPROXY" 2>&1 | grep -E "smtp-starttls/relay-1 is (going )?DOWN" >/dev/null; }
for _ in $(seq 120); do
    relay1_out && break
    sleep 0.5
done
relay1_out || fail "HAProxy did not take relay-1 out within 60 s"
echo "HAProxy: $(podman logs "$HAPROXY" 2>&1 | grep -E "smtp-starttls/relay-1 is (going )?DOWN" | head -n 1)"
for _ in 1 2 3 4; do
    answer=$(login)
    case $answer in
    "curl: (67) Login denied"*) ;;
    *) fail "login with relay-1 stopped: ${answer:-nothing}" ;;
    esac
done
after2=$(logins "$RELAY2")
[ "$after2" -eq $((seen2 + 5)) ] || fail "relay-2 logged $((after2 - seen2)) of the 5 logins after relay-1 stopped"
echo "logins after relay-1 stopped: relay-2 $((after2 - seen2)) of 5"
[ "$(podman inspect --format '{{.State.Status}}' "$RELAY1")" = exited ] || fail "relay-1 came back"
echo "fleet compose check passed"
