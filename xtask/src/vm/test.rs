//! `cargo xtask vm test`: the kernel-facing tests, run for real on the 6.1 kernel.
//!
//! Builds the test binaries of the dataplane crates (`cargo test --no-run`),
//! copies them into the VM and runs each with `--test-threads=1` (they share
//! one kernel). Inside the VM `SWITCHYARD_VM=1` is set: tests that skip on a
//! host without IPVS must run there, and fail rather than skip. When the
//! workspace has the `switchyard-conformance` binary, the suite runs too, once
//! for every backend, with its JSON report written to the output directory.
//! Exits non-zero when anything failed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::{Spec, parse_common, shell_quote};

/// Crates whose tests touch the kernel. Not `conformance`: its own tests run
/// the suite in-process against iptables and fixture backends (about 9 of the
/// VM's 29 minutes), which the suite run below does for every backend anyway;
/// `-p conformance` still runs them on 6.1.
const DEFAULT_PACKAGES: &[&str] = &["backend-ipvs", "backend-iptables", "backend-ebpf", "backend-nftables"];
/// Backends the conformance suite is run against in the VM.
const DEFAULT_BACKENDS: &[&str] = &["iptables", "ipvs", "ebpf", "nftables"];

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask vm test [-p CRATE]... [--backends a,b] [--filter F] [--release] [--out DIR] [run options]

  -p CRATE         test this crate in the VM (repeatable; default: {})
  --backends A,B   conformance backends (default: {}); `none` to skip the suite
  --filter F       passed to every test binary as its name filter
  --release        build with --release
  --conformance-arg A  extra argument for switchyard-conformance (repeatable, e.g. --filter)
  --out DIR        where reports go (default: target/vm)
  run options (--modules, --timeout, --accel, ...) as for `vm run`",
        DEFAULT_PACKAGES.join(" "),
        DEFAULT_BACKENDS.join(",")
    );
    ExitCode::from(2)
}

struct Artifact {
    name: String,
    path: PathBuf,
    /// The package directory: cargo runs tests there, and tests read files
    /// relative to it (`CARGO_MANIFEST_DIR`, golden files, fixtures).
    package_dir: Option<PathBuf>,
    /// A test harness (run it) rather than a binary built for integration
    /// tests (`CARGO_BIN_EXE_*`: copy it to its host path, do not run it).
    is_test: bool,
}

/// Whether a compiler-artifact message's `"profile"` object says `"test":true`.
fn profile_is_test(line: &str) -> bool {
    line.split_once("\"profile\":{")
        .and_then(|(_, rest)| rest.split('}').next())
        .is_some_and(|profile| profile.contains("\"test\":true"))
}

/// `cargo test --no-run` for the packages; the test executables it produced.
fn build_tests(packages: &[String], release: bool) -> Result<Vec<Artifact>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["test", "--no-run", "--message-format=json-render-diagnostics"]);
    // The VM runs as root: its tests are built with the root-only ones on.
    cmd.env(crate::test::ROOT_TESTS_ENV.0, crate::test::ROOT_TESTS_ENV.1);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if release {
        cmd.arg("--release");
    }
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("{cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run failed with {}", out.status));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if json_str(line, "reason").as_deref() != Some("compiler-artifact") {
            continue;
        }
        let Some(exe) = json_str(line, "executable") else { continue };
        let crate_name = json_str(line, "name").unwrap_or_else(|| "test".into());
        // "kind":["lib"] – the first target kind.
        let kind = line.split_once("\"kind\":[\"").and_then(|(_, rest)| rest.split('"').next()).unwrap_or("lib");
        let package_dir = json_str(line, "manifest_path").and_then(|m| Path::new(&m).parent().map(Path::to_path_buf));
        found.push(Artifact {
            name: format!("{crate_name}-{kind}"),
            path: PathBuf::from(exe),
            package_dir,
            // The profile's flag, not the target's ("test":true there means "testable").
            is_test: profile_is_test(line),
        });
    }
    Ok(found)
}

/// Builds a binary target if the workspace has it; its path.
fn build_bin(package: &str, bin: &str, release: bool) -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--message-format=json-render-diagnostics", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
        (json_str(line, "reason").as_deref() == Some("compiler-artifact")
            && json_str(line, "name").as_deref() == Some(bin))
        .then(|| json_str(line, "executable").map(PathBuf::from))
        .flatten()
    })
}

/// The first string value of `"key":"..."` in one line of cargo's JSON
/// messages (xtask has no dependencies, so no JSON parser). In
/// `compiler-artifact` messages the first `"name"` is the target's.
pub fn json_str(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// The modes `switchyard-conformance --list` names on its `backends:` line.
pub fn registered_backends(bin: &Path) -> Vec<String> {
    let out = Command::new(bin).arg("--list").stderr(Stdio::null()).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("backends:"))
        .map(|l| l.split([',', ' ']).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Sums cargo test's "test result:" lines: (passed, failed, ignored).
pub fn count_results(console: &str) -> (u64, u64, u64) {
    let mut totals = (0, 0, 0);
    for line in console.lines().filter(|l| l.starts_with("test result:")) {
        let num = |word: &str| -> u64 {
            line.split(';')
                .find(|part| part.trim_end().ends_with(word))
                .and_then(|part| part.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        totals.0 += num("passed");
        totals.1 += num("failed");
        totals.2 += num("ignored");
    }
    totals
}

pub fn main(args: &[String]) -> ExitCode {
    let mut spec = Spec::default();
    let rest = match parse_common(args, &mut spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vm test: {e}");
            return usage();
        }
    };
    let mut packages = Vec::new();
    let mut backends: Vec<String> = DEFAULT_BACKENDS.iter().map(|s| s.to_string()).collect();
    let mut filter = None;
    let mut release = false;
    let mut conformance_args: Vec<String> = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-p" | "--package" => match it.next() {
                Some(p) => packages.push(p.clone()),
                None => return usage(),
            },
            "--backends" => match it.next() {
                Some(b) if b == "none" => backends.clear(),
                Some(b) => backends = b.split(',').map(String::from).collect(),
                None => return usage(),
            },
            "--filter" => filter = it.next().cloned(),
            "--release" => release = true,
            "--conformance-arg" => match it.next() {
                Some(a) => conformance_args.push(a.clone()),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    if packages.is_empty() {
        packages = DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect();
    }
    let root = workspace_root();
    let out_dir = spec.out_dir.clone().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("vm")
    });
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("vm test: {}: {e}", out_dir.display());
        return ExitCode::FAILURE;
    }
    spec.out_dir = Some(out_dir.clone());

    let tests = match build_tests(&packages, release) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vm test: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut script = String::from("fail=0\n");
    let filter_arg = filter.as_deref().map(shell_quote).unwrap_or_default();
    let mut package_dirs = std::collections::BTreeSet::new();
    for bin in tests.iter().filter(|t| !t.is_test) {
        spec.adds.push((bin.path.clone(), bin.path.clone()));
    }
    for t in tests.iter().filter(|t| t.is_test) {
        let guest = format!("/work/tests/{}", t.name);
        spec.adds.push((t.path.clone(), PathBuf::from(&guest)));
        // The package's sources at the same absolute path, and the test run from there, as cargo does.
        let cd = match &t.package_dir {
            Some(dir) => {
                if package_dirs.insert(dir.clone()) {
                    spec.adds.push((dir.clone(), dir.clone()));
                }
                format!("cd {} && ", shell_quote(&dir.to_string_lossy()))
            }
            None => String::new(),
        };
        // Progress lines for the host's watchdog (and the reader): one per
        // binary here, one per test from libtest (`--test-threads=1` prints
        // each name as it starts, and "has been running for over 60
        // seconds" for a slow one), one per scenario from the suite.
        script.push_str(&format!(
            "echo \"=== {name} (uptime $(cut -d' ' -f1 /proc/uptime))\"\n( {cd}{guest} --test-threads=1 {filter_arg} ) || {{ fail=1; echo 'vm test: {name} FAILED'; }}\n",
            name = t.name
        ));
    }
    let conformance =
        if backends.is_empty() { None } else { build_bin("conformance", "switchyard-conformance", release) };
    match conformance {
        Some(bin) => {
            // Only the backends this build registers (other branches may not be merged yet).
            let registered = registered_backends(&bin);
            let (run, missing): (Vec<String>, Vec<String>) =
                backends.iter().cloned().partition(|b| registered.contains(b));
            if !missing.is_empty() {
                eprintln!("vm test: backends not registered in this build, not run: {}", missing.join(", "));
            }
            if !run.is_empty() {
                spec.adds.push((bin, PathBuf::from("/work/switchyard-conformance")));
                let scenarios = root.join("conformance/scenarios");
                if scenarios.is_dir() {
                    spec.adds.push((scenarios, PathBuf::from("/work/scenarios")));
                }
                let list: Vec<String> = run.iter().map(|b| format!("--backend {}", shell_quote(b))).collect();
                let extra: Vec<String> = conformance_args.iter().map(|a| shell_quote(a)).collect();
                script.push_str(&format!(
                    "echo \"=== conformance (uptime $(cut -d' ' -f1 /proc/uptime))\"\n/work/switchyard-conformance {} --scenarios /work/scenarios --json /out/conformance.json --markdown /out/conformance.md {} || {{ fail=1; echo 'vm test: conformance FAILED'; }}\n",
                    list.join(" "),
                    extra.join(" ")
                ));
            }
        }
        None if !backends.is_empty() => {
            eprintln!("vm test: no switchyard-conformance binary in this workspace; suite not run")
        }
        None => {}
    }
    script.push_str("exit $fail\n");
    spec.command = script;
    let outcome = super::run(&spec);
    if let Ok(o) = &outcome {
        let (passed, failed, ignored) = count_results(&o.console);
        let _ = std::fs::write(out_dir.join("console.log"), &o.console);
        println!("vm: {passed} passed, {failed} failed, {ignored} skipped");
    }
    super::exit_with(outcome)
}

#[cfg(test)]
mod tests {
    use super::count_results;

    #[test]
    fn reads_cargo_json_fields() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"kernel","test":true},"profile":{"test":true},"executable":"/t/a\\b"}"#;
        assert!(super::profile_is_test(line));
        let bin = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"x","test":true},"profile":{"opt_level":"0","test":false},"executable":"/t/x"}"#;
        assert!(!super::profile_is_test(bin));
        assert_eq!(super::json_str(line, "reason").as_deref(), Some("compiler-artifact"));
        assert_eq!(super::json_str(line, "name").as_deref(), Some("kernel"));
        assert_eq!(super::json_str(line, "executable").as_deref(), Some("/t/a\\b"));
        assert_eq!(super::json_str(r#"{"executable":null}"#, "executable"), None);
    }

    #[test]
    fn counts_cargo_test_summaries() {
        let console = "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                       test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(count_results(console), (7, 3, 1));
    }
}
