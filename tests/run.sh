#!/usr/bin/env bash
# The test command (README "Development"): installs what the tests need and is missing, then
# runs `cargo test` with this script's arguments (`tests/run.sh --test it postgres`).
#
# The tests use the real thing, never a mock, and never skip because a program is absent:
#   - PostgreSQL's server programs (initdb, pg_ctl, postgres; Debian's `postgresql` package):
#     tests/it/support/postgres.rs starts a private cluster per test;
#   - HAProxy (Debian's `haproxy`): the load balancer sending the PROXY protocol;
#   - Kubernetes' schemas (PyPI's `kubernetes-validate`): deploy/kubernetes/ checked offline.
# Quiet when everything is there; installs with apt-get and pip otherwise (through sudo when
# not root). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The same search as tests/it/support/postgres.rs: Debian's folder, else PATH.
have_postgres() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ]; then
            return 0
        fi
    done
    command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null
}

debian=()
have_postgres || debian+=(postgresql)
command -v haproxy >/dev/null || debian+=(haproxy)
python3 -c 'import kubernetes_validate' 2>/dev/null || python3 -m pip --version >/dev/null 2>&1 \
    || debian+=(python3-pip)

if [ "${#debian[@]}" -gt 0 ]; then
    echo "tests/run.sh: installing ${debian[*]} (apt-get)" >&2
    as_root apt-get update -qq
    # The package's own cluster service is not needed (the tests start their own), and in a
    # container without an init system it cannot start: policy-rc.d may refuse it, harmlessly.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${debian[@]}" >/dev/null
fi

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    echo "tests/run.sh: installing kubernetes-validate (pip)" >&2
    # A Debian python3 is "externally managed" (PEP 668): then --break-system-packages.
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            kubernetes-validate
fi

exec cargo test "$@"
