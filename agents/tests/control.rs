//! The control API over real sockets (TCP on 127.0.0.1:0 and a unix socket in a temp dir),
//! spoken to by a hand-written HTTP/1.1 client so nothing about the wire is taken on trust.
//! After every refusal the agent must still answer a good request.
// Test helpers (here and in `common`) are not `#[test]` fns, which clippy's
// allow-unwrap-in-tests does not cover; a failed unwrap is a failed test here.
#![allow(clippy::unwrap_used)]
mod common;

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use common::{assert_schema_valid, start_agent, TestAgent, Which};
use zonebench_agent::control::{self, Cidr, Config, Endpoint, Runner, Token};
use zonebench_agent::load::TestError;
use zonebench_agent::servers::{Bound, Counters, ServerCtx};
use zonebench_agent::spec::{Identity, Metrics, TestResult, TestSpec};

const TOKEN: &str = "zb-test-token-7f3a9c";

// ---------------------------------------------------------------------------------------
// A control API on a background runtime, stopped when dropped.

struct Api {
    endpoint: Endpoint,
    ctx: ServerCtx,
    rt: Option<tokio::runtime::Runtime>,
    _agent: Option<TestAgent>,
    dir: Option<PathBuf>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh directory for a unix socket: short, so the path fits `sun_path`.
fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("zb-ctl-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fake_data_ports() -> Bound {
    Bound {
        tcp: "127.0.0.1:7101".parse().unwrap(),
        udp: "127.0.0.1:7102".parse().unwrap(),
        http: "127.0.0.1:7180".parse().unwrap(),
    }
}

fn start_api_with(
    endpoint: Endpoint,
    data: Bound,
    agent: Option<TestAgent>,
    dir: Option<PathBuf>,
    tweak: impl FnOnce(&mut Config),
) -> Api {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ctx = ServerCtx::new(Identity { id: "ctl-a".into(), zone: "zone-a".into(), node: "node-1".into() });
    let mut cfg = Config::new(endpoint, Token::new(TOKEN).unwrap(), ctx.clone(), data);
    tweak(&mut cfg);
    let control = rt.block_on(control::start(cfg)).unwrap();
    Api { endpoint: control.endpoint, ctx, rt: Some(rt), _agent: agent, dir }
}

fn tcp_api(tweak: impl FnOnce(&mut Config)) -> Api {
    start_api_with(Endpoint::Tcp("127.0.0.1:0".parse().unwrap()), fake_data_ports(), None, None, tweak)
}

fn unix_api(tweak: impl FnOnce(&mut Config)) -> Api {
    let dir = temp_dir();
    let path = dir.join("control.sock");
    start_api_with(Endpoint::Unix(path), fake_data_ports(), None, Some(dir), tweak)
}

/// A control API whose tests are run by `runner` instead of a real load generator.
fn api_with_runner(
    runner: impl Fn(&TestSpec, &CancellationToken) -> Result<TestResult, TestError> + Send + Sync + 'static,
    tweak: impl FnOnce(&mut Config),
) -> Api {
    tcp_api(|c| {
        c.runner = Arc::new(runner) as Runner;
        tweak(c);
    })
}

fn result_for(spec: &TestSpec) -> TestResult {
    TestResult {
        test: spec.test,
        target: spec.target.clone(),
        duration_ns: 1_000_000,
        metrics: Metrics { transactions_per_sec: Some(1000.0), errors: Some(0), ..Default::default() },
        latency: None,
        connect: None,
        servers: [("stand-in".to_string(), 1u64)].into(),
        window: None,
    }
}

/// A stand-in test that runs until cancelled (bounded at 30 s).
fn until_cancelled(spec: &TestSpec, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    let end = Instant::now() + Duration::from_secs(30);
    while !cancel.is_cancelled() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    if cancel.is_cancelled() {
        Err(TestError::Cancelled)
    } else {
        Ok(result_for(spec))
    }
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client over std sockets.

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn open(ep: &Endpoint) -> Conn {
        let c = match ep {
            Endpoint::Tcp(a) => Conn::Tcp(TcpStream::connect(a).unwrap()),
            Endpoint::Unix(p) => Conn::Unix(UnixStream::connect(p).unwrap()),
        };
        let t = Some(Duration::from_secs(10));
        match &c {
            Conn::Tcp(s) => s.set_read_timeout(t).unwrap(),
            Conn::Unix(s) => s.set_read_timeout(t).unwrap(),
        }
        c
    }

    fn try_clone(&self) -> Conn {
        match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone().unwrap()),
            Conn::Unix(s) => Conn::Unix(s.try_clone().unwrap()),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    fn json(&self) -> Value {
        assert!(self.header("content-type").is_some_and(|t| t.starts_with("application/json")), "not JSON: {self:?}");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.text()))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error message in {}", self.text())).to_string()
    }
}

/// Reads a whole response from a connection the server closes after it.
fn read_reply(conn: &mut Conn) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the response (the server closed with our body unread) is fine.
            Err(e) if !buf.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("reading the response: {e}"),
        }
    }
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no complete response head in {:?}", String::from_utf8_lossy(&buf));
    });
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let reply = Reply { status, headers, body: Vec::new() };
    assert!(reply.header("transfer-encoding").is_none(), "unexpected chunked response");
    if let Some(len) = reply.header("content-length") {
        let len: usize = len.parse().unwrap();
        assert!(body.len() >= len, "short body: {} of {len}", body.len());
        body.truncate(len);
    }
    Reply { body, ..reply }
}

/// Sends `head` then, from another thread, `body` (write errors ignored: the server may
/// answer and close before reading it all), and reads the response.
fn exchange(ep: &Endpoint, head: String, body: Vec<u8>) -> Reply {
    let mut conn = Conn::open(ep);
    conn.write_all(head.as_bytes()).unwrap();
    let mut writer = conn.try_clone();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
    let reply = read_reply(&mut conn);
    drop(conn);
    let _ = sender.join();
    reply
}

fn request(ep: &Endpoint, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    exchange(ep, head, body.as_bytes().to_vec())
}

const BEARER: &str = "Bearer zb-test-token-7f3a9c";

fn get(api: &Api, path: &str) -> Reply {
    request(&api.endpoint, "GET", path, Some(BEARER), None)
}

fn post(api: &Api, body: &Value) -> Reply {
    request(&api.endpoint, "POST", "/v1/tests", Some(BEARER), Some(&body.to_string()))
}

fn delete(api: &Api, path: &str) -> Reply {
    request(&api.endpoint, "DELETE", path, Some(BEARER), None)
}

/// The agent still answers an authenticated request after whatever came before.
fn assert_still_serving(api: &Api) {
    let r = get(api, "/v1/info");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["identity"]["id"], "ctl-a");
}

fn created_id(r: &Reply) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), Some(format!("/v1/tests/{id}").as_str()));
    id
}

/// Polls a test until `done(state)`, failing after `within`.
fn wait_for(api: &Api, id: &str, within: Duration, done: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = get(api, &format!("/v1/tests/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if done(v["state"].as_str().unwrap()) {
            return v;
        }
        assert!(Instant::now() < deadline, "test {id} still {} after {within:?}: {v:#}", v["state"]);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finished(state: &str) -> bool {
    matches!(state, "done" | "failed" | "cancelled")
}

fn loopback_spec(extra: Value) -> Value {
    let mut v = json!({"test": "tcp-rr", "target": "127.0.0.1:9", "duration_ms": 1000, "warmup_ms": 200});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

// ---------------------------------------------------------------------------------------
// Authentication and routes.

#[test]
fn healthz_answers_without_a_token_over_tcp_and_unix() {
    for api in [tcp_api(|_| {}), unix_api(|_| {})] {
        let r = request(&api.endpoint, "GET", "/healthz", None, None);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"status": "ok"}));
        assert_still_serving(&api);
    }
}

#[test]
fn every_other_route_needs_the_bearer_token() {
    for api in [tcp_api(|_| {}), unix_api(|_| {})] {
        for path in ["/v1/info", "/v1/tests", "/v1/tests/anything", "/v1/probe", "/metrics", "/no-such-route"] {
            for auth in [None, Some("Bearer wrong-token"), Some("Basic emI6dGVzdA=="), Some("Bearer "), Some(TOKEN)] {
                let r = request(&api.endpoint, "GET", path, auth, None);
                assert_eq!(r.status, 401, "{path} with {auth:?}: {}", r.text());
                assert_eq!(r.header("www-authenticate"), Some("Bearer"));
                assert!(!r.error().is_empty());
            }
            let r = request(&api.endpoint, "POST", "/v1/tests", None, Some(&loopback_spec(json!({})).to_string()));
            assert_eq!(r.status, 401);
            assert_still_serving(&api);
        }
        let r = request(&api.endpoint, "GET", "/v1/info", Some("bearer zb-test-token-7f3a9c"), None);
        assert_eq!(r.status, 200, "the scheme name is case-insensitive");
    }
}

#[test]
fn info_reports_identity_version_ports_limits_and_tests() {
    let api = tcp_api(|c| c.allow = vec!["10.0.0.0/8".parse::<Cidr>().unwrap()]);
    let v = get(&api, "/v1/info").json();
    assert_eq!(v["identity"], json!({"id": "ctl-a", "zone": "zone-a", "node": "node-1"}));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["protocol_version"], zonebench_agent::spec::PROTOCOL_VERSION);
    assert_eq!(v["ports"], json!({"tcp": 7101, "udp": 7102, "http": 7180}));
    assert_eq!(v["limits"]["max_duration_ms"], 3_600_000);
    assert_eq!(v["limits"]["max_connections"], 1024);
    assert_eq!(v["limits"]["max_body_bytes"], 1 << 20);
    assert_eq!(v["limits"]["allow_cidrs"], json!(["10.0.0.0/8"]));
    assert_eq!(v["tests"], json!(["tcp-stream", "udp-stream", "tcp-rr", "udp-rr", "tcp-crr", "http"]));
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_are_405_with_allow() {
    let api = tcp_api(|_| {});
    for path in ["/", "/v2/tests", "/v1/tests/", "/v1/tests/a/b", "/v1/infox"] {
        let r = get(&api, path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.error().contains(path), "{}", r.text());
        assert_still_serving(&api);
    }
    for (method, path, allow) in [
        ("POST", "/healthz", "GET"),
        ("DELETE", "/v1/info", "GET"),
        ("PUT", "/v1/tests", "GET, POST"),
        ("PATCH", "/v1/tests/abc", "GET, DELETE"),
        ("POST", "/metrics", "GET"),
        ("GET", "/v1/probe", "POST"),
    ] {
        let r = request(&api.endpoint, method, path, Some(BEARER), None);
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        assert!(r.error().contains(method));
        assert_still_serving(&api);
    }
}

#[test]
fn an_unknown_test_id_is_404() {
    let api = tcp_api(|_| {});
    for r in [get(&api, "/v1/tests/00000000-99"), delete(&api, "/v1/tests/00000000-99")] {
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.error().contains("00000000-99"));
    }
    assert_still_serving(&api);
}

// ---------------------------------------------------------------------------------------
// What a test spec must pass.

#[test]
fn a_two_mebibyte_body_is_refused_with_413() {
    for api in [tcp_api(|_| {}), unix_api(|_| {})] {
        let body = vec![b' '; 2 << 20];
        let head = format!(
            "POST /v1/tests HTTP/1.1\r\nHost: agent\r\nAuthorization: {BEARER}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let r = exchange(&api.endpoint, head, body);
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(r.error().contains("1048576"), "{}", r.text());
        assert_still_serving(&api);
    }
}

#[test]
fn a_chunked_body_over_the_cap_is_refused_with_413() {
    let api = tcp_api(|_| {});
    let mut body = Vec::new();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..32 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /v1/tests HTTP/1.1\r\nHost: agent\r\nAuthorization: {BEARER}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let r = exchange(&api.endpoint, head, body);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_still_serving(&api);
}

#[test]
fn a_small_chunked_body_is_read_like_any_other() {
    let api = tcp_api(|c| c.allow = vec![]);
    let spec = loopback_spec(json!({})).to_string();
    let body = format!("{:x}\r\n{spec}\r\n0\r\n\r\n", spec.len()).into_bytes();
    let head = format!(
        "POST /v1/tests HTTP/1.1\r\nHost: agent\r\nAuthorization: {BEARER}\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    // With no allowed CIDR the spec gets as far as the target check: the body was read whole.
    let r = exchange(&api.endpoint, head, body);
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn malformed_json_is_a_400_that_says_where() {
    let api = tcp_api(|_| {});
    for body in ["{\"test\": \"tcp-rr\",", "not json", "", "[1,2]", "{\"test\": \"tcp-rr\", \"target\": 5}"] {
        let r = request(&api.endpoint, "POST", "/v1/tests", Some(BEARER), Some(body));
        assert_eq!(r.status, 400, "{body:?}: {}", r.text());
        let e = r.error();
        assert!(e.contains("line 1 column"), "{body:?}: {e}");
        assert_still_serving(&api);
    }
}

#[test]
fn an_unknown_field_is_a_400_naming_it() {
    let api = tcp_api(|_| {});
    let r = post(&api, &loopback_spec(json!({"durration_ms": 5})));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("durration_ms"), "{}", r.text());
    let r = post(&api, &json!({"test": "tcp-rrr", "target": "127.0.0.1:9"}));
    assert_eq!(r.status, 400);
    assert!(r.error().contains("tcp-rrr"), "{}", r.text());
    assert_still_serving(&api);
}

#[test]
fn an_out_of_range_field_is_a_400_naming_it() {
    let api = tcp_api(|_| {});
    for (extra, field) in [
        (json!({"request_size": 0}), "request_size"),
        (json!({"duration_ms": 0}), "duration_ms"),
        (json!({"target": "127.0.0.1"}), "target"),
        (json!({"path": "no-slash"}), "path"),
    ] {
        let r = post(&api, &loopback_spec(extra));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["field"], field);
        assert!(r.error().contains(field), "{}", r.text());
        assert_still_serving(&api);
    }
}

#[test]
fn a_duration_over_the_limit_is_a_400_naming_field_and_limit() {
    let api = tcp_api(|c| c.limits.max_duration = Duration::from_secs(5));
    let r = post(&api, &loopback_spec(json!({"duration_ms": 4500, "warmup_ms": 1000})));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["field"], "duration_ms");
    let e = r.error();
    assert!(e.contains("5500 ms") && e.contains("5000 ms") && e.contains("--max-duration"), "{e}");
    assert_still_serving(&api);
}

#[test]
fn rates_and_fan_out_over_the_limits_are_400s_naming_field_and_limit() {
    let api = tcp_api(|c| {
        c.limits.max_rate_bps = 1_000_000_000;
        c.limits.max_qps = 5000.0;
        c.limits.max_connections = 8;
    });
    for (extra, field, says) in [
        (json!({"test": "udp-stream", "rate_bps": 0}), "rate_bps", "unlimited"),
        (json!({"test": "udp-stream", "rate_bps": 1_000_000_001u64}), "rate_bps", "1000000000"),
        (json!({"test": "http", "qps": 5000.5}), "qps", "5000"),
        (json!({"connections": 9}), "connections", "8"),
        (json!({"test": "tcp-stream", "parallel": 9}), "parallel", "8"),
    ] {
        let r = post(&api, &loopback_spec(extra.clone()));
        assert_eq!(r.status, 400, "{extra}: {}", r.text());
        assert_eq!(r.json()["field"], field);
        let e = r.error();
        assert!(e.contains(field) && e.contains(says), "{extra}: {e}");
        assert_still_serving(&api);
    }
}

#[test]
fn a_target_outside_the_allowed_cidrs_is_forbidden() {
    let api = tcp_api(|_| {});
    for target in ["10.1.2.3:7101", "[2001:db8::1]:7101", "[::ffff:10.1.2.3]:7101"] {
        let r = post(&api, &loopback_spec(json!({"target": target})));
        assert_eq!(r.status, 403, "{target}: {}", r.text());
        let e = r.error();
        assert!(e.contains(target) && e.contains("127.0.0.0/8, ::1/128"), "{e}");
        assert_still_serving(&api);
    }
    // 0.0.0.0 reaches the local host: never a target, allowed or not (tests/hostile.rs has
    // the other addresses that are no one server).
    let r = post(&api, &loopback_spec(json!({"target": "0.0.0.0:7101"})));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("not a unicast address"), "{}", r.error());
    let listed = get(&api, "/v1/tests").json();
    assert_eq!(listed["tests"], json!([]), "a refused test must not be kept");

    let api = tcp_api(|c| c.allow = vec!["10.0.0.0/8".parse().unwrap()]);
    let r = post(&api, &loopback_spec(json!({})));
    assert_eq!(r.status, 403, "loopback is allowed only by default: {}", r.text());
    assert!(r.error().contains("10.0.0.0/8"));
}

// ---------------------------------------------------------------------------------------
// The state machine, with stand-in runners.

#[test]
fn a_finished_test_shows_its_spec_times_and_result() {
    let api = api_with_runner(|spec, _| Ok(result_for(spec)), |_| {});
    let spec = loopback_spec(json!({"request_size": 64}));
    let id = created_id(&post(&api, &spec));
    let v = wait_for(&api, &id, Duration::from_secs(5), finished);
    assert_eq!(v["state"], "done", "{v:#}");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["spec"]["request_size"], 64);
    assert_eq!(v["spec"]["target"], "127.0.0.1:9");
    assert!(v["created_at"].is_string() && v["started_at"].is_string() && v["finished_at"].is_string(), "{v:#}");
    assert!(v.get("error").is_none());
    assert_schema_valid(&v["result"]);
    assert_eq!(v["result"]["target"], "127.0.0.1:9");
    let listed = get(&api, "/v1/tests").json();
    assert_eq!(listed["tests"], json!([{"id": id, "state": "done", "test": "tcp-rr", "target": "127.0.0.1:9"}]));
}

#[test]
fn a_named_target_is_pinned_to_the_address_that_was_checked() {
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let s = Arc::clone(&seen);
    let api = api_with_runner(
        move |spec, _| {
            *s.lock().unwrap() = spec.target.clone();
            Ok(result_for(spec))
        },
        |_| {},
    );
    let id = created_id(&post(&api, &loopback_spec(json!({"target": "localhost:9"}))));
    let v = wait_for(&api, &id, Duration::from_secs(5), finished);
    assert_eq!(v["state"], "done", "{v:#}");
    let ran_against: SocketAddr = seen.lock().unwrap().parse().expect("the runner gets an IP literal");
    assert!(ran_against.ip().is_loopback() && ran_against.port() == 9);
    assert_eq!(v["result"]["target"], "localhost:9", "the result names the target as asked");
}

#[test]
fn a_failed_test_reports_its_error() {
    let api = api_with_runner(|_, _| Err(TestError::Failed("the server hung up".into())), |_| {});
    let id = created_id(&post(&api, &loopback_spec(json!({}))));
    let v = wait_for(&api, &id, Duration::from_secs(5), finished);
    assert_eq!(v["state"], "failed");
    assert_eq!(v["error"], "the server hung up");
    assert!(v.get("result").is_none());
}

#[test]
fn a_panicking_load_generator_fails_its_test_and_the_agent_keeps_serving() {
    let api = api_with_runner(|_, _| panic!("stand-in generator bug"), |c| c.limits.max_running = 1);
    for _ in 0..2 {
        // max_running 1: the second POST succeeds only if the panic freed the slot.
        let id = created_id(&post(&api, &loopback_spec(json!({}))));
        let v = wait_for(&api, &id, Duration::from_secs(5), finished);
        assert_eq!(v["state"], "failed");
        assert!(v["error"].as_str().unwrap().contains("stand-in generator bug"), "{v:#}");
    }
    assert_still_serving(&api);
}

#[test]
fn deleting_a_test_reaches_its_thread_promptly() {
    let api = api_with_runner(until_cancelled, |_| {});
    let id = created_id(&post(&api, &loopback_spec(json!({"duration_ms": 30_000}))));
    wait_for(&api, &id, Duration::from_secs(5), |s| s == "running");
    let asked = Instant::now();
    let r = delete(&api, &format!("/v1/tests/{id}"));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["id"], id.as_str());
    let v = wait_for(&api, &id, Duration::from_secs(2), finished);
    assert_eq!(v["state"], "cancelled");
    assert!(asked.elapsed() < Duration::from_secs(2));
    // Cancelling a finished test changes nothing.
    let r = delete(&api, &format!("/v1/tests/{id}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "cancelled");
}

#[test]
fn too_many_running_tests_get_429_until_one_ends() {
    let api = api_with_runner(until_cancelled, |c| c.limits.max_running = 2);
    let first = created_id(&post(&api, &loopback_spec(json!({}))));
    let _second = created_id(&post(&api, &loopback_spec(json!({}))));
    let r = post(&api, &loopback_spec(json!({})));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.error().contains('2'), "{}", r.text());
    assert_still_serving(&api);
    assert_eq!(delete(&api, &format!("/v1/tests/{first}")).status, 202);
    wait_for(&api, &first, Duration::from_secs(2), finished);
    created_id(&post(&api, &loopback_spec(json!({}))));
}

#[test]
fn only_the_newest_finished_results_are_kept() {
    let api = api_with_runner(|spec, _| Ok(result_for(spec)), |c| c.limits.max_kept = 2);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = created_id(&post(&api, &loopback_spec(json!({}))));
        wait_for(&api, &id, Duration::from_secs(5), finished);
        ids.push(id);
    }
    assert_eq!(get(&api, &format!("/v1/tests/{}", ids[0])).status, 404, "the oldest result is evicted");
    for id in &ids[1..] {
        assert_eq!(get(&api, &format!("/v1/tests/{id}")).status, 200);
    }
    let listed: Vec<String> =
        get(&api, "/v1/tests").json()["tests"].as_array().unwrap().iter().map(|t| t["id"].to_string()).collect();
    assert_eq!(listed.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Metrics.

/// Every non-comment line is `name{labels} value`; returns `(name{labels}, value)` pairs.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
            let labels = &series[name_end + 1..series.len() - 1];
            for pair in split_labels(labels) {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name in {line:?}");
                assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "unquoted label in {line:?}");
            }
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((series.to_string(), value));
    }
    out
}

/// Splits `a="x",b="y\"z"` at the commas between labels, honouring escapes in values.
fn split_labels(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    assert!(!quoted, "unterminated label value in {s:?}");
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn value_of(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v).unwrap_or_else(|| panic!("no {series}"))
}

#[test]
fn metrics_are_prometheus_text_and_counters_move() {
    let api = api_with_runner(|spec, _| Ok(result_for(spec)), |_| {});
    let r = get(&api, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let before = parse_exposition(&r.text());
    assert_eq!(value_of(&before, "zonebench_tcp_connections_total"), 0.0);
    assert_eq!(value_of(&before, "zonebench_control_tests_started_total{test=\"tcp-rr\"}"), 0.0);
    assert_eq!(
        value_of(&before, "zonebench_agent_info{id=\"ctl-a\",zone=\"zone-a\",node=\"node-1\",version=\"0.1.0\"}"),
        1.0
    );
    // This scrape is counted after it is rendered, so no 200 has been counted yet.
    assert!(!before.iter().any(|(s, _)| s.starts_with("zonebench_control_requests_total")), "{before:?}");

    Counters::add(&api.ctx.counters.tcp_connections, 3);
    assert_eq!(request(&api.endpoint, "GET", "/v1/info", None, None).status, 401);
    let id = created_id(&post(&api, &loopback_spec(json!({}))));
    wait_for(&api, &id, Duration::from_secs(5), finished);

    let after = parse_exposition(&get(&api, "/metrics").text());
    assert_eq!(value_of(&after, "zonebench_tcp_connections_total"), 3.0);
    assert_eq!(value_of(&after, "zonebench_control_tests_started_total{test=\"tcp-rr\"}"), 1.0);
    assert_eq!(value_of(&after, "zonebench_control_tests_completed_total{test=\"tcp-rr\"}"), 1.0);
    assert_eq!(value_of(&after, "zonebench_control_tests_failed_total{test=\"tcp-rr\"}"), 0.0);
    assert_eq!(value_of(&after, "zonebench_control_tests_running"), 0.0);
    assert_eq!(value_of(&after, "zonebench_control_requests_total{code=\"401\"}"), 1.0);
    assert_eq!(value_of(&after, "zonebench_control_requests_total{code=\"201\"}"), 1.0);
    assert!(value_of(&after, "zonebench_control_requests_total{code=\"200\"}") >= 2.0);
}

#[test]
fn label_values_in_agent_info_are_escaped() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ctx = ServerCtx::new(Identity { id: "a\"b\\c".into(), zone: "z\n1".into(), node: "n".into() });
    let cfg = Config::new(
        Endpoint::Tcp("127.0.0.1:0".parse().unwrap()),
        Token::new(TOKEN).unwrap(),
        ctx.clone(),
        fake_data_ports(),
    );
    let control = rt.block_on(control::start(cfg)).unwrap();
    let ep = control.endpoint.clone();
    // The runtime must keep running to serve: ask from another thread.
    let r = rt.block_on(async move {
        tokio::task::spawn_blocking(move || request(&ep, "GET", "/metrics", Some(BEARER), None)).await.unwrap()
    });
    let samples = parse_exposition(&r.text());
    value_of(&samples, r#"zonebench_agent_info{id="a\"b\\c",zone="z\n1",node="n",version="0.1.0"}"#);
    ctx.shutdown.cancel();
}

// ---------------------------------------------------------------------------------------
// The unix socket.

#[test]
fn the_unix_socket_is_owner_only_and_removed_on_shutdown() {
    let api = unix_api(|_| {});
    let Endpoint::Unix(path) = api.endpoint.clone() else { unreachable!() };
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    api.ctx.shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(2);
    while path.exists() {
        assert!(Instant::now() < deadline, "socket file left behind after shutdown");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn bind_at(path: &Path) -> std::io::Result<Api> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ctx = ServerCtx::new(Identity { id: "ctl-a".into(), zone: "zone-a".into(), node: "node-1".into() });
    let cfg =
        Config::new(Endpoint::Unix(path.to_path_buf()), Token::new(TOKEN).unwrap(), ctx.clone(), fake_data_ports());
    let control = rt.block_on(control::start(cfg))?;
    Ok(Api { endpoint: control.endpoint, ctx, rt: Some(rt), _agent: None, dir: None })
}

#[test]
fn a_stale_socket_is_replaced_but_a_regular_file_or_a_live_socket_is_not() {
    let dir = temp_dir();
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap()); // a dead agent's socket file
    assert!(stale.exists());
    let _api = bind_at(&stale).expect("a stale socket is replaced");

    let live = dir.join("live.sock");
    let _listener = UnixListener::bind(&live).unwrap();
    let e = bind_at(&live).err().expect("a live socket is kept");
    assert!(e.to_string().contains("another process is listening"), "{e}");

    let file = dir.join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let e = bind_at(&file).err().expect("a regular file is kept");
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Real tests through the API. These need the TCP echo server and the tcp-rr generator.

fn api_over_real_tcp_server() -> (Api, SocketAddr) {
    let agent = start_agent("echo-c", &[Which::Tcp]);
    let tcp = agent.tcp.unwrap();
    let data = Bound { tcp, ..fake_data_ports() };
    let api = start_api_with(Endpoint::Tcp("127.0.0.1:0".parse().unwrap()), data, Some(agent), None, |_| {});
    (api, tcp)
}

#[test]
fn a_posted_tcp_rr_test_runs_to_done_and_its_result_is_schema_valid() {
    let (api, tcp) = api_over_real_tcp_server();
    let target = tcp.to_string();
    let id =
        created_id(&post(&api, &json!({"test": "tcp-rr", "target": target, "duration_ms": 1000, "warmup_ms": 200})));
    let v = wait_for(&api, &id, Duration::from_secs(15), finished);
    assert_eq!(v["state"], "done", "{v:#}");
    let result = &v["result"];
    assert_schema_valid(result);
    assert_eq!(result["test"], "tcp-rr");
    assert_eq!(result["target"], target.as_str());
    assert!(result["metrics"]["transactions_per_sec"].as_f64().unwrap() > 0.0, "{result:#}");
    assert!(result["servers"]["echo-c"].as_u64().unwrap() > 0, "{result:#}");
    let samples = parse_exposition(&get(&api, "/metrics").text());
    assert_eq!(value_of(&samples, "zonebench_control_tests_completed_total{test=\"tcp-rr\"}"), 1.0);
}

#[test]
fn deleting_a_running_tcp_rr_test_cancels_it_within_two_seconds() {
    let (api, tcp) = api_over_real_tcp_server();
    let spec = json!({"test": "tcp-rr", "target": tcp.to_string(), "duration_ms": 30_000, "warmup_ms": 200});
    let id = created_id(&post(&api, &spec));
    wait_for(&api, &id, Duration::from_secs(5), |s| s != "queued");
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let r = delete(&api, &format!("/v1/tests/{id}"));
    assert_eq!(r.status, 202, "the test should still be running: {}", r.text());
    let v = wait_for(&api, &id, Duration::from_secs(2), finished);
    assert_eq!(v["state"], "cancelled", "{v:#}");
    assert!(asked.elapsed() < Duration::from_secs(2));
    assert_still_serving(&api);
}

// ---------------------------------------------------------------------------------------
// The `serve` command.

fn agent_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zonebench-agent"))
}

fn serve_args(socket: &Path, token_file: &Path) -> Vec<String> {
    [
        "serve",
        "--listen",
        "127.0.0.1",
        "--tcp-port",
        "0",
        "--udp-port",
        "0",
        "--http-port",
        "0",
        "--id",
        "cli-agent",
        "--control",
        &format!("unix:{}", socket.display()),
        "--token-file",
        &token_file.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn serve_refuses_an_empty_or_missing_token_file_naming_it() {
    let dir = temp_dir();
    let empty = dir.join("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    for token_file in [empty.clone(), dir.join("missing-token")] {
        let out = agent_bin().args(serve_args(&dir.join("c.sock"), &token_file)).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&*token_file.to_string_lossy()), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_refuses_a_bad_control_endpoint_or_cidr_naming_it() {
    for (flag, value) in
        [("--control", "tcp:localhost:7100"), ("--control", "udp:1.2.3.4:5"), ("--allow-cidr", "10.0.0.1/8")]
    {
        let out = agent_bin().args(["serve", flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(value), "{err}");
    }
}

/// Needs the data servers: `serve` starts them before the control API.
#[test]
fn serve_answers_on_its_unix_control_socket_until_terminated() {
    let dir = temp_dir();
    let socket = dir.join("control.sock");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut child = agent_bin().args(serve_args(&socket, &token_file)).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains("control API listening on") => break Some(line),
            Ok(line) => seen.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            break None;
        }
    };
    let Some(listening) = listening else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve never said where the control API listens; stderr:\n{}", seen.join("\n"));
    };
    assert!(listening.contains(&format!("unix:{}", socket.display())), "{listening}");
    let ep = Endpoint::Unix(socket.clone());
    let r = request(&ep, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    let info = request(&ep, "GET", "/v1/info", Some(BEARER), None).json();
    assert_eq!(info["identity"]["id"], "cli-agent");
    for port in ["tcp", "udp", "http"] {
        assert_ne!(info["ports"][port], 0, "{info:#}");
    }
    assert_eq!(info["limits"]["allow_cidrs"], json!(["127.0.0.0/8", "::1/128"]));
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "serve left its control socket behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Probes: real sockets on loopback.

fn probe(api: &Api, body: &Value) -> Reply {
    request(&api.endpoint, "POST", "/v1/probe", Some(BEARER), Some(&body.to_string()))
}

/// A probe's 200 answer, checked for shape.
fn outcome(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let o: zonebench_agent::probe::ProbeOutcome = serde_json::from_value(v.clone()).unwrap();
    assert!(o.attempts >= 1, "{v}");
    v
}

/// A loopback port nothing listens on: bound, then closed.
fn closed_tcp_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn metric(api: &Api, series: &str) -> f64 {
    value_of(&parse_exposition(&get(api, "/metrics").text()), series)
}

/// Waits (bounded) until the agent reports `n` probes running.
fn wait_probes_running(api: &Api, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(api, "zonebench_control_probes_running") != n {
        assert!(Instant::now() < deadline, "never saw {n} probes running");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_probe_reaches_a_listening_tcp_port_on_the_first_attempt() {
    let api = tcp_api(|_| {});
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let v = outcome(&probe(&api, &json!({"target": target, "protocol": "tcp", "within_ms": 5000})));
    assert_eq!(v["reached"], true, "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    assert_eq!(v["last_error"], Value::Null, "{v}");
    assert!(v["elapsed_ns"].as_u64().unwrap() > 0, "{v}");
    // The probe connected (and closed at once): the connection is in the accept queue.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "the probe's connection never arrived");
}

#[test]
fn a_probe_waits_for_a_port_that_starts_listening_later() {
    let api = Arc::new(tcp_api(|_| {}));
    let port = closed_tcp_port();
    let target = port.to_string();
    // The listener appears 300 ms after the agent reports the probe running, so the probe's
    // clock (started just before that report) has run at least that long when it succeeds.
    let later = {
        let api = Arc::clone(&api);
        std::thread::spawn(move || {
            wait_probes_running(&api, 1.0);
            std::thread::sleep(Duration::from_millis(300));
            std::net::TcpListener::bind(port).unwrap()
        })
    };
    let v = outcome(&probe(&api, &json!({"target": target, "protocol": "tcp", "within_ms": 10_000, "interval_ms": 5})));
    let _listener = later.join().unwrap();
    assert_eq!(v["reached"], true, "{v}");
    assert!(v["attempts"].as_u64().unwrap() > 1, "{v}");
    let elapsed = Duration::from_nanos(v["elapsed_ns"].as_u64().unwrap());
    assert!(elapsed >= Duration::from_millis(295), "reached after {elapsed:?}, before the port listened: {v}");
    assert_eq!(v["last_error"], "connection refused", "the attempts before it were refused: {v}");
}

#[test]
fn a_port_that_never_listens_is_not_reached_and_the_api_keeps_answering_meanwhile() {
    let api = Arc::new(tcp_api(|_| {}));
    let target = closed_tcp_port().to_string();
    let body = json!({"target": target, "protocol": "tcp", "within_ms": 600, "attempt_timeout_ms": 50});
    let asker = {
        let api = Arc::clone(&api);
        std::thread::spawn(move || probe(&api, &body))
    };
    // While the probe runs, other requests are answered.
    wait_probes_running(&api, 1.0);
    assert_still_serving(&api);
    let v = outcome(&asker.join().unwrap());
    assert_eq!(v["reached"], false, "{v}");
    assert!(v["elapsed_ns"].as_u64().unwrap() >= 600_000_000, "gave up before within_ms: {v}");
    assert!(v["attempts"].as_u64().unwrap() > 1, "{v}");
    assert_eq!(v["last_error"], "connection refused", "{v}");
    assert_eq!(metric(&api, "zonebench_control_probes_running"), 0.0);
    assert_eq!(metric(&api, "zonebench_control_probes_started_total{protocol=\"tcp\"}"), 1.0);
    assert_eq!(metric(&api, "zonebench_control_probes_not_reached_total{protocol=\"tcp\"}"), 1.0);
    assert_eq!(metric(&api, "zonebench_control_probes_reached_total{protocol=\"tcp\"}"), 0.0);
}

#[test]
fn a_udp_probe_reaches_the_agents_own_udp_echo_server() {
    let agent = start_agent("probe-u", &[Which::Udp]);
    let udp = agent.udp.unwrap();
    let data = Bound { udp, ..fake_data_ports() };
    let api = start_api_with(Endpoint::Tcp("127.0.0.1:0".parse().unwrap()), data, Some(agent), None, |_| {});
    let v = outcome(&probe(&api, &json!({"target": udp.to_string(), "protocol": "udp", "within_ms": 5000})));
    assert_eq!(v["reached"], true, "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    assert_eq!(metric(&api, "zonebench_control_probes_reached_total{protocol=\"udp\"}"), 1.0);
    // The echo server counted the probe's request.
    assert!(api
        ._agent
        .as_ref()
        .unwrap()
        .ctx
        .counters
        .snapshot()
        .iter()
        .any(|(n, _, v)| *n == "zonebench_udp_datagrams_total" && *v >= 1));
}

#[test]
fn a_udp_probe_to_a_port_without_a_server_is_not_reached() {
    let api = tcp_api(|_| {});
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let v = outcome(&probe(&api, &json!({"target": port.to_string(), "protocol": "udp", "within_ms": 200})));
    assert_eq!(v["reached"], false, "{v}");
    assert!(v["last_error"].is_string(), "{v}");
}

#[test]
fn a_probe_outside_the_allowed_cidrs_is_forbidden_naming_the_target() {
    let api = tcp_api(|_| {});
    for target in ["10.96.0.10:7101", "[2001:db8::1]:7101", "[::ffff:10.1.2.3]:7101"] {
        let r = probe(&api, &json!({"target": target, "protocol": "tcp", "within_ms": 1000}));
        assert_eq!(r.status, 403, "{target}: {}", r.text());
        let e = r.error();
        assert!(e.contains(target) && e.contains("127.0.0.0/8, ::1/128") && e.contains("--allow-cidr"), "{e}");
    }
    assert_eq!(metric(&api, "zonebench_control_probes_started_total{protocol=\"tcp\"}"), 0.0);
    assert_still_serving(&api);
}

#[test]
fn a_bad_probe_spec_is_a_400_naming_the_field() {
    let api = tcp_api(|_| {});
    let base = json!({"target": "127.0.0.1:9", "protocol": "tcp", "within_ms": 1000});
    let with = |k: &str, x: Value| {
        let mut v = base.clone();
        v[k] = x;
        v
    };
    // Refused by the JSON reader: the message names the field or value.
    for (body, names) in [
        (with("retries", json!(3)), "retries"),
        (with("protocol", json!("sctp")), "sctp"),
        (with("target", json!("localhost:9")), "socket address"),
        (json!({"target": "127.0.0.1:9", "protocol": "tcp"}), "within_ms"),
    ] {
        let r = probe(&api, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.error();
        assert!(e.starts_with("invalid probe spec") && e.contains(names), "{body}: {e}");
    }
    // Refused by the range checks: the answer also names the field on its own.
    for (body, field) in [
        (with("within_ms", json!(0)), "within_ms"),
        (with("within_ms", json!(600_001)), "within_ms"),
        (with("attempt_timeout_ms", json!(0)), "attempt_timeout_ms"),
        (with("interval_ms", json!(1001)), "interval_ms"),
        (with("target", json!("127.0.0.1:0")), "target"),
    ] {
        let r = probe(&api, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{body}");
        assert!(r.error().contains(field), "{}", r.text());
    }
    let r = request(&api.endpoint, "POST", "/v1/probe", Some(BEARER), Some("{\"target\":"));
    assert_eq!(r.status, 400);
    assert!(r.error().contains("line 1 column"), "{}", r.text());
    assert_still_serving(&api);
}

#[test]
fn a_probe_without_the_token_is_401() {
    let api = tcp_api(|_| {});
    let body = json!({"target": "127.0.0.1:9", "protocol": "tcp", "within_ms": 1000}).to_string();
    for auth in [None, Some("Bearer wrong-token")] {
        let r = request(&api.endpoint, "POST", "/v1/probe", auth, Some(&body));
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(metric(&api, "zonebench_control_probes_started_total{protocol=\"tcp\"}"), 0.0);
}

#[test]
fn probes_past_the_limit_get_429_and_the_slot_frees_when_one_ends() {
    let api = Arc::new(tcp_api(|c| c.limits.max_probes = 1));
    assert_eq!(get(&api, "/v1/info").json()["limits"]["max_running_probes"], 1);
    let target = closed_tcp_port().to_string();
    let long = json!({"target": target, "protocol": "tcp", "within_ms": 800});
    let first = {
        let api = Arc::clone(&api);
        std::thread::spawn(move || probe(&api, &long))
    };
    wait_probes_running(&api, 1.0);
    let r = probe(&api, &json!({"target": target, "protocol": "tcp", "within_ms": 100}));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.error().contains("1 probes are already running"), "{}", r.text());
    assert_eq!(outcome(&first.join().unwrap())["reached"], false);
    let r = probe(&api, &json!({"target": target, "protocol": "tcp", "within_ms": 50}));
    assert_eq!(outcome(&r)["reached"], false, "the slot was freed");
}

#[test]
fn shutting_the_agent_down_stops_a_running_probe() {
    let api = Arc::new(tcp_api(|_| {}));
    let target = closed_tcp_port().to_string();
    let body = json!({"target": target, "protocol": "tcp", "within_ms": 60_000});
    let asker = {
        let api = Arc::clone(&api);
        std::thread::spawn(move || {
            let asked = Instant::now();
            (probe(&api, &body), asked.elapsed())
        })
    };
    wait_probes_running(&api, 1.0);
    api.ctx.shutdown.cancel();
    let (r, took) = asker.join().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.error().contains("shutting down"), "{}", r.text());
    assert!(took < Duration::from_secs(30), "the probe ran on for {took:?} after shutdown");
}
