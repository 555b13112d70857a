//! switchyard against the reference kube-proxy (v1.37.2, built by `./x reference`):
//! the same flags, the same configuration fields and defaults, the same
//! rejections. Both binaries are run with `--write-config-to`, which makes
//! each validate its flags and file and write the effective configuration
//! in kube-proxy's v1alpha1 shape; the two outputs must be equal.
//!
//! The reference's answers are also kept under `tests/fixtures/kube-proxy/`
//! (`help.txt`, `expected/*.yaml`), so the comparison still runs where the
//! reference is not built (it then says so). With the reference present, the
//! stored answers are checked against it too; `SWITCHYARD_BLESS=1` rewrites
//! them and `docs/compatibility.md`.
//!
//! Run: `cargo test -p proxy-daemon --test kube_proxy_compat`.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use proxy_daemon::cli::KUBE_PROXY_FLAGS;
use serde_json::Value;

use common::switchyard_bin;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube-proxy")
}

fn bless() -> bool {
    std::env::var_os("SWITCHYARD_BLESS").is_some()
}

/// The reference kube-proxy, or `None` (said once per test) when it is not built.
fn reference(test: &str) -> Option<PathBuf> {
    match conformance::apiserver::ReferenceBinaries::locate() {
        Ok(b) => Some(b.kube_proxy()),
        Err(e) => {
            eprintln!("NOTE {test}: reference kube-proxy not built ({e}); comparing with the stored answers only");
            None
        }
    }
}

/// What a binary did with a command line plus `--write-config-to`.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    /// The written configuration, when it wrote one.
    config: Option<Value>,
    stderr: String,
}

fn write_config(bin: &Path, args: &[String]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.yaml");
    let o = Command::new(bin)
        .args(args)
        .arg(format!("--write-config-to={}", out.display()))
        .env_remove("SWITCHYARD_MODE")
        .output()
        .expect("run binary");
    let config = std::fs::read_to_string(&out).ok().map(|t| yaml(&t));
    Outcome { code: o.status.code(), config, stderr: String::from_utf8_lossy(&o.stderr).into() }
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

/// Leaf-by-leaf differences between two JSON values (`path: reference != ours`).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        // YAML numbers: 5 and 5.0 are the same value.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a != b => out.push(format!("{path}: reference {a} != switchyard {b}")),
        _ => {}
    }
}

/// The reference's written configuration for a case: live when the
/// reference is built (and the stored copy checked or blessed), else stored.
fn reference_config(case: &str, kp: Option<&Path>, args: &[String]) -> Value {
    let stored_path = fixtures().join("expected").join(format!("{case}.yaml"));
    let stored = std::fs::read_to_string(&stored_path).ok().map(|t| yaml(&t));
    let Some(kp) = kp else {
        return stored.unwrap_or_else(|| panic!("{case}: no stored answer at {}", stored_path.display()));
    };
    let live = write_config(kp, args);
    assert_eq!(live.code, Some(0), "{case}: the reference refuses {args:?}:\n{}", live.stderr);
    let live = live.config.expect("the reference wrote its configuration");
    if bless() {
        std::fs::create_dir_all(stored_path.parent().unwrap()).unwrap();
        std::fs::write(&stored_path, serde_saphyr::to_string(&live).unwrap()).unwrap();
    } else {
        assert_eq!(
            stored.as_ref(),
            Some(&live),
            "{case}: the stored answer differs from the reference's; rerun with SWITCHYARD_BLESS=1"
        );
    }
    live
}

/// Runs switchyard on `args` and compares its written configuration with the reference's.
fn compare(case: &str, kp: Option<&Path>, args: &[String], problems: &mut Vec<String>) {
    let expected = reference_config(case, kp, args);
    let ours = write_config(&switchyard_bin(), args);
    if ours.code != Some(0) {
        problems.push(format!("{case}: switchyard exits {:?} on {args:?}:\n{}", ours.code, ours.stderr));
        return;
    }
    let Some(ours) = ours.config else {
        problems.push(format!("{case}: switchyard wrote no configuration"));
        return;
    };
    let mut d = Vec::new();
    diff("", &expected, &ours, &mut d);
    problems.extend(d.into_iter().map(|d| format!("{case}: {d}")));
}

/// The long flags of a `--help` text (pflag's layout: `  -v, --v Level` / `      --flag type`).
fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = if l.starts_with('-') && !l.starts_with("--") { l.split_once(", ")?.1 } else { l };
            let name = l.strip_prefix("--")?.split([' ', '=', '[', '<']).next()?;
            Some(name.to_string())
        })
        .collect()
}

#[test]
fn the_flag_set_is_the_reference_flag_set() {
    let stored_path = fixtures().join("help.txt");
    let help = match reference("the_flag_set_is_the_reference_flag_set") {
        Some(kp) => {
            let o = Command::new(kp).arg("--help").output().unwrap();
            let live = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
            if bless() {
                std::fs::write(&stored_path, &live).unwrap();
            }
            let stored = std::fs::read_to_string(&stored_path).unwrap_or_default();
            assert_eq!(help_flags(&stored), help_flags(&live), "stored help.txt is stale: SWITCHYARD_BLESS=1");
            live
        }
        None => std::fs::read_to_string(&stored_path).unwrap(),
    };
    let upstream = help_flags(&help);
    assert!(upstream.len() > 40, "parsed too few flags from --help: {upstream:?}");
    let ours: BTreeSet<String> = KUBE_PROXY_FLAGS.iter().map(|f| f.flag.to_string()).collect();
    let missing: Vec<&String> = upstream.difference(&ours).collect();
    let extra: Vec<&String> = ours.difference(&upstream).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "kube-proxy flags not in cli::KUBE_PROXY_FLAGS: {missing:?}; listed but not kube-proxy's: {extra:?}"
    );
    // Every one is a flag of the switchyard binary too (its own --help).
    let o = Command::new(switchyard_bin()).arg("--help").output().unwrap();
    let ours_help = help_flags(&String::from_utf8_lossy(&o.stdout));
    let hidden = ["help"];
    for f in &upstream {
        assert!(ours_help.contains(f) || hidden.contains(&f.as_str()), "--{f} is not in switchyard --help");
    }
}

/// One value per kube-proxy flag, valid for kube-proxy; the actions
/// (`--cleanup`, `--config`, `--help`, `--init-only`, `--version`,
/// `--write-config-to`) are tested elsewhere.
const FLAG_SAMPLES: &[&[&str]] = &[
    &["--bind-address=10.1.2.3"],
    &["--bind-address-hard-fail"],
    &["--bind-address-hard-fail=false"],
    &["--cluster-cidr=10.244.0.0/16"],
    &["--cluster-cidr=10.244.0.0/16,fd00:10:244::/56"],
    &["--config-sync-period=10m"],
    &["--conntrack-max-per-core=0"],
    &["--conntrack-min=1000"],
    &["--conntrack-tcp-be-liberal"],
    &["--conntrack-tcp-timeout-close-wait=30m"],
    &["--conntrack-tcp-timeout-established=12h"],
    &["--conntrack-udp-timeout=30s"],
    &["--conntrack-udp-timeout-stream=2m"],
    &["--detect-local-mode=NodeCIDR"],
    &["--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"],
    &["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"],
    &["--feature-gates=AllAlpha=false"],
    &["--healthz-bind-address=127.0.0.1:10300"],
    &["--hostname-override=Node-A"],
    &["--iptables-localhost-nodeports=false"],
    &["--iptables-masquerade-bit=12"],
    &["--iptables-min-sync-period=2s", "--iptables-sync-period=1m"],
    &["--proxy-mode=ipvs", "--ipvs-exclude-cidrs=10.0.0.0/8,192.168.0.0/16"],
    &["--proxy-mode=ipvs", "--ipvs-min-sync-period=5s", "--ipvs-sync-period=45s"],
    &["--proxy-mode=ipvs", "--ipvs-scheduler=lc", "--ipvs-strict-arp"],
    &["--proxy-mode=ipvs", "--ipvs-tcp-timeout=15m", "--ipvs-tcpfin-timeout=2m", "--ipvs-udp-timeout=5m"],
    &["--kube-api-burst=20", "--kube-api-qps=7.5"],
    &["--kube-api-content-type=application/json"],
    &["--kubeconfig=/etc/kube-proxy/kubeconfig"],
    &["--log-flush-frequency=10s"],
    &["--log-json-info-buffer-size=0", "--log-text-info-buffer-size=0"],
    &["--log-json-split-stream=false", "--log-text-split-stream=false"],
    &["--logging-format=json"],
    &["--masquerade-all"],
    &["--master=https://10.0.0.1:6443"],
    &["--metrics-bind-address=0.0.0.0:10249"],
    &["--nodeport-addresses=10.0.0.0/8,192.168.0.0/16"],
    &["--nodeport-addresses=primary"],
    &["--oom-score-adj=-500"],
    &["--profiling"],
    &["--proxy-mode=ipvs"],
    &["--proxy-mode=nftables"],
    &["--show-hidden-metrics-for-version=1.36"],
    &["--v=4"],
    &["-v", "2"],
    &["--vmodule=proxier*=3"],
    // pflag's spellings: a repeated flag (the last wins), a separate value word.
    &["--v=1", "--v=3"],
    &["--cluster-cidr", "10.96.0.0/12"],
];

#[test]
fn every_flag_means_what_it_means_in_kube_proxy() {
    let kp = reference("every_flag_means_what_it_means_in_kube_proxy");
    let mut problems = Vec::new();
    for sample in FLAG_SAMPLES {
        let case = format!("flag{}", sample.join("").replace(['/', ':', ','], "_"));
        let args: Vec<String> = sample.iter().map(|s| s.to_string()).collect();
        compare(&case, kp.as_deref(), &args, &mut problems);
    }
    // Every kube-proxy flag that is not an action has a sample.
    let actions = ["cleanup", "config", "help", "init-only", "version", "write-config-to"];
    for f in KUBE_PROXY_FLAGS.iter().filter(|f| !actions.contains(&f.flag)) {
        let long = format!("--{}", f.flag);
        let short = (f.flag == "v").then_some("-v");
        let covered = FLAG_SAMPLES
            .iter()
            .flat_map(|s| s.iter())
            .any(|a| a.split('=').next() == Some(long.as_str()) || Some(*a) == short);
        if !covered {
            problems.push(format!("{long}: no sample in FLAG_SAMPLES"));
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
}

/// Configuration files as kube-proxy's deployers write them (`configs/*.yaml`)
/// and command lines they run kube-proxy with (`cmdlines/*.txt`, one argument
/// per line, `#` comments). Each fixture says where its shape comes from.
#[test]
fn deployers_configurations_load_and_mean_the_same() {
    let kp = reference("deployers_configurations_load_and_mean_the_same");
    let mut problems = Vec::new();
    let mut n = 0;
    for entry in sorted_dir(&fixtures().join("configs")) {
        let case = format!("config-{}", stem(&entry));
        compare(&case, kp.as_deref(), &[format!("--config={}", entry.display())], &mut problems);
        n += 1;
    }
    for entry in sorted_dir(&fixtures().join("cmdlines")) {
        let case = format!("cmdline-{}", stem(&entry));
        let args: Vec<String> = std::fs::read_to_string(&entry)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.replace("$FIXTURES", &fixtures().display().to_string()))
            .collect();
        compare(&case, kp.as_deref(), &args, &mut problems);
        n += 1;
    }
    assert!(n >= 8, "fixtures missing: {n}");
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
}

/// Configurations kube-proxy refuses (`rejected/*.yaml`, or `rejected/*.args`
/// for flags); each starts with `# field: <path>` and `# reason: <text>`
/// lines. Both binaries must refuse, both messages must hold the reason,
/// and switchyard's names the field; switchyard exits 2 (a usage error).
#[test]
fn what_kube_proxy_rejects_is_rejected_for_the_same_reason() {
    let kp = reference("what_kube_proxy_rejects_is_rejected_for_the_same_reason");
    let mut problems = Vec::new();
    let mut n = 0;
    for entry in sorted_dir(&fixtures().join("rejected")) {
        let text = std::fs::read_to_string(&entry).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{}: no `# {key}:` line", entry.display()))
                .to_string()
        };
        let (field, reason) = (header("field"), header("reason"));
        let args = if entry.extension().is_some_and(|e| e == "args") {
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
        } else {
            vec![format!("--config={}", entry.display())]
        };
        let name = stem(&entry);
        if let Some(kp) = &kp {
            let r = write_config(kp, &args);
            // klog quotes the error: `err="... \"nowhere\" ..."`.
            let stderr = r.stderr.replace("\\\"", "\"");
            if r.code == Some(0) || !stderr.contains(&reason) {
                problems.push(format!("{name}: the reference exits {:?} without {reason:?}:\n{}", r.code, r.stderr));
            }
        }
        let ours = write_config(&switchyard_bin(), &args);
        if ours.code != Some(2) {
            problems.push(format!("{name}: switchyard exits {:?}, not 2:\n{}", ours.code, ours.stderr));
        }
        let line = ours.stderr.lines().find(|l| l.trim_start().starts_with(&format!("- {field}: ")));
        match line {
            Some(l) if l.contains(&reason) => {}
            _ => problems.push(format!("{name}: switchyard does not say \"{field}: ...{reason}\":\n{}", ours.stderr)),
        }
        n += 1;
    }
    assert!(n >= 8, "fixtures missing: {n}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_compatibility_doc_is_generated_from_the_tables() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/compatibility.md");
    let rendered = proxy_daemon::compat::render_markdown(KUBE_PROXY_FLAGS, proxy_daemon::compat::METRICS);
    if bless() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/compatibility.md is stale: SWITCHYARD_BLESS=1 cargo test -p proxy-daemon --test kube_proxy_compat"
    );
}

fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}
