//! Reading the answers of the `http` load generator's connections ([`super::http`]).
//!
//! The load generator keeps its connections alive and sends the next request as soon as an
//! answer is complete, so it must know exactly where each answer ends, from the bytes as
//! they arrive, and without costing more than the server it measures. [`AnswerParser`] is
//! fed each read as it comes (an answer split anywhere parses the same) and works in place
//! on the thread's read buffer: a head that arrives in one read, the usual case, is never
//! copied, and nothing is allocated per answer. It keeps only what the test reports (the
//! status, the body size, the server's identity from the [`SERVER_HEADER`]) and whether the
//! connection may be reused (`Connection: close`, HTTP/1.0, a close-delimited body). Bodies
//! are framed by `Content-Length`, chunked `Transfer-Encoding` or the end of the connection;
//! interim 1xx answers are skipped. [`ServerTally`] counts answers per server identity
//! without allocating per answer.
//!
//! The status line and the header lines are parsed by httparse, the zero-copy parser under
//! hyper (it answers `Partial` until the head is complete); the body framing is ours, as
//! httparse leaves it to its caller.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;

/// The header the agent's HTTP server names itself in.
pub const SERVER_HEADER: &[u8] = b"x-zonebench-server";
/// The `servers` key for answers that carried no [`SERVER_HEADER`].
pub const NO_SERVER_HEADER: &str = "unknown";
/// Largest answer head (status line and headers) accepted.
const MAX_HEAD: usize = 64 << 10;
/// Headers parsed without allocating; a head with more is parsed again with room for all.
const HEADERS: usize = 64;

/// Counts answers per server id for one connection without allocating per answer: ids only
/// change when a connection lands on another server, so runs of the same id are counted
/// here and added to the thread's map when the id changes.
#[derive(Default)]
pub(super) struct ServerTally {
    id: Vec<u8>,
    has_id: bool,
    count: u64,
}

impl ServerTally {
    #[inline]
    pub(super) fn count(&mut self, answer: &AnswerParser, servers: &mut BTreeMap<String, u64>) {
        if self.count > 0 && self.has_id == answer.has_id && (!self.has_id || self.id == answer.id) {
            self.count += 1;
            return;
        }
        self.flush(servers);
        self.id.clear();
        self.id.extend_from_slice(&answer.id);
        self.has_id = answer.has_id;
        self.count = 1;
    }

    pub(super) fn flush(&mut self, servers: &mut BTreeMap<String, u64>) {
        if self.count == 0 {
            return;
        }
        let key = if self.has_id { String::from_utf8_lossy(&self.id).into_owned() } else { NO_SERVER_HEADER.into() };
        *servers.entry(key).or_default() += self.count;
        self.count = 0;
    }
}

/// Where an answer's parsing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    #[default]
    Head,
    /// `Content-Length` body: bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// No length given: the body ends when the server closes the connection.
    UntilClose,
    Done,
}

/// Position inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line's hex digits.
    Size {
        value: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to the line's end.
    Extension {
        value: u64,
    },
    /// After the size line's CR.
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
}

/// Incremental HTTP/1.1 answer parser: fed the bytes as they arrive, keeps what the test
/// reports (status, body size, server id) and whether the connection may be reused. A head
/// is parsed in place when it arrives in one read (the usual case); only a head split across
/// reads is copied, into a buffer reused by every answer.
#[derive(Default)]
pub struct AnswerParser {
    stage: Stage,
    head: Vec<u8>,
    pub status: u16,
    pub body_bytes: u64,
    /// The server asked to close (or spoke HTTP/1.0 without keep-alive, or sent a
    /// close-delimited body).
    pub close: bool,
    /// The last answer's `x-zonebench-server` value; only rewritten when it changes.
    id: Vec<u8>,
    has_id: bool,
}

/// What an answer head says.
struct Head {
    status: u16,
    framing: Stage,
    close: bool,
}

impl AnswerParser {
    pub fn start(&mut self) {
        self.stage = Stage::Head;
        self.head.clear();
        self.body_bytes = 0;
        self.close = false;
    }

    /// Consumes `data`; `Ok(true)` when the answer is complete. Bytes beyond the answer are
    /// an error: with one request in flight the server has nothing else to say.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<bool, &'static str> {
        while !data.is_empty() {
            match self.stage {
                Stage::Head => {
                    let used = if self.head.is_empty() {
                        match self.parse_head(data)? {
                            Some(used) => used,
                            None => {
                                self.keep_partial_head(data)?;
                                return Ok(false);
                            }
                        }
                    } else {
                        let before = self.head.len();
                        self.keep_partial_head(data)?;
                        let head = std::mem::take(&mut self.head);
                        let parsed = self.parse_head(&head);
                        self.head = head;
                        match parsed? {
                            // The head ended `used - before` bytes into this read.
                            Some(used) => {
                                self.head.clear();
                                used - before
                            }
                            None => return Ok(false),
                        }
                    };
                    data = &data[used..];
                }
                Stage::Length(left) => {
                    let n = left.min(data.len() as u64);
                    self.body_bytes += n;
                    data = &data[n as usize..];
                    self.stage = if left == n { Stage::Done } else { Stage::Length(left - n) };
                }
                Stage::Chunked(chunk) => data = self.feed_chunked(chunk, data)?,
                Stage::UntilClose => {
                    self.body_bytes += data.len() as u64;
                    data = &[];
                }
                Stage::Done => return Err("bytes after the end of the answer"),
            }
        }
        Ok(self.stage == Stage::Done)
    }

    /// The server closed the connection: fine only for a close-delimited body.
    pub fn end_of_stream(&mut self) -> Result<(), &'static str> {
        match self.stage {
            Stage::UntilClose => {
                self.stage = Stage::Done;
                Ok(())
            }
            Stage::Head if self.head.is_empty() => Err("connection closed before an answer"),
            _ => Err("connection closed in the middle of an answer"),
        }
    }

    fn keep_partial_head(&mut self, data: &[u8]) -> Result<(), &'static str> {
        if self.head.len() + data.len() > MAX_HEAD {
            return Err("answer head larger than 64 KiB");
        }
        self.head.extend_from_slice(data);
        Ok(())
    }

    /// Parses a complete head at the start of `buf`: `Ok(Some(len))` and the parser moved to
    /// the body, `Ok(None)` if the head is not complete yet. Interim (1xx) answers are
    /// skipped and parsing continues with what follows them.
    fn parse_head(&mut self, buf: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut at = 0;
        loop {
            // An interim answer followed by an incomplete head is simply parsed again, with
            // the rest, on the next read.
            let Some((head, used)) = self.parse_one_head(&buf[at..])? else { return Ok(None) };
            at += used;
            if (100..200).contains(&head.status) {
                if head.status == 101 {
                    return Err("unexpected 101 Switching Protocols");
                }
                continue;
            }
            self.status = head.status;
            self.close = head.close;
            self.stage = head.framing;
            return Ok(Some(at));
        }
    }

    /// Parses one head at the start of `buf`: `Ok(None)` while it is incomplete. The status
    /// line and header lines are httparse's (hyper's parser: zero-copy, SIMD scanning);
    /// what the headers mean for framing and reuse is decided here.
    fn parse_one_head(&mut self, buf: &[u8]) -> Result<Option<(Head, usize)>, &'static str> {
        let config = httparse::ParserConfig::default();
        let mut headers = [const { MaybeUninit::uninit() }; HEADERS];
        let mut more_headers = Vec::new();
        let mut response = httparse::Response::new(&mut []);
        let mut parsed = config.parse_response_with_uninit_headers(&mut response, buf, &mut headers);
        if parsed == Err(httparse::Error::TooManyHeaders) {
            // Rare: more headers than the array on the stack holds. Every header has a line
            // of its own (the last one may be incomplete), so the head's lines bound them.
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            more_headers.resize(lines + 1, httparse::EMPTY_HEADER);
            response = httparse::Response::new(&mut more_headers);
            parsed = response.parse(buf);
        }
        let used = match parsed.map_err(head_error)? {
            httparse::Status::Complete(used) => used,
            httparse::Status::Partial if buf.len() > MAX_HEAD => return Err("answer head larger than 64 KiB"),
            httparse::Status::Partial => return Ok(None),
        };
        let http10 = response.version == Some(0);
        let status = response.code.filter(|code| *code >= 100).ok_or("bad status code")?;
        let mut close = http10;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut other_coding = false;
        let mut id_seen = false;
        for header in response.headers.iter() {
            // httparse trims the value's leading and trailing spaces.
            let (name, value) = (header.name.as_bytes(), header.value);
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_decimal(value).ok_or("bad Content-Length")?;
                if length.is_some_and(|m| m != n) {
                    return Err("conflicting Content-Length headers");
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding decides the framing (RFC 9112 §6.3).
                let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
                chunked = last.eq_ignore_ascii_case(b"chunked");
                other_coding = !chunked;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        close = false;
                    }
                }
            } else if name.eq_ignore_ascii_case(SERVER_HEADER) {
                id_seen = true;
                if !self.has_id || self.id != value {
                    self.id.clear();
                    self.id.extend_from_slice(value);
                }
            }
        }
        if (100..200).contains(&status) {
            return Ok(Some((Head { status, framing: Stage::Done, close: false }, used)));
        }
        self.has_id = id_seen;
        let framing = if status == 204 || status == 304 {
            Stage::Done
        } else if chunked {
            Stage::Chunked(Chunk::Size { value: 0, digits: 0 })
        } else if other_coding {
            close = true;
            Stage::UntilClose
        } else {
            match length {
                Some(0) => Stage::Done,
                Some(n) => Stage::Length(n),
                None => {
                    close = true;
                    Stage::UntilClose
                }
            }
        };
        Ok(Some((Head { status, framing, close }, used)))
    }

    /// Advances through a chunked body; returns what is left of `data` (empty unless the
    /// body ended inside it).
    fn feed_chunked<'a>(&mut self, mut chunk: Chunk, mut data: &'a [u8]) -> Result<&'a [u8], &'static str> {
        while let Some((&b, rest)) = data.split_first() {
            if let Chunk::Data(left) = chunk {
                let n = left.min(data.len() as u64);
                self.body_bytes += n;
                data = &data[n as usize..];
                chunk = if left == n { Chunk::DataCr } else { Chunk::Data(left - n) };
                continue;
            }
            data = rest;
            chunk = match (chunk, b) {
                (Chunk::Size { value, digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if digits >= 15 {
                        return Err("chunk size too large");
                    }
                    let d = (b as char).to_digit(16).map_or(0, u64::from);
                    Chunk::Size { value: value * 16 + d, digits: digits + 1 }
                }
                (Chunk::Size { digits: 0, .. }, _) => return Err("bad chunk size"),
                (Chunk::Size { value, .. }, b';' | b' ' | b'\t') => Chunk::Extension { value },
                (Chunk::Size { value, .. } | Chunk::Extension { value }, b'\r') => Chunk::SizeLf { value },
                (Chunk::Size { value, .. } | Chunk::Extension { value } | Chunk::SizeLf { value }, b'\n') => {
                    if value == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data(value)
                    }
                }
                (Chunk::Extension { value }, _) => Chunk::Extension { value },
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size { value: 0, digits: 0 },
                (Chunk::TrailerStart, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLf, b'\n') => {
                    self.stage = Stage::Done;
                    return Ok(data);
                }
                (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                _ => return Err("bad chunked framing"),
            };
        }
        self.stage = Stage::Chunked(chunk);
        Ok(data)
    }
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_space(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_space(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// What is wrong with a head httparse refused.
fn head_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::Version => "not an HTTP/1.x status line",
        httparse::Error::Status => "bad status code",
        httparse::Error::HeaderName => "a bad header name, or a header line without ':'",
        httparse::Error::HeaderValue => "a bad byte in a header value",
        httparse::Error::NewLine => "a bad line ending in the answer head",
        httparse::Error::Token => "a bad byte in the status line",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    const PLAIN: &[u8] = b"HTTP/1.1 200 OK\r\nx-zonebench-server: web-a\r\ncontent-length: 3\r\ndate: x\r\n\r\nok\n";
    const CHUNKED: &[u8] = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\n";

    /// Feeds `bytes` in pieces of `step`; returns the parser once the answer is complete.
    fn parse_in_steps(bytes: &[u8], step: usize) -> AnswerParser {
        let mut p = AnswerParser::default();
        p.start();
        let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let done = p.feed(piece).unwrap();
            assert_eq!(done, i == pieces.len() - 1, "step {step}, piece {i}");
        }
        p
    }

    #[test]
    fn an_answer_split_anywhere_parses_the_same() {
        for step in 1..=PLAIN.len() {
            let p = parse_in_steps(PLAIN, step);
            assert_eq!((p.status, p.body_bytes, p.close, p.has_id), (200, 3, false, true));
            assert_eq!(p.id, b"web-a");
        }
        for step in 1..=CHUNKED.len() {
            let p = parse_in_steps(CHUNKED, step);
            assert_eq!((p.status, p.body_bytes, p.has_id), (404, 21, false), "step {step}");
        }
    }

    #[test]
    fn interim_answers_are_skipped() {
        let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n".to_vec();
        bytes.extend_from_slice(PLAIN);
        for step in [1, 7, bytes.len()] {
            let p = parse_in_steps(&bytes, step);
            assert_eq!((p.status, p.body_bytes), (200, 3));
        }
    }

    #[test]
    fn a_body_without_length_ends_with_the_connection() {
        let mut p = AnswerParser::default();
        p.start();
        assert!(!p.feed(b"HTTP/1.0 200 OK\r\n\r\nsome body").unwrap());
        p.end_of_stream().unwrap();
        assert_eq!((p.body_bytes, p.close), (9, true));
    }

    #[test]
    fn a_truncated_answer_is_an_error() {
        let mut p = AnswerParser::default();
        p.start();
        assert!(!p.feed(&PLAIN[..PLAIN.len() - 1]).unwrap());
        assert!(p.end_of_stream().is_err());
        p.start();
        assert_eq!(p.end_of_stream(), Err("connection closed before an answer"));
    }

    #[test]
    fn close_and_keep_alive_are_read_from_the_head() {
        let cases: [(&[u8], bool); 4] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n", false),
        ];
        for (bytes, close) in cases {
            let mut p = AnswerParser::default();
            p.start();
            assert!(p.feed(bytes).unwrap());
            assert_eq!(p.close, close, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn malformed_answers_are_refused() {
        let bad: [&[u8]; 7] = [
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
        ];
        for bytes in bad {
            let mut p = AnswerParser::default();
            p.start();
            assert!(p.feed(bytes).is_err(), "{}", String::from_utf8_lossy(bytes));
        }
        let mut p = AnswerParser::default();
        p.start();
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert!(!p.feed(b"HTTP/1.1 200 OK\r\nx: ").unwrap());
        assert!(p.feed(&huge).is_err());
    }

    #[test]
    fn a_refused_answer_says_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status code"),
            (b"HTTP/1.1 099 Odd\r\n\r\n", "bad status code"),
            (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "a bad header name, or a header line without ':'"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting Content-Length headers",
            ),
        ];
        for (bytes, why) in cases {
            let mut p = AnswerParser::default();
            p.start();
            assert_eq!(p.feed(bytes), Err(why), "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn a_head_with_more_headers_than_the_stack_holds_parses() {
        let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..HEADERS * 2 {
            bytes.extend_from_slice(format!("x-filler-{i}: {i}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"x-zonebench-server: many\r\ncontent-length: 2\r\n\r\nok");
        for step in [1, 100, bytes.len()] {
            let p = parse_in_steps(&bytes, step);
            assert_eq!((p.status, p.body_bytes, p.id.as_slice()), (200, 2, &b"many"[..]), "step {step}");
        }
    }

    #[test]
    fn answers_are_tallied_per_server_id() {
        let mut servers = BTreeMap::new();
        let mut tally = ServerTally::default();
        let a = b"HTTP/1.1 200 OK\r\nx-zonebench-server: a\r\ncontent-length: 0\r\n\r\n";
        let b = b"HTTP/1.1 200 OK\r\nX-Zonebench-Server:  b \r\ncontent-length: 0\r\n\r\n";
        let none = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let mut p = AnswerParser::default();
        for bytes in [&a[..], a, b, none, none, a] {
            p.start();
            assert!(p.feed(bytes).unwrap());
            tally.count(&p, &mut servers);
        }
        tally.flush(&mut servers);
        let want: BTreeMap<String, u64> = [("a".into(), 3), ("b".into(), 1), (NO_SERVER_HEADER.into(), 2)].into();
        assert_eq!(servers, want);
    }
}
