//! Running the netfilter tools (`iptables-restore`, `iptables-save`, `nft`) inside a node's
//! network namespace. Rule sets go in on stdin, so a 100,000-line table is one process and
//! one kernel transaction, as kube-proxy loads it; errors carry the tool's own message and,
//! when it names a line of the input, that line, since that is what a person needs to fix.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A tool that could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("`{tool}` is not installed; install the Debian package `{package}` (apt-get install {package})")]
    Missing { tool: String, package: &'static str },
    #[error("could not run `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}{line}")]
    Failed { command: String, status: String, stderr: String, line: String },
}

/// A netfilter tool and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

impl Tool {
    pub const fn new(name: &'static str, package: &'static str) -> Tool {
        Tool { name, package }
    }

    /// Fails with the package to install when the tool is not on `PATH`.
    pub fn require(&self) -> Result<PathBuf, ToolError> {
        which(self.name).ok_or(ToolError::Missing { tool: self.name.to_string(), package: self.package })
    }

    /// Runs the tool with `args` in network namespace `netns`, feeding `stdin`; returns stdout.
    pub fn run(&self, netns: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ToolError> {
        let path = self.require()?;
        let command = format!("ip netns exec {netns} {} {}", self.name, args.join(" "));
        let io = |source| ToolError::Io { command: command.clone(), source };
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(&path)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io)?;
        // Written from a thread: a tool that reports errors while we are still writing a
        // large input must not deadlock on a full stderr pipe.
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_vec();
                Some(std::thread::spawn(move || pipe.write_all(&input)))
            }
            _ => None,
        };
        let out = child.wait_with_output().map_err(io)?;
        let wrote = writer.map(|w| w.join());
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let line = stdin.and_then(|input| failing_line(&stderr, input)).unwrap_or_default();
            return Err(ToolError::Failed { command, status: out.status.to_string(), stderr, line });
        }
        if let Some(Ok(Err(e))) = wrote {
            return Err(io(e));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `iptables-restore: line 12 failed` names a line of the input; show it.
fn failing_line(stderr: &str, input: &[u8]) -> Option<String> {
    let at = stderr.find("line ")?;
    let n: usize = stderr[at + 5..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let text = String::from_utf8_lossy(input);
    let line = text.lines().nth(n.checked_sub(1)?)?;
    Some(format!("; input line {n}: {line}"))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    // Root's PATH on some systems lacks the sbin directories where these tools live.
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_error_shows_the_input_line_it_names() {
        let input = b"*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j NOPE\nCOMMIT\n";
        let got = failing_line("iptables-restore v1.8.9 (nf_tables): line 3 failed", input);
        assert_eq!(got.as_deref(), Some("; input line 3: -A KUBE-SERVICES -j NOPE"));
        assert_eq!(failing_line("no line number here", input), None);
        assert_eq!(failing_line("line 99 failed", input), None);
    }

    #[test]
    fn a_missing_tool_names_the_package_to_install() {
        let e = Tool::new("zonebench-no-such-tool", "zonebench-pkg").require().unwrap_err().to_string();
        assert!(e.contains("apt-get install zonebench-pkg"), "{e}");
    }
}
