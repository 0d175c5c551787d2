//! Where the control API listens: `tcp:ADDR:PORT` (kube, reached through port-forward) or
//! `unix:PATH` (lab and local runs, where file permissions keep other users out).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

/// A control API endpoint, as given (`tcp:…:0`) or as bound (the real port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid control endpoint {input:?}: {reason}")]
pub struct EndpointError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| EndpointError { input: s.to_string(), reason };
        if let Some(addr) = s.strip_prefix("tcp:") {
            let addr = addr.parse().map_err(|_| err("expected tcp:IPV4:PORT or tcp:[IPV6]:PORT"))?;
            Ok(Endpoint::Tcp(addr))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("expected unix:PATH with a non-empty path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else {
            Err(err("expected tcp:ADDR:PORT or unix:PATH"))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound control listener. A unix socket remembers which file it created, so that it
/// removes its own socket on shutdown and never one a later agent put in its place.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix { listener: UnixListener, path: PathBuf, inode: (u64, u64) },
}

impl Listener {
    pub(crate) async fn bind(endpoint: &Endpoint) -> io::Result<(Listener, Endpoint)> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("binding the control API to {addr}: {e}")))?;
                let bound = l.local_addr()?;
                Ok((Listener::Tcp(l), Endpoint::Tcp(bound)))
            }
            Endpoint::Unix(path) => {
                let (listener, inode) = bind_unix(path)?;
                Ok((Listener::Unix { listener, path: path.clone(), inode }, endpoint.clone()))
            }
        }
    }

    /// Removes the socket file if it is still the one this listener created.
    pub(crate) fn remove_socket_file(&self) {
        if let Listener::Unix { path, inode, .. } = self {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if (m.dev(), m.ino()) == *inode {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

fn bind_unix(path: &Path) -> io::Result<(UnixListener, (u64, u64))> {
    let ctx = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A socket someone still answers on belongs to a live agent: refuse rather than
            // steal it. Only a dead one (left by a killed agent) is removed.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process is listening on the control socket {}", path.display()),
                ));
            }
            std::fs::remove_file(path).map_err(|e| ctx(e, "removing the stale control socket"))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx(e, "checking the control socket path")),
    }
    let listener = UnixListener::bind(path).map_err(|e| ctx(e, "binding the control socket"))?;
    // Owner-only. Between bind and chmod the socket has the umask's mode; anyone who
    // connects in that instant still needs the token.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ctx(e, "restricting the permissions of the control socket"))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| ctx(e, "reading back the control socket"))?;
    Ok((listener, (m.dev(), m.ino())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_display_back() {
        for s in ["tcp:127.0.0.1:7100", "tcp:0.0.0.0:0", "tcp:[::1]:7100", "unix:/run/zb/control.sock", "unix:rel.sock"]
        {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        assert_eq!("tcp:[::1]:80".parse::<Endpoint>().unwrap(), Endpoint::Tcp("[::1]:80".parse().unwrap()));
    }

    #[test]
    fn bad_endpoints_name_the_value() {
        for s in ["tcp:localhost:7100", "tcp:127.0.0.1", "tcp:::1:80", "unix:", "http://x", "127.0.0.1:7100", ""] {
            let e = s.parse::<Endpoint>().unwrap_err();
            assert_eq!(e.input, s);
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
    }
}
