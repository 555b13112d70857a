//! The `switchyard-conformance` binary as a user runs it.

#![allow(clippy::print_stderr, reason = "tests say on stderr why they skip")]

use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard-conformance"))
}

#[test]
fn lint_and_list_need_no_root() {
    let out = bin().arg("--lint").output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 disagreements"), "{text}");
    let out = bin().arg("--list").output().expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("clusterip-single-port"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(bin().args(["--backend", "no-such-mode"]).status().expect("runs").code(), Some(2));
    assert_eq!(bin().status().expect("runs").code(), Some(2), "no backend selected");
    assert_eq!(bin().args(["--bogus"]).status().expect("runs").code(), Some(2));
    let empty = std::env::temp_dir().join(format!("swy-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    let code = bin().args(["--binary-backend", "x", "--scenarios"]).arg(&empty).status().expect("runs").code();
    assert_eq!(code, Some(2), "no scenario selected");
}

#[testkit::needs_root]
#[test]
fn sigterm_tears_the_lab_down() {
    // A black-box backend whose binary does nothing: probes fail slowly,
    // which leaves time to interrupt the run while the lab is up.
    let mut child = bin()
        .args(["--binary-backend", "none", "--switchyard-bin", "/bin/true", "--filter", "clusterip-single-port"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let prefix = format!("swy-lab-{}-", child.id());
    let lab_up = || {
        std::fs::read_dir("/run/netns")
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
            .unwrap_or(false)
    };
    let start = Instant::now();
    while !lab_up() {
        assert!(start.elapsed() < Duration::from_secs(30), "the lab never came up");
        // Polling a child process's progress; not a convergence wait.
        std::process::Command::new("sleep").arg("0.1").status().expect("sleep");
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("signal");
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(130));
    assert!(!lab_up(), "namespaces left behind after SIGTERM");
}
