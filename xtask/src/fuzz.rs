//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (manifests, the
//! configuration file, the plugin protocol), each for a bounded time.
//!
//! Stable Rust only. cargo-fuzz builds on stable with `--sanitizer none`:
//! its coverage instrumentation is plain `-C` flags (`-Cpasses=sancov-module`
//! and `-Cllvm-args=-sanitizer-coverage-*`); only the sanitizers and
//! `--build-std` need `-Z` flags, and we use neither. Memory errors are
//! not what we hunt (the code under test is safe Rust): panics, overflows
//! (debug assertions are on) and runaway recursion are.
//!
//! cargo-fuzz is installed when missing (`cargo install cargo-fuzz --locked`).
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`) plus
//! what earlier runs on this machine found (a scratch corpus under the
//! target directory, never in the clone); libFuzzer writes new inputs to
//! the scratch corpus only. A crash fails the run; its input is kept in
//! `fuzz/artifacts/TARGET/` and `cargo fuzz run TARGET ARTIFACT` replays it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use crate::demo::target_dir;

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: &[&str] = &["manifest", "config", "plugin_line"];
/// Seconds per target unless `--seconds` or `SWITCHYARD_FUZZ_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 45;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask fuzz [--seconds N] [--target NAME]...\n\n  \
         --seconds N    time per target (default {DEFAULT_SECONDS}, or SWITCHYARD_FUZZ_SECONDS)\n  \
         --target NAME  run only this target (repeatable; default: {})",
        TARGETS.join(", ")
    );
    ExitCode::from(2)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `cargo fuzz` works, or is installed now.
fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    println!("xtask fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .map_err(|e| format!("cargo install: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("cargo install cargo-fuzz failed with {status}")) }
}

/// What one libFuzzer run reported.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// `Done N runs in S second(s)`, when the run ended on time.
    pub execs: Option<u64>,
    /// libFuzzer's final coverage (`cov: N`), from the last status line.
    pub coverage: Option<u64>,
    /// A crash, leak, timeout or out-of-memory (`==N== ERROR: libFuzzer: ...`, `SUMMARY: ...`), first line.
    pub finding: Option<String>,
}

/// Reads libFuzzer's stderr.
pub fn summarize(log: &str) -> RunSummary {
    let mut s = RunSummary::default();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Done ") {
            s.execs = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        if let Some((_, rest)) = line.split_once(" cov: ") {
            s.coverage = rest.split_whitespace().next().and_then(|n| n.parse().ok()).or(s.coverage);
        }
        let finding = line.contains("ERROR: libFuzzer:")
            || line.starts_with("SUMMARY: libFuzzer:")
            || line.contains("panicked at")
            || line.contains("deadly signal");
        if finding && s.finding.is_none() {
            s.finding = Some(line.trim().to_string());
        }
    }
    s
}

pub fn run(args: &[String]) -> ExitCode {
    let mut seconds =
        std::env::var("SWITCHYARD_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SECONDS);
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) => seconds = n,
                None => return usage(),
            },
            "--target" => match it.next() {
                Some(t) if TARGETS.contains(&t.as_str()) => targets.push(t.clone()),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|s| s.to_string()).collect();
    }
    if let Err(e) = ensure_cargo_fuzz() {
        eprintln!("xtask fuzz: {e}");
        return ExitCode::FAILURE;
    }
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    // Instrumented builds apart from the normal ones (other RUSTFLAGS would
    // make cargo rebuild everything each time one or the other runs).
    let fuzz_target_dir = absolute(&target_dir()).join("fuzz");
    // 16 codegen units: the build (the whole daemon, kube and aya included)
    // takes minutes on 2 cores with cargo-fuzz's default of 1, for little
    // difference in execs per second.
    let common = |sub: &str| {
        let mut c = Command::new("cargo");
        c.current_dir(&root).args(["fuzz", sub, "--sanitizer", "none", "--codegen-units", "16", "--target-dir"]);
        c.arg(&fuzz_target_dir);
        c
    };
    let built = common("build").status();
    if !matches!(built, Ok(s) if s.success()) {
        eprintln!("xtask fuzz: cargo fuzz build failed");
        return ExitCode::FAILURE;
    }
    let mut failed = false;
    for target in &targets {
        let scratch = fuzz_target_dir.join("corpus").join(target);
        let seeds = fuzz_dir.join("seeds").join(target);
        if let Err(e) = std::fs::create_dir_all(&scratch) {
            eprintln!("xtask fuzz: {}: {e}", scratch.display());
            return ExitCode::FAILURE;
        }
        let log_path = fuzz_target_dir.join(format!("{target}.log"));
        let log = match std::fs::File::create(&log_path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("xtask fuzz: {}: {e}", log_path.display());
                return ExitCode::FAILURE;
            }
        };
        println!("$ cargo fuzz run {target} --sanitizer none ... -- -max_total_time={seconds}");
        let start = Instant::now();
        let mut libfuzzer = vec![
            format!("-max_total_time={seconds}"),
            "-timeout=10".to_string(),
            "-rss_limit_mb=2048".to_string(),
            "-print_final_stats=1".to_string(),
        ];
        // Keys and value shapes the mutator would take long to guess.
        let dict = fuzz_dir.join("dict").join(format!("{target}.dict"));
        if dict.is_file() {
            libfuzzer.push(format!("-dict={}", dict.display()));
        }
        let status = common("run")
            .arg(target)
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .args(&libfuzzer)
            .stdout(Stdio::null())
            .stderr(log)
            .status();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let summary = summarize(&text);
        let ok = matches!(status, Ok(s) if s.success()) && summary.finding.is_none();
        println!(
            "fuzz {target:<12} {:>10} execs in {:>5.1} s, coverage {}{}",
            summary.execs.map_or_else(|| "?".into(), |n| n.to_string()),
            start.elapsed().as_secs_f64(),
            summary.coverage.map_or_else(|| "?".into(), |n| n.to_string()),
            if ok {
                String::new()
            } else {
                format!("  FAILED: {}", summary.finding.as_deref().unwrap_or("see the log"))
            }
        );
        if !ok {
            failed = true;
            // The tail of the log carries the panic message and the crashing input's path.
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            eprintln!("  whole log: {}", log_path.display());
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let ok = "#2\tINITED cov: 1893 ft: 2301 corp: 7/1402b exec/s: 0 rss: 60Mb\n\
                  #65536\tpulse  cov: 2107 ft: 4000 corp: 90/9Kb lim: 652 exec/s: 2184 rss: 80Mb\n\
                  Done 98765 runs in 46 second(s)\n";
        assert_eq!(summarize(ok), RunSummary { execs: Some(98765), coverage: Some(2107), finding: None });
        let crash = "#12\tNEW    cov: 10 ft: 11 corp: 2/3b\n\
                     thread '<unnamed>' panicked at proxy-core/src/convert.rs:10:5:\n\
                     ==123== ERROR: libFuzzer: deadly signal\n";
        assert!(summarize(crash).finding.is_some_and(|f| f.contains("panicked at")));
    }
}
