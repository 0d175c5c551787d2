//! The scenarios shipped inside the binary, so `zonebench run` works wherever it is
//! installed (`cargo install --path harness`), not only in a checkout. `scenarios/*.toml`
//! in the repository are the same files: this module includes them at build time.
//!
//! A scenario argument is resolved as a user expects: an existing path wins (a file of
//! theirs named like a built-in, `./quick.toml`), then a built-in by name (`quick`,
//! `topology-routing`, also `scenarios/quick.toml` as the README writes it), and anything
//! else is an error that lists the built-ins.

use std::path::Path;

use super::{Scenario, ScenarioError};

/// `(name, text)` of every built-in scenario, in the order `zonebench scenarios` lists them.
pub const BUILTIN: [(&str, &str); 7] = [
    ("quick", include_str!("../../../scenarios/quick.toml")),
    ("topology-routing", include_str!("../../../scenarios/topology-routing.toml")),
    ("service-scaling", include_str!("../../../scenarios/service-scaling.toml")),
    ("kube-proxy-sweep", include_str!("../../../scenarios/kube-proxy-sweep.toml")),
    ("nightly", include_str!("../../../scenarios/nightly.toml")),
    ("cni-benchmark", include_str!("../../../scenarios/cni-benchmark.toml")),
    ("service-chain", include_str!("../../../scenarios/service-chain.toml")),
];

/// The default scenario of `zonebench run` and `lab up`.
pub const DEFAULT: &str = "quick";

/// The built-in scenario `name` (`quick`, or `scenarios/quick.toml` / `quick.toml` naming it).
pub fn find(name: &str) -> Option<(&'static str, &'static str)> {
    let stem = name.strip_prefix("scenarios/").unwrap_or(name);
    let stem = stem.strip_suffix(".toml").unwrap_or(stem);
    BUILTIN.iter().copied().find(|(n, _)| *n == stem)
}

/// A built-in's one-line description (its `description` field).
pub fn description(text: &str) -> String {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("description").and_then(|d| d.as_str()).map(String::from))
        .unwrap_or_default()
}

/// A scenario's text as found for an argument: a file's, or a built-in's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub text: String,
    /// Names it in errors: the path, or `built-in scenario NAME`.
    pub file: String,
    /// Its default name: the file stem, or the built-in's name.
    pub stem: String,
}

/// Finds scenario `arg`: the file at that path when it exists, else the built-in of that name.
pub fn source(arg: &str) -> Result<Source, ScenarioError> {
    let path = Path::new(arg);
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            location: arg.to_string(),
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(Source { text, file: arg.to_string(), stem });
    }
    match find(arg) {
        Some((name, text)) => {
            Ok(Source { text: text.to_string(), file: format!("built-in scenario {name}"), stem: name.to_string() })
        }
        None => {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            Err(ScenarioError {
                location: arg.to_string(),
                field: String::new(),
                message: format!(
                    "no such file, and no built-in scenario of that name (built-ins: {}; `zonebench scenarios` lists them)",
                    names.join(", ")
                ),
            })
        }
    }
}

impl Scenario {
    /// Loads `arg`: a scenario file when that path exists, else the built-in of that name.
    pub fn resolve(arg: &str, overrides: &[String]) -> Result<Scenario, ScenarioError> {
        let s = source(arg)?;
        Scenario::parse(&s.text, &s.file, &s.stem, overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses_and_is_named_after_itself() {
        for (name, text) in BUILTIN {
            let s = Scenario::parse(text, name, name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, name);
            assert!(!description(text).is_empty(), "{name} has a description");
        }
    }

    #[test]
    fn a_builtin_is_found_by_name_or_by_its_repository_path() {
        for arg in ["topology-routing", "topology-routing.toml", "scenarios/topology-routing.toml"] {
            assert_eq!(find(arg).map(|(n, _)| n), Some("topology-routing"), "{arg}");
        }
        assert!(find("nope").is_none());
    }

    #[test]
    fn an_unknown_name_lists_the_builtins() {
        let e = Scenario::resolve("/nonexistent/nope", &[]).unwrap_err().to_string();
        assert!(
            e.contains(
                "quick, topology-routing, service-scaling, kube-proxy-sweep, nightly, cni-benchmark, service-chain"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_path_wins_over_a_builtin_of_the_same_name() {
        let dir = std::env::temp_dir().join(format!("zb-builtin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("quick.toml");
        std::fs::write(&file, "name = \"mine\"\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap();
        let s = Scenario::resolve(file.to_str().unwrap(), &[]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(s.name, "mine");
    }
}
