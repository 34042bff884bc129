# syntax=docker/dockerfile:1
#
# mpn-notify container image: `docker build -t mpn-notify:0.1.0 .` (the Helm chart's
# default image is mpn-notify:<appVersion>; set image.registry to where you push it).
#
# Base images are pinned to exact tags here. No registry is reachable from the
# development machines, so the release pipeline adds the digests it resolves
# (FROM image:tag@sha256:...) and refreshes the dated Debian tag for security updates;
# builder and runtime stay on the same Debian release (bookworm: glibc, libssl3).
# scripts/check-helm checks this file's structure and runs the builder's cargo command.

# ---- builder ---------------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS builder

# rdkafka builds librdkafka from source (configure + make, C and C++) and links
# OpenSSL and zlib; mimalloc and the argon2/blake2 crates need a C compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential g++ make perl pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mpn-notify \
    && install -D -m 0755 target/release/mpn-notify /out/mpn-notify

# ---- runtime ---------------------------------------------------------------------
FROM debian:bookworm-20250113-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mpn \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin mpn \
    && mkdir -p /etc/mpn-notify

COPY --from=builder /out/mpn-notify /usr/local/bin/mpn-notify
COPY docs/mpn-notify.example.toml /usr/share/doc/mpn-notify/mpn-notify.example.toml

LABEL org.opencontainers.image.title="mpn-notify" \
      org.opencontainers.image.description="Real-time Pay-easy payment notification engine (Kafka in, gRPC/CAFIS out)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/mpn-notify"

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# gRPC subscriptions (grpc.listen), metrics/health/admin API (metrics.listen).
EXPOSE 50051 9464

# The runtime image has no curl: bash's /dev/tcp asks /healthz on the metrics listener
# (127.0.0.1:9464 by default; in a pod the chart sets 0.0.0.0:9464, reachable too).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 4 status <&3 && [[ $status == *' 200 '* ]]"]

# SIGTERM drains (stop consuming, commit, close streams) and exits 0; SIGHUP reloads the
# credentials file, the TLS files and the admin token.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mpn-notify"]
CMD ["serve", "--config", "/etc/mpn-notify/mpn-notify.toml"]
