# runta: one binary, the server and the CLI.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin runta

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data runta \
    && mkdir -p /data && chown runta /data
COPY --from=build /src/target/release/runta /usr/local/bin/runta
USER runta
WORKDIR /data
EXPOSE 8080 50051
ENTRYPOINT ["runta"]
CMD ["serve", "--admin-listen", "0.0.0.0:8080", "--grpc-listen", "0.0.0.0:50051"]
