# syntax=docker/dockerfile:1
#
# hermes-reconciler under s6-overlay v3.
#
# Standalone image (Debian slim + s6-overlay + hermes-reconciler; user hermes 10000:10000,
# HERMES_HOME=/opt/data as a volume, /init as entrypoint):
#
#   docker build -t hermes-reconciler .
#
# The same daemon layered onto an existing image that already boots with s6-overlay v3, such as
# a Hermes Agent image (its s6-overlay, user, volume, ENTRYPOINT and CMD are kept; the old
# one-shot boot script cont-init.d/02-reconcile-profiles is replaced):
#
#   docker build --build-arg BASE_IMAGE=<hermes image> -t hermes-agent:with-reconciler .
#
# The base image must be Debian-based (glibc 2.36 or newer) and build as root.

# Default: the `standalone` stage below. Any image with s6-overlay v3 at /init works too.
ARG BASE_IMAGE=standalone
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole crate (.dockerignore leaves out target/ and .git/): Cargo checks the paths of every
# target the manifest declares (tests, benches) even when it only builds the binary.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/hermes-reconciler /out/hermes-reconciler

# ---------------------------------------------------------------------------------------------
# s6-overlay, pinned: the version and the SHA-256 of each tarball are checked before anything
# is extracted. To move to another release, change all four ARGs together (the values are in
# the release's s6-overlay-*.tar.xz.sha256 files).
FROM --platform=$BUILDPLATFORM ${DEBIAN_IMAGE} AS s6-overlay
ARG TARGETARCH
ARG S6_OVERLAY_VERSION=3.2.3.2
ARG S6_OVERLAY_NOARCH_SHA256=5379750ed30a84bbd2e2dd74847ba6b5bd29cd0b2e3ea2ec58049b57eb2eda12
ARG S6_OVERLAY_X86_64_SHA256=e6befcc96a437a3831386ecfc51808c5d3e939dc5fe3c02ae9284599e8aa2408
ARG S6_OVERLAY_AARCH64_SHA256=b17f17a82e7a515c682a91edaf2ffdabb73f891981b6c1fd712115693a2f8b4c
# Only the download tools of a throw-away stage: unpinned Debian versions are fine here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl xz-utils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/s6-overlay
RUN set -eu; \
    case "${TARGETARCH:-amd64}" in \
      amd64) arch=x86_64; arch_sha256="${S6_OVERLAY_X86_64_SHA256}" ;; \
      arm64) arch=aarch64; arch_sha256="${S6_OVERLAY_AARCH64_SHA256}" ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH} (amd64 and arm64 are)" >&2; exit 1 ;; \
    esac; \
    url="https://github.com/just-containers/s6-overlay/releases/download/v${S6_OVERLAY_VERSION}"; \
    curl -fsSL --retry 3 -o s6-overlay-noarch.tar.xz "${url}/s6-overlay-noarch.tar.xz"; \
    curl -fsSL --retry 3 -o "s6-overlay-${arch}.tar.xz" "${url}/s6-overlay-${arch}.tar.xz"; \
    printf '%s  %s\n' \
      "${S6_OVERLAY_NOARCH_SHA256}" s6-overlay-noarch.tar.xz \
      "${arch_sha256}" "s6-overlay-${arch}.tar.xz" >SHA256SUMS; \
    sha256sum -c SHA256SUMS; \
    mkdir /out; \
    tar -C /out -Jxpf s6-overlay-noarch.tar.xz; \
    tar -C /out -Jxpf "s6-overlay-${arch}.tar.xz"

# ---------------------------------------------------------------------------------------------
# The standalone base: Debian slim, s6-overlay as PID 1, the hermes user and the data volume.
FROM ${DEBIAN_IMAGE} AS standalone
COPY --from=s6-overlay /out/ /
RUN groupadd --gid 10000 hermes \
    && useradd --uid 10000 --gid hermes --home-dir /opt/data --no-create-home \
      --shell /usr/sbin/nologin hermes \
    && install -d -o hermes -g hermes -m 0755 /opt/data
ENV HERMES_HOME=/opt/data
VOLUME ["/opt/data"]
ENTRYPOINT ["/init"]

# ---------------------------------------------------------------------------------------------
# hermes-reconciler on top of BASE_IMAGE: the binary, its s6-rc longrun (in the `user` bundle)
# and its cont-init.d scripts (scripts/install.sh), and the hermes user if the base has none.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="hermes-reconciler" \
      org.opencontainers.image.description="Keeps one s6 service slot per Hermes agent profile"
RUN --mount=type=bind,from=build,source=/out,target=/mnt/hermes-reconciler/bin \
    --mount=type=bind,source=.,target=/mnt/hermes-reconciler/src \
    sh /mnt/hermes-reconciler/src/scripts/install.sh /mnt/hermes-reconciler/bin/hermes-reconciler / \
    && if ! getent group hermes >/dev/null; then groupadd --gid 10000 hermes; fi \
    && if ! id -u hermes >/dev/null 2>&1; then \
         useradd --uid 10000 --gid hermes --home-dir /opt/data --no-create-home \
           --shell /usr/sbin/nologin hermes; \
       fi \
    && echo "user hermes: $(id hermes)" \
    && hermes-reconciler --help >/dev/null
