//! The one place the agent calls the kernel directly: reading `TCP_INFO`, which neither std,
//! tokio nor socket2 expose, and raising the descriptor limit. Everything else in the crate
//! is safe code.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// Segments this socket retransmitted over its life (`tcpi_total_retrans`), as iperf3 reports.
#[cfg(target_os = "linux")]
pub fn tcp_total_retrans(sock: &impl AsRawFd) -> std::io::Result<u64> {
    let mut info: libc::tcp_info = unsafe {
        // SAFETY: tcp_info is a plain C struct of integers; all-zero is a valid value.
        std::mem::zeroed()
    };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the sizes passed, and the kernel
    // writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_total_retrans.into())
}

#[cfg(not(target_os = "linux"))]
pub fn tcp_total_retrans(_sock: &impl AsRawFd) -> std::io::Result<u64> {
    Err(std::io::Error::other("TCP_INFO retransmit counts need Linux"))
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (what Go programs do at
/// start and nginx's `worker_rlimit_nofile` is for: the soft default, often 1024, is far
/// below what a server of thousands of connections needs) and returns the soft limit now in
/// force. The data servers size their connection caps from it.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit the kernel writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid rlimit the kernel reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fresh_connection_has_no_retransmits() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(super::tcp_total_retrans(&c).unwrap(), 0);
    }
}
