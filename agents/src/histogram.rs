//! HDR latency recording in nanoseconds, and the V2+DEFLATE+base64 form that results carry.
//!
//! Every recorder uses the same bounds (1 ns .. 1 h, 3 significant digits), so histograms from
//! different workers and agents merge with `add` without resizing, and a merged distribution's
//! percentiles are exact to 3 digits: percentiles are never averaged.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::spec::LatencySummary;

/// Highest value a histogram tracks: one hour in ns. Larger values are clamped, not lost.
pub const HIGHEST_NS: u64 = 3_600_000_000_000;
pub const SIGFIG: u8 = 3;

/// A latency histogram with the project's fixed bounds.
pub fn new() -> Histogram<u64> {
    // Bounds are constants that satisfy the crate's rules (low >= 1, high >= 2 * low,
    // sigfig <= 5), so construction cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG).expect("constant bounds are valid")
}

/// Records one value, clamping into the tracked range (0 ns becomes 1 ns; beyond an hour
/// becomes an hour). Never fails, never allocates.
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, HIGHEST_NS));
}

#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram is not a valid HdrHistogram V2 encoding: {0:?}")]
    Decode(hdrhistogram::serialization::DeserializeError),
    #[error("histogram values exceed the tracked range: {0:?}")]
    Range(hdrhistogram::AdditionError),
    #[error("histogram holds more than {MAX_COUNT} values")]
    TooManyValues,
}

/// Most values a decoded histogram may hold (2^48, a million years of samples at 10 M/s).
/// The counts of anything larger can overflow when percentiles sum them (hdrhistogram adds
/// them unchecked), and this bound keeps the merge of 65 536 decoded histograms exact.
pub const MAX_COUNT: u64 = 1 << 48;

/// base64 of the V2+DEFLATE encoding (the form Java's HistogramLogReader reads).
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec can only fail for counts above i64::MAX, which a histogram of
    // real samples never holds; fall back to an empty histogram's encoding rather than panic.
    if V2DeflateSerializer::new().serialize(h, &mut bytes).is_err() {
        bytes.clear();
        let _ = V2DeflateSerializer::new().serialize(&new(), &mut bytes);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes what [`encode`] wrote (plain V2 is accepted too).
pub fn decode(b64: &str) -> Result<Histogram<u64>, HistogramError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim())?;
    let decoded: Histogram<u64> =
        Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(HistogramError::Decode)?;
    // Re-home into the standard bounds so any two decoded histograms merge.
    let mut h = new();
    h.add(&decoded).map_err(HistogramError::Range)?;
    // Each count saturates on its own, so the total must be summed here, checked.
    let total = h.iter_recorded().try_fold(0u64, |sum, v| sum.checked_add(v.count_at_value()));
    if total.is_none_or(|t| t > MAX_COUNT) {
        return Err(HistogramError::TooManyValues);
    }
    Ok(h)
}

/// Adds `other` into `into`; both must use the standard bounds.
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    // Both sides come from `new()` (same bounds), so addition cannot exceed the range.
    into.add(other).expect("histograms share the standard bounds");
}

/// The headline figures and the encoded histogram; `None` when nothing was recorded.
pub fn summarize(h: &Histogram<u64>) -> Option<LatencySummary> {
    if h.is_empty() {
        return None;
    }
    Some(LatencySummary {
        count: h.len(),
        min_ns: h.min(),
        mean_ns: h.mean(),
        p50_ns: h.value_at_quantile(0.50),
        p90_ns: h.value_at_quantile(0.90),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
        max_ns: h.max(),
        histogram: encode(h),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_keeps_every_count() {
        let mut h = new();
        for v in [1u64, 5, 1_000, 25_000, 25_010, 3_000_000, 9_999_999_999] {
            record(&mut h, v);
        }
        record(&mut h, 0); // clamped to 1 ns, not dropped
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back.len(), h.len());
        assert_eq!(back, h);
        assert_eq!(back.min(), 1);
    }

    #[test]
    fn merged_percentiles_come_from_the_union_not_an_average() {
        let mut fast = new();
        let mut slow = new();
        for _ in 0..900 {
            record(&mut fast, 10_000);
        }
        for _ in 0..100 {
            record(&mut slow, 1_000_000);
        }
        let mut all = decode(&encode(&fast)).unwrap();
        merge(&mut all, &decode(&encode(&slow)).unwrap());
        assert_eq!(all.len(), 1000);
        let s = summarize(&all).unwrap();
        assert!((9_990..=10_010).contains(&s.p50_ns), "{}", s.p50_ns);
        assert!(s.p99_ns >= 999_000, "{}", s.p99_ns);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode("not base64!"), Err(HistogramError::Base64(_))));
        assert!(matches!(decode("AAAAAAAA"), Err(HistogramError::Decode(_))));
    }

    #[test]
    fn a_histogram_whose_counts_overflow_is_refused() {
        // Found by the `histogram` fuzz target: a V2 histogram whose counts sum past u64::MAX
        // made summarize's percentiles overflow (a panic with debug assertions, garbage
        // without). The fuzzer's input is the serialized bytes; results carry them in base64.
        let found = include_bytes!("../tests/data/fuzz-histogram-count-overflow.bin");
        let b64 = base64::engine::general_purpose::STANDARD.encode(found);
        assert!(matches!(decode(&b64), Err(HistogramError::TooManyValues)));
        // The smallest such histogram: three counts of i64::MAX (the most V2 can carry).
        let mut h = new();
        for v in [1_000, 2_000, 3_000] {
            h.record_n(v, i64::MAX as u64).unwrap();
        }
        let mut bytes = Vec::new();
        hdrhistogram::serialization::V2Serializer::new().serialize(&h, &mut bytes).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(matches!(decode(&b64), Err(HistogramError::TooManyValues)));
        // The bound itself decodes; one value more does not.
        let mut h = new();
        h.record_n(1_000, MAX_COUNT).unwrap();
        assert_eq!(decode(&encode(&h)).unwrap().len(), MAX_COUNT);
        h.record(2_000).unwrap();
        assert!(matches!(decode(&encode(&h)), Err(HistogramError::TooManyValues)));
    }

    #[test]
    fn empty_histograms_have_no_summary() {
        assert!(summarize(&new()).is_none());
    }

    mod props {
        //! Merging is associative and keeps every count, through the encoded form too.
        use proptest::prelude::*;

        use super::super::*;

        /// Latencies spread over the whole tracked range (and past it: clamped).
        fn values() -> impl Strategy<Value = Vec<u64>> {
            proptest::collection::vec((0u32..44, any::<u64>()).prop_map(|(bits, v)| v >> (63 - bits)), 0..200)
        }

        fn of(values: &[u64]) -> Histogram<u64> {
            let mut h = new();
            for &v in values {
                record(&mut h, v);
            }
            h
        }

        fn merged(a: &Histogram<u64>, b: &Histogram<u64>) -> Histogram<u64> {
            let mut out = a.clone();
            merge(&mut out, b);
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn merge_is_associative_and_keeps_counts(a in values(), b in values(), c in values()) {
                let (ha, hb, hc) = (of(&a), of(&b), of(&c));
                let left = merged(&merged(&ha, &hb), &hc);
                let right = merged(&ha, &merged(&hb, &hc));
                prop_assert_eq!(&left, &right);
                prop_assert_eq!(left.len(), (a.len() + b.len() + c.len()) as u64);
                // Merging is the histogram of all the values at once.
                prop_assert_eq!(&left, &of(&[a, b, c].concat()));
                // Through results' encoded form, as the harness merges repeats.
                let decoded = merged(&merged(&decode(&encode(&ha)).unwrap(), &decode(&encode(&hb)).unwrap()), &decode(&encode(&hc)).unwrap());
                prop_assert_eq!(&decoded, &left);
            }
        }
    }
}
