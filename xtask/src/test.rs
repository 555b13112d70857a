//! `cargo xtask test`: every test tier, in order, with a summary. Fails when any tier fails.

use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::demo::{binary, target_dir};

/// Turns on the tests marked `#[testkit::needs_root]` (read when they are
/// compiled): `./x test` runs as root and runs every test; a plain
/// `cargo test` lists those as ignored. Set for every tier, so that each
/// tier builds with the same environment and none rebuilds another's work.
pub const ROOT_TESTS_ENV: (&str, &str) = ("SWITCHYARD_ROOT_TESTS", "1");

/// One tier: a name and the commands it runs (all must succeed).
struct Tier {
    name: &'static str,
    what: &'static str,
    commands: Vec<Vec<String>>,
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn bin(name: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(binary(name).display().to_string()).chain(args.iter().map(|s| s.to_string())).collect()
}

fn report(name: &str) -> String {
    target_dir().join(name).display().to_string()
}

fn tiers() -> Vec<Tier> {
    let conformance_json = report("conformance-host.json");
    let conformance_md = report("conformance-host.md");
    let apiserver_json = report("conformance-apiserver.json");
    let apiserver_md = report("conformance-apiserver.md");
    vec![
        Tier {
            name: "lint",
            what: "rustfmt and clippy with warnings as errors",
            commands: vec![
                cmd(&["cargo", "fmt", "--all", "--check"]),
                cmd(&["cargo", "clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
            ],
        },
        Tier {
            name: "unit",
            what: "unit, property and netns integration tests of every crate",
            commands: vec![cmd(&["cargo", "test", "--workspace"])],
        },
        Tier {
            name: "apiserver",
            what: "the daemon against upstream etcd and kube-apiserver (built on demand by ./x reference): \
                   restarts, expired watches, 10k-Service lists, a 60 s outage, the swap from kube-proxy; every scenario through the \
                   API server for switchyard (iptables, ebpf) and upstream kube-proxy (iptables, nftables)",
            commands: vec![
                cmd(&["cargo", "xtask", "reference"]),
                // The tests run this example's "memory" dataplane; `--test` alone does not rebuild it.
                cmd(&["cargo", "build", "-p", "proxy-daemon", "--example", "custom_dataplane"]),
                cmd(&["cargo", "test", "-p", "proxy-daemon", "--test", "apiserver", "--", "--ignored"]),
                // The migration from upstream kube-proxy: --cleanup of its leftovers, and the swap.
                cmd(&["cargo", "test", "-p", "proxy-daemon", "--test", "migrate", "--", "--ignored"]),
                // deploy/'s manifests validated server-side (kubectl apply --dry-run=server).
                cmd(&["cargo", "test", "-p", "proxy-daemon", "--test", "deploy", "--", "--ignored"]),
                cmd(&["cargo", "build", "-p", "proxy-daemon", "-p", "conformance", "--bins"]),
                bin(
                    "switchyard-conformance",
                    &[
                        "--source",
                        "apiserver",
                        "--binary-backend",
                        "iptables",
                        "--binary-backend",
                        "ebpf",
                        "--binary-backend",
                        "kube-proxy-iptables",
                        "--binary-backend",
                        "kube-proxy-nftables",
                        "--switchyard-bin",
                        &binary("switchyard").display().to_string(),
                        "--json",
                        &apiserver_json,
                        "--markdown",
                        &apiserver_md,
                    ],
                ),
            ],
        },
        Tier {
            name: "fuzz",
            what: "the fuzz targets (manifests, configuration file, plugin protocol), a bounded time each (SWITCHYARD_FUZZ_SECONDS)",
            commands: vec![cmd(&["cargo", "xtask", "fuzz"])],
        },
        Tier {
            name: "demo",
            what: "the README's demo (./x demo), checking what every step must show",
            commands: vec![
                cmd(&["cargo", "build", "-p", "proxy-daemon", "-p", "conformance", "--bins"]),
                bin(
                    "switchyard-sandbox",
                    &[
                        "--check",
                        "--step-seconds",
                        "3",
                        "--switchyard-bin",
                        &binary("switchyard").display().to_string(),
                    ],
                ),
            ],
        },
        Tier {
            name: "conformance",
            what: "every scenario against every backend on the host kernel, in-process and through the daemon",
            commands: vec![bin(
                "switchyard-conformance",
                &[
                    "--backend",
                    "iptables",
                    "--backend",
                    "ebpf",
                    "--backend",
                    "nftables",
                    "--binary-backend",
                    "iptables",
                    "--binary-backend",
                    "ebpf",
                    "--binary-backend",
                    "nftables",
                    "--switchyard-bin",
                    &binary("switchyard").display().to_string(),
                    "--json",
                    &conformance_json,
                    "--markdown",
                    &conformance_md,
                ],
            )],
        },
        Tier {
            name: "vm",
            what: "kernel-facing tests and conformance (iptables, ipvs, ebpf) inside QEMU on Debian's 6.1 kernel (IPVS)",
            commands: vec![cmd(&["cargo", "xtask", "vm", "test"])],
        },
        Tier {
            name: "bench",
            what: "the benchmark harness, quick (smoke: fails only if the harness breaks, never on a timing)",
            commands: vec![cmd(&["cargo", "xtask", "bench", "--quick"])],
        },
    ]
}

pub fn run(args: &[String]) -> ExitCode {
    let mut skip: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => match it.next() {
                Some(t) => skip.push(t),
                None => return usage_error("--skip needs a tier name"),
            },
            other => return usage_error(&format!("unknown argument {other}")),
        }
    }
    let mut results = Vec::new();
    for tier in tiers() {
        if skip.contains(&tier.name) {
            results.push((tier.name, "skipped (--skip)".to_string(), 0.0));
            continue;
        }
        println!("\n=== tier {}: {}", tier.name, tier.what);
        let start = Instant::now();
        let mut outcome = "ok".to_string();
        for cmd in &tier.commands {
            println!("$ {}", cmd.join(" "));
            match Command::new(&cmd[0]).args(&cmd[1..]).env(ROOT_TESTS_ENV.0, ROOT_TESTS_ENV.1).status() {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    outcome = format!("FAILED ({} exited with {s})", cmd.join(" "));
                    break;
                }
                Err(e) => {
                    outcome = format!("FAILED (could not run {}: {e})", cmd[0]);
                    break;
                }
            }
        }
        results.push((tier.name, outcome, start.elapsed().as_secs_f64()));
    }
    println!("\n=== summary");
    let mut failed = false;
    for (name, outcome, secs) in &results {
        println!("{name:<16} {outcome:<60} {secs:>7.1} s");
        failed |= outcome.starts_with("FAILED");
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("xtask test: {msg}");
    ExitCode::from(2)
}
