# A local stand-in of `curlimages/curl` (docker-compose.yml's `legacy-app`), for machines
# that cannot pull it (deploy/test-container.sh): the local `debian:bookworm-slim` with curl.
# Like the original, it runs as an unprivileged user.
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 100 --no-create-home --shell /usr/sbin/nologin curl_user

USER 100
ENTRYPOINT ["curl"]
