# syntax=docker/dockerfile:1
# vipps-order-gateway: a release build on Debian, run from a distroless image
# as a non-root user. The gateway writes nothing, so the root filesystem can
# be mounted read-only. Build:
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t vipps-order-gateway:0.1.0 .

ARG RUST_VERSION=1.95

# Bookworm, like the runtime's debian12: the binary links against the same glibc.
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: built against placeholder sources so
# this layer is reused until Cargo.toml, Cargo.lock or the build settings
# (.cargo/config.toml: how the bundled SQLite is compiled) change.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
RUN mkdir -p src tests/api \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > tests/api/main.rs \
    && cargo build --release --locked --bin vipps-order-gateway \
    && rm -rf src tests

# The gateway itself. touch: the copied sources may be older than the
# placeholders, and cargo decides what to rebuild by modification time.
COPY src ./src
# The outbox's migrations and the simulator's page templates, which the
# binary embeds.
COPY migrations ./migrations
COPY templates ./templates
RUN mkdir -p tests/api \
    && echo 'fn main() {}' > tests/api/main.rs \
    && touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin vipps-order-gateway \
    && strip target/release/vipps-order-gateway

FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="vipps-order-gateway" \
      org.opencontainers.image.description="Holds Vipps MobilePay secrets and offers a simple REST façade over the Order Management API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

COPY --from=builder /build/target/release/vipps-order-gateway /usr/local/bin/vipps-order-gateway

# 65532 is distroless' "nonroot" user; numeric, so runAsNonRoot can verify it.
USER 65532:65532
# 8080: the API (listen); 9090: /metrics (metrics_listen); 7070: the
# simulator, run with the command `simulate --listen 0.0.0.0:7070`.
EXPOSE 8080 9090 7070
ENTRYPOINT ["/usr/local/bin/vipps-order-gateway"]
CMD ["serve", "--config", "/etc/vipps-order-gateway/gateway.toml"]
