# One image for every long-running windi service: `windi` (the API, and the all-in-one local
# server) and `ws-relay`; compose picks the binary per service. Lambda deployments do not use
# this image: see template.yaml.
#
# Dependencies are built in their own layer (cargo-chef), so a change to windi's code rebuilds
# only windi's crates.
FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p windi -p windi-ws-relay
COPY . .
RUN cargo build --release --locked -p windi --bin windi -p windi-ws-relay --bin ws-relay \
 && cp target/release/windi target/release/ws-relay /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 windi
COPY --from=build /usr/local/bin/windi /usr/local/bin/ws-relay /usr/local/bin/
USER windi
# JSON logs without colour codes: what `docker logs` and log shippers want.
ENV PORT=8000 RELAY_PORT=8001 RUST_LOG=info LOG_FORMAT=json
EXPOSE 8000 8001
# The image has no curl: windi asks itself over TCP. The relay service overrides the port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["windi", "healthcheck"]
CMD ["windi"]
