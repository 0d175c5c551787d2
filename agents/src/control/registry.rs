//! The tests the control API has accepted: each runs on its own OS thread (a load generator
//! builds its own runtimes and must never compete with the servers for theirs), moves
//! through `queued → running → done | failed | cancelled`, and is kept for a while after it
//! ends so the coordinator can poll for its result.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::metrics::{ControlMetrics, Ending};
use super::Runner;
use crate::load::TestError;
use crate::spec::{TestResult, TestSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl TestState {
    pub fn is_finished(self) -> bool {
        matches!(self, TestState::Done | TestState::Failed | TestState::Cancelled)
    }
}

/// A test as `GET /v1/tests/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TestView {
    pub id: String,
    pub state: TestState,
    pub spec: TestSpec,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<TestResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of `GET /v1/tests`.
#[derive(Clone, Debug, Serialize)]
pub struct TestSummary {
    pub id: String,
    pub state: TestState,
    pub test: crate::spec::TestKind,
    pub target: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{running} tests are already queued or running, the most this agent runs at once; retry when one ends")]
    Busy { running: usize },
    #[error("cannot start a thread for the test: {0}")]
    Spawn(std::io::Error),
}

struct Entry {
    seq: u64,
    spec: TestSpec,
    state: TestState,
    created_at: SystemTime,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    result: Option<TestResult>,
    error: Option<String>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Finished tests, oldest first: the eviction order.
    finished: VecDeque<String>,
    active: usize,
    seq: u64,
}

pub struct Registry {
    inner: Mutex<Inner>,
    max_running: usize,
    max_kept: usize,
    runner: Runner,
    metrics: Arc<ControlMetrics>,
    /// Parent of every test's cancel token: agent shutdown stops every test.
    shutdown: CancellationToken,
    /// Distinguishes this agent process's ids from an earlier one's, so a coordinator that
    /// polls an id across an agent restart gets a 404, never someone else's test.
    nonce: u32,
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Registry {
    pub fn new(
        max_running: usize,
        max_kept: usize,
        runner: Runner,
        metrics: Arc<ControlMetrics>,
        shutdown: CancellationToken,
    ) -> Registry {
        use std::hash::{BuildHasher as _, Hasher as _};
        // RandomState is seeded randomly per process: enough for a nonce that only has to
        // differ between restarts, without a dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        Registry {
            inner: Mutex::new(Inner::default()),
            max_running,
            max_kept,
            runner,
            metrics,
            shutdown,
            nonce: h.finish() as u32,
        }
    }

    /// No code panics while holding the lock, but a poisoned lock must not take the
    /// control API down either: the data stays consistent, so keep using it.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts a test that has passed every check and starts its thread. `pinned` is the
    /// address the target resolved to when it was checked against the allowed CIDRs; the
    /// test runs against exactly that address, so a name that resolves elsewhere later
    /// cannot steer it outside them.
    pub fn submit(self: &Arc<Self>, spec: TestSpec, pinned: SocketAddr) -> Result<String, SubmitError> {
        let cancel = self.shutdown.child_token();
        let id = {
            let mut inner = self.lock();
            if inner.active >= self.max_running {
                return Err(SubmitError::Busy { running: inner.active });
            }
            inner.seq += 1;
            let seq = inner.seq;
            let id = format!("{:08x}-{seq}", self.nonce);
            inner.entries.insert(
                id.clone(),
                Entry {
                    seq,
                    spec: spec.clone(),
                    state: TestState::Queued,
                    created_at: SystemTime::now(),
                    started_at: None,
                    finished_at: None,
                    result: None,
                    error: None,
                    cancel: cancel.clone(),
                },
            );
            inner.active += 1;
            id
        };
        let kind = spec.test;
        let this = Arc::clone(self);
        let thread_id = id.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("zb-test-{}", id.rsplit('-').next().unwrap_or_default()))
            .spawn(move || this.run(&thread_id, spec, pinned, &cancel));
        if let Err(e) = spawned {
            let mut inner = self.lock();
            inner.entries.remove(&id);
            inner.active -= 1;
            return Err(SubmitError::Spawn(e));
        }
        self.metrics.started(kind);
        Ok(id)
    }

    /// The test thread's body.
    fn run(&self, id: &str, spec: TestSpec, pinned: SocketAddr, cancel: &CancellationToken) {
        {
            let mut inner = self.lock();
            if let Some(e) = inner.entries.get_mut(id) {
                e.state = TestState::Running;
                e.started_at = Some(SystemTime::now());
            }
        }
        let mut run_spec = spec.clone();
        run_spec.target = pinned.to_string();
        // A panicking load generator must still end its test (and free its running slot);
        // panics unwind in every profile, see the workspace Cargo.toml.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if cancel.is_cancelled() {
                return Err(TestError::Cancelled);
            }
            (self.runner)(&run_spec, cancel)
        }));
        let (state, result, error) = match outcome {
            _ if cancel.is_cancelled() => (TestState::Cancelled, None, None),
            Ok(Ok(mut r)) => {
                // The result names the target as asked, not the address it was pinned to.
                r.target = spec.target;
                (TestState::Done, Some(r), None)
            }
            Ok(Err(TestError::Cancelled)) => (TestState::Cancelled, None, None),
            Ok(Err(e)) => (TestState::Failed, None, Some(e.to_string())),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                (TestState::Failed, None, Some(format!("the load generator panicked: {msg}")))
            }
        };
        self.metrics.ended(
            run_spec.test,
            match state {
                TestState::Done => Ending::Completed,
                TestState::Cancelled => Ending::Cancelled,
                _ => Ending::Failed,
            },
        );
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get_mut(id) {
            e.state = state;
            e.finished_at = Some(SystemTime::now());
            e.result = result;
            e.error = error;
        }
        inner.active = inner.active.saturating_sub(1);
        inner.finished.push_back(id.to_string());
        while inner.finished.len() > self.max_kept {
            if let Some(old) = inner.finished.pop_front() {
                inner.entries.remove(&old);
            }
        }
    }

    pub fn view(&self, id: &str) -> Option<TestView> {
        let inner = self.lock();
        inner.entries.get(id).map(|e| TestView {
            id: id.to_string(),
            state: e.state,
            spec: e.spec.clone(),
            created_at: stamp(e.created_at),
            started_at: e.started_at.map(stamp),
            finished_at: e.finished_at.map(stamp),
            result: e.result.clone(),
            error: e.error.clone(),
        })
    }

    /// Every kept test, oldest first.
    pub fn list(&self) -> Vec<TestSummary> {
        let inner = self.lock();
        let mut all: Vec<(u64, TestSummary)> = inner
            .entries
            .iter()
            .map(|(id, e)| {
                (
                    e.seq,
                    TestSummary { id: id.clone(), state: e.state, test: e.spec.test, target: e.spec.target.clone() },
                )
            })
            .collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// Asks a test to stop; its thread marks it `cancelled` when it has. A finished test is
    /// left as it is. `None` for an unknown id.
    pub fn cancel(&self, id: &str) -> Option<TestState> {
        let inner = self.lock();
        let e = inner.entries.get(id)?;
        if !e.state.is_finished() {
            e.cancel.cancel();
        }
        Some(e.state)
    }

    /// Tests queued or running now.
    pub fn active(&self) -> usize {
        self.lock().active
    }
}
