# A local stand-in of the official `rust:<version>-bookworm` image, for machines that cannot
# pull it (deploy/test-container.sh): the local `debian:bookworm-slim`, a C compiler (the
# aws-lc-sys build script needs one) and the host's Rust toolchain of the same version,
# mounted at build time with `--volume <sysroot>:/toolchain:ro`. Paths and environment as in
# the official image: cargo's home in /usr/local/cargo, the compilers on PATH. The host's own
# certificate authorities (/usr/local/share/ca-certificates, mounted at /host-ca), e.g. of a
# TLS-inspecting proxy in front of crates.io, are trusted too, as on the host.
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && { [ ! -d /host-ca ] || find /host-ca -maxdepth 1 -name '*.crt' -exec cp {} /usr/local/share/ca-certificates/ \; ; } \
    && update-ca-certificates

ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# bin and lib only: no documentation, no rust-analyzer.
RUN test -x /toolchain/bin/cargo \
    && install -d /usr/local/rust /usr/local/cargo/bin \
    && cp -a /toolchain/bin /toolchain/lib /usr/local/rust/ \
    && cargo --version && rustc --version
