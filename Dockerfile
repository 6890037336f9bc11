# Container images of MetricsStack's two binaries, for Docker (BuildKit) or any OCI builder
# that knows `RUN --mount=type=cache` (Podman, Buildah):
#
#   docker build --target operator  -t ghcr.io/metricsstack/operator:0.1.0 .
#   docker build --target collector -t ghcr.io/metricsstack/collector:0.1.0 .
#
# - operator: `metricsstack-operator`, which both reconciles (`run`) and serves each stack's
#   dashboard queries (`query-service`): one image for the operator Deployment and the query
#   service Deployments it creates. Runs as nonroot (65532).
# - collector: `collector`, the node agent of each stack's DaemonSet. Runs as root: it reads
#   other processes' /proc/<pid> entries (io, status, cgroup), with hostPID and the
#   SYS_PTRACE capability the operator gives the DaemonSet, which a non-root user would not
#   be allowed to.
#
# One builder stage compiles both binaries with the toolchain pinned in rust-toolchain.toml;
# each runtime stage adds one (stripped) binary to distroless's cc image: glibc, libgcc_s,
# CA certificates (TLS uses rustls with built-in webpki roots; the bundle is there for a
# custom CA), /etc/passwd with root and nonroot, /tmp.
#
# This file is not tested in the development environment, which cannot pull any base image.
# There, scripts/images builds the same two images FROM scratch out of the locally built
# release binaries and the shared libraries they link; keep the paths, labels, users and
# entrypoints of the two in step.
#
# Build arguments: VERSION (the org.opencontainers.image.version label), RUST_IMAGE and
# RUNTIME_IMAGE (e.g. to pin the base images by digest). The builder and the runtime base
# must be the same Debian release (glibc): bookworm and debian12.

ARG RUST_IMAGE=docker.io/library/rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The registry and target directories are cache mounts, kept between builds; the binaries
# are therefore copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p metricsstack-operator --bin metricsstack-operator \
        -p metricsstack-collector --bin collector \
    && mkdir -p /out \
    && cp target/release/metricsstack-operator target/release/collector /out/ \
    && strip /out/metricsstack-operator /out/collector

FROM ${RUNTIME_IMAGE} AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.source="https://github.com/metricsstack/metricsstack" \
      org.opencontainers.image.title="metricsstack-operator" \
      org.opencontainers.image.description="MetricsStack operator (run) and query service (query-service)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/metricsstack-operator /usr/local/bin/metricsstack-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/metricsstack-operator"]

FROM ${RUNTIME_IMAGE} AS collector
ARG VERSION=0.1.0
LABEL org.opencontainers.image.source="https://github.com/metricsstack/metricsstack" \
      org.opencontainers.image.title="metricsstack-collector" \
      org.opencontainers.image.description="MetricsStack node collector: host, process and pod metrics into TimescaleDB" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/collector /usr/local/bin/collector
# Root, on purpose: see the collector's note at the top.
USER 0:0
ENTRYPOINT ["/usr/local/bin/collector"]
