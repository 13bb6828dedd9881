# syntax=docker/dockerfile:1
# KalamDB image: the node (`kalamdb`, the entrypoint), the operator (`kalam-operator`,
# run by the Helm chart's Deployment as its command) and the `kalam` CLI (for
# `kubectl exec ... -- kalam sql ...` inside a pod). Build with BuildKit:
#   docker build -t ghcr.io/kalamdb/kalamdb:0.1.0 .
# The workspace needs Rust 1.94+ (rust-version in Cargo.toml).

ARG RUST_VERSION=1.94

FROM rust:${RUST_VERSION}-bookworm AS builder
# clang/libclang-dev: bindgen generates RocksDB's C API bindings at build time.
# mold: the linker that .cargo/config.toml names (-fuse-ld=mold, x86_64).
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev mold
WORKDIR /src
COPY . .
# The target dir is a cache mount, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p kalam-dbnode -p kalam-operator -p kalam-client \
    && install -D -m 0755 target/release/kalamdb /out/kalamdb \
    && install -D -m 0755 target/release/kalam-operator /out/kalam-operator \
    && install -D -m 0755 target/release/kalam /out/kalam

FROM debian:bookworm-slim AS runtime
# ca-certificates: S3 storage locations over https. libstdc++6: RocksDB is C++.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kalamdb \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/kalamdb \
         --no-create-home --shell /usr/sbin/nologin kalamdb \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/kalamdb
COPY --from=builder /out/kalamdb /out/kalam-operator /out/kalam /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/kalamdb
# Environment beats server.toml, so these two hold in any container of this image.
ENV KALAMDB_LISTEN=0.0.0.0:8080 \
    KALAMDB_DATA_DIR=/var/lib/kalamdb
VOLUME ["/var/lib/kalamdb"]
EXPOSE 8080
ENTRYPOINT ["kalamdb"]
CMD ["serve"]
