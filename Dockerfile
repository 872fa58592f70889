# Two images from one build: the services' (the default target, `services`: provider-service and
# consumer-service; docker-compose.yml picks the binary with `command`) and the sample
# exchange's (target `sample-exchange`, a test stand-in for the compose file's offline profile,
# never in the services' image). Dependencies are compiled from a cargo-chef recipe (the
# manifests and lock file only), so their layer survives source changes. The source revision
# comes in as a build argument (the context has no .git): `--version` and the labels show it.

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
# Stamped into --version (shared/kit/build.rs): the revision, and SOURCE_DATE_EPOCH for the date.
ARG DOCUMENTS_REVISION=unknown
ARG SOURCE_DATE_EPOCH
# hadolint ignore=SC2086
RUN cargo build --profile dist --locked $PACKAGES --bins \
 && mkdir /out \
 && cp target/dist/provider-service target/dist/consumer-service target/dist/sample-exchange /out/

# ---- what both images start from ----
FROM debian:bookworm-slim AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown 10001:10001 /data
WORKDIR /data

# ---- the sample exchange: a test stand-in, in its own image ----
FROM runtime AS sample-exchange
COPY --from=build /out/sample-exchange /usr/local/bin/
ENV SAMPLE_EXCHANGE_LISTEN_ADDR=0.0.0.0:8700
USER 10001:10001
EXPOSE 8700
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["sample-exchange", "--healthcheck"]
CMD ["sample-exchange"]

# ---- the services (the default target) ----
FROM runtime AS services
ARG DOCUMENTS_VERSION=unknown
ARG DOCUMENTS_REVISION=unknown
ARG DOCUMENTS_SOURCE=unknown
LABEL org.opencontainers.image.title="documents" \
      org.opencontainers.image.description="gRPC document provider and consumer sharing one SQL database" \
      org.opencontainers.image.version="$DOCUMENTS_VERSION" \
      org.opencontainers.image.revision="$DOCUMENTS_REVISION" \
      org.opencontainers.image.source="$DOCUMENTS_SOURCE" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /out/provider-service /out/consumer-service /usr/local/bin/
# Inside a container every service listens on all interfaces; compose publishes the ports on the
# host's loopback only. No HEALTHCHECK here: the image runs two binaries, so compose and
# Kubernetes name each container's own probe (`<binary> healthcheck`, gRPC health).
ENV PROVIDER_LISTEN_ADDR=0.0.0.0:50051 \
    CONSUMER_LISTEN_ADDR=0.0.0.0:50052
USER 10001:10001
EXPOSE 50051 50052
CMD ["provider-service"]
