//! `switchyard-sandbox`: a throwaway mini-cluster in network namespaces with
//! live traffic through the real `switchyard` binary (`./x demo`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use conformance::agent::AGENT_SUBCOMMAND;
use conformance::sandbox::{SandboxConfig, run};

/// A sandbox cluster in network namespaces with live traffic through switchyard.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The proxy mode to run (`iptables`, `ipvs`, `ebpf`, `nftables`, or a plugin).
    #[arg(long, default_value = "iptables")]
    mode: String,
    /// The switchyard binary (default: next to this one, else on PATH).
    #[arg(long)]
    switchyard_bin: Option<PathBuf>,
    /// Where to write the manifests (default: a temporary directory).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Seconds each scripted change is shown.
    #[arg(long, default_value_t = 5)]
    step_seconds: u64,
    /// After the script, keep running until Ctrl-C (edit the manifests and watch).
    #[arg(long)]
    forever: bool,
    /// Fail (exit 1) when the traffic does not show what each step must show.
    #[arg(long)]
    check: bool,
    /// Extra arguments for switchyard, after `--`.
    #[arg(last = true)]
    switchyard_args: Vec<String>,
}

fn default_binary() -> PathBuf {
    let sibling = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("switchyard")));
    sibling.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("switchyard"))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(AGENT_SUBCOMMAND) {
        return conformance::cli::agent_main(&argv[2..]);
    }
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = SandboxConfig {
        switchyard_bin: args.switchyard_bin.unwrap_or_else(default_binary),
        mode: args.mode,
        manifests: args.manifests,
        linger: if args.forever { None } else { Some(Duration::ZERO) },
        step: Duration::from_secs(args.step_seconds.max(2)),
        check: args.check,
        extra_args: args.switchyard_args,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-sandbox: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    match runtime.block_on(run(cfg, stop)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-sandbox: {}", proxy_core::ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}
