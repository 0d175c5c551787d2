//! The data-plane framing: TCP preamble and hello, UDP header (and the server id after it),
//! UDP flow stats. What decodes must encode back to the same bytes' meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonebench_agent::wire::{self, FlowStats, Preamble, UdpHeader, UDP_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Preamble::decode(data) {
        assert_eq!(Preamble::decode(&p.encode()), Ok(p));
    }
    if let Some(head) = data.first_chunk::<5>() {
        if let Ok(len) = wire::decode_hello_head(head) {
            if let Some(id) = data.get(5..5 + len).and_then(|b| std::str::from_utf8(b).ok()) {
                let hello = wire::encode_hello(id);
                assert_eq!(wire::decode_hello_head(hello.first_chunk::<5>().expect("5 bytes")), Ok(len));
                assert_eq!(&hello[5..], id.as_bytes());
            }
        }
    }
    if let Ok(h) = UdpHeader::decode(data) {
        let id = h.server_id(data);
        let mut b = data.to_vec();
        h.encode_into(&mut b[..UDP_HEADER_LEN]);
        assert_eq!(UdpHeader::decode(&b), Ok(h));
        assert_eq!(h.server_id(&b), id);
    }
    if let Ok(s) = FlowStats::decode(data) {
        assert_eq!(FlowStats::decode(&s.encode()), Ok(s));
    }
});
