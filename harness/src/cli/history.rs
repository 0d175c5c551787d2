//! `zonebench history add RUN_DIR`: a run's key figures appended to the nightly history file.

use std::path::PathBuf;

use clap::Subcommand;
use zonebench::results::{history, load};

use super::Exit;

#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// Append a run's key figures to the history file.
    Add {
        /// A run directory (or its results.json).
        run_dir: PathBuf,
        #[arg(long, default_value = history::DEFAULT_FILE)]
        file: PathBuf,
    },
}

pub fn history(cmd: HistoryCommand) -> anyhow::Result<Exit> {
    match cmd {
        HistoryCommand::Add { run_dir, file } => {
            let run = load::load(&run_dir)?;
            let label = run
                .path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match history::add(&file, &run.results, &label)? {
                history::Added::Rows(n) => {
                    eprintln!("{}: added {n} figure(s) of {}", file.display(), run.path.display())
                }
                history::Added::AlreadyPresent => {
                    eprintln!(
                        "{}: this run ({} at {}) is already there; nothing added",
                        file.display(),
                        run.results.scenario,
                        run.results.started_at
                    )
                }
            }
        }
    }
    Ok(Exit::Success)
}
