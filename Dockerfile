# Builds the windi binaries (the local all-in-one server and the per-function servers) into a
# small runtime image. Lambda deployments do not use this image: see template.yaml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p windi --bin windi \
 && cp target/release/windi /windi

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 windi
COPY --from=build /windi /usr/local/bin/windi
USER windi
ENV PORT=8000 RUST_LOG=info
EXPOSE 8000
CMD ["windi"]
