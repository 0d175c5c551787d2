//! `scripts/garbage-flood.sh`: floods a fresh `zonebench-agent serve` on loopback with
//! garbage on every port (see `tests/common/flood.rs`), prints the agent's RSS and open
//! descriptors before, at most during, and after, then runs real tcp-rr, udp-rr and http tests
//! through its control API and prints their figures. Loopback only; bounded by `--seconds`.
//!
//! ```sh
//! cargo run --release -p zonebench-agent --example garbage_flood -- \
//!     --agent target/release/zonebench-agent --seconds 60 [--threads 64] [--hold 8] [--nofile N]
//! ```
#![allow(clippy::unwrap_used)] // a tool for measuring: a failure is a panic with its reason

#[path = "../tests/common/flood.rs"]
mod flood;

use std::path::PathBuf;

fn main() {
    let mut agent_bin = PathBuf::from("target/release/zonebench-agent");
    let (mut seconds, mut threads, mut hold, mut nofile) = (60.0, 64, 8, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--agent" => agent_bin = PathBuf::from(value()),
            "--seconds" => seconds = value().parse().unwrap(),
            "--threads" => threads = value().parse().unwrap(),
            "--hold" => hold = value().parse().unwrap(),
            "--nofile" => nofile = Some(value().parse().unwrap()),
            other => panic!("unknown argument {other}; see the doc at the top of examples/garbage_flood.rs"),
        }
    }
    assert!(seconds > 0.0 && seconds <= 600.0, "--seconds must be within 0..=600");
    let agent = flood::start_agent(&agent_bin, nofile, &[]);
    eprintln!(
        "flooding {} (pid {}) on 127.0.0.1: tcp {}, udp {}, http {}, control {}; {threads} threads per TCP port, \
         {hold} connections per slow attack, {seconds} s",
        agent_bin.display(),
        agent.child.id(),
        agent.ports.tcp,
        agent.ports.udp,
        agent.ports.http,
        agent.ports.control
    );
    let f = flood::flood(&agent, seconds, threads, hold);
    println!("{f}");
    for (kind, port) in [("tcp-rr", agent.ports.tcp), ("udp-rr", agent.ports.udp), ("http", agent.ports.http)] {
        let r = flood::real_test(&agent, kind, port);
        let m = &r["metrics"];
        let rate = m["transactions_per_sec"].as_f64().or(m["requests_per_sec"].as_f64()).unwrap_or(0.0);
        println!(
            "right after: {kind:<6} {rate:>9.0}/s, p50 {} ns, errors {}, answered by {}",
            r["latency"]["p50_ns"],
            m["errors"].as_u64().unwrap_or(0),
            r["servers"]
        );
    }
    let (rss, fds) = flood::usage(agent.child.id());
    println!("after the tests: RSS {rss} kB, fds {fds}");
}
