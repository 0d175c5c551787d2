//! Helpers for the agent's integration tests: servers on `127.0.0.1:0` in a background
//! runtime, and validation of results against the checked-in JSON schema.
#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

use std::net::SocketAddr;
use std::sync::OnceLock;

use zonebench_agent::servers::{self, ServerCtx};
use zonebench_agent::spec::{Identity, TestResult};

/// A running agent's data servers, stopped when dropped.
pub struct TestAgent {
    pub ctx: ServerCtx,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Clone, Copy)]
pub enum Which {
    Tcp,
    Udp,
    Http,
}

/// Starts the named servers, identified as `id`, on loopback with ephemeral ports.
pub fn start_agent(id: &str, which: &[Which]) -> TestAgent {
    start_agent_with(id, which, |_| {})
}

/// As [`start_agent`], with the servers' context changed by `tweak` first.
pub fn start_agent_with(id: &str, which: &[Which], tweak: impl FnOnce(&mut ServerCtx)) -> TestAgent {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut ctx = ServerCtx::new(Identity { id: id.into(), zone: "zone-a".into(), node: "node-1".into() });
    tweak(&mut ctx);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut agent = TestAgent { ctx: ctx.clone(), tcp: None, udp: None, http: None, rt: None };
    rt.block_on(async {
        for w in which {
            match w {
                Which::Tcp => agent.tcp = Some(servers::tcp::start(any, ctx.clone()).await.unwrap()),
                Which::Udp => agent.udp = Some(servers::udp::start(any, ctx.clone()).await.unwrap()),
                Which::Http => agent.http = Some(servers::http::start(any, ctx.clone()).await.unwrap()),
            }
        }
    });
    agent.rt = Some(rt);
    agent
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../results/schema/test-result.schema.json");
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    })
}

/// Panics with every schema violation if `value` does not match the test-result schema.
pub fn assert_schema_valid(value: &serde_json::Value) {
    let errors: Vec<String> = validator().iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "result does not match the schema: {errors:#?}\n{value:#}");
}

/// Serializes a result, checks it against the schema and that it reads back unchanged.
pub fn check_result(r: &TestResult) {
    let v = serde_json::to_value(r).unwrap();
    assert_schema_valid(&v);
    let back: TestResult = serde_json::from_value(v).unwrap();
    assert_eq!(&back, r);
}
