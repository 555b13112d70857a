//! `cargo xtask reference`: builds upstream etcd, kube-apiserver and
//! kube-proxy from the Go module in `reference/` into a cache outside the
//! clone, where the tests that run a real control plane find them.
//!
//! The release is whatever `reference/go.mod` pins (`k8s.io/kubernetes vX.Y.Z`);
//! the binaries go to `<cache>/vX.Y.Z/bin`, the Go module and build caches to
//! `<cache>/gomod` and `<cache>/gocache`, so a fresh clone (CI) reuses them.
//! `<cache>` is `$SWITCHYARD_REFERENCE_DIR`, else `/var/cache/switchyard/reference`.
//! A build is skipped when the three binaries are there and were built from
//! the same `go.mod` and `go.sum` (a stamp holds their hash).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Where the cache lives unless `SWITCHYARD_REFERENCE_DIR` says otherwise.
const DEFAULT_CACHE: &str = "/var/cache/switchyard/reference";
/// The binaries built, with the Go package each comes from. etcd's server
/// module has its `main` package at the module root.
const BINARIES: &[(&str, &str)] = &[
    ("etcd", "go.etcd.io/etcd/server/v3"),
    ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
    ("kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy"),
];
const STAMP: &str = ".built-from";

pub fn run(args: &[String]) -> ExitCode {
    let mut force = false;
    for a in args {
        match a.as_str() {
            "--force" => force = true,
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask reference [--force]\n\n\
                     Builds etcd, kube-apiserver and kube-proxy from reference/go.mod into\n\
                     $SWITCHYARD_REFERENCE_DIR (default {DEFAULT_CACHE})/<version>/bin.\n\
                     Skipped when they are there and go.mod/go.sum are unchanged; --force rebuilds."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("xtask reference: unknown argument {other} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    match build(force) {
        Ok(bin) => {
            println!("{}", bin.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask reference: {e}");
            ExitCode::FAILURE
        }
    }
}

fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("reference")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_REFERENCE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// The pinned Kubernetes release: the `k8s.io/kubernetes` requirement in go.mod.
fn pinned_version(go_mod: &str) -> Option<String> {
    go_mod.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let first = words.next()?;
        let (module, version) =
            if first == "require" { (words.next()?, words.next()?) } else { (first, words.next()?) };
        (module == "k8s.io/kubernetes").then(|| version.to_string())
    })
}

/// `v1.37.2` → `("1", "37")`, for component-base's version stamp.
fn major_minor(version: &str) -> Option<(String, String)> {
    let mut parts = version.strip_prefix('v')?.split('.');
    Some((parts.next()?.to_string(), parts.next()?.to_string()))
}

/// FNV-1a: enough to notice that go.mod or go.sum changed (not a security check,
/// and xtask stays dependency-free).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Builds (or finds up to date) the binaries; returns their directory.
pub fn build(force: bool) -> Result<PathBuf, String> {
    let module = module_dir();
    let read = |name: &str| {
        std::fs::read(module.join(name)).map_err(|e| format!("cannot read {}: {e}", module.join(name).display()))
    };
    let (go_mod, go_sum) = (read("go.mod")?, read("go.sum")?);
    let version = pinned_version(&String::from_utf8_lossy(&go_mod))
        .ok_or_else(|| format!("{}: no k8s.io/kubernetes requirement", module.join("go.mod").display()))?;
    let (major, minor) = major_minor(&version).ok_or_else(|| format!("k8s.io/kubernetes {version}: not vX.Y.Z"))?;
    let stamp = format!("{version} {:016x}\n", fnv1a(&[go_mod, go_sum].concat()));

    let cache = cache_dir();
    let bin = cache.join(&version).join("bin");
    let up_to_date = BINARIES.iter().all(|(name, _)| bin.join(name).is_file())
        && std::fs::read_to_string(bin.join(STAMP)).is_ok_and(|s| s == stamp);
    if up_to_date && !force {
        eprintln!("xtask reference: {version} is up to date in {}", bin.display());
        return Ok(bin);
    }

    match Command::new("go").arg("version").output() {
        Ok(out) if out.status.success() => {
            eprintln!(
                "xtask reference: building Kubernetes {version} with {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        }
        _ => {
            return Err("`go` not found on PATH; install Go (the version reference/go.mod's `go` line names, \
                        https://go.dev/dl) and retry"
                .into());
        }
    }

    // Build next to the final place, then swap: an interrupted build never
    // leaves a half-filled bin/ that looks complete.
    let staging = cache.join(&version).join("bin.partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let pkg = "k8s.io/component-base/version";
    let ldflags = format!("-s -w -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor}");
    let goflags = std::env::var("GOFLAGS").unwrap_or_default() + " -mod=readonly";
    let started = Instant::now();
    for (name, package) in BINARIES {
        let status = Command::new("go")
            .current_dir(&module)
            .env("GOMODCACHE", cache.join("gomod"))
            .env("GOCACHE", cache.join("gocache"))
            // Static binaries, as Kubernetes releases them: no libc coupling.
            .env("CGO_ENABLED", "0")
            // go.mod and go.sum are committed: a build must not rewrite them.
            .env("GOFLAGS", goflags.trim())
            .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
            .arg(staging.join(name))
            .arg(package)
            .status()
            .map_err(|e| format!("cannot run go: {e}"))?;
        if !status.success() {
            return Err(format!("go build {package} failed ({status})"));
        }
        eprintln!("xtask reference: {name} built ({:.0} s so far)", started.elapsed().as_secs_f64());
    }
    for (name, _) in BINARIES {
        check_version(&staging.join(name), name, &version)?;
    }
    std::fs::write(staging.join(STAMP), &stamp).map_err(|e| format!("cannot write the stamp: {e}"))?;
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&staging, &bin)
        .map_err(|e| format!("cannot move {} to {}: {e}", staging.display(), bin.display()))?;
    eprintln!("xtask reference: {version} built in {:.0} s into {}", started.elapsed().as_secs_f64(), bin.display());
    Ok(bin)
}

/// `--version` must name the pinned release (kube-*) or run at all (etcd):
/// an unstamped Kubernetes binary says `v0.0.0-master`.
fn check_version(path: &Path, name: &str, version: &str) -> Result<(), String> {
    let out = Command::new(path).arg("--version").output().map_err(|e| format!("cannot run {name}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let ok = out.status.success() && (name == "etcd" || text.contains(version));
    if !ok {
        return Err(format!("{name} --version says {:?}; expected {version}", text.trim()));
    }
    eprintln!("xtask reference: {}", text.lines().next().unwrap_or_default().trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pinned_release_from_go_mod() {
        assert_eq!(pinned_version("module x\n\nrequire k8s.io/kubernetes v1.37.2\n").as_deref(), Some("v1.37.2"));
        let block = "require (\n\tgo.etcd.io/etcd/server/v3 v3.7.0\n\tk8s.io/kubernetes v1.37.2\n)\n";
        assert_eq!(pinned_version(block).as_deref(), Some("v1.37.2"));
        assert_eq!(pinned_version("replace k8s.io/api => k8s.io/api v0.37.2\n"), None);
        assert_eq!(major_minor("v1.37.2"), Some(("1".into(), "37".into())));
    }

    #[test]
    fn the_committed_module_pins_a_release() {
        let go_mod = std::fs::read_to_string(module_dir().join("go.mod")).expect("reference/go.mod");
        let version = pinned_version(&go_mod).expect("k8s.io/kubernetes in reference/go.mod");
        let (_, minor) = major_minor(&version).expect("vX.Y.Z");
        let patch = version.rsplit('.').next().expect("patch");
        // Every staging module is pinned at the matching v0.Y.Z (Go ignores the
        // dependency's own `=> ./staging/...` replacements).
        let staging = format!("v0.{minor}.{patch}");
        let replaces: Vec<&str> = go_mod.lines().filter(|l| l.contains(" => k8s.io/")).collect();
        assert!(replaces.len() > 20, "the staging modules are replaced: {replaces:?}");
        for line in replaces {
            assert!(line.trim_end().ends_with(&staging), "{line} is not pinned at {staging}");
        }
    }
}
