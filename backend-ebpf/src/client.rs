//! Kernel operations: loading the object, attaching programs, pins.
//!
//! Everything here runs on a thread inside the backend's network namespace
//! (`NetNamespace::run`): interface names, netlink and the netns cookie are
//! per namespace. Pins live under `<pinPath>`:
//!
//! ```text
//! <pinPath>/maps/swy_*            every map (bpftool map show pinned …)
//! <pinPath>/links/tc-<ifname>     TCX links, kernel >= 6.6 (bpftool link show pinned …)
//! <pinPath>/links/cg-<program>    cgroup socket-hook links
//! ```
//!
//! On kernels before 6.6 the TC program is a clsact filter
//! (`tc filter add dev IF ingress prio 0x5359 handle 1 bpf da obj …`),
//! which outlives the process by itself and is found again by priority and
//! handle.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use crate::EbpfError;
use crate::config::EbpfConfig;
use crate::layout;

/// The compiled programs (see build.rs).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switchyard.bpf.o"));

/// The TC program's C function name.
pub const TC_PROGRAM: &str = "swy_tc_ingress";
/// The TC programs: (C function, hook, pin-name prefix).
pub const TC_PROGRAMS: [(&str, TcAttachType, &str); 2] =
    [(TC_PROGRAM, TcAttachType::Ingress, "tc-"), ("swy_tc_egress", TcAttachType::Egress, "tce-")];
/// The socket hooks, in attach order.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "swy_connect4",
    "swy_connect6",
    "swy_sendmsg4",
    "swy_sendmsg6",
    "swy_recvmsg4",
    "swy_recvmsg6",
    "swy_getpeername4",
    "swy_getpeername6",
];

/// Priority and handle of our clsact filter on kernels without TCX.
pub const NL_PRIORITY: u16 = 0x5359;
pub const NL_HANDLE: u16 = 1;

/// TCX (kernel >= 6.6) or a netlink clsact filter.
pub fn use_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Key and value sizes each pinned map must have to be adopted.
fn expected_sizes(name: &str) -> Option<(u32, u32)> {
    use std::mem::size_of;
    let s = |k: usize, v: usize| Some((k as u32, v as u32));
    match name {
        "swy_svc" => s(size_of::<layout::SvcKey>(), size_of::<layout::SvcVal>()),
        "swy_route" => s(8, size_of::<layout::RouteVal>()),
        "swy_backend" => s(size_of::<layout::BackendKey>(), size_of::<layout::Backend>()),
        "swy_maglev" => s(size_of::<layout::MaglevKey>(), size_of::<layout::MaglevVal>()),
        "swy_ct" => s(size_of::<layout::CtKey>(), size_of::<layout::CtVal>()),
        "swy_seen" => s(size_of::<layout::CtKey>(), 8),
        "swy_affinity" => s(size_of::<layout::AffKey>(), size_of::<layout::AffVal>()),
        "swy_node_addrs" => s(16, 4),
        "swy_cidrs" => s(20, 4),
        "swy_srcrange" => s(4 + size_of::<layout::SrcRangeData>(), 4),
        "swy_sock" => s(size_of::<layout::SockKey>(), size_of::<layout::SockVal>()),
        "swy_config" => s(4, size_of::<layout::Config>()),
        "swy_stats" => s(4, 8),
        _ => None,
    }
}

/// Removes pinned maps that this build cannot adopt (another layout or a
/// changed configured size), so that loading creates them afresh.
/// Returns the names removed.
pub fn drop_incompatible_pins(cfg: &EbpfConfig) -> Vec<String> {
    let dir = cfg.maps_dir();
    let sizes: std::collections::BTreeMap<&str, u32> = cfg.map_sizes.by_map().into_iter().collect();
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = match (MapInfo::from_pin(entry.path()), expected_sizes(&name)) {
            (Ok(info), Some((k, v))) => {
                info.key_size() == k
                    && info.value_size() == v
                    && sizes.get(name.as_str()).is_none_or(|want| info.max_entries() == *want)
            }
            _ => false,
        };
        if !keep && fs::remove_file(entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Loads the object (maps pinned by name under `<pinPath>/maps`, adopting
/// existing pins) and every program into the kernel.
pub fn load(cfg: &EbpfConfig) -> Result<Ebpf, EbpfError> {
    if let Some(mount) = &cfg.private_bpffs {
        mount_private_bpffs(mount)?;
    }
    for dir in [cfg.maps_dir(), cfg.links_dir()] {
        fs::create_dir_all(&dir).map_err(|e| EbpfError::io(format!("create {}", dir.display()), e))?;
    }
    let removed = drop_incompatible_pins(cfg);
    if !removed.is_empty() {
        tracing::warn!(maps = ?removed, "pinned maps with another layout or size were replaced (their state is lost)");
    }
    let maps_dir = cfg.maps_dir();
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&maps_dir);
    for (name, size) in cfg.map_sizes.by_map() {
        loader.map_max_entries(name, size);
    }
    let mut ebpf = loader.load(BPF_OBJECT).map_err(|e| EbpfError::Load { source: Box::new(e) })?;
    for (name, _, _) in TC_PROGRAMS {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(|e| EbpfError::program(name, e))?;
        tc.load().map_err(|e| EbpfError::program(name, e))?;
    }
    for name in SOCK_PROGRAMS {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(|e| EbpfError::program(name, e))?;
        p.load().map_err(|e| EbpfError::program(name, e))?;
    }
    Ok(ebpf)
}

/// The interfaces of the current namespace that get the TC program, with
/// their index (`ip -o link`; one netlink dump).
pub fn interfaces(cfg: &EbpfConfig) -> Result<BTreeMap<String, u32>, EbpfError> {
    let all = nix::net::if_::if_nameindex().map_err(|e| EbpfError::io("list interfaces", io::Error::from(e)))?;
    Ok(all
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .filter(|(name, _)| match &cfg.interfaces {
            Some(wanted) => wanted.contains(name),
            None => name != "lo",
        })
        .collect())
}

fn tc_pin(cfg: &EbpfConfig, prefix: &str, ifname: &str) -> PathBuf {
    cfg.links_dir().join(format!("{prefix}{ifname}"))
}

/// Attaches (or atomically replaces) the TC programs on `ifname`: ingress
/// (NAT, reverse NAT, reject) and egress (reverse NAT of the node's own replies).
///
/// TCX: the pinned link is updated in place (`bpf_link_update`), or created
/// and pinned. Netlink: our filter (prio/handle fixed) is replaced, or added
/// after `tc qdisc add dev IF clsact`.
pub fn attach_tc(ebpf: &mut Ebpf, cfg: &EbpfConfig, ifname: &str, tcx: bool) -> Result<(), EbpfError> {
    if !tcx {
        // clsact may already be there (ours or someone else's): EEXIST is fine.
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
    }
    for (name, hook, prefix) in TC_PROGRAMS {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(|e| EbpfError::program(name, e))?;
        attach_one(prog, cfg, ifname, hook, prefix, tcx)?;
    }
    Ok(())
}

fn attach_one(
    prog: &mut SchedClassifier,
    cfg: &EbpfConfig,
    ifname: &str,
    hook: TcAttachType,
    prefix: &str,
    tcx: bool,
) -> Result<(), EbpfError> {
    let err = |e| EbpfError::attach(ifname, e);
    if tcx {
        let pin = tc_pin(cfg, prefix, ifname);
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let link = SchedClassifierLink::try_from(FdLink::from(old));
            if let Ok(link) = link
                && let Ok(id) = prog.attach_to_link(link)
            {
                // Still pinned: dropping our handle leaves it attached.
                let _ = prog.take_link(id).map(FdLink::try_from);
                return Ok(());
            }
            // Defunct (its interface went away) or not a TCX link: replace it.
            let _ = fs::remove_file(&pin);
        }
        let id =
            prog.attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        let fd = FdLink::try_from(link).map_err(|e| EbpfError::Pin { path: pin.clone(), source: Box::new(e) })?;
        fd.pin(&pin).map_err(|e| EbpfError::Pin { path: pin.clone(), source: Box::new(e) })?;
        return Ok(());
    }
    let handle = TcHandle::new(0, NL_HANDLE);
    if let Ok(existing) = SchedClassifierLink::attached(ifname, hook, NL_PRIORITY, handle, None)
        && let Ok(id) = prog.attach_to_link(existing)
    {
        if let Ok(link) = prog.take_link(id) {
            // A netlink filter stays until deleted; the handle must not detach it on drop.
            std::mem::forget(link);
        }
        return Ok(());
    }
    let id = prog
        .attach_with_options(
            ifname,
            hook,
            TcAttachOptions::Netlink(NlOptions { priority: NL_PRIORITY, handle, classid: None }),
        )
        .map_err(err)?;
    let link = prog.take_link(id).map_err(err)?;
    std::mem::forget(link);
    Ok(())
}

/// Detaches the TC programs from `ifname` (both kinds): `rm <pins>`,
/// `tc filter del dev IF ingress|egress prio 0x5359 handle 1 bpf`.
pub fn detach_tc(cfg: &EbpfConfig, ifname: &str) {
    for (name, hook, prefix) in TC_PROGRAMS {
        let _ = fs::remove_file(tc_pin(cfg, prefix, ifname));
        let _ = aya::programs::tc::qdisc_detach_program(ifname, hook, name);
    }
}

/// Pinned TC links whose interface no longer exists in this namespace.
pub fn stale_tc_pins(cfg: &EbpfConfig, present: &BTreeMap<String, u32>) -> Vec<String> {
    let Ok(entries) = fs::read_dir(cfg.links_dir()) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            TC_PROGRAMS.iter().find_map(|(_, _, prefix)| name.strip_prefix(prefix).map(str::to_string))
        })
        .filter(|ifname| !present.contains_key(ifname))
        .collect()
}

fn cg_pin(cfg: &EbpfConfig, name: &str) -> PathBuf {
    cfg.links_dir().join(format!("cg-{name}"))
}

/// Attaches every socket hook to the cgroup (as bpf_links, so other
/// programs there keep running) and pins the links; the previous links (a
/// previous run's programs) are detached after the new ones are in place.
pub fn attach_cgroup(ebpf: &mut Ebpf, cfg: &EbpfConfig, cgroup: &Path) -> Result<(), EbpfError> {
    let dir = fs::File::open(cgroup).map_err(|e| EbpfError::io(format!("open cgroup {}", cgroup.display()), e))?;
    for name in SOCK_PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(|e| EbpfError::program(name, e))?;
        let err = |e| EbpfError::attach(&cgroup.display().to_string(), e);
        // A bpf_link attachment (aya uses one on >= 5.7) must pass flags 0
        // ("Single") and always coexists with other programs on the cgroup.
        let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        let fd = FdLink::try_from(link).map_err(|e| EbpfError::Pin { path: cg_pin(cfg, name), source: Box::new(e) })?;
        let pin = cg_pin(cfg, name);
        // bpffs refuses names with a dot.
        let tmp = cfg.links_dir().join(format!("cg-{name}-new"));
        let _ = fs::remove_file(&tmp);
        fd.pin(&tmp).map_err(|e| EbpfError::Pin { path: tmp.clone(), source: Box::new(e) })?;
        // Removing the old pin drops the last reference to the old link: detached.
        let _ = fs::remove_file(&pin);
        fs::rename(&tmp, &pin).map_err(|e| EbpfError::io(format!("rename {}", tmp.display()), e))?;
    }
    Ok(())
}

/// The network namespace cookie of the calling thread (`SO_NETNS_COOKIE`,
/// kernel 5.14); 0 when unknown, which makes the socket hooks act in every namespace.
pub fn netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket/getsockopt/close on a descriptor we own, with a
    // correctly sized output buffer.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return 0;
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len);
        libc::close(fd);
        if rc == 0 { cookie } else { 0 }
    }
}

/// The addresses of the current namespace's interfaces.
pub fn local_addresses() -> Vec<(String, std::net::IpAddr)> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                std::net::IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                std::net::IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push((a.interface_name.clone(), ip));
        }
    }
    out
}

/// Removes everything under the pin path: links first (detaching TCX and
/// cgroup programs), then maps, then the directories. Netlink filters are
/// removed by `detach_tc` per interface.
pub fn unpin_all(cfg: &EbpfConfig) -> Result<(), EbpfError> {
    for dir in [cfg.links_dir(), cfg.maps_dir()] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                fs::remove_file(e.path()).map_err(|err| EbpfError::io(format!("unpin {}", e.path().display()), err))?;
            }
        }
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(EbpfError::io(format!("remove {}", dir.display()), e)),
        }
    }
    match fs::remove_dir(&cfg.pin_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EbpfError::io(format!("remove {}", cfg.pin_path.display()), e)),
    }
}

/// Mounts a bpffs instance of our own at `mount` unless one is there
/// (`mkdir -p MOUNT && mount -t bpf bpf MOUNT`). Each mount of bpffs is a
/// new, empty instance: nothing else on the machine sees these pins.
pub fn mount_private_bpffs(mount: &Path) -> Result<(), EbpfError> {
    fs::create_dir_all(mount).map_err(|e| EbpfError::io(format!("create {}", mount.display()), e))?;
    if is_bpffs(mount) {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), mount, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| EbpfError::io(format!("mount -t bpf bpf {}", mount.display()), io::Error::from(e)))?;
    tracing::info!(mount = %mount.display(), "mounted a private bpffs (/sys/fs/bpf is not a bpffs here)");
    Ok(())
}

/// Unmounts and removes a bpffs [`mount_private_bpffs`] created
/// (`umount MOUNT && rmdir MOUNT`), and its parent directories when empty.
pub fn unmount_private_bpffs(mount: &Path) -> Result<(), EbpfError> {
    if is_bpffs(mount) {
        nix::mount::umount(mount)
            .map_err(|e| EbpfError::io(format!("umount {}", mount.display()), io::Error::from(e)))?;
    }
    match fs::remove_dir(mount) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(EbpfError::io(format!("remove {}", mount.display()), e)),
    }
    // Only our own directories, and only when empty (other labs may use them).
    let base = Path::new(crate::config::PRIVATE_BPFFS_DIR);
    if mount.parent() == Some(base) {
        let _ = fs::remove_dir(base);
        if let Some(top) = base.parent() {
            let _ = fs::remove_dir(top);
        }
    }
    Ok(())
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
