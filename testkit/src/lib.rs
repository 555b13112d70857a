//! Test support shared by every switchyard crate, so that each helper exists
//! once: network-namespace guards with unique names ([`netns`]), waiting for
//! convergence without fixed sleeps ([`patience`]), the star lab's address
//! plan ([`plan`]), the cgroup v2 root ([`cgroup2_root`]) and root-only test
//! gating ([`needs_root`]).
//!
//! Safety on shared machines: everything here acts only inside namespaces
//! it created (`ip -n NAME ...`, `ip netns exec NAME ...`), names them
//! `swy-<kind>-<pid>-<n>...` so runs never collide, and deletes them on
//! drop, which runs on success, failure and panic. [`netns::collect_stale`]
//! removes what a run killed with SIGKILL left behind.

pub mod netns;
pub mod patience;
pub mod plan;

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub use netns::Netns;
pub use patience::{PATIENCE_ENV, eventually, eventually_blocking, eventually_sync, patience};

/// Marks a test that needs root and network namespaces: ignored (and so
/// reported as ignored, with the reason) unless the build had
/// [`ROOT_TESTS_ENV`]`=1` in its environment, as `./x test` and
/// `./x vm test` do. Put it above the test attribute:
///
/// ```ignore
/// #[testkit::needs_root]
/// #[tokio::test]
/// async fn real_packets() { /* ... */ }
/// ```
pub use testkit_macros::needs_root;

/// The environment variable that turns [`needs_root`] tests on (read at build time).
pub const ROOT_TESTS_ENV: &str = "SWITCHYARD_ROOT_TESTS";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command of a lab that failed.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {message}")]
pub struct CommandError {
    /// The command line, as a person would type it.
    pub command: String,
    /// Its stderr, or why it could not start.
    pub message: String,
}

/// Runs a command to completion; its stderr in the error when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<(), CommandError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CommandError { command: command.clone(), message: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CommandError { command, message: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// `ip ARGS`; every lab call names a lab namespace (`-n NAME`).
pub fn ip(args: &[&str]) -> Result<(), CommandError> {
    run("ip", args)
}

/// The cgroup v2 hierarchy: the hybrid layout's `unified`, or a pure v2 root.
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && (p.ends_with("unified") || p.join("cgroup.controllers").exists()))
}
