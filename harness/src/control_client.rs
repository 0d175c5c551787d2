//! The coordinator's client for an agent's control API (HTTP/1.1 + JSON over a unix socket
//! or TCP). One connection per call: control calls are few and far apart, and a fresh
//! connection cannot be left half-broken by an earlier failure.

use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use zonebench_agent::probe::{ProbeOutcome, ProbeSpec};
use zonebench_agent::spec::{TestResult, TestSpec};

use crate::model::ControlEndpoint;

/// Longest a single control call may take (connect, send, answer). A probe's answer
/// waits for the probe, so that call gets the probe's `within_ms` on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ControlClient {
    endpoint: ControlEndpoint,
    token: String,
}

/// A test's state as `GET /v1/tests/{id}` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct TestStatus {
    pub id: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    #[serde(default)]
    pub result: Option<TestResult>,
    #[serde(default)]
    pub error: Option<String>,
}

impl TestStatus {
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed" | "cancelled")
    }
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

impl ControlClient {
    pub fn new(endpoint: ControlEndpoint, token: impl Into<String>) -> Self {
        ControlClient { endpoint, token: token.into() }
    }

    pub fn endpoint(&self) -> &ControlEndpoint {
        &self.endpoint
    }

    /// `GET /healthz`: Ok when the agent answers 200.
    pub async fn healthz(&self) -> anyhow::Result<()> {
        self.healthz_within(CALL_TIMEOUT).await
    }

    /// `GET /healthz` with its own timeout: a quick look at an agent suspected to be down
    /// (one that accepts and never answers would otherwise hold the caller for
    /// [`CALL_TIMEOUT`]).
    pub async fn healthz_within(&self, timeout: Duration) -> anyhow::Result<()> {
        let (status, body) = self.call_within(timeout, Method::GET, "/healthz", None).await?;
        if status != StatusCode::OK {
            bail!("health check answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// Polls `/healthz` until it answers or `within` passes.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.healthz().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context(format!("agent at {:?} not healthy after {within:?}", self.endpoint)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// `GET /v1/info` as raw JSON.
    pub async fn info(&self) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.call(Method::GET, "/v1/info", None).await?;
        expect(status, StatusCode::OK, &body, "GET /v1/info")?;
        serde_json::from_slice(&body).context("parsing /v1/info")
    }

    /// `POST /v1/tests`: starts a test and returns its id.
    pub async fn start_test(&self, spec: &TestSpec) -> anyhow::Result<String> {
        let body = serde_json::to_vec(spec)?;
        let (status, answer) = self.call(Method::POST, "/v1/tests", Some(body)).await?;
        expect(status, StatusCode::CREATED, &answer, "POST /v1/tests")?;
        let created: Created = serde_json::from_slice(&answer).context("parsing the POST /v1/tests answer")?;
        Ok(created.id)
    }

    pub async fn test_status(&self, id: &str) -> anyhow::Result<TestStatus> {
        let (status, body) = self.call(Method::GET, &format!("/v1/tests/{id}"), None).await?;
        expect(status, StatusCode::OK, &body, "GET /v1/tests/{id}")?;
        serde_json::from_slice(&body).with_context(|| format!("parsing the status of test {id}"))
    }

    pub async fn cancel_test(&self, id: &str) -> anyhow::Result<()> {
        let (status, body) = self.call(Method::DELETE, &format!("/v1/tests/{id}"), None).await?;
        if !status.is_success() {
            bail!("DELETE /v1/tests/{id} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// `POST /v1/probe`: runs a probe on the agent and waits for its outcome, reached or
    /// not. The call may take `within_ms` plus the usual call timeout.
    pub async fn probe(&self, spec: &ProbeSpec) -> anyhow::Result<ProbeOutcome> {
        // The agent checks too; checking here first turns a bad spec into an error that
        // costs no round trip and keeps the timeout below from being absurd.
        spec.validate().map_err(|e| anyhow::anyhow!("invalid probe spec: {e}"))?;
        let body = serde_json::to_vec(spec)?;
        let within = CALL_TIMEOUT.saturating_add(Duration::from_millis(spec.within_ms));
        let (status, answer) = self.call_within(within, Method::POST, "/v1/probe", Some(body)).await?;
        expect(status, StatusCode::OK, &answer, "POST /v1/probe")?;
        serde_json::from_slice(&answer).context("parsing the POST /v1/probe answer")
    }

    /// Polls test `id` (started with `spec`) until it finishes.
    pub async fn wait_for(&self, id: &str, spec: &TestSpec) -> anyhow::Result<TestResult> {
        let id = id.to_string();
        // An armed test first waits for its start instant.
        let armed = spec.start_at_unix_ns.map_or(0, |at| at.saturating_sub(zonebench_agent::spec::unix_now_ns()));
        let expected = Duration::from_millis(spec.warmup_ms + spec.duration_ms) + Duration::from_nanos(armed);
        // Nothing can be done before the test's own time is up; then poll briskly.
        tokio::time::sleep(expected.saturating_sub(Duration::from_millis(50))).await;
        let give_up = tokio::time::Instant::now() + Duration::from_millis(spec.timeout_ms) + Duration::from_secs(30);
        loop {
            let st = self.test_status(&id).await?;
            if st.is_finished() {
                return match (st.state.as_str(), st.result) {
                    ("done", Some(r)) => Ok(r),
                    ("done", None) => bail!("test {id} is done but the agent sent no result"),
                    (state, _) => bail!("test {id} {state}: {}", st.error.unwrap_or_else(|| "no reason given".into())),
                };
            }
            if tokio::time::Instant::now() >= give_up {
                let _ = self.cancel_test(&id).await;
                bail!("test {id} did not finish in time (state {})", st.state);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<(StatusCode, Bytes)> {
        self.call_within(CALL_TIMEOUT, method, path, body).await
    }

    async fn call_within(
        &self,
        timeout: Duration,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(timeout, self.call_inner(method.clone(), path, body))
            .await
            .with_context(|| format!("{method} {path} on {:?} timed out", self.endpoint))?
            .with_context(|| format!("{method} {path} on {:?}", self.endpoint))
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "agent")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = match &self.endpoint {
            ControlEndpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.context("connecting")?;
                send(TokioIo::new(stream), req).await?
            }
            ControlEndpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await.context("connecting")?;
                stream.set_nodelay(true)?;
                send(TokioIo::new(stream), req).await?
            }
        };
        Ok(resp)
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, body))
}

fn expect(got: StatusCode, want: StatusCode, body: &[u8], what: &str) -> anyhow::Result<()> {
    if got != want {
        bail!("{what} answered {got}: {}", String::from_utf8_lossy(body).trim());
    }
    Ok(())
}

/// A data port from an agent's `/v1/info` (`ports.tcp`, or `tcp_port` at the top level).
pub fn info_port(info: &serde_json::Value, name: &str) -> Option<u16> {
    info.pointer(&format!("/ports/{name}"))
        .or_else(|| info.get(format!("{name}_port")))
        .and_then(|v| v.as_u64())
        .and_then(|v| u16::try_from(v).ok())
}
