//! HDR histograms as agent results carry them (base64 of V2+DEFLATE): the input is tried
//! as that text and, base64-encoded, as the raw serialized bytes. What decodes must
//! summarize, merge, and survive encode/decode with every count.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use zonebench_agent::histogram;

fn check(h: hdrhistogram::Histogram<u64>) {
    let _ = histogram::summarize(&h);
    let back = histogram::decode(&histogram::encode(&h)).expect("an encoded histogram decodes");
    assert_eq!(back.len(), h.len());
    let mut merged = histogram::new();
    histogram::merge(&mut merged, &back);
    assert_eq!(merged.len(), h.len());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(h) = histogram::decode(text) {
            check(h);
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    if let Ok(h) = histogram::decode(&b64) {
        check(h);
    }
});
