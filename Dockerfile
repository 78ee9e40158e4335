# Barge's container image: a static binary on a distroless base, running as non-root.
#   docker build -t ghcr.io/barge-dev/barge:0.1.0 .
# CI has no container engine; it builds the same static binary with `make static`.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu --bin barge \
 && cp target/x86_64-unknown-linux-gnu/release/barge /barge

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /barge /usr/local/bin/barge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/barge"]
CMD ["run"]
