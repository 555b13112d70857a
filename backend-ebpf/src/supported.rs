//! Whether this node can run the eBPF dataplane, checked without changing anything.

use std::path::Path;

use aya::util::KernelVersion;

use crate::client;
use crate::config::EbpfConfig;

/// The oldest kernel the programs are written for.
pub const MIN_KERNEL: (u8, u8) = (5, 10);

/// Ok, or the reason the mode cannot run here.
pub fn probe(cfg: &EbpfConfig) -> Result<(), String> {
    let v = KernelVersion::current().map_err(|e| format!("cannot read the kernel version: {e}"))?;
    if v < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
        return Err(format!("kernel {v:?} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)".into());
    }
    if cfg.private_bpffs.is_some() {
        // A test namespace without a host bpffs: load mounts one of its own.
        return cgroup_ok(cfg);
    }
    let mut dir: &Path = &cfg.pin_path;
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    if !client::is_bpffs(dir) {
        return Err(format!("{} is not on a bpffs (mount -t bpf bpf /sys/fs/bpf)", dir.display()));
    }
    cgroup_ok(cfg)
}

fn cgroup_ok(cfg: &EbpfConfig) -> Result<(), String> {
    if let Some(cg) = &cfg.cgroup_path
        && !cg.join("cgroup.procs").exists()
    {
        return Err(format!("ebpf.cgroupPath {} is not a cgroup v2 directory", cg.display()));
    }
    Ok(())
}
