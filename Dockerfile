# One image per service, from one Dockerfile:
#   docker build --build-arg SERVICE=inventory -t omni/inventory .
# The build stage compiles the whole workspace once (cache mounts keep the registry and target
# between builds); the final image holds one static-ish binary on distroless, as a non-root user.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG SERVICE
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    test -n "${SERVICE}" \
    && cargo build --release --locked --bin "${SERVICE}" \
    && cp "target/release/${SERVICE}" /service

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /service /usr/local/bin/service
# The same numeric user the Kubernetes manifests require (runAsUser 10001 overrides nonroot's).
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/service"]
