# Gatehouse image: build with cargo, run on a slim Debian as a non-root user.
#   docker build -t gatehouse .
#   docker run -p 4180:4180 -p 127.0.0.1:9090:9090 -v gatehouse-data:/var/lib/gatehouse gatehouse
# (the admin port, plain HTTP, is published on the host's loopback only)
# Mount your own config over /etc/gatehouse/gatehouse.toml.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# pingora-proxy patched for cloudflare/pingora#946 (see vendor/pingora-proxy/PATCHED.md)
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin gatehouse

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/gatehouse --shell /usr/sbin/nologin gatehouse \
 && mkdir -p /etc/gatehouse /var/lib/gatehouse \
 && chown gatehouse:gatehouse /var/lib/gatehouse
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
COPY config/container.toml /etc/gatehouse/gatehouse.toml
ENV GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml
VOLUME ["/var/lib/gatehouse"]
WORKDIR /var/lib/gatehouse
EXPOSE 4180 9090
USER gatehouse
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD curl -fsS http://127.0.0.1:9090/ping || exit 1
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["serve"]
