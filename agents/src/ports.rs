//! The agent's default ports, in one place: the servers' and the control API's clap defaults
//! use them, and so can whatever starts agents (the coordinator's lab and kube platforms),
//! so that an agent started without port flags is where its starter looks for it. The agent
//! image's `EXPOSE` line (Dockerfile) lists the same numbers.

/// The TCP echo/sink server (`tcp-stream`, `tcp-rr`, `tcp-crr`).
pub const DEFAULT_TCP_PORT: u16 = 7101;
/// The UDP echo/sink server (`udp-stream`, `udp-rr`).
pub const DEFAULT_UDP_PORT: u16 = 7102;
/// The HTTP server (`http`).
pub const DEFAULT_HTTP_PORT: u16 = 7180;
/// The control API when it listens on TCP (`--control tcp:0.0.0.0:7100`).
pub const DEFAULT_CONTROL_PORT: u16 = 7100;
