//! Reading a run back: `report`, `compare` and `history` take a run directory, a
//! `results.json`, or a baseline (a results.json kept under `results/baselines/`, also
//! named by its bare name: `quick` means `results/baselines/quick.json`).
//!
//! Two sections that other parts of the harness add to results.json are read leniently
//! from the raw JSON here rather than through [`RunResults`]: per-measurement `locality`
//! (answers per server zone, in-zone fraction, bytes that crossed zones; the topology
//! work) and the run's `cost` section. Reading them from the raw value lets a report draw
//! them whether or not the typed schema of this build knows them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::RunResults;

pub const BASELINE_DIR: &str = "results/baselines";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: no such run directory, results.json or baseline (looked for {1})")]
    NotFound(String, String),
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{column}: not a zonebench results.json: {message}")]
    Parse { path: String, line: usize, column: usize, message: String },
}

/// A run read back, with the sections read leniently.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    /// The file read.
    pub path: PathBuf,
    pub results: RunResults,
    /// `locality` of each measurement, by index into `results.measurements`.
    pub locality: Vec<Option<Locality>>,
    /// `cost.per_gb_cross_zone`, when the run states it.
    pub cost_per_gb_cross_zone: Option<f64>,
}

/// Where the answers of a Service test came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Locality {
    pub in_zone_fraction: f64,
    /// Answers per server zone.
    pub answers_by_zone: BTreeMap<String, u64>,
    /// Bytes that crossed a zone boundary (both directions).
    pub cross_zone_bytes: Option<f64>,
}

/// Resolves `arg` to a results.json: a file, a directory holding one, or a baseline name.
pub fn resolve(arg: &Path) -> Result<PathBuf, LoadError> {
    let candidates = candidates(arg);
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(LoadError::NotFound(arg.display().to_string(), looked.join(", ")))
}

fn candidates(arg: &Path) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if arg.is_dir() {
        c.push(arg.join("results.json"));
    } else {
        c.push(arg.to_path_buf());
    }
    // A bare name (no directory part, no extension) may name a baseline.
    if arg.components().count() == 1 && arg.extension().is_none() {
        c.push(Path::new(BASELINE_DIR).join(arg).with_extension("json"));
    }
    c
}

/// Reads and parses a run (see [`resolve`] for what `arg` may be).
pub fn load(arg: &Path) -> Result<LoadedRun, LoadError> {
    let path = resolve(arg)?;
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read { path: shown.clone(), source })?;
    parse(&text, &shown).map(|mut r| {
        r.path = path;
        r
    })
}

/// Parses results.json text; `shown` names it in errors.
pub fn parse(text: &str, shown: &str) -> Result<LoadedRun, LoadError> {
    let err = |e: serde_json::Error| LoadError::Parse {
        path: shown.to_string(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    };
    let mut raw: serde_json::Value = serde_json::from_str(text).map_err(err)?;
    let mut locality = Vec::new();
    if let Some(ms) = raw.get("measurements").and_then(|m| m.as_array()) {
        locality = ms.iter().map(|m| m.get("locality").and_then(parse_locality)).collect();
    }
    let cost_per_gb_cross_zone = raw.pointer("/cost/per_gb_cross_zone").and_then(serde_json::Value::as_f64);
    // The typed schema first; if it does not know the lenient sections, without them.
    let results = match serde_json::from_value::<RunResults>(raw.clone()) {
        Ok(r) => r,
        Err(first) => {
            let mut stripped = false;
            if let Some(obj) = raw.as_object_mut() {
                stripped |= obj.remove("cost").is_some();
            }
            if let Some(ms) = raw.get_mut("measurements").and_then(|m| m.as_array_mut()) {
                for m in ms {
                    if let Some(obj) = m.as_object_mut() {
                        stripped |= obj.remove("locality").is_some();
                    }
                }
            }
            if !stripped {
                // Re-parse the text so the error carries a line and column.
                return Err(serde_json::from_str::<RunResults>(text).err().map_or_else(|| err(first), err));
            }
            serde_json::from_value(raw).map_err(|e| LoadError::Parse {
                path: shown.to_string(),
                line: 0,
                column: 0,
                message: e.to_string(),
            })?
        }
    };
    locality.resize(results.measurements.len(), None);
    Ok(LoadedRun { path: PathBuf::from(shown), results, locality, cost_per_gb_cross_zone })
}

/// `in_zone_fraction` is required; the per-zone answers are the first object of counts
/// whose name mentions a zone, and the crossed bytes the first number whose name says
/// `cross` and `bytes` (the topology work names them; this accepts its spellings).
fn parse_locality(v: &serde_json::Value) -> Option<Locality> {
    let obj = v.as_object()?;
    let in_zone_fraction = obj.get("in_zone_fraction")?.as_f64()?;
    let mut answers_by_zone = BTreeMap::new();
    for (k, v) in obj {
        if !k.contains("zone") {
            continue;
        }
        if let Some(map) = v.as_object() {
            let counts: Option<BTreeMap<String, u64>> =
                map.iter().map(|(z, n)| n.as_u64().map(|n| (z.clone(), n))).collect();
            if let Some(c) = counts {
                answers_by_zone = c;
                break;
            }
        }
    }
    let cross_zone_bytes = obj
        .iter()
        .find(|(k, v)| k.contains("cross") && k.contains("bytes") && v.is_number())
        .and_then(|(_, v)| v.as_f64());
    Some(Locality { in_zone_fraction, answers_by_zone, cross_zone_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::metrics::fixtures;

    #[test]
    fn locality_and_cost_are_read_even_where_the_schema_does_not_know_them() {
        let r = fixtures::run(vec![fixtures::throughput("a", "b", 0, 1e9)]);
        let mut v = serde_json::to_value(&r).unwrap();
        v["measurements"][0]["locality"] = serde_json::json!({
            "in_zone_fraction": 0.97, "answers_by_zone": {"a": 97, "b": 3}, "cross_zone_bytes": 1200
        });
        v["cost"] = serde_json::json!({"per_gb_cross_zone": 0.02});
        let loaded = parse(&v.to_string(), "x.json").unwrap();
        let l = loaded.locality[0].as_ref().unwrap();
        assert_eq!(l.in_zone_fraction, 0.97);
        assert_eq!(l.answers_by_zone["b"], 3);
        assert_eq!(l.cross_zone_bytes, Some(1200.0));
        assert_eq!(loaded.cost_per_gb_cross_zone, Some(0.02));
    }

    #[test]
    fn a_bad_file_is_named_with_line_and_column() {
        let e = parse("{\n  \"schema_version\": 1,\n  \"scenario\": 5\n}", "r.json").unwrap_err().to_string();
        assert!(e.starts_with("r.json:3:"), "{e}");
    }

    #[test]
    fn a_missing_run_says_where_it_looked() {
        let e = load(Path::new("no-such-baseline")).unwrap_err().to_string();
        assert!(e.contains("results/baselines/no-such-baseline.json"), "{e}");
    }
}
