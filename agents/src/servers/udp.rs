//! PLACEHOLDER: replaced by the udp server.

use std::net::SocketAddr;

use super::ServerCtx;

/// Binds `addr`, spawns the server on the current runtime and returns the bound address.
pub async fn start(_addr: SocketAddr, _ctx: ServerCtx) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::other("the udp server is not built yet"))
}
