//! The UDP server: one socket that is both the udp-stream sink (per-flow accounting of what
//! arrived, by sequence number) and the udp-rr echo, answering with the agent's id.
//!
//! Every datagram starts with a [`UdpHeader`]; by kind:
//! - `Data`: counted against its flow (unless flagged [`FLAG_WARMUP`]): received, bytes,
//!   out-of-order, duplicates, highest sequence + 1 and RFC 3550 jitter ([`FlowStats`]);
//! - `Request`: answered at once with a `Response` that echoes flow, seq and timestamp, carries
//!   the id after the header and is padded to the requested size;
//! - `StatsRequest`: answered with a `StatsReply` carrying the id and the flow's [`FlowStats`]
//!   (zeros for a flow never seen), so the sender can report loss as the receiver counted it;
//! - anything else (short, wrong magic, unknown kind, an id length past the end) is counted in
//!   `udp_rejected` and dropped.
//!
//! The receive loop runs on its own OS thread with a blocking socket rather than on the tokio
//! runtime: one `recvfrom` per datagram and no readiness round trips, which is what lets the
//! sink keep up with a sender at full speed (`iperf3 -u -b 0`) and keeps udp-rr answers fast.
//! The socket's read timeout bounds how long the thread takes to notice `ctx.shutdown`. The
//! loop allocates nothing per datagram: receive, answer and stats buffers are reused, and the
//! flow table only grows when a new flow appears.
//!
//! The flow table is bounded ([`MAX_TRACKED_FLOWS`]): flows idle for [`FLOW_IDLE`] are
//! dropped, and when it is full of live flows the least recently seen quarter is evicted, so
//! a flood of random flow ids costs memory once and never grows it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::pacer::Pacer;
use super::{Counters, ServerCtx};
use crate::spec::MAX_UDP_PAYLOAD;
use crate::wire::{truncate_id, FlowStats, UdpHeader, UdpKind, FLAG_WARMUP, FLOW_STATS_LEN, UDP_HEADER_LEN};

/// Socket buffer asked for on both directions. A deep receive queue absorbs the bursts a
/// paced sender produces when it catches up; the kernel caps it at `net.core.rmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Most flows accounted at once.
pub const MAX_TRACKED_FLOWS: usize = 4096;
/// A flow with no datagram for this long is forgotten (its sender has long asked for stats).
pub const FLOW_IDLE: Duration = Duration::from_secs(60);
/// How often an idle receive loop wakes up to check for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// Under load the loop never times out, so it checks for shutdown every this many
/// datagrams (checking takes a lock, too dear for every datagram).
const SHUTDOWN_CHECK_EVERY: u32 = 256;
/// Sequence numbers remembered behind the highest one, to tell duplicates from reordering.
/// Older arrivals are counted as out of order (a duplicate that late is not told apart).
pub const DUPLICATE_WINDOW: u64 = 1024;
const WINDOW_WORDS: usize = (DUPLICATE_WINDOW / 64) as usize;

/// Binds `addr`, starts the receive loop on its own thread and returns the bound address.
pub async fn start(addr: SocketAddr, ctx: ServerCtx) -> io::Result<SocketAddr> {
    let socket = bind(addr)?;
    let local = socket.local_addr()?;
    let server = Server::new(&ctx.identity.id);
    std::thread::Builder::new().name("zb-udp".into()).spawn(move || server.run(&socket, &ctx))?;
    Ok(local)
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, it only drops sooner under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    socket.set_read_timeout(Some(SHUTDOWN_POLL))?;
    // Linux reports twice what it granted (the doubling covers its bookkeeping).
    let granted = socket.recv_buffer_size()? / 2;
    if granted < SOCKET_BUFFER_BYTES {
        tracing::warn!(
            granted,
            wanted = SOCKET_BUFFER_BYTES,
            "UDP receive buffer capped by net.core.rmem_max; fast senders may see loss at the socket"
        );
    } else {
        tracing::debug!(granted, "UDP receive buffer");
    }
    Ok(socket.into())
}

struct Server {
    id_len: usize,
    /// `Response` template: header, id, then zeros up to the largest datagram. Only the header
    /// is rewritten per answer.
    answer: Vec<u8>,
    /// `StatsReply`: header, id, [`FlowStats`].
    stats_reply: Vec<u8>,
    flows: FlowTable,
    clock: Instant,
}

impl Server {
    fn new(id: &str) -> Server {
        let id = truncate_id(id).as_bytes();
        let mut answer = vec![0u8; MAX_UDP_PAYLOAD as usize];
        answer[UDP_HEADER_LEN..UDP_HEADER_LEN + id.len()].copy_from_slice(id);
        let mut stats_reply = vec![0u8; UDP_HEADER_LEN + id.len() + FLOW_STATS_LEN];
        stats_reply[UDP_HEADER_LEN..UDP_HEADER_LEN + id.len()].copy_from_slice(id);
        Server { id_len: id.len(), answer, stats_reply, flows: FlowTable::default(), clock: Instant::now() }
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn run(mut self, socket: &UdpSocket, ctx: &ServerCtx) {
        let counters = &*ctx.counters;
        // One byte more than the largest IPv4 UDP payload, so nothing is ever truncated.
        let mut buf = vec![0u8; MAX_UDP_PAYLOAD as usize + 1];
        let mut since_check = 0u32;
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    self.handle(&buf[..n], peer, socket, counters, ctx.pacer.as_deref());
                    since_check += 1;
                    if since_check >= SHUTDOWN_CHECK_EVERY {
                        since_check = 0;
                        if ctx.shutdown.is_cancelled() {
                            break;
                        }
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if ctx.shutdown.is_cancelled() {
                        break;
                    }
                    let now = self.now_ns();
                    self.flows.sweep_if_due(now);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Not expected on an unconnected socket; never spin on a persistent error.
                    tracing::debug!(error = %e, "UDP receive failed");
                    if ctx.shutdown.is_cancelled() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        tracing::debug!("UDP server stopped");
    }

    #[inline]
    fn handle(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        socket: &UdpSocket,
        counters: &Counters,
        pacer: Option<&Pacer>,
    ) {
        let Ok(h) = UdpHeader::decode(datagram) else {
            Counters::add(&counters.udp_rejected, 1);
            return;
        };
        match h.kind {
            UdpKind::Data => {
                if h.flags & FLAG_WARMUP == 0 {
                    let now = self.now_ns();
                    self.flows.record(h.flow, h.seq, datagram.len() as u64, h.ts_ns, now);
                }
            }
            UdpKind::Request => {
                // `--max-answer-qps`: the answer waits for its slot, and requests queue in
                // the socket meanwhile, as in front of a saturated service.
                if let Some(at) = pacer.and_then(Pacer::slot) {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
                let size = (h.response_size as usize).clamp(UDP_HEADER_LEN + self.id_len, self.answer.len());
                UdpHeader { kind: UdpKind::Response, flags: 0, id_len: self.id_len as u8, ..h }
                    .encode_into(&mut self.answer);
                // A failed answer is a lost answer: the client counts it as such.
                let _ = socket.send_to(&self.answer[..size], peer);
            }
            UdpKind::StatsRequest => {
                let stats = self.flows.stats(h.flow);
                UdpHeader { kind: UdpKind::StatsReply, flags: 0, id_len: self.id_len as u8, response_size: 0, ..h }
                    .encode_into(&mut self.stats_reply);
                self.stats_reply[UDP_HEADER_LEN + self.id_len..].copy_from_slice(&stats.encode());
                let _ = socket.send_to(&self.stats_reply, peer);
            }
            UdpKind::Response | UdpKind::StatsReply => {
                // Answers are never sent to a server; one arriving here is stray or forged.
                Counters::add(&counters.udp_rejected, 1);
                return;
            }
        }
        Counters::add(&counters.udp_datagrams, 1);
        Counters::add(&counters.udp_bytes_received, datagram.len() as u64);
    }
}

/// The receiver's state for one udp-stream flow.
#[derive(Debug, Clone)]
struct Flow {
    id: u64,
    received: u64,
    bytes: u64,
    out_of_order: u64,
    duplicates: u64,
    /// Highest sequence number counted; meaningful once `seen`.
    highest: u64,
    seen: bool,
    jitter_ns: f64,
    /// Transit time (receive clock − sender clock, each with its own origin) of the last
    /// counted datagram; only differences are used, so the clocks' offset cancels.
    last_transit: Option<i64>,
    last_seen_ns: u64,
    /// Bit `s % DUPLICATE_WINDOW` says whether sequence `s` arrived, for `s` in
    /// `(highest - DUPLICATE_WINDOW, highest]`.
    window: [u64; WINDOW_WORDS],
}

impl Flow {
    fn new(id: u64, now_ns: u64) -> Flow {
        Flow {
            id,
            received: 0,
            bytes: 0,
            out_of_order: 0,
            duplicates: 0,
            highest: 0,
            seen: false,
            jitter_ns: 0.0,
            last_transit: None,
            last_seen_ns: now_ns,
            window: [0; WINDOW_WORDS],
        }
    }

    #[inline]
    fn bit(seq: u64) -> (usize, u64) {
        let pos = seq % DUPLICATE_WINDOW;
        ((pos / 64) as usize, 1u64 << (pos % 64))
    }

    /// Counts one measured datagram.
    #[inline]
    fn record(&mut self, seq: u64, bytes: u64, sent_ns: u64, now_ns: u64) {
        self.last_seen_ns = now_ns;
        if !self.seen || seq > self.highest {
            // A new highest: forget what the window held for the sequence numbers it now
            // covers (they belonged to `seq - DUPLICATE_WINDOW` and older).
            let first_new = if self.seen { self.highest + 1 } else { seq };
            if seq - first_new >= DUPLICATE_WINDOW - 1 {
                self.window = [0; WINDOW_WORDS];
            } else {
                for s in first_new..seq {
                    let (w, b) = Flow::bit(s);
                    self.window[w] &= !b;
                }
            }
            self.highest = seq;
            self.seen = true;
            let (w, b) = Flow::bit(seq);
            self.window[w] |= b;
        } else if self.highest - seq < DUPLICATE_WINDOW {
            let (w, b) = Flow::bit(seq);
            if self.window[w] & b != 0 {
                self.duplicates += 1;
                return;
            }
            self.window[w] |= b;
            self.out_of_order += 1;
        } else {
            // Older than the window: late, possibly a duplicate we can no longer tell apart.
            // Its bit now stands for a newer sequence number, so it is left alone.
            self.out_of_order += 1;
        }
        self.received += 1;
        self.bytes += bytes;
        // RFC 3550 §6.4.1 interarrival jitter, in arrival order: J += (|D| - J) / 16.
        let transit = now_ns.wrapping_sub(sent_ns) as i64;
        if let Some(last) = self.last_transit {
            let d = transit.wrapping_sub(last).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    fn stats(&self) -> FlowStats {
        FlowStats {
            received: self.received,
            bytes: self.bytes,
            out_of_order: self.out_of_order,
            duplicates: self.duplicates,
            jitter_ns: self.jitter_ns.round() as u64,
            next_seq: if self.seen { self.highest.saturating_add(1) } else { 0 },
        }
    }
}

/// Flows by id: a dense `Vec` indexed through a map, with the last flow's slot cached so a
/// single stream never hashes.
#[derive(Default)]
struct FlowTable {
    slots: Vec<Flow>,
    index: HashMap<u64, usize>,
    last: Option<(u64, usize)>,
    last_sweep_ns: u64,
    /// Reused by eviction to find the age cut-off without allocating each time.
    scratch: Vec<u64>,
}

impl FlowTable {
    #[inline]
    fn record(&mut self, flow: u64, seq: u64, bytes: u64, sent_ns: u64, now_ns: u64) {
        let slot = match self.last {
            Some((id, slot)) if id == flow => slot,
            _ => self.slot_for(flow, now_ns),
        };
        self.slots[slot].record(seq, bytes, sent_ns, now_ns);
    }

    fn slot_for(&mut self, flow: u64, now_ns: u64) -> usize {
        let slot = match self.index.get(&flow) {
            Some(&slot) => slot,
            None => {
                if self.slots.len() >= MAX_TRACKED_FLOWS {
                    self.make_room(now_ns);
                }
                self.slots.push(Flow::new(flow, now_ns));
                let slot = self.slots.len() - 1;
                self.index.insert(flow, slot);
                slot
            }
        };
        self.last = Some((flow, slot));
        slot
    }

    fn stats(&self, flow: u64) -> FlowStats {
        self.index.get(&flow).map_or_else(FlowStats::default, |&slot| self.slots[slot].stats())
    }

    /// Drops idle flows, at most once a second (called when the socket is quiet).
    fn sweep_if_due(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_sweep_ns) >= 1_000_000_000 {
            self.last_sweep_ns = now_ns;
            self.evict_older_than(now_ns.saturating_sub(FLOW_IDLE.as_nanos() as u64));
        }
    }

    /// Frees at least one slot: idle flows first, else the least recently seen quarter.
    fn make_room(&mut self, now_ns: u64) {
        self.evict_older_than(now_ns.saturating_sub(FLOW_IDLE.as_nanos() as u64));
        if self.slots.len() < MAX_TRACKED_FLOWS {
            return;
        }
        self.scratch.clear();
        self.scratch.extend(self.slots.iter().map(|f| f.last_seen_ns));
        let quarter = self.scratch.len() / 4;
        let (_, &mut cutoff, _) = self.scratch.select_nth_unstable(quarter);
        self.evict_older_than(cutoff.saturating_add(1));
    }

    /// Removes every flow last seen before `cutoff_ns`.
    fn evict_older_than(&mut self, cutoff_ns: u64) {
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].last_seen_ns < cutoff_ns {
                let gone = self.slots.swap_remove(i);
                self.index.remove(&gone.id);
                if let Some(moved) = self.slots.get(i) {
                    self.index.insert(moved.id, i);
                }
                self.last = None;
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_after(seqs: &[u64]) -> FlowStats {
        let mut f = Flow::new(1, 0);
        for (i, &s) in seqs.iter().enumerate() {
            f.record(s, 100, i as u64 * 1000, i as u64 * 1000 + 50);
        }
        f.stats()
    }

    #[test]
    fn an_in_order_flow_has_no_loss_marks() {
        let s = flow_after(&[0, 1, 2, 3]);
        assert_eq!(s, FlowStats { received: 4, bytes: 400, out_of_order: 0, duplicates: 0, jitter_ns: 0, next_seq: 4 });
    }

    #[test]
    fn a_gap_shows_as_next_seq_beyond_received() {
        let s = flow_after(&[0, 1, 5, 6]);
        assert_eq!((s.received, s.next_seq, s.out_of_order, s.duplicates), (4, 7, 0, 0));
    }

    #[test]
    fn late_arrivals_are_out_of_order_and_repeats_are_duplicates() {
        let s = flow_after(&[0, 2, 1, 2, 1, 3]);
        assert_eq!((s.received, s.out_of_order, s.duplicates, s.next_seq), (4, 1, 2, 4));
    }

    #[test]
    fn the_duplicate_window_slides_with_the_highest_sequence() {
        // 5 arrives, then the window moves far past it: a later 5 is too old to be told
        // apart and counts as out of order; 3000 repeated is still a duplicate.
        let s = flow_after(&[5, 3000, 5, 3000, 2999]);
        assert_eq!((s.received, s.out_of_order, s.duplicates, s.next_seq), (4, 2, 1, 3001));
        // A sequence number whose bit was reused by an earlier, older one is not mistaken
        // for a duplicate after the window moved past the old one.
        let s = flow_after(&[0, DUPLICATE_WINDOW + 1, DUPLICATE_WINDOW]);
        assert_eq!((s.received, s.duplicates, s.out_of_order), (3, 0, 1));
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        let mut f = Flow::new(1, 0);
        // Transit times 100, 116, 100: |D| = 16 then 16, J = 1, then 1 + 15/16.
        f.record(0, 1, 0, 100);
        f.record(1, 1, 1000, 1116);
        f.record(2, 1, 2000, 2100);
        assert!((f.jitter_ns - (1.0 + 15.0 / 16.0)).abs() < 1e-9, "{}", f.jitter_ns);
    }

    #[test]
    fn the_flow_table_stays_bounded_and_keeps_recent_flows() {
        let mut t = FlowTable::default();
        for flow in 0..(MAX_TRACKED_FLOWS as u64 * 3) {
            t.record(flow, 0, 1, 0, flow);
        }
        assert!(t.slots.len() <= MAX_TRACKED_FLOWS);
        assert_eq!(t.index.len(), t.slots.len());
        let newest = MAX_TRACKED_FLOWS as u64 * 3 - 1;
        assert_eq!(t.stats(newest).received, 1);
        assert_eq!(t.stats(0).received, 0, "the oldest flow was evicted");
        for (slot, f) in t.slots.iter().enumerate() {
            assert_eq!(t.index[&f.id], slot);
        }
    }

    #[test]
    fn idle_flows_are_swept() {
        let mut t = FlowTable::default();
        t.record(7, 0, 1, 0, 0);
        let later = FLOW_IDLE.as_nanos() as u64 + 2_000_000_000;
        t.record(8, 0, 1, 0, later);
        t.sweep_if_due(later);
        assert_eq!(t.stats(7), FlowStats::default());
        assert_eq!(t.stats(8).received, 1);
    }
}
