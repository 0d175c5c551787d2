# syntax=docker/dockerfile:1
# The zonebench agent image: one static (musl) binary on distroless/static, run as the
# non-root user 65532. Build from the repository root:
#   docker build -t zonebench-agent:dev .
# The kube platform runs it with `serve …` arguments (see `zonebench render`); its pods pass
# the restricted Pod Security Standard, so nothing here needs root or a writable root file system.
# No docker daemon or musl target exists where the tests run, so this file is never built
# there. harness/tests/it/agent_image.rs checks the nearest thing: a +crt-static (glibc) build
# of the agent, alone on a distroless-like read-only root, run with the server pod's args,
# Secret mount and securityContext (uid/gid 65532, no capabilities, no new privileges) as
# PID 1: it serves health, info and a tcp-rr test, stops on SIGTERM and writes nothing.
# What only a real build can show: that the musl build works, and that this file builds.

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# Only the agent is built; the coordinator stays out of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p zonebench-agent \
 && install -D -m 0755 target/release/zonebench-agent /out/zonebench-agent

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/zonebench-agent /zonebench-agent
USER 65532:65532
EXPOSE 7100 7101 7102/udp 7180
ENTRYPOINT ["/zonebench-agent"]
CMD ["serve"]
