# syntax=docker/dockerfile:1.7
#
# nodewright container image: one static binary (musl) on distroless/static, running as 65532.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/nodewright:TAG \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" --push .
#
# How each platform is built (docs/container-image.md explains the choice):
#   - The builder stage always runs on the machine's own platform ($BUILDPLATFORM): no QEMU.
#   - Target = build architecture (amd64 on amd64, arm64 on arm64): `cargo build` with Debian's
#     musl-tools (musl-gcc compiles the C in ring and mimalloc).
#   - Target != build architecture (arm64 on an amd64 machine, or the reverse): `cargo zigbuild`,
#     with zig (PyPI `ziglang`) as the cross C compiler and linker. Debian has no aarch64 (or
#     x86_64) musl cross gcc.

# The Rust toolchain (crate: edition 2024, rust-version 1.89; developed and tested with 1.95).
ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS builder

# Set by BuildKit: the platform the image is for, and the one building it.
ARG TARGETARCH
ARG BUILDARCH
# Pinned cross toolchain, used only when TARGETARCH != BUILDARCH.
ARG ZIGLANG_VERSION=0.14.1
ARG CARGO_ZIGBUILD_VERSION=0.24.1

RUN set -eux; \
    case "${TARGETARCH}" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH=${TARGETARCH} (amd64 and arm64 are)" >&2; exit 1 ;; \
    esac; \
    echo "${target}" > /rust-target; \
    rustup target add "${target}"; \
    apt-get update; \
    if [ "${TARGETARCH}" = "${BUILDARCH}" ]; then \
      apt-get install -y --no-install-recommends musl-tools; \
    else \
      apt-get install -y --no-install-recommends python3-venv; \
      python3 -m venv /opt/zig; \
      /opt/zig/bin/pip install --no-cache-dir \
        "ziglang==${ZIGLANG_VERSION}" "cargo-zigbuild==${CARGO_ZIGBUILD_VERSION}"; \
      /opt/zig/bin/python -m ziglang version; \
    fi; \
    rm -rf /var/lib/apt/lists/*

WORKDIR /src
# What `cargo build --locked --bin nodewright` reads: the workspace manifest and lock file, the
# sources (src/ embeds examples/workshop.yaml and src/cloud/data/*.csv), and the files the manifest
# names (benches/*.rs for [[bench]]; tests/ for the test targets cargo discovers).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY benches ./benches
COPY tests ./tests

# Registry and target directory are BuildKit cache mounts (kept between builds, never in a
# layer). One target mount for every platform, with a directory per TARGETARCH inside it, so
# the two platforms of a multi-platform build can compile at the same time.
RUN --mount=type=cache,id=nodewright-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=nodewright-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=nodewright-target,target=/cache/target \
    set -eux; \
    target="$(cat /rust-target)"; \
    export CARGO_TARGET_DIR="/cache/target/${TARGETARCH}"; \
    if [ "${TARGETARCH}" = "${BUILDARCH}" ]; then \
      export CC_x86_64_unknown_linux_musl=musl-gcc CC_aarch64_unknown_linux_musl=musl-gcc; \
      cargo build --release --locked --target "${target}" --bin nodewright; \
    else \
      export PATH="/opt/zig/bin:${PATH}" CARGO_ZIGBUILD_PYTHON_PATH=/opt/zig/bin/python; \
      cargo zigbuild --release --locked --target "${target}" --bin nodewright; \
    fi; \
    install -D -m 0755 "${CARGO_TARGET_DIR}/${target}/release/nodewright" /out/nodewright

# distroless/static: CA certificates (/etc/ssl/certs/ca-certificates.crt: the AWS SDK's rustls
# client uses the system roots), /etc/passwd with nonroot (65532), tzdata; no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=""
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="nodewright" \
      org.opencontainers.image.description="Just-in-time capacity for Kubernetes: pod steering and quota webhooks, a scheduler extender and an EC2 provisioner" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

COPY --from=builder /out/nodewright /nodewright

USER 65532:65532
# 8443: HTTPS (/mutate, /validate, /scheduler/filter, /scheduler/prioritize).
# 8080: plain HTTP (/metrics, /healthz, /readyz).
EXPOSE 8443 8080
ENTRYPOINT ["/nodewright"]
CMD ["serve"]
