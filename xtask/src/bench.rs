//! `cargo xtask bench [--quick] [--vm] [ARGS]`: builds `switchyard` and the
//! harness, then runs `switchyard-bench` (see `bench/README.md`).
//!
//! The full run uses a release build and writes the README's performance
//! section; `--quick` (CI smoke: a few minutes, fails only when the harness
//! breaks, never on a timing) reuses the debug build the other tiers make.
//!
//! `--vm` runs the same harness inside the QEMU VM (Debian's 6.1 kernel, the
//! only place IPVS exists for us) with every mode, and writes its table to
//! the README's second generated section (`bench-vm` markers) and its plots
//! to `docs/bench/vm-*.svg`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::demo::target_dir;
use crate::vm;

/// Where the harness finds a font for its plots; carried into the guest.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const VM_BEGIN: &str = "<!-- bench-vm:begin -->";
const VM_END: &str = "<!-- bench-vm:end -->";
/// Sizes inside the VM: TCG emulation is one to two orders of magnitude
/// slower than the host, so 10,000 Services would take most of an hour
/// (`--sizes` overrides; `cargo xtask vm bench` has the backends' own sync
/// times at 10,000 in the VM).
const VM_SIZES: &str = "1,1000";

pub fn run(args: &[String]) -> ExitCode {
    let quick = args.iter().any(|a| a == "--quick");
    let in_vm = args.iter().any(|a| a == "--vm");
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
    let shown: Vec<&str> = args.iter().filter(|a| *a != "--debug").map(String::as_str).collect();
    let command = format!("cargo xtask bench {}", shown.join(" ")).trim_end().to_string();
    let passed: Vec<&String> =
        args.iter().filter(|a| !matches!(a.as_str(), "--debug" | "--no-readme" | "--vm")).collect();
    if in_vm {
        return run_in_vm(&bin("switchyard-bench"), &bin("switchyard"), profile, &command, &passed, quick, args);
    }
    let out = target_dir().join(if quick { "bench-quick" } else { "bench" });
    let mut cmd = Command::new(bin("switchyard-bench"));
    cmd.arg("--switchyard-bin").arg(bin("switchyard")).arg("--out").arg(&out).args(["--build", profile]);
    cmd.args(["--command", &command]);
    if !quick && !args.iter().any(|a| a == "--readme" || a == "--no-readme") {
        cmd.arg("--readme").arg(PathBuf::from("README.md"));
    }
    cmd.args(passed);
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

fn run_in_vm(
    bench: &Path,
    switchyard: &Path,
    profile: &str,
    command: &str,
    passed: &[&String],
    quick: bool,
    args: &[String],
) -> ExitCode {
    let out = target_dir().join(if quick { "bench-vm-quick" } else { "bench-vm" });
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("xtask bench: {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let mut spec = vm::Spec {
        out_dir: Some(out.clone()),
        // A wide cap; the watchdog's quiet window catches a hung guest. A
        // 10k-Service step can run minutes without a line, hence 10 min.
        timeout: Duration::from_secs(if quick { 3600 } else { 5400 }),
        quiet_timeout: Duration::from_secs(600).max(vm::Spec::default().quiet_timeout),
        // The daemon, the lab's namespaces and kube-proxy's payloads at 10k.
        memory_mib: Some(3072),
        ..vm::Spec::default()
    };
    spec.adds.push((bench.to_path_buf(), PathBuf::from("/work/switchyard-bench")));
    spec.adds.push((switchyard.to_path_buf(), PathBuf::from("/work/switchyard")));
    if Path::new(FONT).exists() {
        spec.adds.push((PathBuf::from(FONT), PathBuf::from(FONT)));
    }
    let mut words: Vec<String> = [
        "/work/switchyard-bench",
        "--switchyard-bin",
        "/work/switchyard",
        "--out",
        "/out",
        "--build",
        &format!("{profile}, inside QEMU (TCG) on Debian's 6.1 kernel"),
        "--command",
        command,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !args.iter().any(|a| a == "--modes") {
        words.extend(["--modes".into(), "ipvs,iptables,ebpf".into()]);
    }
    if !quick && !args.iter().any(|a| a == "--sizes") {
        words.extend(["--sizes".into(), VM_SIZES.into()]);
    }
    if !Path::new(FONT).exists() {
        words.push("--no-plots".into());
    }
    words.extend(passed.iter().map(|s| s.to_string()));
    spec.command = words.iter().map(|w| vm::shell_quote(w)).collect::<Vec<_>>().join(" ");
    let code = vm::exit_with(vm::run(&spec));
    if code != ExitCode::SUCCESS {
        eprintln!("xtask bench: the harness failed inside the VM");
        return code;
    }
    if quick || args.iter().any(|a| a == "--no-readme") {
        println!("results: {}", out.display());
        return ExitCode::SUCCESS;
    }
    match splice_into_readme(Path::new("README.md"), &out, command) {
        Ok(()) => {
            println!("results: {} (README.md's bench-vm section updated)", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Puts the VM run's `results.md` between the `bench-vm` markers and its
/// plots in `docs/bench/vm-*.svg`.
fn splice_into_readme(readme: &Path, out: &Path, command: &str) -> Result<(), String> {
    let table =
        std::fs::read_to_string(out.join("results.md")).map_err(|e| format!("{}/results.md: {e}", out.display()))?;
    let docs = readme.parent().unwrap_or(Path::new(".")).join("docs/bench");
    std::fs::create_dir_all(&docs).map_err(|e| format!("{}: {e}", docs.display()))?;
    let mut images = String::new();
    let mut svgs: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "svg"))
        .collect();
    svgs.sort();
    for svg in svgs {
        let name = format!("vm-{}", svg.file_name().unwrap_or_default().to_string_lossy());
        std::fs::copy(&svg, docs.join(&name)).map_err(|e| format!("copying {}: {e}", svg.display()))?;
        images.push_str(&format!("![{}](docs/bench/{name})\n", name.trim_end_matches(".svg")));
    }
    let body = format!(
        "### Inside the VM: IPVS next to the others\n\n`{command}` (as root; QEMU without KVM, so every figure is \
         far slower than on the host — compare rows within this table only).\n\n{}\n\n{images}",
        table.trim_end()
    );
    let text = std::fs::read_to_string(readme).map_err(|e| format!("{}: {e}", readme.display()))?;
    let updated = match (text.find(VM_BEGIN), text.find(VM_END)) {
        (Some(b), Some(e)) if b < e => format!("{}{VM_BEGIN}\n{body}\n{}", &text[..b], &text[e..]),
        _ => format!("{}\n\n{VM_BEGIN}\n{body}\n{VM_END}\n", text.trim_end()),
    };
    std::fs::write(readme, updated).map_err(|e| format!("{}: {e}", readme.display()))
}
