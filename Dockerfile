# Builds windi (the all-in-one local server) and ws-relay (the standalone WebSocket relay) into
# one small runtime image; compose picks the binary per service. Lambda deployments do not use
# this image: see template.yaml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
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
ENV PORT=8000 RELAY_PORT=8001 RUST_LOG=info
EXPOSE 8000 8001
CMD ["windi"]
