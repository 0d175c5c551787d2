//! The open loop (`qps`) that http, tcp-rr and udp-rr share, in the manner of wrk2: the
//! flows split the rate evenly, flow `k` of `n` sending its `i`-th request at
//! `start + (k + i·n)/qps`, so their sends interleave into one uniform schedule.
//!
//! Latency runs from the *intended* send time. A flow that falls behind (its previous answer
//! came late) sends at once, and the delay is part of the latency of every request scheduled
//! meanwhile: a server stall shows in all the requests it held up (no coordinated omission).
//! Each flow does one transaction at a time, so an open loop needs enough flows for its
//! rate: at most `flows / RTT` per second.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// When each flow sends each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    flows: f64,
    qps: f64,
}

impl Schedule {
    /// The schedule of `flows` flows sharing `qps` from `start`; `None` in the closed loop.
    pub fn new(qps: Option<f64>, flows: usize, start: Instant) -> Option<Schedule> {
        qps.map(|qps| Schedule { start, flows: flows.max(1) as f64, qps })
    }

    /// Flow `k`'s `i`-th intended send time.
    #[inline]
    pub fn at(&self, k: usize, i: u64) -> Instant {
        let slot = k as f64 + i as f64 * self.flows;
        self.start + Duration::from_nanos((slot * 1e9 / self.qps) as u64)
    }
}

/// Below this much time left, a blocking flow spins instead of sleeping: a sleep ends tens of
/// µs late (the timer slack), which would show as latency against the intended time.
const SPIN_WINDOW: Duration = Duration::from_micros(200);
/// Longest single sleep, so a cancel is noticed promptly at low rates.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// Blocks a thread that a flow owns until `deadline` (returns at once when it is past), or
/// until `cancel`.
pub fn sleep_until(deadline: Instant, cancel: &CancellationToken) {
    loop {
        let now = Instant::now();
        if now >= deadline || cancel.is_cancelled() {
            return;
        }
        let left = deadline - now;
        if left <= SPIN_WINDOW {
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
            return;
        }
        std::thread::sleep((left - SPIN_WINDOW).min(SLEEP_SLICE));
    }
}

/// The same for a flow on a tokio runtime: precise to the deadline ([`super::wait_until`]),
/// cut short by `cancel`.
pub async fn wait_until(deadline: Instant, cancel: &CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = super::wait_until(deadline) => {}
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn flows_interleave_into_one_uniform_schedule() {
        let start = Instant::now();
        let s = Schedule::new(Some(1000.0), 4, start).unwrap();
        let mut times: Vec<Duration> =
            (0..4).flat_map(|k| (0..25).map(move |i| (k, i))).map(|(k, i)| s.at(k, i) - start).collect();
        times.sort();
        for (n, t) in times.iter().enumerate() {
            assert_eq!(*t, Duration::from_millis(n as u64), "slot {n}");
        }
        assert!(Schedule::new(None, 4, start).is_none());
    }

    #[test]
    fn sleeping_until_a_deadline_ends_on_it_and_a_cancel_ends_it_early() {
        let cancel = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_millis(3);
        sleep_until(deadline, &cancel);
        let now = Instant::now();
        assert!(now >= deadline, "woke {:?} early", deadline - now);
        cancel.cancel();
        let t0 = Instant::now();
        sleep_until(t0 + Duration::from_secs(10), &cancel);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
