//! `cargo xtask`: the project's task runner (usually reached through `./x`).
//!
//! Dependency-free on purpose: it is built before anything else on a fresh
//! machine, so it must compile in seconds.

mod bench;
mod demo;
mod fuzz;
mod reference;
mod test;
mod vm;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\n\
         commands:\n  \
         test [--skip TIER]...   run every test tier (lint, unit, apiserver, fuzz, demo, conformance, vm, bench)\n  \
         fuzz [--seconds N]      the fuzz targets of fuzz/, N seconds each (stable Rust, cargo-fuzz)\n  \
         demo [ARGS]             the sandbox mini-cluster with live traffic (ARGS: see --help)\n  \
         bench [--quick] [ARGS]  every backend side by side: tables, JSON, plots (bench/README.md)\n  \
         vm run|test|bench|fetch  Debian's 6.1 kernel in QEMU (`cargo xtask vm help`)\n  \
         reference [--force]     build upstream etcd, kube-apiserver, kube-proxy (reference/) into a cache\n"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else { return usage() };
    match cmd.as_str() {
        "test" => test::run(rest),
        "demo" => demo::run(rest),
        "fuzz" => fuzz::run(rest),
        "bench" => bench::run(rest),
        "vm" => vm::main(rest.to_vec()),
        "reference" => reference::run(rest),
        _ => usage(),
    }
}
