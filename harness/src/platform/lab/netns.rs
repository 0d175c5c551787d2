//! Running the lab's `ip`/`tc`/`bridge`/`sysctl` commands and reading namespace state.
//! Errors show the whole command line and what the tool printed, since that is what a
//! person needs to see when a build step fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::topology::{Cmd, LabId};

/// Where `ip netns add` mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs one build command; an error names it and carries its stderr.
pub fn run(cmd: &Cmd) -> anyhow::Result<()> {
    run_argv(&cmd.argv()).map(|_| ())
}

/// Runs commands in order, stopping at the first failure.
pub fn run_all(cmds: &[Cmd]) -> anyhow::Result<()> {
    for c in cmds {
        run(c)?;
    }
    Ok(())
}

/// Runs `argv` and returns its stdout.
pub fn run_argv(argv: &[String]) -> anyhow::Result<String> {
    let Some((program, args)) = argv.split_first() else { bail!("empty command") };
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", argv.join(" ")))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", argv.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's network interfaces named for lab `id` (a Kubernetes lab's host link).
pub fn host_links(id: &LabId) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else { return vec![] };
    let prefix = id.prefix();
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

pub fn exists(netns: &str) -> bool {
    Path::new(NETNS_DIR).join(netns).exists()
}

/// Named namespaces on the host.
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return vec![] };
    let mut v: Vec<String> = dir.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
    v.sort();
    v
}

/// Namespaces named like a lab's (`zb<4 hex>-…`), grouped by lab id.
pub fn lab_ids_present() -> BTreeSet<LabId> {
    list().iter().filter_map(|n| LabId::of_name(n)).collect()
}

/// Namespaces of lab `id`.
pub fn of_lab(id: &LabId) -> Vec<String> {
    let prefix = id.prefix();
    list().into_iter().filter(|n| n.starts_with(&prefix)).collect()
}

/// Processes living in `netns` (`ip netns pids`).
pub fn pids(netns: &str) -> Vec<i32> {
    let argv = ["ip", "netns", "pids", netns].map(String::from);
    match run_argv(&argv) {
        Ok(out) => out.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => vec![],
    }
}

/// Processes in the host's namespace that enter `netns` themselves (the lab's API
/// forwarder: `… --netns NETNS …` on its command line), found by their command line so a
/// coordinator killed before it recorded one still leaves nothing behind.
pub fn entering(netns: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.windows(2).any(|w| w[0] == b"--netns" && w[1] == netns.as_bytes())
        })
        .collect()
}

/// Deletes a namespace; one already gone is fine.
pub fn delete(netns: &str) -> anyhow::Result<()> {
    if !exists(netns) {
        return Ok(());
    }
    let argv = ["ip", "netns", "del", netns].map(String::from);
    match run_argv(&argv) {
        Ok(_) => Ok(()),
        Err(_) if !exists(netns) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Kills every process inside the namespaces (TERM, then KILL after `grace`) and waits until
/// they are gone, so deleting the namespaces afterwards really frees them.
pub fn kill_all_in(namespaces: &[String], grace: Duration) {
    let mut victims: Vec<i32> = namespaces.iter().flat_map(|ns| pids(ns)).collect();
    victims.sort_unstable();
    victims.dedup();
    kill_and_wait(&victims, grace);
}

/// TERM, wait up to `grace`, KILL, wait a little more.
pub fn kill_and_wait(pids: &[i32], grace: Duration) {
    let me = std::process::id() as i32;
    let pids: Vec<i32> = pids.iter().copied().filter(|&p| p > 1 && p != me).collect();
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        // A stopped process (SIGSTOP, a debugger gone) only acts on SIGTERM once continued.
        let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
    }
    if wait_gone(&pids, grace) {
        return;
    }
    for &p in &pids {
        if alive(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    wait_gone(&pids, Duration::from_secs(2));
}

fn wait_gone(pids: &[i32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` runs (a zombie has finished: it only waits for its parent to reap it).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_field(&stat, 3).as_deref(), Some("Z") | Some("X")),
        Err(_) => false,
    }
}

/// The start time of `pid` in clock ticks since boot: with the pid it identifies a process
/// even after its pid is reused.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 22)?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn stat_field(stat: &str, n: usize) -> Option<String> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?).map(str::to_string)
}

/// A link's transmitted (packets, bytes), from `ip -s -j link show`. Packets count GSO
/// super-packets once, so bytes tell more about how much went through.
pub fn tx_stats(netns: &str, dev: &str) -> anyhow::Result<(u64, u64)> {
    let argv = ["ip", "-n", netns, "-s", "-j", "link", "show", "dev", dev].map(String::from);
    let out = run_argv(&argv)?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("parsing `{}`", argv.join(" ")))?;
    let tx = v.get(0).and_then(|l| l.pointer("/stats64/tx"));
    let get = |k: &str| tx.and_then(|t| t.get(k)).and_then(|p| p.as_u64());
    match (get("packets"), get("bytes")) {
        (Some(p), Some(b)) => Ok((p, b)),
        _ => anyhow::bail!("no tx counters for {dev} in {netns}"),
    }
}

/// A link's MTU.
pub fn mtu(netns: &str, dev: &str) -> anyhow::Result<u32> {
    let argv = ["ip", "-n", netns, "-j", "link", "show", "dev", dev].map(String::from);
    let out = run_argv(&argv)?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("parsing `{}`", argv.join(" ")))?;
    v.get(0)
        .and_then(|l| l.get("mtu"))
        .and_then(|m| m.as_u64())
        .map(|m| m as u32)
        .with_context(|| format!("no MTU for {dev} in {netns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(stat_field(stat, 3).as_deref(), Some("S"));
        assert_eq!(stat_field(stat, 22).as_deref(), Some("98765"));
        assert_eq!(stat_field("garbage", 3), None);
    }

    #[test]
    fn this_process_is_alive_and_has_a_start_time() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(start_time(me).is_some());
        assert!(!alive(i32::MAX));
    }

    #[test]
    fn a_failing_command_names_itself_and_its_stderr() {
        let e = run_argv(&["ip".into(), "link".into(), "show".into(), "dev".into(), "zb-no-such-dev".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ip link show dev zb-no-such-dev"), "{e}");
        assert!(e.contains("does not exist"), "{e}");
    }
}
