//! `cargo xtask demo [ARGS]`: builds switchyard and the sandbox, then runs the
//! sandbox mini-cluster (`switchyard-sandbox ARGS`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// Where cargo puts binaries for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"))
}

/// Builds the binaries the demo and the conformance tiers run.
pub fn build_binaries() -> bool {
    let status =
        Command::new("cargo").args(["build", "--quiet", "-p", "proxy-daemon", "-p", "conformance", "--bins"]).status();
    matches!(status, Ok(s) if s.success())
}

pub fn binary(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

pub fn run(args: &[String]) -> ExitCode {
    if !build_binaries() {
        eprintln!("xtask demo: build failed");
        return ExitCode::FAILURE;
    }
    let sandbox = binary("switchyard-sandbox");
    let mut cmd = Command::new(&sandbox);
    cmd.arg("--switchyard-bin").arg(binary("switchyard")).args(args);
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask demo: cannot run {}: {e}", sandbox.display());
            ExitCode::FAILURE
        }
    }
}
