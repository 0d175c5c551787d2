//! `ControlClient::probe` against a real agent process (the local platform's `zonebench
//! agent serve`, control API on a unix socket): the coordinator's side of `POST /v1/probe`.

use std::net::SocketAddr;
use std::time::Duration;

use zonebench::control_client::ControlClient;
use zonebench::model::{AgentProgram, AgentRequest};
use zonebench::platform::local::LocalPlatform;
use zonebench::platform::Platform;
use zonebench_agent::probe::{ProbeProtocol, ProbeSpec};

async fn one_agent() -> (LocalPlatform, ControlClient, SocketAddr, SocketAddr) {
    let program = AgentProgram { path: env!("CARGO_BIN_EXE_zonebench").into(), args: vec!["agent".into()] };
    let mut p = LocalPlatform::new(vec!["a".into()], 1, program).unwrap();
    p.discover().await.unwrap();
    let agents = p
        .deploy(&[AgentRequest { id: "cli-a".into(), node: "a-1".into(), max_answer_qps: None, relay: false }])
        .await
        .unwrap();
    let a = &agents[0];
    let client = ControlClient::new(a.control.clone(), a.token.clone());
    (p, client, SocketAddr::new(a.ip, a.tcp_port), SocketAddr::new(a.ip, a.udp_port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reaches_the_agents_own_ports_and_reports_an_unreachable_one() {
    let (mut p, client, tcp, udp) = one_agent().await;

    for (target, protocol) in [(tcp, ProbeProtocol::Tcp), (udp, ProbeProtocol::Udp)] {
        let o = client.probe(&ProbeSpec::new(target, protocol, 5000)).await.unwrap();
        assert!(o.reached, "{protocol} {target}: {o:?}");
        assert_eq!(o.attempts, 1, "{o:?}");
        assert!(o.elapsed_ns > 0);
    }

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut spec = ProbeSpec::new(closed, ProbeProtocol::Tcp, 300);
    spec.interval_ms = 10;
    let o = client.probe(&spec).await.unwrap();
    assert!(!o.reached, "{o:?}");
    assert!(o.elapsed_ns >= 300_000_000, "gave up before within_ms: {o:?}");
    assert!(o.attempts > 1, "{o:?}");
    assert_eq!(o.last_error.as_deref(), Some("connection refused"));

    // The agent's refusals come back as errors that carry its message.
    let outside = ProbeSpec::new("10.96.0.10:7101".parse().unwrap(), ProbeProtocol::Tcp, 1000);
    let e = format!("{:#}", client.probe(&outside).await.unwrap_err());
    assert!(e.contains("403") && e.contains("10.96.0.10:7101") && e.contains("--allow-cidr"), "{e}");
    // A spec out of range is refused before any call.
    let e = format!("{:#}", client.probe(&ProbeSpec::new(tcp, ProbeProtocol::Tcp, 0)).await.unwrap_err());
    assert!(e.contains("within_ms"), "{e}");

    p.teardown().await.unwrap();
}

/// The client's usual call timeout is 10 s; a probe answers only when it is done, so its
/// call must be allowed `within_ms` on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_longer_than_the_usual_call_timeout_still_gets_its_answer() {
    let (mut p, client, _, _) = one_agent().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut spec = ProbeSpec::new(closed, ProbeProtocol::Tcp, 10_500);
    spec.interval_ms = 100;
    let o = tokio::time::timeout(Duration::from_secs(30), client.probe(&spec)).await.unwrap().unwrap();
    assert!(!o.reached, "{o:?}");
    assert!(o.elapsed_ns >= 10_500_000_000, "{o:?}");
    p.teardown().await.unwrap();
}
