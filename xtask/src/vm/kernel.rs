//! Host packages, the Debian kernel package and its modules.
//!
//! Everything downloaded is cached outside the repository (`SWITCHYARD_VM_CACHE`,
//! default `/var/cache/switchyard-vm`), so a second run is offline.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Error, Result, run_checked};

/// Debian packages the VM runner needs on the host: QEMU, a static busybox for
/// the guest's `/init`, kmod for `depmod`, and the userspace the backends call
/// (copied into the guest with their libraries).
pub const HOST_PACKAGES: &[&str] =
    &["qemu-system-x86", "busybox-static", "kmod", "iptables", "iproute2", "conntrack", "ipset", "nftables"];

/// The kernel series the VM boots (Debian bookworm's).
pub const KERNEL_SERIES: &str = "6.1.";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_VM_CACHE").map_or_else(|| PathBuf::from("/var/cache/switchyard-vm"), PathBuf::from)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("install ok installed"))
}

/// Installs whatever of `packages` is missing (idempotent; `apt-get update` only when needed).
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("vm: installing {}", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        run_checked(Command::new("apt-get").args(["update", "-q"]))?;
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "-q"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

/// An extracted kernel: its image and its module tree with `modules.dep`.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` of the guest, e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `<root>/lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

/// The package name of the newest 6.1 kernel apt knows (`linux-image-6.1.0-N-amd64`).
fn resolve_package() -> Result<String> {
    if let Ok(name) = std::env::var("SWITCHYARD_VM_KERNEL_PACKAGE") {
        return Ok(name);
    }
    let depends = |_: ()| -> Option<String> {
        let out = Command::new("apt-cache").args(["depends", "linux-image-amd64"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-6.1.") && p.ends_with("-amd64"))
            .map(str::to_string)
    };
    let search = |_: ()| -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .max_by_key(|p| abi_number(p))
            .map(str::to_string)
    };
    if let Some(p) = depends(()).or_else(|| search(())) {
        return Ok(p);
    }
    run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    depends(())
        .or_else(|| search(()))
        .ok_or_else(|| Error::msg("apt knows no linux-image-6.1.0-*-amd64 package (is this Debian bookworm?)"))
}

/// `linux-image-6.1.0-56-amd64` → 56.
fn abi_number(package: &str) -> u32 {
    package.trim_start_matches("linux-image-6.1.0-").trim_end_matches("-amd64").parse().unwrap_or(0)
}

/// A kernel already extracted in the cache, newest first.
fn cached_kernels(cache: &Path) -> Vec<Kernel> {
    let mut found: Vec<Kernel> = fs::read_dir(cache.join("kernels"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let release = e.file_name().to_string_lossy().into_owned();
            let k = kernel_at(&e.path(), &release);
            (release.starts_with(KERNEL_SERIES) && k.vmlinuz.exists() && k.modules_dir.join("modules.dep").exists())
                .then_some(k)
        })
        .collect();
    found.sort_by_key(|k| std::cmp::Reverse(abi_number(&format!("linux-image-{}", k.release))));
    found
}

fn kernel_at(root: &Path, release: &str) -> Kernel {
    Kernel {
        release: release.to_string(),
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        modules_dir: root.join("lib/modules").join(release),
    }
}

/// Downloads (once) and extracts (once) the kernel package.
pub fn ensure_kernel() -> Result<Kernel> {
    let cache = cache_dir();
    fs::create_dir_all(cache.join("kernels"))?;
    let package = match resolve_package() {
        Ok(p) => p,
        Err(e) => {
            // Offline, or apt without lists: a cached kernel is still good.
            if let Some(k) = cached_kernels(&cache).into_iter().next() {
                eprintln!("vm: {e}; using cached kernel {}", k.release);
                return Ok(k);
            }
            return Err(e);
        }
    };
    let release = package.trim_start_matches("linux-image-").to_string();
    let root = cache.join("kernels").join(&release);
    let kernel = kernel_at(&root, &release);
    if kernel.vmlinuz.exists() && kernel.modules_dir.join("modules.dep").exists() {
        return Ok(kernel);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let find_deb = || {
        fs::read_dir(&debs).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_"))))
        })
    };
    let deb = match find_deb() {
        Some(d) => d,
        None => {
            eprintln!("vm: downloading {package}");
            // apt's sandbox user cannot write to a root-owned cache; that is only a warning.
            run_checked(Command::new("apt-get").args(["download", "-q", &package]).current_dir(&debs))?;
            find_deb().ok_or_else(|| Error::msg(format!("apt-get download {package} produced no .deb")))?
        }
    };
    let staging = cache.join("kernels").join(format!(".{release}.partial"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    eprintln!("vm: extracting {}", deb.display());
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
    // Documentation and firmware-less extras are not needed in the cache.
    let _ = fs::remove_dir_all(staging.join("usr"));
    run_checked(Command::new("depmod").arg("-b").arg(&staging).arg(&release))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&staging, &root)?;
    Ok(kernel)
}

/// The module index of a kernel: name → (path relative to the module dir, dependencies).
#[derive(Debug)]
pub struct ModuleIndex {
    modules: BTreeMap<String, (String, Vec<String>)>,
    dir: PathBuf,
}

/// Module names treat `-` and `_` alike.
pub fn module_name(s: &str) -> String {
    let file = s.rsplit('/').next().unwrap_or(s);
    file.trim_end_matches(".ko").replace('-', "_")
}

impl ModuleIndex {
    pub fn load(kernel: &Kernel) -> Result<Self> {
        let dep = fs::read_to_string(kernel.modules_dir.join("modules.dep"))?;
        let mut modules = BTreeMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(path), (path.to_string(), deps));
        }
        Ok(ModuleIndex { modules, dir: kernel.modules_dir.clone() })
    }

    /// Every module under a directory of the tree (e.g. `kernel/net/netfilter`).
    pub fn under(&self, prefix: &str) -> Vec<String> {
        self.modules.iter().filter(|(_, (p, _))| p.starts_with(prefix)).map(|(n, _)| n.clone()).collect()
    }

    /// The modules named plus everything they depend on. Unknown names are
    /// an error: a typo must not silently produce a VM without the module
    /// (built-in modules appear in `modules.builtin` and are accepted).
    pub fn closure(&self, names: &[String]) -> Result<BTreeSet<String>> {
        let builtin = fs::read_to_string(self.dir.join("modules.builtin")).unwrap_or_default();
        let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
        let mut out = BTreeSet::new();
        let mut queue: VecDeque<String> = names.iter().map(|n| module_name(n)).collect();
        while let Some(n) = queue.pop_front() {
            if out.contains(&n) || builtin.contains(&n) {
                continue;
            }
            let (_, deps) =
                self.modules.get(&n).ok_or_else(|| Error::msg(format!("kernel has no module named {n:?}")))?;
            queue.extend(deps.iter().cloned());
            out.insert(n);
        }
        Ok(out)
    }

    /// Copies modules into the guest tree with a `modules.dep` and
    /// `modules.alias` restricted to them (busybox modprobe reads both).
    pub fn install(&self, tree: &mut super::initramfs::Tree, release: &str, set: &BTreeSet<String>) -> Result<()> {
        let base = PathBuf::from("lib/modules").join(release);
        let mut dep = String::new();
        for name in set {
            let Some((path, deps)) = self.modules.get(name) else { continue };
            tree.file(&self.dir.join(path), base.join(path))?;
            let dep_paths: Vec<&str> =
                deps.iter().filter_map(|d| self.modules.get(d)).map(|(p, _)| p.as_str()).collect();
            dep.push_str(&format!("{path}: {}\n", dep_paths.join(" ")));
        }
        tree.data(base.join("modules.dep"), dep, 0o644);
        let alias = fs::read_to_string(self.dir.join("modules.alias")).unwrap_or_default();
        let alias: String = alias
            .lines()
            .filter(|l| l.split_whitespace().nth(2).is_some_and(|m| set.contains(&module_name(m))))
            .map(|l| format!("{l}\n"))
            .collect();
        tree.data(base.join("modules.alias"), alias, 0o644);
        for extra in ["modules.builtin", "modules.order"] {
            if self.dir.join(extra).exists() {
                tree.file(&self.dir.join(extra), base.join(extra))?;
            }
        }
        Ok(())
    }
}
