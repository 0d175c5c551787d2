//! results.json as `compare` and `report` read it back: parsed, compared against itself
//! and rendered in every compare format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonebench::analysis::compare::{compare, CompareOptions};
use zonebench::analysis::output::{render, Format};
use zonebench::results::load::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(run) = parse(text, "fuzz.json") else { return };
    let c = compare(("a", &run.results), ("b", &run.results), &CompareOptions::default());
    assert!(!c.has_regression(), "a run compared with itself regresses");
    for f in [Format::Table, Format::Markdown, Format::Json, Format::Junit] {
        let _ = render(&c, f);
    }
});
