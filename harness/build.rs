//! Builds the eBPF socket load balancer (`bpf/socklb.bpf.c`) with clang, so the coordinator
//! embeds the object it loads for `lab.service_dataplane = "ebpf"`.
//!
//! The eBPF dataplane is one option among four, so a machine without clang or the libbpf
//! headers still builds zonebench: the build warns, and choosing `ebpf` at run time fails with
//! the reason recorded here and what to install. When the object is built, the crate is
//! compiled with `--cfg zonebench_bpf`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "bpf/socklb.bpf.c";
const INSTALL_HINT: &str =
    "install clang and the libbpf headers (Debian/Ubuntu: apt-get install clang libbpf-dev) and rebuild";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(zonebench_bpf)");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=CLANG");
    match build() {
        Ok(()) => {
            println!("cargo::rustc-cfg=zonebench_bpf");
            println!("cargo::rustc-env=ZONEBENCH_BPF_UNAVAILABLE=");
        }
        Err(reason) => {
            let reason = reason.replace(['\n', '\r'], " ");
            println!("cargo::warning=the eBPF service dataplane is not built: {reason}");
            println!("cargo::rustc-env=ZONEBENCH_BPF_UNAVAILABLE={reason}");
        }
    }
}

fn build() -> Result<(), String> {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err("BPF cgroup programs exist only on Linux".into());
    }
    let Some(clang) = find_clang() else {
        // Rebuild once clang appears: installing it changes one of these directories.
        for dir in env::split_paths(&env::var_os("PATH").unwrap_or_default()) {
            if dir.is_dir() {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
        }
        return Err(format!("clang was not found (set CLANG or put it on PATH); {INSTALL_HINT}"));
    };
    println!("cargo::rerun-if-changed={}", clang.display());

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?);
    let object = out_dir.join("socklb.bpf.o");
    // BPF has both byte orders; the object must match the kernel it will be loaded into.
    let bpf_target = if env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() == Ok("big") { "bpfeb" } else { "bpfel" };
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", bpf_target, "-O2", "-g", "-Wall", "-c", SOURCE, "-o"]).arg(&object);
    // `-target bpf` drops the host's multiarch include directory, where linux-libc-dev keeps
    // <asm/types.h> (needed by <linux/bpf.h>).
    if let Some(dir) = multiarch_include_dir() {
        cmd.arg("-I").arg(dir);
    }
    let output = cmd.output().map_err(|e| format!("running {}: {e}; {INSTALL_HINT}", clang.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Rebuild once the missing headers are installed.
    println!("cargo::rerun-if-changed=/usr/include");
    let first_error = stderr.lines().find(|l| l.contains("error")).unwrap_or("no error message").trim();
    let hint = if stderr.contains("bpf/bpf_helpers.h") {
        "the libbpf headers are missing: apt-get install libbpf-dev, and rebuild".to_string()
    } else if stderr.contains("asm/") || stderr.contains("linux/bpf.h") {
        "the Linux UAPI headers are missing: apt-get install linux-libc-dev, and rebuild".to_string()
    } else {
        format!("this is a bug in {SOURCE}, or clang is too old for it")
    };
    Err(format!("{} {SOURCE} failed ({}): {first_error}; {hint}", clang.display(), output.status))
}

fn find_clang() -> Option<PathBuf> {
    let name = env::var_os("CLANG").unwrap_or_else(|| "clang".into());
    let name = PathBuf::from(name);
    if name.components().count() > 1 {
        return name.is_file().then_some(name);
    }
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(&name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// `/usr/include/<arch>-linux-<env>` for the target (e.g. x86_64-linux-gnu), when present.
fn multiarch_include_dir() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let arch = match arch.as_str() {
        "x86" => "i386",
        "powerpc64" if env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() == Ok("little") => "powerpc64le",
        other => other,
    };
    let env_name = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let env_name = if env_name.is_empty() { "gnu".to_string() } else { env_name };
    let dir = PathBuf::from(format!("/usr/include/{arch}-linux-{env_name}"));
    if dir.is_dir() {
        return Some(dir);
    }
    let gnu = PathBuf::from(format!("/usr/include/{arch}-linux-gnu"));
    gnu.is_dir().then_some(gnu)
}
