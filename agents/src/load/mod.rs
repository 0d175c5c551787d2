//! Load generators, one module per test kind, and what they share: the warm-up/measure
//! clock ([`Phases`]), the thread layout ([`run_workers`]), the open loop's schedule
//! ([`schedule`]), precise pacing ([`wait_until`]) and target resolution.
//!
//! A test is a blocking call, [`run`], that builds its own runtimes: the standalone client
//! calls it directly and the control API calls it on a dedicated thread, so a load generator
//! never competes with the agent's servers for a runtime, and its threads are exactly the ones
//! the spec asked for.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::spec::{SpecError, TestKind, TestResult, TestSpec, Window};

pub mod http;
pub mod http_answer;
pub mod schedule;
mod tcp_client;
pub mod tcp_crr;
pub mod tcp_rr;
pub mod tcp_stream;
pub mod udp_rr;
pub mod udp_stream;

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("invalid test spec: {0}")]
    Spec(#[from] SpecError),
    #[error("cannot resolve target {target:?}: {reason}")]
    Resolve { target: String, reason: String },
    #[error("cannot reach {target}: {source}")]
    Connect { target: SocketAddr, source: std::io::Error },
    #[error("the test was cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs one test to completion (or cancellation) and returns what it measured.
pub fn run(spec: &TestSpec, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    spec.validate()?;
    let target = resolve_target(&spec.target)?;
    if let Some(at) = spec.start_at_unix_ns {
        wait_for_start(at, cancel)?;
    }
    let result = match spec.test {
        TestKind::TcpStream => tcp_stream::run(spec, target, cancel),
        TestKind::UdpStream => udp_stream::run(spec, target, cancel),
        TestKind::TcpRr => tcp_rr::run(spec, target, cancel),
        TestKind::UdpRr => udp_rr::run(spec, target, cancel),
        TestKind::TcpCrr => tcp_crr::run(spec, target, cancel),
        TestKind::Http => http::run(spec, target, cancel),
    }?;
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    Ok(result)
}

/// Blocks until the armed start `at` (Unix ns) or cancellation. Sleeps in short slices so a
/// cancel is honoured promptly; the last slice is exact to the OS timer.
fn wait_for_start(at: u64, cancel: &CancellationToken) -> Result<(), TestError> {
    loop {
        if cancel.is_cancelled() {
            return Err(TestError::Cancelled);
        }
        let now = crate::spec::unix_now_ns();
        if now >= at {
            return Ok(());
        }
        std::thread::sleep(Duration::from_nanos(at - now).min(Duration::from_millis(50)));
    }
}

/// `HOST:PORT` to the first address it resolves to (IPv4 preferred, as the lab is IPv4).
pub fn resolve_target(target: &str) -> Result<SocketAddr, TestError> {
    let err = |reason: String| TestError::Resolve { target: target.to_string(), reason };
    let addrs: Vec<SocketAddr> = target.to_socket_addrs().map_err(|e| err(e.to_string()))?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()).copied().ok_or_else(|| err("no addresses".into()))
}

/// The test's clock: warm-up from `start` to `measure_start`, then the measured window to
/// `end`. Anything that starts before `measure_start` or finishes after `end` is not counted.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
    /// The wall clock at `start`, to report the measured [`Window`] in wall-clock time.
    wall_start: SystemTime,
}

impl Phases {
    pub fn new(spec: &TestSpec) -> Phases {
        Phases::starting_at(Instant::now(), spec)
    }

    pub fn starting_at(start: Instant, spec: &TestSpec) -> Phases {
        let measure_start = start + Duration::from_millis(spec.warmup_ms);
        // `start` may lie a little before or after now; carry the offset to the wall clock.
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let wall_start = if start <= now { wall_now - (now - start) } else { wall_now + (start - now) };
        Phases { start, measure_start, end: measure_start + Duration::from_millis(spec.duration_ms), wall_start }
    }

    /// The measured window on the wall clock.
    pub fn window(&self) -> Window {
        let at = |t: Instant| {
            let wall = self.wall_start + (t - self.start);
            wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        };
        Window { start_ns: at(self.measure_start), end_ns: at(self.end) }
    }

    /// Whether an operation that started at `began` and finished at `done` is measured.
    #[inline]
    pub fn counts(&self, began: Instant, done: Instant) -> bool {
        began >= self.measure_start && done <= self.end
    }

    #[inline]
    pub fn in_warmup(&self, t: Instant) -> bool {
        t < self.measure_start
    }

    #[inline]
    pub fn is_over(&self, t: Instant) -> bool {
        t >= self.end
    }

    /// Length of the measured window in ns (what `duration_ns` reports).
    pub fn measured_ns(&self) -> u64 {
        (self.end - self.measure_start).as_nanos() as u64
    }
}

/// How many OS threads a test uses: the spec's `threads`, else one per flow up to the
/// machine's cores (a flow never spans threads).
pub fn thread_count(spec: &TestSpec, flows: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = spec.threads.map_or(cores.min(flows as usize), |t| t as usize);
    wanted.clamp(1, flows.max(1) as usize)
}

/// Runs `flows` workers spread over `threads` OS threads, each thread a `current_thread`
/// tokio runtime (oha's fast path: no work stealing, no cross-thread wakeups on the hot
/// path). `make(flow)` builds flow `flow`'s future on its own thread, so it need not be
/// `Send`. Returns the workers' outputs in flow order.
pub fn run_workers<W, F, Fut>(threads: usize, flows: usize, make: F) -> Result<Vec<W>, TestError>
where
    W: Send + 'static,
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = W> + 'static,
{
    let threads = threads.clamp(1, flows.max(1));
    let make = &make;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                std::thread::Builder::new().name(format!("zb-load-{t}")).spawn_scoped(
                    scope,
                    move || -> Result<Vec<(usize, W)>, TestError> {
                        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                        let local = tokio::task::LocalSet::new();
                        local.block_on(&rt, async move {
                            let mine: Vec<usize> = (t..flows).step_by(threads).collect();
                            let tasks: Vec<_> =
                                mine.iter().map(|&flow| (flow, tokio::task::spawn_local(make(flow)))).collect();
                            let mut out = Vec::with_capacity(tasks.len());
                            for (flow, task) in tasks {
                                let w =
                                    task.await.map_err(|e| TestError::Failed(format!("worker {flow} failed: {e}")))?;
                                out.push((flow, w));
                            }
                            Ok(out)
                        })
                    },
                )
            })
            .collect::<Result<_, _>>()?;
        let mut all = Vec::with_capacity(flows);
        for h in handles {
            let part = h.join().map_err(|_| TestError::Failed("a load thread panicked".into()))??;
            all.extend(part);
        }
        all.sort_by_key(|(flow, _)| *flow);
        Ok(all.into_iter().map(|(_, w)| w).collect())
    })
}

/// Waits until `deadline` with sub-millisecond precision: tokio's timer has 1 ms granularity
/// (and fires late), so sleep until ~1.5 ms before, then yield until the deadline. Yielding
/// rather than spinning lets other flows on the same thread run meanwhile.
pub async fn wait_until(deadline: Instant) {
    const SPIN_WINDOW: Duration = Duration::from_micros(1500);
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > SPIN_WINDOW {
        tokio::time::sleep_until((deadline - SPIN_WINDOW).into()).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

/// Ends a future at the earlier of `deadline` and cancellation; `None` when cut short.
pub async fn until<T>(deadline: Instant, cancel: &CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        _ = tokio::time::sleep_until(deadline.into()) => None,
        v = fut => Some(v),
    }
}

/// Per-second rate over the measured window.
pub fn per_sec(count: u64, phases: &Phases) -> f64 {
    count as f64 / (phases.measured_ns() as f64 / 1e9)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn warmup_operations_are_not_counted() {
        let mut spec = TestSpec::new(TestKind::TcpRr, "127.0.0.1:1");
        spec.warmup_ms = 1000;
        spec.duration_ms = 2000;
        let t0 = Instant::now();
        let p = Phases::starting_at(t0, &spec);
        let ms = Duration::from_millis;
        assert!(!p.counts(t0 + ms(999), t0 + ms(1001)));
        assert!(p.counts(t0 + ms(1000), t0 + ms(1001)));
        assert!(!p.counts(t0 + ms(2999), t0 + ms(3001)));
        assert_eq!(p.measured_ns(), 2_000_000_000);
        let w = p.window();
        assert_eq!(w.len_ns(), 2_000_000_000);
        let now = crate::spec::unix_now_ns();
        assert!(w.start_ns > now && w.start_ns - now <= 1_000_000_000, "{w:?} against {now}");
    }

    #[test]
    fn an_armed_test_waits_for_its_instant_and_a_past_one_starts_at_once() {
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        wait_for_start(crate::spec::unix_now_ns() + 120_000_000, &cancel).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(115), "{:?}", t0.elapsed());
        let t1 = Instant::now();
        wait_for_start(crate::spec::unix_now_ns().saturating_sub(5_000_000_000), &cancel).unwrap();
        assert!(t1.elapsed() < Duration::from_millis(50));
        cancel.cancel();
        let far = crate::spec::unix_now_ns() + 30_000_000_000;
        assert!(matches!(wait_for_start(far, &cancel), Err(TestError::Cancelled)));
    }

    #[test]
    fn workers_return_in_flow_order_across_threads() {
        let out = run_workers(2, 5, |flow| async move { flow * 10 }).unwrap();
        assert_eq!(out, vec![0, 10, 20, 30, 40]);
    }

    #[test]
    fn a_name_without_a_port_does_not_resolve() {
        assert!(matches!(resolve_target("localhost"), Err(TestError::Resolve { .. })));
        assert_eq!(resolve_target("127.0.0.1:9").unwrap().port(), 9);
    }
}
