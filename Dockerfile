# One image with the binaries that ship: provider-service, consumer-service and the
# sample-exchange (for the compose file's offline profile). docker-compose.yml picks the binary
# with `command`. Dependencies are compiled from a cargo-chef recipe (the manifests and lock file
# only), so their layer survives source changes and no list of binaries is kept by hand here.

# ---- toolchain with cargo-chef ----
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install --locked cargo-chef@0.1.78
WORKDIR /src

# ---- the dependency recipe (changes only when a manifest or Cargo.lock does) ----
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---- build ----
FROM chef AS build
ARG PACKAGES="-p provider-service -p consumer-service -p sample-exchange"
COPY --from=planner /src/recipe.json recipe.json
# hadolint ignore=SC2086
RUN cargo chef cook --profile dist --locked --recipe-path recipe.json $PACKAGES
COPY . .
# hadolint ignore=SC2086
RUN cargo build --profile dist --locked $PACKAGES --bins \
 && mkdir /out \
 && cp target/dist/provider-service target/dist/consumer-service target/dist/sample-exchange /out/

# ---- runtime ----
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /out/ /usr/local/bin/
# Inside a container every service listens on all interfaces; compose publishes the ports on the
# host's loopback only. No HEALTHCHECK here: the one image runs three binaries, so compose and
# Kubernetes name each container's own probe (`<binary> healthcheck`, gRPC health).
ENV PROVIDER_LISTEN_ADDR=0.0.0.0:50051 \
    CONSUMER_LISTEN_ADDR=0.0.0.0:50052 \
    SAMPLE_EXCHANGE_LISTEN_ADDR=0.0.0.0:8700
USER 10001:10001
WORKDIR /data
EXPOSE 50051 50052 8700
CMD ["provider-service"]
