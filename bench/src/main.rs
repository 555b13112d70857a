//! `switchyard-bench`: every backend side by side, in throwaway network
//! namespaces, with a Markdown table, a JSON file and plots.
//!
//! Usually run through `cargo xtask bench [--quick]`. Needs root. See
//! `bench/README.md` for what each figure means.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool reports on stdout/stderr")]
#![allow(
    clippy::disallowed_methods,
    reason = "measurements run on plain pinned threads, not an async executor: a blocking sleep is what they need"
)]

mod daemon;
mod kubeproxy;
mod lab;
mod measure;
mod objects;
mod plot;
mod probe;
mod real;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use measure::{Settings, Shape};
use report::{Machine, Run, Unavailable};

const USAGE: &str = "usage: switchyard-bench [--quick] [--switchyard-bin PATH] [--out DIR] [--readme README.md]
    [--sizes 1,1000,10000,30000] [--modes iptables,ebpf] [--no-references] [--section MODE=JSON]
    [--min-sync-period 1ms] [--iptables-restore iptables-nft-restore] [--no-plots] [--real] [--build LABEL] [--command TEXT]";

/// Modes the project ships; one that is not registered in this build is
/// listed as not measured, with the reason.
const KNOWN_MODES: &[&str] = &["iptables", "ipvs", "ebpf", "nftables"];

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

struct Args {
    quick: bool,
    binary: Option<PathBuf>,
    out: PathBuf,
    readme: Option<PathBuf>,
    sizes: Option<Vec<usize>>,
    modes: Option<Vec<String>>,
    references: bool,
    sections: Vec<(String, serde_json::Value)>,
    min_sync_period: String,
    iptables_restore: String,
    build: String,
    command: Option<String>,
    plots: bool,
    /// Rows against a real API server: upstream kube-proxy and switchyard (`--real`).
    real: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        binary: None,
        out: PathBuf::from("bench-results"),
        readme: None,
        sizes: None,
        modes: None,
        references: true,
        sections: Vec::new(),
        min_sync_period: "1ms".into(),
        iptables_restore: "iptables-nft-restore".into(),
        build: "unknown".into(),
        command: None,
        plots: true,
        real: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => a.quick = true,
            "--no-references" => a.references = false,
            "--no-plots" => a.plots = false,
            "--real" => a.real = true,
            "--switchyard-bin" => a.binary = Some(PathBuf::from(value()?)),
            "--out" => a.out = PathBuf::from(value()?),
            "--readme" => a.readme = Some(PathBuf::from(value()?)),
            "--sizes" => {
                let v = value()?;
                let sizes: Result<Vec<usize>, _> = v.split(',').map(str::parse).collect();
                a.sizes = Some(sizes.map_err(|_| format!("--sizes {v}: not a list of numbers"))?);
            }
            "--modes" => a.modes = Some(value()?.split(',').map(String::from).collect()),
            "--section" => {
                let v = value()?;
                let (mode, json) = v.split_once('=').ok_or("--section needs MODE=JSON")?;
                let json = serde_json::from_str(json).map_err(|e| format!("--section {mode}: {e}"))?;
                a.sections.push((mode.to_string(), json));
            }
            "--min-sync-period" => a.min_sync_period = value()?,
            "--iptables-restore" => a.iptables_restore = value()?,
            "--build" => a.build = value()?,
            "--command" => a.command = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn settings(a: &Args, workdir: PathBuf) -> Settings {
    let cpus = lab::Cpus::detect();
    let base = Settings {
        quick: a.quick,
        sizes: vec![1, 1000, 10_000, 30_000],
        endpoints: 10,
        large_from: 30_000,
        large_endpoints: 2,
        cold_reps: 3,
        change_reps: 20,
        change_budget_s: 60.0,
        churn_rate: 20.0,
        churn_s: 10.0,
        connect_warmup: 200,
        connect_count: 2000,
        reps: 3,
        rate_count: 1000,
        throughput_s: 3.0,
        reference_timeout_s: 90.0,
        cold_timeout_s: 300.0,
        min_sync_period: a.min_sync_period.clone(),
        iptables_restore: a.iptables_restore.clone(),
        cpus,
        workdir,
    };
    let mut s = if a.quick {
        Settings {
            sizes: vec![1, 1000],
            cold_reps: 1,
            change_reps: 5,
            change_budget_s: 15.0,
            churn_s: 3.0,
            connect_warmup: 50,
            connect_count: 500,
            reps: 1,
            rate_count: 300,
            throughput_s: 1.0,
            reference_timeout_s: 60.0,
            cold_timeout_s: 120.0,
            ..base
        }
    } else {
        base
    };
    if let Some(sizes) = &a.sizes {
        s.sizes = sizes.clone();
    }
    s
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|| format!("{program}: not found"))
}

fn machine() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        iptables: first_line("iptables", &["--version"]),
        nft: first_line("nft", &["--version"]),
        load_before: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load_after: String::new(),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread and handles them on one:
/// tear down whatever labs and processes exist, then exit 130.
fn install_signal_thread() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("switchyard-bench: {sig}: removing the labs and stopping what we started");
            lab::undo_all();
            std::process::exit(130);
        }
    });
}

/// Checks that a mode can run here, in a throwaway lab, with its section.
fn probe_mode(mode: &str, section: Option<&serde_json::Value>, s: &Settings) -> Result<(), String> {
    let registry = proxy_daemon::default_registry();
    let factory = registry.get(mode).map_err(|e| e.to_string())?.clone();
    let with_bpffs = section.is_some_and(|t| t.to_string().contains("{bpffs}"));
    let lab = lab::Lab::create(s.cpus, with_bpffs)?;
    let mut ctx = proxy_core::BackendContext::new(objects::NODE_NAME, lab.netns("node"));
    if let Some(t) = section {
        let cg = lab.cgroup.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let fs = lab.bpffs.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        ctx.section =
            serde_json::from_str(&t.to_string().replace("{cgroup}", &cg).replace("{bpffs}", &fs)).unwrap_or_default();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(factory.probe(&ctx)).map_err(|e| e.to_string())
}

/// Built-in sections for modes that need lab paths: the eBPF mode pins into
/// the lab's private bpffs (this host has none at /sys/fs/bpf) and attaches
/// socket programs to the lab's cgroup, never the machine's.
fn default_section(mode: &str) -> Option<serde_json::Value> {
    (mode == "ebpf").then(|| serde_json::json!({"pinPath": "{bpffs}/switchyard", "cgroupPath": "{cgroup}"}))
}

fn replace_between_markers(text: &str, body: &str) -> Option<String> {
    let start = text.find(BEGIN)?;
    let end = text[start..].find(END)? + start;
    Some(format!("{}{BEGIN}\n{body}\n{}", &text[..start], &text[end..]))
}

fn update_readme(readme: &Path, run: &Run, svgs: &[PathBuf], command: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(readme).map_err(|e| format!("{}: {e}", readme.display()))?;
    let dir = readme.parent().unwrap_or(Path::new(".")).join("docs/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut images = String::new();
    for svg in svgs {
        let name = svg.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        std::fs::copy(svg, dir.join(&name)).map_err(|e| format!("copying {}: {e}", svg.display()))?;
        images.push_str(&format!("![{}](docs/bench/{name})\n", name.trim_end_matches(".svg")));
    }
    let body = format!(
        "### Every backend side by side\n\n`{command}` (as root, after the setup above; about {:.0} minutes; \
         `--quick` for a few-minute smoke run). What each column means: [bench/README.md](bench/README.md).\n\n{}\n{images}",
        run.duration_s / 60.0,
        run.markdown()
    );
    let updated = match replace_between_markers(&text, &body) {
        Some(t) => t,
        None => format!("{}\n{BEGIN}\n{body}\n{END}\n", text.trim_end()),
    };
    std::fs::write(readme, updated).map_err(|e| format!("{}: {e}", readme.display()))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("switchyard-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("switchyard-bench: needs root (network namespaces, iptables, BPF)");
        return ExitCode::from(2);
    }
    install_signal_thread();
    for stale in lab::collect_stale() {
        eprintln!("switchyard-bench: removed {stale} (left by a killed run)");
    }
    let binary = args.binary.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("switchyard"))).unwrap_or_default()
    });
    if !binary.is_file() {
        eprintln!("switchyard-bench: no switchyard binary at {} (use --switchyard-bin)", binary.display());
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("switchyard-bench: {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    let workdir = std::env::temp_dir().join(format!("swy-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&workdir) {
        eprintln!("switchyard-bench: {}: {e}", workdir.display());
        return ExitCode::FAILURE;
    }
    let s = settings(&args, workdir.clone());
    let started = jiff::Timestamp::now();
    let clock = Instant::now();
    let mut machine = machine();
    let mut unavailable = Vec::new();

    let registered = proxy_daemon::default_registry().modes();
    let wanted: Vec<String> = args.modes.clone().unwrap_or_else(|| {
        let mut m = registered.clone();
        for k in KNOWN_MODES {
            if !m.iter().any(|x| x == k) {
                m.push(k.to_string());
            }
        }
        m
    });
    let mut modes: Vec<(String, Option<serde_json::Value>)> = Vec::new();
    for mode in wanted {
        let section =
            args.sections.iter().find(|(m, _)| *m == mode).map(|(_, v)| v.clone()).or_else(|| default_section(&mode));
        if !registered.contains(&mode) {
            let reason = if mode == "ipvs" {
                "not registered in this build; IPVS needs the VM (the host kernel has no IPVS): see bench/README.md"
                    .to_string()
            } else {
                format!("not registered in this build (registered: {})", registered.join(", "))
            };
            unavailable.push(Unavailable { backend: format!("switchyard {mode}"), reason });
            continue;
        }
        match probe_mode(&mode, section.as_ref(), &s) {
            Ok(()) => modes.push((mode, section)),
            Err(e) => unavailable
                .push(Unavailable { backend: format!("switchyard {mode}"), reason: format!("unavailable here: {e}") }),
        }
    }
    let mut shapes = Vec::new();
    if args.references {
        if on_path(&s.iptables_restore) {
            shapes.push(Shape::Iptables);
        } else {
            unavailable.push(Unavailable {
                backend: Shape::Iptables.label(&s),
                reason: format!("{} not on PATH", s.iptables_restore),
            });
        }
        if on_path("nft") {
            shapes.push(Shape::Nftables);
        } else {
            unavailable.push(Unavailable {
                backend: Shape::Nftables.label(&s),
                reason: "nft not on PATH (apt-get install nftables)".into(),
            });
        }
    }

    eprintln!(
        "switchyard-bench: sizes {:?}, modes [{}], references {}, {}",
        s.sizes,
        modes.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(", "),
        shapes.len(),
        if s.quick { "quick" } else { "full" }
    );
    let mut rows = Vec::new();
    let log_row = |r: &report::Row, t: Instant| {
        eprintln!(
            "  {:<45} {:>6} Services: {:.1} s{}",
            r.backend,
            r.services,
            t.elapsed().as_secs_f64(),
            if r.errors.is_empty() {
                String::new()
            } else {
                format!(" ({} problems: {})", r.errors.len(), r.errors[0])
            }
        );
    };
    for &n in &s.sizes {
        let t = Instant::now();
        let r = measure::direct(n, &s);
        log_row(&r, t);
        rows.push(r);
        for &shape in &shapes {
            let t = Instant::now();
            let r = measure::reference(shape, n, &s);
            log_row(&r, t);
            rows.push(r);
        }
        for (mode, section) in &modes {
            let t = Instant::now();
            let r = measure::switchyard(mode, section.as_ref(), &binary, n, &s);
            log_row(&r, t);
            rows.push(r);
        }
        if args.real {
            for proxy in
                [real::Proxy::KubeProxy("iptables"), real::Proxy::KubeProxy("nftables"), real::Proxy::Switchyard]
            {
                let t = Instant::now();
                let r = real::row(proxy, &binary, n, &s);
                log_row(&r, t);
                rows.push(r);
            }
        }
    }
    machine.load_after = read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let command = args
        .command
        .clone()
        .unwrap_or_else(|| if s.quick { "cargo xtask bench --quick".into() } else { "cargo xtask bench".into() });
    let run = Run {
        command: command.clone(),
        quick: s.quick,
        build: args.build.clone(),
        started: started.to_string(),
        duration_s: clock.elapsed().as_secs_f64(),
        min_sync_period: s.min_sync_period.clone(),
        cpus: s.cpus,
        machine,
        settings: serde_json::to_value(&s).unwrap_or_default(),
        rows,
        unavailable,
    };
    let _ = std::fs::remove_dir_all(&workdir);

    let md = run.markdown();
    let json = serde_json::to_string_pretty(&run).unwrap_or_default();
    let mut failed = false;
    for (name, body) in [("results.md", md.as_str()), ("results.json", json.as_str())] {
        let path = args.out.join(name);
        if let Err(e) = std::fs::write(&path, body) {
            eprintln!("switchyard-bench: {}: {e}", path.display());
            failed = true;
        }
    }
    let plots =
        if args.plots { plot::init_font().and_then(|()| plot::write_all(&run, &args.out)) } else { Ok(Vec::new()) };
    let svgs = match plots {
        Ok(svgs) => svgs,
        Err(e) => {
            eprintln!("switchyard-bench: plots: {e}");
            failed = true;
            Vec::new()
        }
    };
    println!("{md}");
    println!("results: {}", args.out.display());
    if let Some(readme) = &args.readme
        && let Err(e) = update_readme(readme, &run, &svgs, &command)
    {
        eprintln!("switchyard-bench: README: {e}");
        failed = true;
    }
    // The harness itself broke (no row measured anything) — never a timing.
    let measured_any = run.rows.iter().any(|r| r.kind == report::Kind::Switchyard && r.connect_last.is_some());
    if !measured_any {
        eprintln!("switchyard-bench: no switchyard backend produced figures");
        failed = true;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_markers() {
        let text = format!("# x\n\n{BEGIN}\nold\n{END}\nafter\n");
        let out = replace_between_markers(&text, "new").unwrap_or_default();
        assert_eq!(out, format!("# x\n\n{BEGIN}\nnew\n{END}\nafter\n"));
        assert!(replace_between_markers("no markers", "new").is_none());
    }
}
