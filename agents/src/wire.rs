//! Data-plane framing shared by the servers and the load generators.
//!
//! Kept deliberately tiny: the data plane must cost far less than the network it measures,
//! and every server answer must say who served it.
//!
//! **TCP.** On accept the server writes a [`Hello`] (`"ZBH1"`, id length, id) at once, so it
//! rides along with the first answer and costs no extra round trip. The client writes a
//! 16-byte [`Preamble`] (`"ZBT1"`, mode, sizes) and then, by mode:
//! - [`TcpMode::Sink`]: the client streams; the server discards, and after the client's
//!   half-close writes the total bytes it received (u64 BE) and closes;
//! - [`TcpMode::Source`]: the server streams writes of `response_size` bytes until the client
//!   closes (iperf3 `-R`);
//! - [`TcpMode::Echo`]: the client writes `request_size` bytes, the server answers
//!   `response_size` bytes, repeated until EOF (tcp-rr; tcp-crr does one exchange).
//!
//! **UDP.** Every datagram starts with a 40-byte [`UdpHeader`]; answers carry the server id
//! right after it. Sequence numbers and counters are 64-bit (no iperf3-style wrap).
//!
//! All integers are big-endian. Parsers never panic: bad magic, short frames and
//! out-of-range fields are errors that cost only that connection or datagram.

use crate::spec::{MAX_ID_LEN, MAX_MESSAGE_SIZE};

pub const HELLO_MAGIC: [u8; 4] = *b"ZBH1";
pub const PREAMBLE_MAGIC: [u8; 4] = *b"ZBT1";
pub const PREAMBLE_LEN: usize = 16;
pub const UDP_MAGIC: [u8; 4] = *b"ZBU1";
pub const UDP_HEADER_LEN: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("frame too short: {got} bytes, need {need}")]
    Short { got: usize, need: usize },
    #[error("unknown mode {0}")]
    UnknownMode(u8),
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    #[error("{field} {value} out of range (max {max})")]
    OutOfRange { field: &'static str, value: u64, max: u64 },
    #[error("server id is not UTF-8")]
    BadId,
}

/// What a TCP connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    Sink = 1,
    Source = 2,
    Echo = 3,
}

/// The client's first 16 bytes on a TCP data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub mode: TcpMode,
    pub request_size: u32,
    pub response_size: u32,
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[0..4].copy_from_slice(&PREAMBLE_MAGIC);
        b[4] = self.mode as u8;
        b[8..12].copy_from_slice(&self.request_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.response_size.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Preamble, WireError> {
        if b.len() < PREAMBLE_LEN {
            return Err(WireError::Short { got: b.len(), need: PREAMBLE_LEN });
        }
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != PREAMBLE_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let mode = match b[4] {
            1 => TcpMode::Sink,
            2 => TcpMode::Source,
            3 => TcpMode::Echo,
            m => return Err(WireError::UnknownMode(m)),
        };
        let request_size = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let response_size = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        for (field, v) in [("request_size", request_size), ("response_size", response_size)] {
            if v > MAX_MESSAGE_SIZE {
                return Err(WireError::OutOfRange { field, value: v.into(), max: MAX_MESSAGE_SIZE.into() });
            }
        }
        if mode == TcpMode::Echo && (request_size == 0 || response_size == 0) {
            return Err(WireError::OutOfRange { field: "request_size/response_size", value: 0, max: 0 });
        }
        Ok(Preamble { mode, request_size, response_size })
    }
}

/// The server's greeting: its id. `encode` output is `5 + id.len()` bytes.
pub fn encode_hello(id: &str) -> Vec<u8> {
    let id = truncate_id(id);
    let mut b = Vec::with_capacity(5 + id.len());
    b.extend_from_slice(&HELLO_MAGIC);
    b.push(id.len() as u8);
    b.extend_from_slice(id.as_bytes());
    b
}

/// Parses the fixed part of a hello (`"ZBH1"` + id length); the id follows.
pub fn decode_hello_head(b: &[u8; 5]) -> Result<usize, WireError> {
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != HELLO_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let len = b[4] as usize;
    if len > MAX_ID_LEN {
        return Err(WireError::OutOfRange { field: "id_len", value: len as u64, max: MAX_ID_LEN as u64 });
    }
    Ok(len)
}

/// Ids are cut to [`MAX_ID_LEN`] bytes on a character boundary, so they always fit a frame.
pub fn truncate_id(id: &str) -> &str {
    if id.len() <= MAX_ID_LEN {
        return id;
    }
    let mut end = MAX_ID_LEN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// What a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpKind {
    /// udp-stream payload, counted by the sink.
    Data = 1,
    /// udp-rr request; the server answers with a `Response` of `response_size` bytes.
    Request = 2,
    Response = 3,
    /// End of a udp-stream flow: `seq` carries the packets the sender sent (measured window);
    /// the server answers with a `StatsReply`.
    StatsRequest = 4,
    StatsReply = 5,
}

/// Flag bit: the datagram was sent during warm-up and is not counted.
pub const FLAG_WARMUP: u8 = 1;

/// The fixed 40-byte header of every zonebench datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpHeader {
    pub kind: UdpKind,
    pub flags: u8,
    /// Length of the server id that follows the header (answers only).
    pub id_len: u8,
    /// Request: size of the wanted response datagram.
    pub response_size: u32,
    /// Random per client flow; the sink accounts sequence numbers per flow.
    pub flow: u64,
    pub seq: u64,
    /// Sender's monotonic clock in ns, echoed back in answers (jitter, RTT).
    pub ts_ns: u64,
}

impl UdpHeader {
    pub fn encode_into(&self, b: &mut [u8]) {
        debug_assert!(b.len() >= UDP_HEADER_LEN);
        b[0..4].copy_from_slice(&UDP_MAGIC);
        b[4] = self.kind as u8;
        b[5] = self.flags;
        b[6] = self.id_len;
        b[7] = 0;
        b[8..12].copy_from_slice(&self.response_size.to_be_bytes());
        b[12..16].copy_from_slice(&[0; 4]);
        b[16..24].copy_from_slice(&self.flow.to_be_bytes());
        b[24..32].copy_from_slice(&self.seq.to_be_bytes());
        b[32..40].copy_from_slice(&self.ts_ns.to_be_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<UdpHeader, WireError> {
        if b.len() < UDP_HEADER_LEN {
            return Err(WireError::Short { got: b.len(), need: UDP_HEADER_LEN });
        }
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != UDP_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let kind = match b[4] {
            1 => UdpKind::Data,
            2 => UdpKind::Request,
            3 => UdpKind::Response,
            4 => UdpKind::StatsRequest,
            5 => UdpKind::StatsReply,
            k => return Err(WireError::UnknownKind(k)),
        };
        let id_len = b[6];
        if id_len as usize > MAX_ID_LEN || UDP_HEADER_LEN + id_len as usize > b.len() {
            return Err(WireError::OutOfRange {
                field: "id_len",
                value: id_len.into(),
                max: (MAX_ID_LEN.min(b.len() - UDP_HEADER_LEN)) as u64,
            });
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        Ok(UdpHeader {
            kind,
            flags: b[5],
            id_len,
            response_size: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            flow: u64_at(16),
            seq: u64_at(24),
            ts_ns: u64_at(32),
        })
    }

    /// The server id carried after the header of an answer.
    pub fn server_id<'a>(&self, datagram: &'a [u8]) -> Result<&'a str, WireError> {
        let end = UDP_HEADER_LEN + self.id_len as usize;
        let raw = datagram.get(UDP_HEADER_LEN..end).ok_or(WireError::Short { got: datagram.len(), need: end })?;
        std::str::from_utf8(raw).map_err(|_| WireError::BadId)
    }
}

/// The receiver's account of one udp-stream flow, carried in a `StatsReply` after the id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Datagrams received in the measured window (warm-up excluded, duplicates excluded).
    pub received: u64,
    pub bytes: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// RFC 3550 interarrival jitter, in ns.
    pub jitter_ns: u64,
    /// Highest sequence number seen + 1 (0 when nothing arrived).
    pub next_seq: u64,
}

pub const FLOW_STATS_LEN: usize = 48;

impl FlowStats {
    pub fn encode(&self) -> [u8; FLOW_STATS_LEN] {
        let mut b = [0u8; FLOW_STATS_LEN];
        for (i, v) in [self.received, self.bytes, self.out_of_order, self.duplicates, self.jitter_ns, self.next_seq]
            .into_iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<FlowStats, WireError> {
        if b.len() < FLOW_STATS_LEN {
            return Err(WireError::Short { got: b.len(), need: FLOW_STATS_LEN });
        }
        let v = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(a)
        };
        Ok(FlowStats {
            received: v(0),
            bytes: v(1),
            out_of_order: v(2),
            duplicates: v(3),
            jitter_ns: v(4),
            next_seq: v(5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preamble_round_trips() {
        let p = Preamble { mode: TcpMode::Echo, request_size: 100, response_size: 2000 };
        assert_eq!(Preamble::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn bad_preambles_are_errors() {
        assert!(matches!(Preamble::decode(b"ZBT1"), Err(WireError::Short { .. })));
        assert!(matches!(Preamble::decode(&[b'X'; 16]), Err(WireError::BadMagic(_))));
        let mut b = Preamble { mode: TcpMode::Sink, request_size: 1, response_size: 1 }.encode();
        b[4] = 9;
        assert_eq!(Preamble::decode(&b), Err(WireError::UnknownMode(9)));
        let mut b = Preamble { mode: TcpMode::Echo, request_size: 1, response_size: 1 }.encode();
        b[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Preamble::decode(&b), Err(WireError::OutOfRange { .. })));
    }

    #[test]
    fn a_udp_answer_carries_the_server_id() {
        let h = UdpHeader {
            kind: UdpKind::Response,
            flags: 0,
            id_len: 6,
            response_size: 0,
            flow: 7,
            seq: u64::MAX,
            ts_ns: 12345,
        };
        let mut b = vec![0u8; UDP_HEADER_LEN + 6];
        h.encode_into(&mut b);
        b[UDP_HEADER_LEN..].copy_from_slice(b"echo-a");
        let back = UdpHeader::decode(&b).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.server_id(&b).unwrap(), "echo-a");
    }

    #[test]
    fn a_udp_id_longer_than_the_datagram_is_rejected() {
        let h =
            UdpHeader { kind: UdpKind::Response, flags: 0, id_len: 30, response_size: 0, flow: 0, seq: 0, ts_ns: 0 };
        let mut b = vec![0u8; UDP_HEADER_LEN + 4];
        h.encode_into(&mut b);
        assert!(UdpHeader::decode(&b).is_err());
    }

    #[test]
    fn flow_stats_round_trip() {
        let s = FlowStats { received: 1, bytes: 2, out_of_order: 3, duplicates: 4, jitter_ns: 5, next_seq: 6 };
        assert_eq!(FlowStats::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn ids_are_cut_on_a_char_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let cut = truncate_id(&long);
        assert!(cut.len() <= MAX_ID_LEN);
        assert_eq!(encode_hello(&long).len(), 5 + cut.len());
    }

    mod props {
        //! Encode then decode gives the same value, for every valid frame.
        use proptest::prelude::*;

        use super::super::*;

        fn mode() -> impl Strategy<Value = TcpMode> {
            prop_oneof![Just(TcpMode::Sink), Just(TcpMode::Source), Just(TcpMode::Echo)]
        }

        fn kind() -> impl Strategy<Value = UdpKind> {
            prop_oneof![
                Just(UdpKind::Data),
                Just(UdpKind::Request),
                Just(UdpKind::Response),
                Just(UdpKind::StatsRequest),
                Just(UdpKind::StatsReply),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn preambles_round_trip(mode in mode(), request_size in 1..=MAX_MESSAGE_SIZE, response_size in 1..=MAX_MESSAGE_SIZE) {
                let p = Preamble { mode, request_size, response_size };
                prop_assert_eq!(Preamble::decode(&p.encode()), Ok(p));
            }

            #[test]
            fn hellos_round_trip(id in "\\PC{0,80}") {
                let b = encode_hello(&id);
                let head: &[u8; 5] = b.first_chunk().expect("a hello has 5 fixed bytes");
                let len = decode_hello_head(head).expect("an encoded hello decodes");
                prop_assert_eq!(len, b.len() - 5);
                prop_assert_eq!(std::str::from_utf8(&b[5..]), Ok(truncate_id(&id)));
            }

            #[test]
            fn udp_headers_round_trip(
                kind in kind(),
                flags: u8,
                id in "[a-z0-9-]{0,64}",
                response_size: u32,
                flow: u64,
                seq: u64,
                ts_ns: u64,
                payload in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let h = UdpHeader { kind, flags, id_len: id.len() as u8, response_size, flow, seq, ts_ns };
                let mut b = vec![0u8; UDP_HEADER_LEN];
                h.encode_into(&mut b);
                b.extend_from_slice(id.as_bytes());
                b.extend_from_slice(&payload);
                let back = UdpHeader::decode(&b);
                prop_assert_eq!(back, Ok(h));
                prop_assert_eq!(h.server_id(&b), Ok(id.as_str()));
            }

            #[test]
            fn flow_stats_round_trip(v: [u64; 6]) {
                let s = FlowStats {
                    received: v[0], bytes: v[1], out_of_order: v[2], duplicates: v[3], jitter_ns: v[4], next_seq: v[5],
                };
                prop_assert_eq!(FlowStats::decode(&s.encode()), Ok(s));
            }
        }
    }
}
