# syntax=docker/dockerfile:1
#
# One image for Weft: weft (CLI), weft-proxy (sidecar and `weft-proxy init`)
# and weft-control, on Debian slim with iptables (nft backend, as Debian
# ships it) for the init container. Runs as uid/gid 2102, the proxy uid
# that `weft-proxy init --proxy-uid 2102` exempts from redirection; the
# init container overrides that with runAsUser 0 and NET_ADMIN/NET_RAW.
#
#   docker build -t ghcr.io/weft-mesh/weft:0.1.0 .
#
# No ENTRYPOINT: pods name the binary (`command: [weft-control]`).

# The toolchain the workspace is built and tested with (>= rust-version in
# Cargo.toml).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# `dist`: release with LTO and one codegen unit. Line tables (from release)
# triple the binaries' size; symbols stay, so panics still name their
# functions.
ENV CARGO_PROFILE_DIST_DEBUG=false \
    CARGO_PROFILE_DIST_STRIP=debuginfo
COPY . .
# protox compiles the protos in Rust: no protoc needed; ring needs only the
# C compiler the rust image has.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p weft -p weft-proxy -p weft-control \
 && mkdir -p /out \
 && cp target/dist/weft target/dist/weft-proxy target/dist/weft-control /out/

FROM debian:${DEBIAN_RELEASE}-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="weft" \
      org.opencontainers.image.description="Weft service mesh: weft, weft-proxy, weft-control" \
      org.opencontainers.image.source="https://github.com/weft-mesh/weft" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 2102 weft \
 && useradd --system --uid 2102 --gid 2102 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin weft
COPY --from=build /out/ /usr/local/bin/
USER 2102:2102
CMD ["weft", "--help"]
