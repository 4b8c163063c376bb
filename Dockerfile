# syntax=docker/dockerfile:1
# The kiungo image: `docker build -t kiungo .` from the repository root.
# Runs as uid 10001 with a read-only root filesystem in mind (the Helm chart
# mounts the config at /etc/kiungo/kiungo.yaml and writable folders at /tmp
# and, for SQLite, /var/lib/kiungo).

# ---- build ---------------------------------------------------------------
# The workspace's rust-version (Cargo.toml).
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY bridge bridge
COPY connectors connectors
COPY mappings mappings
COPY tests tests
# The registry and target caches survive between builds (BuildKit); the
# binary is copied out of the cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kiungo \
    && cp target/release/kiungo /usr/local/bin/kiungo

# ---- run -----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates unpinned: the bookworm security updates are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kiungo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/kiungo --shell /usr/sbin/nologin kiungo \
    && mkdir -p /etc/kiungo /var/lib/kiungo \
    && chown kiungo:kiungo /var/lib/kiungo
COPY --from=builder /usr/local/bin/kiungo /usr/local/bin/kiungo
COPY mappings/packs /usr/share/kiungo/mappings
# A config for `docker run` without one mounted: HTTP ingest only, the
# shipped packs, SQLite in /var/lib/kiungo. The chart mounts its own.
RUN printf '%s\n' \
      'mappings: /usr/share/kiungo/mappings' \
      'store:' \
      '  url: sqlite:/var/lib/kiungo/kiungo.db' \
      'http:' \
      '  listen: 0.0.0.0:8080' \
      > /etc/kiungo/kiungo.yaml
WORKDIR /var/lib/kiungo
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["kiungo"]
CMD ["run", "--config", "/etc/kiungo/kiungo.yaml"]
