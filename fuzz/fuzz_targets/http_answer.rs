//! The `http` load generator's answer parser, fed in random splits: the first two bytes
//! seed where the answer is cut, the rest is what the server sent. A parse must not depend
//! on where reads end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonebench_agent::load::http_answer::AnswerParser;

/// Feeds `bytes` in pieces from `cuts`; the result of each answer and of the end of stream.
fn parse(bytes: &[u8], mut cuts: impl FnMut() -> usize) -> Vec<Result<(u16, u64, bool), &'static str>> {
    let mut p = AnswerParser::default();
    p.start();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = cuts().clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        match p.feed(piece) {
            Ok(true) => {
                out.push(Ok((p.status, p.body_bytes, p.close)));
                // Keep-alive: the next answer follows; bytes after a close are an error.
                p.start();
            }
            Ok(false) => {}
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
    match p.end_of_stream() {
        Ok(()) => out.push(Ok((p.status, p.body_bytes, p.close))),
        Err(e) => out.push(Err(e)),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, bytes)) = data.split_first_chunk::<2>() else { return };
    let mut state = u32::from(u16::from_le_bytes(*seed)) | 1;
    let split = parse(bytes, || {
        // xorshift: cheap, deterministic cut points from the seed.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 64) as usize + 1
    });
    let whole = parse(bytes, || usize::MAX);
    // Errors may be found at another byte, but successful answers must agree.
    let ok = |v: &[Result<(u16, u64, bool), &'static str>]| v.iter().take_while(|r| r.is_ok()).count();
    let n = ok(&split).min(ok(&whole));
    assert_eq!(split[..n], whole[..n]);
});
