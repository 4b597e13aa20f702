# A local stand-in of the official `postgres:<version>-bookworm` image (deploy/compose-fleet.yml's
# `postgres` and `postgres-tls`), for machines that cannot pull it (deploy/compose-fleet-check.sh):
# the local `debian:bookworm-slim` with Debian's PostgreSQL (15, not 17: what the relay needs of
# it is the same) and openssl, laid out as the official image for what the compose file uses:
# the binaries on PATH, the `postgres` user, PGDATA in /var/lib/postgresql/data, and an
# entrypoint (postgres-entrypoint.sh) that creates the cluster on the first start from
# POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB, then runs the server as `postgres`.
FROM debian:bookworm-slim

# No cluster from the package's own scripts: the entrypoint makes it in PGDATA.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql openssl \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls -d /usr/lib/postgresql/*/bin)" /usr/lib/postgresql/bin \
    && install -d -m 3777 -o postgres -g postgres /var/run/postgresql \
    && install -d -m 0700 -o postgres -g postgres /var/lib/postgresql/data

ENV PATH=/usr/lib/postgresql/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
COPY --chmod=0755 postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
