# One image with every binary of the workspace: provider-service, consumer-service and the
# sample-exchange. docker-compose.yml picks the binary with `command`.

# ---- build ----
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependency layer: the manifests, the lock file and the proto contract with stub sources, so
# that dependencies are compiled once and cached until a manifest changes.
COPY Cargo.toml Cargo.lock ./
COPY proto ./proto
COPY shared/Cargo.toml shared/build.rs ./shared/
COPY shared/migrations ./shared/migrations
COPY provider-service/Cargo.toml ./provider-service/
COPY consumer-service/Cargo.toml ./consumer-service/
COPY tests/Cargo.toml ./tests/
RUN mkdir -p shared/src provider-service/src consumer-service/src tests/src/bin \
 && touch shared/src/lib.rs provider-service/src/lib.rs consumer-service/src/lib.rs tests/src/lib.rs \
 && for f in provider-service/src/main.rs consumer-service/src/main.rs \
             tests/src/bin/sample-exchange.rs tests/src/bin/bench.rs; do echo 'fn main() {}' > "$f"; done \
 && cargo build --release --workspace --bins \
 && rm -rf shared/src provider-service/src consumer-service/src tests/src

# The real sources.
COPY shared/src ./shared/src
COPY provider-service/src ./provider-service/src
COPY consumer-service/src ./consumer-service/src
COPY tests/src ./tests/src
RUN touch shared/src/lib.rs provider-service/src/lib.rs consumer-service/src/lib.rs tests/src/lib.rs \
 && cargo build --release --workspace --bins

# ---- runtime ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /data && chown app /data
COPY --from=build /src/target/release/provider-service /src/target/release/consumer-service \
     /src/target/release/sample-exchange /usr/local/bin/
USER app
WORKDIR /data
EXPOSE 50051 50052 8700
CMD ["provider-service"]
