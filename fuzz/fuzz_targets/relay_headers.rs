//! The relay's header parsers, fed what any client may send: `x-zonebench-relay` (the hops
//! ahead) and `x-zonebench-via` (the hops so far). The first byte splits the input into the
//! two headers. Neither parser may panic, and what they accept must be consistent:
//! the next hop is the first listed address, the rest is the list without it (and parses
//! in turn, one hop shorter), and the via list grows by exactly this agent's id.
#![no_main]

use hyper::header::HeaderValue;
use hyper::StatusCode;
use libfuzzer_sys::fuzz_target;
use zonebench_agent::servers::relay::{check_via, next_hop, Relay, MAX_RELAY_HOPS};

const OWN: &str = "srv-b-0";

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let (relay, via) = rest.split_at(usize::from(cut).min(rest.len()));
    let (Ok(relay), Ok(via)) = (HeaderValue::from_bytes(relay), HeaderValue::from_bytes(via)) else { return };

    if let Some((status, why)) = check_via(Some(&via), OWN) {
        assert_eq!(status, StatusCode::LOOP_DETECTED);
        assert!(why.ends_with('\n'), "{why:?}");
    }
    // Only loopback next hops allowed: anything else must be refused, never forwarded.
    let loopback = Relay::new(|ip| ip.is_loopback());
    let mut header = relay;
    let mut via = Some(via);
    for depth in 0..=MAX_RELAY_HOPS {
        let hop = match next_hop(Some(&loopback), &header, via.as_ref(), OWN) {
            Ok(hop) => hop,
            Err((status, why)) => {
                assert!(
                    [StatusCode::BAD_REQUEST, StatusCode::FORBIDDEN, StatusCode::LOOP_DETECTED].contains(&status),
                    "{status}: {why}"
                );
                return;
            }
        };
        assert!(hop.next.ip().is_loopback(), "{hop:?}");
        assert!(hop.via == OWN || hop.via.ends_with(&format!(",{OWN}")), "{hop:?}");
        let listed = header.to_str().unwrap().split(',').count();
        assert!(listed <= MAX_RELAY_HOPS, "{listed} hops accepted");
        if hop.rest.is_empty() {
            assert_eq!(listed, 1, "{hop:?}");
            return;
        }
        // The rest is what the next hop receives: it must parse there too, one hop shorter.
        assert_eq!(hop.rest.split(',').count(), listed - 1, "{hop:?}");
        header = HeaderValue::from_str(&hop.rest).expect("the rest is a valid header");
        via = Some(HeaderValue::from_str(&hop.via).expect("the via list is a valid header"));
        assert!(depth < MAX_RELAY_HOPS, "more hops than the limit were followed");
    }
});
