//! `--set key.path=value`: change any scenario field from the command line. The scenario is
//! turned into a TOML value tree, the path is set, and the tree is read back through the
//! same typed deserializer as the file, so an override is validated exactly like the file.

use super::{Scenario, ScenarioError};

/// Applies one `key.path=value`. Array elements are addressed by index (`tests.0.duration`).
/// The value is read as TOML (`2`, `true`, `"x"`, `[1, 2]`) and, if that fails, as a plain
/// string, so `--set lab.inter_zone_delay=500us` needs no quotes.
pub fn apply_override(scenario: &Scenario, assignment: &str) -> Result<Scenario, ScenarioError> {
    let err = |field: &str, message: String| ScenarioError {
        location: format!("--set {assignment}"),
        field: field.to_string(),
        message,
    };
    let (path, raw) = assignment.split_once('=').ok_or_else(|| err("", "expected key.path=value".into()))?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(err(path, "the key path is empty or has an empty segment".into()));
    }
    let value = parse_value(raw.trim());
    let mut tree = toml::Value::try_from(scenario).map_err(|e| err(path, format!("internal: {e}")))?;
    let mut node = &mut tree;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        node = match node {
            toml::Value::Table(t) => {
                if last {
                    t.insert(seg.to_string(), value);
                    break;
                }
                // Intermediate tables that are absent (defaults skipped when serializing)
                // are created empty and filled by their defaults when read back.
                t.entry(seg.to_string()).or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => {
                let idx: usize = seg.parse().map_err(|_| err(path, format!("{seg:?} is not an array index")))?;
                let len = a.len();
                let slot =
                    a.get_mut(idx).ok_or_else(|| err(path, format!("index {idx} is past the end ({len} items)")))?;
                if last {
                    *slot = value;
                    break;
                }
                slot
            }
            _ => {
                let parent = segments[..i].join(".");
                return Err(err(path, format!("{parent} is not a table")));
            }
        };
    }
    let text = toml::to_string(&tree).map_err(|e| err(path, format!("internal: {e}")))?;
    toml::from_str(&text).map_err(|e: toml::de::Error| err(path, e.message().trim().to_string()))
}

fn parse_value(raw: &str) -> toml::Value {
    #[derive(serde::Deserialize)]
    struct Probe {
        v: toml::Value,
    }
    match toml::from_str::<Probe>(&format!("v = {raw}")) {
        Ok(p) => p.v,
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
