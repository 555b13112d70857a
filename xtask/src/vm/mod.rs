//! `cargo xtask vm`: run commands on Debian's 6.1 kernel in QEMU.
//!
//! The development machines' kernel has no IPVS, no dummy links and no
//! loadable modules. This boots Debian bookworm's `linux-image-6.1.0-*-amd64`
//! (downloaded with `apt-get download`, cached) with an initramfs built here:
//! a static busybox, the kernel modules the dataplanes need (with a
//! `modules.dep`/`modules.alias` for busybox modprobe), the userspace they
//! call (iptables, ip, conntrack, ipset, nft with their shared libraries and
//! xtables plugins), and whatever files the caller adds (test binaries,
//! scenario files). `/init` mounts proc, sysfs, devtmpfs, bpffs and cgroup2,
//! loads the modules, runs the command and prints one verdict line
//! (`SWITCHYARD-VM-RESULT exit=N`) on the serial console, then powers off.
//! The host exits with the guest command's status.
//!
//! The runner is generic: any backend's tests run in it by adding their
//! binaries and modules (`--add`, `--modules`).

mod bench;
mod initramfs;
mod kernel;
mod qemu;
mod test;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use initramfs::Tree;
use kernel::{Kernel, ModuleIndex};
pub use qemu::{Accel, Outcome};

/// Printed by `/init` once the guest's userspace runs (boot time, KVM probe).
pub const BOOT_MARKER: &str = "SWITCHYARD-VM-BOOTED";
/// Printed by `/init` with the command's exit status: the one verdict line.
pub const RESULT_MARKER: &str = "SWITCHYARD-VM-RESULT";
/// The 9p mount tag of the shared output directory (`/out` in the guest).
const OUT_TAG: &str = "swyout";

/// Modules loaded at boot, in order (dependencies come along through
/// modules.dep). `crc32c_generic` must precede `ip_vs`: libcrc32c otherwise
/// fails with "unknown symbol" because no crc32c provider is loaded.
pub const DEFAULT_MODULES: &[&str] = &[
    "crc32c_generic",
    "libcrc32c",
    // links
    "dummy",
    "veth",
    "bridge",
    // conntrack and NAT
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "nf_reject_ipv4",
    "nf_reject_ipv6",
    // iptables (legacy and nft backends)
    "x_tables",
    "ip_tables",
    "ip6_tables",
    "iptable_nat",
    "iptable_filter",
    "iptable_mangle",
    "iptable_raw",
    "ip6table_nat",
    "ip6table_filter",
    "ip6table_mangle",
    "ip6table_raw",
    "ipt_REJECT",
    "ip6t_REJECT",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_comment",
    "xt_mark",
    "xt_statistic",
    "xt_recent",
    "xt_addrtype",
    "xt_conntrack",
    "xt_multiport",
    "xt_set",
    "xt_ipvs",
    "xt_physdev",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_masq",
    "nft_nat",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_reject_inet",
    "nft_numgen",
    "nft_hash",
    "nft_fib_inet",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_limit",
    // ipset
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
    // IPVS and every scheduler it offers
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_fo",
    "ip_vs_ovf",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_mh",
    // SCTP services
    "sctp",
    // tc for eBPF (clsact lives in sch_ingress)
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
];

/// Module directories copied whole (not loaded) so that the kernel's
/// on-demand `request_module` (an iptables match, an nft expression) finds them.
const MODULE_DIRS: &[&str] =
    &["kernel/net/netfilter/", "kernel/net/ipv4/netfilter/", "kernel/net/ipv6/netfilter/", "kernel/net/sched/"];

/// Host programs copied into the guest at their host paths, with their libraries.
const GUEST_PROGRAMS: &[&str] = &[
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/sbin/conntrack",
    "/usr/sbin/ipset",
    "/usr/sbin/nft",
    "/usr/bin/ip",
    "/usr/sbin/tc",
];

/// Errors of the VM runner.
#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    Msg(String),
    /// KVM could not boot the guest (fall back to TCG).
    KvmFailed(String),
}

impl Error {
    pub fn msg(m: impl Into<String>) -> Error {
        Error::Msg(m.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Msg(m) => f.write_str(m),
            Error::KvmFailed(m) => write!(f, "KVM failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Runs a command and fails with its name when it fails.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| Error::msg(format!("{cmd:?}: {e}")))?;
    if status.success() { Ok(()) } else { Err(Error::msg(format!("{cmd:?} failed with {status}"))) }
}

/// What to run in the VM.
#[derive(Debug, Clone)]
pub struct Spec {
    /// (host path, guest path): files or directories; ELF files bring their libraries.
    pub adds: Vec<(PathBuf, PathBuf)>,
    /// Modules loaded at boot, after [`DEFAULT_MODULES`].
    pub modules: Vec<String>,
    /// Environment of the guest command.
    pub env: Vec<(String, String)>,
    /// A shell command line, run by busybox sh in `/work`.
    pub command: String,
    /// Host directory mounted (9p) at `/out` in the guest, for reports.
    pub out_dir: Option<PathBuf>,
    /// The overall cap (wide: the quiet window is what catches a hung guest).
    pub timeout: Duration,
    /// The VM is killed after this long without a line of output.
    pub quiet_timeout: Duration,
    pub memory_mib: Option<u64>,
    pub cpus: u32,
    pub accel: Accel,
    pub echo: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            adds: Vec::new(),
            modules: Vec::new(),
            env: Vec::new(),
            command: String::new(),
            out_dir: None,
            timeout: qemu::default_timeout(),
            quiet_timeout: qemu::default_quiet_timeout(),
            memory_mib: None,
            cpus: 2,
            accel: std::env::var("SWITCHYARD_VM_ACCEL").ok().and_then(|a| Accel::parse(&a)).unwrap_or(Accel::Auto),
            echo: true,
        }
    }
}

/// Shell-quotes one word for busybox sh.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn init_script(spec: &Spec, modules: &[String]) -> String {
    let env: String = spec.env.iter().map(|(k, v)| format!("export {}={}\n", k, shell_quote(v))).collect();
    let out_mount = if spec.out_dir.is_some() {
        format!(
            "mkdir -p /out\nmount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 {OUT_TAG} /out || echo 'vm: cannot mount /out'\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"#!/bin/busybox sh
# switchyard VM /init: generated by `cargo xtask vm` (xtask/src/vm/mod.rs).
/bin/busybox mkdir -p /bb /proc /sys /dev /tmp /run /root /work
/bin/busybox --install -s /bb
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/bb
export HOME=/root TMPDIR=/tmp SWITCHYARD_VM=1
# The guest is emulated (TCG) and the host may be loaded: convergence bounds
# are stretched threefold (`--env SWITCHYARD_TEST_PATIENCE_MS=...` overrides).
# Patience only bounds a failure; a passing test waits no longer for it.
export SWITCHYARD_TEST_PATIENCE_MS=30000
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
# /tmp stays on the initramfs (already a writable tmpfs): a tmpfs mounted over
# it would hide what was copied there, such as a clone under /tmp.
mkdir -p /tmp && chmod 1777 /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /var && ln -sf /run /var/run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ip link set lo up
echo "{BOOT_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
# One modprobe for all (a process per module costs seconds under TCG);
# on failure, retry one by one to name the culprits.
if ! modprobe -a {modules} 2>/dev/null; then
  for m in {modules}; do
    grep -q "^$m " /proc/modules || modprobe "$m" 2>/dev/null || echo "vm: module $m failed to load"
  done
fi
{out_mount}echo "vm: ready uptime=$(cut -d' ' -f1 /proc/uptime)"
{env}cd /work
/bin/sh /switchyard/command.sh
rc=$?
sync
[ -d /out ] && umount /out 2>/dev/null
echo "{RESULT_MARKER} exit=$rc"
poweroff -f
"#,
        modules = modules.join(" "),
    )
}

/// Builds the initramfs for `spec` and boots it.
pub fn run(spec: &Spec) -> Result<Outcome> {
    kernel::ensure_packages(kernel::HOST_PACKAGES)?;
    let kernel = kernel::ensure_kernel()?;
    let index = ModuleIndex::load(&kernel)?;
    let mut tree = Tree::new();

    let busybox = Path::new("/bin/busybox");
    tree.file(busybox, "bin/busybox")?;
    // Busybox's sh runs its own applets before PATH (FEATURE_SH_STANDALONE in
    // Debian's build), which would shadow the real `ip` and `iptables`: the
    // guest's /bin/sh is the host's dash; /init alone uses busybox sh.
    tree.add(Path::new("/bin/dash"), "bin/dash")?;
    tree.symlink("bin/sh", "dash");
    tree.symlink("sbin/modprobe", "/bin/busybox");
    tree.symlink("sbin/poweroff", "/bin/busybox");

    // Modules: the boot list, the copied directories, and their dependencies.
    let mut load: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    if spec.out_dir.is_some() {
        load.extend(["virtio_pci", "9pnet_virtio", "9p"].map(String::from));
    }
    load.extend(spec.modules.iter().cloned());
    let mut wanted = load.clone();
    for dir in MODULE_DIRS {
        wanted.extend(index.under(dir));
    }
    let set = index.closure(&wanted)?;
    index.install(&mut tree, &kernel.release, &set)?;

    install_userspace(&mut tree)?;

    for (host, guest) in &spec.adds {
        tree.add(host, guest)?;
    }
    tree.data("switchyard/command.sh", format!("{}\n", spec.command), 0o755);
    tree.data("init", init_script(spec, &load), 0o755);

    let work = kernel::cache_dir().join("run");
    std::fs::create_dir_all(&work)?;
    let initrd = work.join(format!("initramfs-{}.cpio", std::process::id()));
    let size = tree.write_cpio(&initrd)?;
    let memory = spec.memory_mib.unwrap_or_else(|| (1024 + 2 * size / (1 << 20)).max(1024));
    eprintln!(
        "vm: kernel {} initramfs {} MiB, {} modules, memory {} MiB",
        kernel.release,
        size >> 20,
        set.len(),
        memory
    );
    let result = qemu::boot(&qemu::Boot {
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        memory_mib: memory,
        cpus: spec.cpus,
        out_dir: spec.out_dir.as_deref(),
        timeout: spec.timeout,
        quiet_timeout: spec.quiet_timeout,
        accel: spec.accel,
        echo: spec.echo,
    });
    let _ = std::fs::remove_file(&initrd);
    let outcome = result?;
    eprintln!(
        "vm: {} boot {} total {:.1}s, guest exit {}",
        outcome.accel,
        outcome.boot_seconds.map_or_else(|| "?".to_string(), |s| format!("{s:.1}s")),
        outcome.total_seconds,
        outcome.exit.map_or_else(|| "unknown (no verdict line)".to_string(), |c| c.to_string())
    );
    Ok(outcome)
}

/// iptables (nft and legacy), ip, tc, conntrack, ipset, nft, with libraries,
/// xtables plugins (dlopened, so `ldd` cannot see them) and the files they read.
fn install_userspace(tree: &mut Tree) -> Result<()> {
    for prog in GUEST_PROGRAMS {
        let path = Path::new(prog);
        if path.exists() {
            tree.add(path, path)?;
        } else {
            eprintln!("vm: warning: {prog} is not installed on the host; the guest will lack it");
        }
    }
    let multi = |tree: &mut Tree, names: &[&str], target: &str| {
        for n in names {
            tree.symlink(format!("usr/sbin/{n}"), target);
        }
    };
    // The host's `iptables` alternative decides the guest's, so both run the same backend.
    let nft_names = [
        "iptables-nft",
        "iptables-nft-save",
        "iptables-nft-restore",
        "ip6tables-nft",
        "ip6tables-nft-save",
        "ip6tables-nft-restore",
    ];
    multi(tree, &nft_names, "xtables-nft-multi");
    let legacy_names = [
        "iptables-legacy",
        "iptables-legacy-save",
        "iptables-legacy-restore",
        "ip6tables-legacy",
        "ip6tables-legacy-save",
        "ip6tables-legacy-restore",
    ];
    multi(tree, &legacy_names, "xtables-legacy-multi");
    for n in ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"] {
        let host = Path::new("/usr/sbin").join(n);
        let target = std::fs::canonicalize(&host).ok();
        let target =
            target.as_deref().and_then(|t| t.file_name()).and_then(|t| t.to_str()).unwrap_or("xtables-nft-multi");
        tree.symlink(format!("usr/sbin/{n}"), target);
    }
    tree.symlink("bin/ip", "/usr/bin/ip");
    tree.symlink("sbin/ip", "/usr/bin/ip");
    let plugins = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    if plugins.is_dir() {
        tree.add(plugins, plugins)?;
    }
    // The CA bundle: kube-rs (rustls with the system's roots) refuses to build
    // a client without one, even for a plain-http API server.
    for etc in [
        "/etc/protocols",
        "/etc/services",
        "/etc/ethertypes",
        "/etc/iproute2/rt_tables",
        "/etc/ssl/certs/ca-certificates.crt",
    ] {
        if Path::new(etc).exists() {
            tree.file(Path::new(etc), etc)?;
        }
    }
    tree.data("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    tree.data("etc/group", "root:x:0:\n", 0o644);
    tree.data("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    tree.data("etc/nsswitch.conf", "hosts: files\n", 0o644);
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage:
  cargo xtask vm run [OPTIONS] -- COMMAND...   run a command in the VM; exits with its status
  cargo xtask vm test [OPTIONS]                build the kernel-facing tests and run them in the VM
  cargo xtask vm bench [--backends a,b] [--services 1000,10000] [--endpoints 10]
                                               sync times of the backends, side by side in one VM
  cargo xtask vm fetch                         install host packages and cache the kernel

run options:
  --add HOST[:GUEST]     copy a file or directory into the guest (default GUEST: /work/<name>);
                         ELF files bring their shared libraries
  --modules A,B          extra kernel modules to load at boot
  --env K=V              environment of the guest command
  --out DIR              host directory shared at /out in the guest (9p)
  --quiet-timeout SECS   kill the VM after SECS without console output
                         (default 300, or SWITCHYARD_VM_QUIET_TIMEOUT)
  --timeout SECS         overall cap (default 3600, or SWITCHYARD_VM_TIMEOUT)
  --memory MIB, --cpus N
  --accel auto|kvm|tcg   default auto: KVM with a short boot deadline, then TCG
                         (also SWITCHYARD_VM_ACCEL)

test options: see `cargo xtask vm test --help`

environment: SWITCHYARD_VM_CACHE (default /var/cache/switchyard-vm),
  SWITCHYARD_VM_KERNEL_PACKAGE (default: the 6.1 kernel linux-image-amd64 depends on)"
    );
    ExitCode::from(2)
}

/// Parses the options shared by `run` and `test` into `spec`; returns the rest.
pub fn parse_common(args: &[String], spec: &mut Spec) -> std::result::Result<Vec<String>, String> {
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--" => {
                rest.push("--".to_string());
                rest.extend(it.by_ref().cloned());
                break;
            }
            "--add" => {
                let v = value("--add")?;
                let (host, guest) = match v.split_once(':') {
                    Some((h, g)) => (PathBuf::from(h), PathBuf::from(g)),
                    None => {
                        let h = PathBuf::from(&v);
                        let name = h.file_name().ok_or_else(|| format!("--add {v}: no file name"))?.to_owned();
                        (h, Path::new("/work").join(name))
                    }
                };
                spec.adds.push((host, guest));
            }
            "--modules" => {
                spec.modules.extend(value("--modules")?.split(',').filter(|s| !s.is_empty()).map(String::from))
            }
            "--env" => {
                let v = value("--env")?;
                let (k, val) = v.split_once('=').ok_or_else(|| format!("--env {v}: expected K=V"))?;
                spec.env.push((k.to_string(), val.to_string()));
            }
            "--out" => spec.out_dir = Some(PathBuf::from(value("--out")?)),
            "--timeout" => {
                spec.timeout = Duration::from_secs(value("--timeout")?.parse().map_err(|e| format!("--timeout: {e}"))?)
            }
            "--quiet-timeout" => {
                spec.quiet_timeout =
                    Duration::from_secs(value("--quiet-timeout")?.parse().map_err(|e| format!("--quiet-timeout: {e}"))?)
            }
            "--memory" => spec.memory_mib = Some(value("--memory")?.parse().map_err(|e| format!("--memory: {e}"))?),
            "--cpus" => spec.cpus = value("--cpus")?.parse().map_err(|e| format!("--cpus: {e}"))?,
            "--accel" => {
                let v = value("--accel")?;
                spec.accel = Accel::parse(&v).ok_or_else(|| format!("--accel {v}: expected auto, kvm or tcg"))?;
            }
            _ => rest.push(a.clone()),
        }
    }
    Ok(rest)
}

pub fn main(args: Vec<String>) -> ExitCode {
    let Some((sub, args)) = args.split_first() else { return usage() };
    match sub.as_str() {
        "run" => {
            let mut spec = Spec::default();
            let rest = match parse_common(args, &mut spec) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("vm run: {e}");
                    return usage();
                }
            };
            let command: Vec<String> = rest.iter().skip_while(|a| *a != "--").skip(1).cloned().collect();
            if command.is_empty() || rest.first().is_some_and(|a| a != "--") {
                return usage();
            }
            // One argument is taken as a shell command line, several as words.
            spec.command = if command.len() == 1 {
                command[0].clone()
            } else {
                command.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
            };
            exit_with(run(&spec))
        }
        "test" => test::main(args),
        "bench" => bench::main(args),
        "fetch" => match kernel::ensure_packages(kernel::HOST_PACKAGES).and_then(|()| kernel::ensure_kernel()) {
            Ok(Kernel { release, vmlinuz, .. }) => {
                println!("{release} {}", vmlinuz.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vm fetch: {e}");
                ExitCode::FAILURE
            }
        },
        _ => usage(),
    }
}

/// The guest command's status as ours; 1 when the VM itself failed.
pub fn exit_with(r: Result<Outcome>) -> ExitCode {
    match r {
        Ok(Outcome { exit: Some(code), .. }) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Ok(Outcome { exit: None, .. }) => {
            eprintln!("vm: the guest printed no verdict line (crash? kernel panic?)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a-b/c"), "a-b/c");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn init_has_verdict_and_modules_in_order() {
        let spec = Spec { command: "true".into(), ..Spec::default() };
        let s = init_script(&spec, &["crc32c_generic".into(), "ip_vs".into()]);
        assert!(s.contains("for m in crc32c_generic ip_vs;"));
        assert!(s.contains("SWITCHYARD-VM-RESULT exit=$rc"));
    }
}
