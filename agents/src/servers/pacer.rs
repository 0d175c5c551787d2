//! An answer-rate limit for the servers (`serve --max-answer-qps`): the agent then behaves
//! like an application at capacity, answering at most that many requests per second in all
//! (HTTP requests, TCP echo transactions and UDP requests share the one rate).
//! Answers over the rate are not refused but wait their turn, as requests queue in front of
//! a saturated service, so an open-loop client above the rate sees its latency grow and its
//! achieved rate fall short: what a capacity search must find by measuring.
//!
//! Each answer takes the next free slot on one schedule shared by every connection: one
//! atomic update per answer, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Pacer {
    interval_ns: u64,
    base: Instant,
    /// The next free slot, in ns since `base`.
    next: AtomicU64,
}

impl Pacer {
    /// A pacer for `qps` answers per second; `None` for a rate that is not positive.
    pub fn new(qps: f64) -> Option<Pacer> {
        (qps.is_finite() && qps > 0.0).then(|| Pacer {
            interval_ns: (1e9 / qps).max(1.0) as u64,
            base: Instant::now(),
            next: AtomicU64::new(0),
        })
    }

    /// Takes the next slot: `None` when it is now (answer at once), else the instant to
    /// answer at. A server that was idle does not bank slots: the schedule restarts at now.
    pub fn slot(&self) -> Option<Instant> {
        let now = self.base.elapsed().as_nanos() as u64;
        let prev = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| Some(next.max(now) + self.interval_ns))
            .unwrap_or_else(|v| v);
        let at = prev.max(now);
        (at > now).then(|| self.base + Duration::from_nanos(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_over_the_rate_wait_their_turn_and_an_idle_server_banks_nothing() {
        let p = Pacer::new(1000.0).unwrap();
        assert!(p.slot().is_none(), "the first answer goes at once");
        let t0 = Instant::now();
        let later: Vec<Instant> = (0..10).map(|_| p.slot().expect("over the rate")).collect();
        // Slots are 1 ms apart, the tenth about 10 ms ahead.
        for w in later.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(1));
        }
        assert!(later[9] > t0 + Duration::from_millis(8), "{:?}", later[9] - t0);
        std::thread::sleep(Duration::from_millis(30));
        assert!(p.slot().is_none(), "after idling, the next answer goes at once");
        assert!(Pacer::new(0.0).is_none() && Pacer::new(f64::NAN).is_none());
    }
}
