//! `zonebench gc`: delete what killed kube runs left on a cluster (namespaces labelled
//! managed-by=zonebench, older than `--older-than`).

use std::time::Duration;

use clap::Args;
use zonebench::platform::kube;

use super::cluster::ClusterArgs;
use super::{Exit, Usage};

/// `zonebench gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only runs at least this old (a run in progress elsewhere is younger).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `zonebench gc`.
pub async fn gc(args: GcArgs) -> anyhow::Result<Exit> {
    let source = args.cluster.single().map_err(Usage)?;
    let cluster = kube::client::connect(&source).await?;
    let found = kube::gc::gc(&cluster, args.older_than, args.dry_run).await?;
    if found.is_empty() {
        eprintln!(
            "no zonebench namespaces older than {} on {}",
            humantime::format_duration(args.older_than),
            cluster.describe()
        );
    }
    for l in &found {
        let what = match (l.deleted, l.terminating, args.dry_run) {
            (true, _, _) => "deleted",
            (_, true, _) => "already terminating",
            (_, _, true) => "would delete",
            _ => "kept",
        };
        println!(
            "{what} {} (run {}, scenario {}, age {})",
            l.namespace,
            l.run,
            if l.scenario.is_empty() { "?" } else { &l.scenario },
            humantime::format_duration(Duration::from_secs(l.age_secs))
        );
    }
    Ok(Exit::Success)
}
