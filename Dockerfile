# syntax=docker/dockerfile:1
# Multi-stage build: a cached dependency layer, a release build, and a slim
# non-root runtime with the example config.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. vendor/ holds
# the patched fastwebsockets (a path dependency): cargo cannot resolve the
# graph without it. scripts/check-dockerfile replays this stage in CI.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for b in fanout router auth publish; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo build --release --locked \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY clients ./clients
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin pushgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin pushgate
COPY --from=build /src/target/release/pushgate /usr/local/bin/pushgate
COPY config /etc/pushgate
USER pushgate
# Public HTTP and HTTPS, internal (publish, health, metrics).
EXPOSE 8080 8443 5561
ENV PUSHGATE_CONFIG=/etc/pushgate/example.yaml \
    PUSHGATE_HTTP=0.0.0.0:8080
# The internal listener stays on loopback unless a token is set:
#   -e PUSHGATE_PUBLISH_TOKEN=... -e PUSHGATE_INTERNAL=0.0.0.0:5561
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pushgate"]
