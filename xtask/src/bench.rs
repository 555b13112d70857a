//! `cargo xtask bench [--quick] [ARGS]`: builds `switchyard` and the
//! harness, then runs `switchyard-bench` (see `bench/README.md`).
//!
//! The full run uses a release build and writes the README's performance
//! section; `--quick` (CI smoke: a few minutes, fails only when the harness
//! breaks, never on a timing) reuses the debug build the other tiers make.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::demo::target_dir;

pub fn run(args: &[String]) -> ExitCode {
    let quick = args.iter().any(|a| a == "--quick");
    let profile = if quick || args.iter().any(|a| a == "--debug") { "debug" } else { "release" };
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "--quiet", "-p", "proxy-daemon", "-p", "switchyard-bench", "--bins"]);
    if profile == "release" {
        build.arg("--release");
    }
    if !matches!(build.status(), Ok(s) if s.success()) {
        eprintln!("xtask bench: build failed");
        return ExitCode::FAILURE;
    }
    let bin = |name: &str| target_dir().join(profile).join(name);
    let out = target_dir().join(if quick { "bench-quick" } else { "bench" });
    let mut cmd = Command::new(bin("switchyard-bench"));
    cmd.arg("--switchyard-bin").arg(bin("switchyard")).arg("--out").arg(&out).args(["--build", profile]);
    let shown: Vec<&str> = args.iter().filter(|a| *a != "--debug").map(String::as_str).collect();
    cmd.args(["--command", format!("cargo xtask bench {}", shown.join(" ")).trim_end()]);
    if !quick && !args.iter().any(|a| a == "--readme" || a == "--no-readme") {
        cmd.arg("--readme").arg(PathBuf::from("README.md"));
    }
    cmd.args(args.iter().filter(|a| *a != "--debug" && *a != "--no-readme"));
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("xtask bench: switchyard-bench exited with {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask bench: cannot run {}: {e}", bin("switchyard-bench").display());
            ExitCode::FAILURE
        }
    }
}
