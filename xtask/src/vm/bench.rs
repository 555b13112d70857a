//! `cargo xtask vm bench`: sync times of every registered backend, measured
//! side by side in the same VM (`switchyard-sync-bench`, release build).

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use super::{Spec, parse_common, shell_quote};

pub fn main(args: &[String]) -> ExitCode {
    // A sync at 10k Services under TCG may print nothing for minutes.
    let mut spec = Spec::default();
    spec.quiet_timeout = spec.quiet_timeout.max(std::time::Duration::from_secs(600));
    let rest = match parse_common(args, &mut spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vm bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut backends: Vec<String> = Vec::new();
    let mut services = "1000,10000".to_string();
    let mut endpoints = "10".to_string();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--backends", Some(b)) => backends = b.split(',').map(String::from).collect(),
            ("--services", Some(s)) => services = s.clone(),
            ("--endpoints", Some(e)) => endpoints = e.clone(),
            _ => {
                eprintln!(
                    "usage: cargo xtask vm bench [--backends a,b] [--services 1000,10000] [--endpoints 10] [run options]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--release", "--message-format=json-render-diagnostics", "-p", "conformance"])
        .args(["--bin", "switchyard-sync-bench", "--bin", "switchyard-conformance"])
        .stderr(Stdio::inherit())
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        eprintln!("vm bench: building switchyard-sync-bench failed");
        return ExitCode::FAILURE;
    };
    let mut bins = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let (Some(name), Some(exe)) =
            (super::test::json_str(line, "name"), super::test::json_str(line, "executable"))
        {
            bins.insert(name, PathBuf::from(exe));
        }
    }
    let (Some(bench), Some(conformance)) = (bins.get("switchyard-sync-bench"), bins.get("switchyard-conformance"))
    else {
        eprintln!("vm bench: cargo did not report the binaries");
        return ExitCode::FAILURE;
    };
    if backends.is_empty() {
        backends = super::test::registered_backends(conformance);
    }
    spec.adds.push((bench.clone(), PathBuf::from("/work/switchyard-sync-bench")));
    let list: Vec<String> = backends.iter().map(|b| format!("--backend {}", shell_quote(b))).collect();
    spec.command = format!(
        "/work/switchyard-sync-bench {} --services {} --endpoints {}",
        list.join(" "),
        shell_quote(&services),
        shell_quote(&endpoints)
    );
    if !spec.env.iter().any(|(k, _)| k == "RUST_LOG") {
        spec.env.push(("RUST_LOG".into(), "warn".into()));
    }
    super::exit_with(super::run(&spec))
}
