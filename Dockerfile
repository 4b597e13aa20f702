# syntax=docker/dockerfile:1
#
# m365-relay as a container: `docker build -t m365-relay .`, or `docker compose up -d`
# with docker-compose.yml. The runtime is Debian slim (glibc) with ca-certificates, which
# the token endpoint's TLS needs (reqwest verifies against the OS trust store).
#
# Layout (config/docker.toml):
#   /etc/m365-relay/m365-relay.toml   config (from config/docker.toml)
#   /var/lib/m365-relay/state         mailbox registry and tokens   (volume)
#   /var/lib/m365-relay/certs         listeners' certificate and key (volume)
#   /run/secrets/m365_relay_key       key of the state at rest (a secret; or M365_RELAY_KEY)

# Builder and runtime share the Debian release, so the binary's glibc matches.
ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# Dependencies first, against stub sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# Then the relay itself. `touch` makes cargo see the sources as newer than the stubs.
COPY config ./config
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/m365-relay /out/m365-relay

FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: the OS trust store for the token endpoint. The HEALTHCHECK uses the
# relay's own `health` command, so no HTTP client is needed.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged user, so that volumes and secret files can be owned by it on the
# host (uid and gid 10001).
RUN groupadd --system --gid 10001 m365-relay \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/m365-relay --shell /usr/sbin/nologin m365-relay \
    && install -d -m 0755 -o root -g root /etc/m365-relay \
    && install -d -m 0755 -o 10001 -g 10001 /var/lib/m365-relay \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/m365-relay/state \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/m365-relay/certs

COPY --from=builder /out/m365-relay /usr/local/bin/m365-relay
COPY --chmod=0644 config/docker.toml /etc/m365-relay/m365-relay.toml

# Every command (`docker compose run --rm relay mailbox ...`, `docker exec ... m365-relay
# status`) finds the config without --config.
ENV M365_RELAY_CONFIG=/etc/m365-relay/m365-relay.toml

USER 10001:10001
WORKDIR /var/lib/m365-relay
VOLUME ["/var/lib/m365-relay/state", "/var/lib/m365-relay/certs"]

# SMTP STARTTLS and TLS, IMAP STARTTLS and TLS, POP3 STLS and TLS, admin (config/docker.toml).
EXPOSE 1587 1465 1143 1993 1110 1995 9587

# SIGTERM: stop accepting, let open sessions finish (limits.shutdown_grace_secs, 30 s);
# give `docker stop` more than that: `docker stop -t 45`, or stop_grace_period in compose.
STOPSIGNAL SIGTERM

# /healthz on the admin endpoint (admin.listen), asked by the relay's own `health` command,
# which ignores http_proxy and friends. `podman build` keeps it only with `--format docker`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["m365-relay", "health", "--admin", "http://127.0.0.1:9587"]

ENTRYPOINT ["m365-relay"]
CMD ["--config", "/etc/m365-relay/m365-relay.toml", "serve"]
