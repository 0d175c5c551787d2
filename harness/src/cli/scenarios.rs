//! `zonebench scenarios`: the built-in scenarios, with their descriptions.

use zonebench::scenario::builtin;

use super::Exit;

pub fn list() -> anyhow::Result<Exit> {
    let width = builtin::BUILTIN.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, text) in builtin::BUILTIN {
        println!("{name:<width$}  {}", builtin::description(text));
    }
    eprintln!("`zonebench run NAME` runs one; a path to a scenario file works too");
    Ok(Exit::Success)
}
