//! `zonebench lab api-forwarder` (the real binary): a host loopback port forwarded to a TCP
//! listener that exists only inside a network namespace of the test's own (root). Traffic
//! stays on loopback: the host's and the namespace's.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use zonebench::platform::lab::kubernetes::api_forwarder::read_port_file;

use crate::support::{lab_lock, scratch, zonebench};

/// A network namespace, deleted when dropped (also when the test fails).
struct Netns(String);

impl Netns {
    fn add(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap().success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns(name);
        let ok = Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]).status().unwrap().success();
        assert!(ok, "ip -n {} link set lo up", ns.0);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// An echo server on 127.0.0.1 inside `ns`: it greets each connection with `hello from <ns>`
/// (so the test knows who answered), then echoes until end of file. Returns its port.
fn echo_server_in(ns: &str) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = ns.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let greeting = format!("hello from {name}\n");
            std::thread::spawn(move || {
                conn.write_all(greeting.as_bytes()).unwrap();
                let mut back = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut back);
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

/// The forwarder process, killed when dropped.
struct Forwarder {
    child: Child,
    log: PathBuf,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Forwarder {
    /// Starts `zonebench lab api-forwarder` and waits for its port file.
    fn start(ns: &str, target: SocketAddr, dir: &Path, tag: &str) -> (Forwarder, u16) {
        let port_file = dir.join(format!("{tag}.port"));
        let log = dir.join(format!("{tag}.log"));
        let child = zonebench()
            .args(["lab", "api-forwarder", "--netns", ns, "--target", &target.to_string(), "--port-file"])
            .arg(&port_file)
            .arg("--watch-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut f = Forwarder { child, log };
        let start = Instant::now();
        loop {
            if let Some(port) = read_port_file(&port_file).unwrap() {
                return (f, port);
            }
            if let Some(status) = f.child.try_wait().unwrap() {
                panic!("the forwarder exited ({status}): {}", f.log_text());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no port file within 10 s: {}", f.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; its status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < within, "the forwarder did not exit within {within:?}: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

#[test]
fn the_forwarder_carries_concurrent_connections_into_the_namespace_and_stops_when_stdin_closes() {
    let _lock = lab_lock(false);
    let dir = scratch("api-fwd");
    let ns = Netns::add(format!("zbt-fwd-{}", std::process::id()));
    let echo = echo_server_in(&ns.0);
    let (mut fwd, port) = Forwarder::start(&ns.0, SocketAddr::from((Ipv4Addr::LOCALHOST, echo)), &dir, "echo");
    assert_ne!(port, 0);

    // Two connections open at once, their traffic interleaved: each gets its own echo.
    let (mut a, mut ra) = connect(port);
    let (mut b, mut rb) = connect(port);
    let hello = format!("hello from {}\n", ns.0);
    assert_eq!(line(&mut ra), hello);
    assert_eq!(line(&mut rb), hello);
    for i in 0..20 {
        a.write_all(format!("a{i}\n").as_bytes()).unwrap();
        b.write_all(format!("b{i}\n").as_bytes()).unwrap();
        assert_eq!(line(&mut rb), format!("b{i}\n"));
        assert_eq!(line(&mut ra), format!("a{i}\n"));
    }
    // A large write in flight on both at once, read back whole.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let writers: Vec<_> = [a.try_clone().unwrap(), b.try_clone().unwrap()]
        .into_iter()
        .map(|mut s| {
            let big = big.clone();
            std::thread::spawn(move || s.write_all(&big).unwrap())
        })
        .collect();
    for r in [&mut ra, &mut rb] {
        let mut got = vec![0u8; big.len()];
        r.read_exact(&mut got).unwrap();
        assert!(got == big, "the echoed bytes differ");
    }
    for w in writers {
        w.join().unwrap();
    }

    // One side's end of file goes through and back: `a` closes, `b` carries on.
    a.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    ra.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    b.write_all(b"still here\n").unwrap();
    assert_eq!(line(&mut rb), "still here\n");

    // Closing its stdin stops it, cleanly.
    drop(fwd.child.stdin.take());
    let status = fwd.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}: {}", fwd.log_text());
}

#[test]
fn a_refused_target_closes_the_client_connection_and_sigterm_stops_the_forwarder() {
    let _lock = lab_lock(false);
    let dir = scratch("api-fwd-refused");
    let ns = Netns::add(format!("zbt-fwdr-{}", std::process::id()));
    // Nothing listens on this port inside the namespace (it is new and empty).
    let (mut fwd, port) = Forwarder::start(&ns.0, SocketAddr::from((Ipv4Addr::LOCALHOST, 9)), &dir, "refused");
    let (_s, mut r) = connect(port);
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{got:?}");
    let start = Instant::now();
    while !fwd.log_text().contains("refused") {
        assert!(start.elapsed() < Duration::from_secs(5), "no refusal logged: {}", fwd.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fwd.log_text().contains(&format!("connecting to 127.0.0.1:9 in the network namespace {}", ns.0)));

    let pid = nix::unistd::Pid::from_raw(fwd.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = fwd.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}: {}", fwd.log_text());
}
