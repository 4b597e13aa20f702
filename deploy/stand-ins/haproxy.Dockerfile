# A local stand-in of the official `haproxy:<version>` image (deploy/compose-fleet.yml's
# `relay`), for machines that cannot pull it (deploy/compose-fleet-check.sh): the local
# `debian:bookworm-slim` with Debian's HAProxy (2.6; deploy/haproxy.cfg needs nothing newer),
# run as the official image runs it: as the user `haproxy`, in the foreground, from
# /usr/local/etc/haproxy/haproxy.cfg, stopped with SIGUSR1 (soft stop).
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -m 0755 /usr/local/etc/haproxy

USER haproxy
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db"]
CMD ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
