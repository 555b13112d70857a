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

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use crate::EbpfError;
use crate::config::EbpfConfig;
use crate::{layout, netlink, sys};

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

/// The cgroup attach type of a socket hook (its `SEC("cgroup/…")`).
pub fn sock_attach_type(name: &str) -> u32 {
    use sys::attach_type::*;
    match name {
        "swy_connect4" => CGROUP_INET4_CONNECT,
        "swy_connect6" => CGROUP_INET6_CONNECT,
        "swy_sendmsg4" => CGROUP_UDP4_SENDMSG,
        "swy_sendmsg6" => CGROUP_UDP6_SENDMSG,
        "swy_recvmsg4" => CGROUP_UDP4_RECVMSG,
        "swy_recvmsg6" => CGROUP_UDP6_RECVMSG,
        "swy_getpeername4" => CGROUP_INET4_GETPEERNAME,
        _ => CGROUP_INET6_GETPEERNAME,
    }
}

/// How a hook is named in logs, health reasons and `inspect`.
pub fn tc_hook_name(hook: TcAttachType, ifname: &str) -> String {
    let dir = if hook == TcAttachType::Egress { "egress" } else { "ingress" };
    format!("tc {dir} on {ifname}")
}

pub fn cgroup_hook_name(program: &str, cgroup: &Path) -> String {
    format!("cgroup {} on {}", program.trim_start_matches("swy_"), cgroup.display())
}

/// A link this process keeps open, and where it should be pinned. The
/// descriptor keeps the program attached whatever happens to the pin
/// (removed by hand, its bpffs unmounted); the pin keeps it attached
/// after this process ends, so that routing continues across restarts.
#[derive(Debug)]
pub struct HeldLink {
    pub fd: OwnedFd,
    pub id: u32,
    pub pin: PathBuf,
}

impl HeldLink {
    /// Takes a descriptor of our own for `link` (aya's cannot be borrowed,
    /// and its `pin` closes it on failure, which would detach the link),
    /// then pins it at `pin` unless `pinned` says it is there already. A
    /// failed pin is logged and left to the next check: the link stays
    /// attached through our descriptor.
    fn take(link: FdLink, pin: &Path, pinned: bool) -> Result<HeldLink, EbpfError> {
        let pin_err =
            |e: Box<dyn std::error::Error + Send + Sync>| EbpfError::Pin { path: pin.to_path_buf(), source: e };
        let id = link.info().map_err(|e| pin_err(Box::new(e)))?.id();
        let fd = sys::link_fd_by_id(id).map_err(|e| pin_err(Box::new(e)))?;
        drop(link);
        let held = HeldLink { fd, id, pin: pin.to_path_buf() };
        if !pinned && let Err(e) = held.pin_at(pin) {
            tracing::warn!(pin = %pin.display(), error = %e, "pinning a link failed; it stays attached while this process runs");
        }
        Ok(held)
    }

    /// `bpftool link pin id N PATH`.
    pub fn pin_at(&self, path: &Path) -> io::Result<()> {
        sys::obj_pin(self.fd.as_fd(), path)
    }

    /// Whether the pin still names this link (a pin replaced by another
    /// link counts as missing).
    pub fn pinned(&self) -> bool {
        sys::obj_get(&self.pin).and_then(|fd| sys::link_id(fd.as_fd())).is_ok_and(|id| id == self.id)
    }
}

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
        collect_dead_private_bpffs(Some(mount));
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
/// Returns the links held open (TCX; none for netlink filters, which stay
/// until deleted).
///
/// TCX: the pinned link is updated in place (`bpf_link_update`), or created
/// and pinned. Netlink: our filter (prio/handle fixed) is replaced, or added
/// after `tc qdisc add dev IF clsact`.
pub fn attach_tc(ebpf: &mut Ebpf, cfg: &EbpfConfig, ifname: &str, tcx: bool) -> Result<Vec<HeldLink>, EbpfError> {
    let mut held = Vec::new();
    for (i, _) in TC_PROGRAMS.iter().enumerate() {
        held.extend(attach_tc_hook(ebpf, cfg, ifname, i, tcx)?);
    }
    Ok(held)
}

/// Attaches one of [`TC_PROGRAMS`] (by index) to `ifname`; see [`attach_tc`].
pub fn attach_tc_hook(
    ebpf: &mut Ebpf,
    cfg: &EbpfConfig,
    ifname: &str,
    index: usize,
    tcx: bool,
) -> Result<Option<HeldLink>, EbpfError> {
    let (name, hook, prefix) = TC_PROGRAMS[index];
    if !tcx {
        // clsact may already be there (ours or someone else's): EEXIST is fine.
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
    }
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|e| EbpfError::program(name, e))?;
    attach_one(prog, cfg, ifname, hook, prefix, tcx)
}

fn attach_one(
    prog: &mut SchedClassifier,
    cfg: &EbpfConfig,
    ifname: &str,
    hook: TcAttachType,
    prefix: &str,
    tcx: bool,
) -> Result<Option<HeldLink>, EbpfError> {
    let err = |e| EbpfError::attach(&tc_hook_name(hook, ifname), e);
    if tcx {
        let pin = tc_pin(cfg, prefix, ifname);
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let link = SchedClassifierLink::try_from(FdLink::from(old));
            if let Ok(link) = link
                && let Ok(id) = prog.attach_to_link(link)
            {
                let link = prog.take_link(id).map_err(err)?;
                let fd =
                    FdLink::try_from(link).map_err(|e| EbpfError::Pin { path: pin.clone(), source: Box::new(e) })?;
                return HeldLink::take(fd, &pin, true).map(Some);
            }
            // Defunct (detached, or its interface went away) or not a TCX link: replace it.
            let _ = fs::remove_file(&pin);
        }
        let id =
            prog.attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        let fd = FdLink::try_from(link).map_err(|e| EbpfError::Pin { path: pin.clone(), source: Box::new(e) })?;
        return HeldLink::take(fd, &pin, false).map(Some);
    }
    let handle = TcHandle::new(0, NL_HANDLE);
    if let Ok(existing) = SchedClassifierLink::attached(ifname, hook, NL_PRIORITY, handle, None)
        && let Ok(id) = prog.attach_to_link(existing)
    {
        if let Ok(link) = prog.take_link(id) {
            // A netlink filter stays until deleted; the handle must not detach it on drop.
            std::mem::forget(link);
        }
        return Ok(None);
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
    Ok(None)
}

/// Detaches the TC programs from `ifname` (both kinds): `rm <pins>`,
/// `tc filter del dev IF ingress|egress prio 0x5359 handle 1 bpf`. A link
/// this process still holds stays attached until its [`HeldLink`] is dropped.
pub fn detach_tc(cfg: &EbpfConfig, ifname: &str) {
    for (name, hook, prefix) in TC_PROGRAMS {
        let _ = fs::remove_file(tc_pin(cfg, prefix, ifname));
        let _ = aya::programs::tc::qdisc_detach_program(ifname, hook, name);
    }
}

/// Pinned TC links whose interface no longer exists in this namespace.
pub fn stale_tc_pins(cfg: &EbpfConfig, present: &BTreeMap<String, u32>) -> Vec<String> {
    let Ok(entries) = fs::read_dir(cfg.links_dir()) else { return Vec::new() };
    let stale: BTreeSet<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            TC_PROGRAMS.iter().find_map(|(_, _, prefix)| name.strip_prefix(prefix).map(str::to_string))
        })
        .filter(|ifname| !present.contains_key(ifname))
        .collect();
    stale.into_iter().collect()
}

fn cg_pin(cfg: &EbpfConfig, name: &str) -> PathBuf {
    cfg.links_dir().join(format!("cg-{name}"))
}

fn open_cgroup(cgroup: &Path) -> Result<fs::File, EbpfError> {
    fs::File::open(cgroup).map_err(|e| EbpfError::io(format!("open cgroup {}", cgroup.display()), e))
}

/// Attaches every socket hook to the cgroup (as bpf_links, so other
/// programs there keep running) and pins the links; the previous links (a
/// previous run's programs) are detached after the new ones are in place.
pub fn attach_cgroup(
    ebpf: &mut Ebpf,
    cfg: &EbpfConfig,
    cgroup: &Path,
) -> Result<BTreeMap<&'static str, HeldLink>, EbpfError> {
    let dir = open_cgroup(cgroup)?;
    let mut held = BTreeMap::new();
    for name in SOCK_PROGRAMS {
        held.insert(name, attach_cgroup_hook(ebpf, cfg, &dir, cgroup, name)?);
    }
    Ok(held)
}

/// Attaches one socket hook; see [`attach_cgroup`].
pub fn attach_cgroup_hook(
    ebpf: &mut Ebpf,
    cfg: &EbpfConfig,
    dir: &fs::File,
    cgroup: &Path,
    name: &'static str,
) -> Result<HeldLink, EbpfError> {
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|e| EbpfError::program(name, e))?;
    let err = |e| EbpfError::attach(&cgroup_hook_name(name, cgroup), e);
    // A bpf_link attachment (aya uses one on >= 5.7) must pass flags 0
    // ("Single") and always coexists with other programs on the cgroup.
    let id = prog.attach(dir, CgroupAttachMode::Single).map_err(err)?;
    let link = prog.take_link(id).map_err(err)?;
    let pin = cg_pin(cfg, name);
    let fd = FdLink::try_from(link).map_err(|e| EbpfError::Pin { path: pin.clone(), source: Box::new(e) })?;
    // Pinned under a temporary name first (bpffs refuses names with a dot),
    // then moved over the old pin: removing that drops the last reference
    // to a previous run's link, which detaches it only now.
    let tmp = cfg.links_dir().join(format!("cg-{name}-new"));
    let _ = fs::remove_file(&tmp);
    let mut held = HeldLink::take(fd, &tmp, false)?;
    if tmp.exists() {
        let _ = fs::remove_file(&pin);
        fs::rename(&tmp, &pin).map_err(|e| EbpfError::io(format!("rename {}", tmp.display()), e))?;
    }
    held.pin = pin;
    Ok(held)
}

/// The ids of our loaded programs, by C function name.
pub fn program_ids(ebpf: &Ebpf) -> BTreeMap<&'static str, u32> {
    let mut ids = BTreeMap::new();
    for name in TC_PROGRAMS.iter().map(|(n, _, _)| *n).chain(SOCK_PROGRAMS) {
        if let Some(info) = ebpf.program(name).and_then(|p| p.info().ok()) {
            ids.insert(name, info.id());
        }
    }
    ids
}

/// Program ids attached to a TC hook of `ifindex`: the TCX list (>= 6.6,
/// `bpftool net show dev IF`), or our clsact filter's program (prio
/// 0x5359, handle 1; `tc filter show dev IF ingress`).
pub fn tc_attached_ids(ifindex: u32, hook: TcAttachType, tcx: bool) -> io::Result<Vec<u32>> {
    if tcx {
        let attach =
            if hook == TcAttachType::Egress { sys::attach_type::TCX_EGRESS } else { sys::attach_type::TCX_INGRESS };
        return sys::prog_query(ifindex, attach);
    }
    Ok(netlink::bpf_filters(ifindex, hook)?
        .into_iter()
        .filter(|f| f.priority == NL_PRIORITY && f.handle == u32::from(NL_HANDLE))
        .filter_map(|f| f.prog_id)
        .collect())
}

/// Program ids attached to `cgroup` for a socket hook's attach type
/// (`bpftool cgroup show PATH`).
pub fn cgroup_attached_ids(dir: &fs::File, program: &str) -> io::Result<Vec<u32>> {
    sys::prog_query(dir.as_raw_fd() as u32, sock_attach_type(program))
}

/// Re-pins every map `ebpf` holds whose pin is gone (removed by hand, or
/// its bpffs unmounted: a private one is mounted again). Returns how many.
pub fn repin_maps(ebpf: &Ebpf, cfg: &EbpfConfig) -> Result<u64, EbpfError> {
    if crate::maps::MAP_NAMES.iter().all(|m| cfg.maps_dir().join(m).exists()) {
        return Ok(0);
    }
    if let Some(mount) = &cfg.private_bpffs {
        mount_private_bpffs(mount)?;
    }
    for dir in [cfg.maps_dir(), cfg.links_dir()] {
        fs::create_dir_all(&dir).map_err(|e| EbpfError::io(format!("create {}", dir.display()), e))?;
    }
    let mut n = 0;
    for name in crate::maps::MAP_NAMES {
        let path = cfg.maps_dir().join(name);
        if path.exists() {
            continue;
        }
        let Some(map) = ebpf.map(name) else { continue };
        map.pin(&path).map_err(|e| EbpfError::Pin { path: path.clone(), source: Box::new(e) })?;
        n += 1;
    }
    Ok(n)
}

/// The ids of every map pinned under `<pinPath>/maps`.
fn pinned_map_ids(cfg: &EbpfConfig) -> BTreeSet<u32> {
    crate::maps::MAP_NAMES
        .iter()
        .filter_map(|m| MapInfo::from_pin(cfg.maps_dir().join(m)).ok())
        .map(|info| info.id())
        .collect()
}

/// Programs loaded in the kernel that use our pinned maps: ours, whichever
/// process loaded them (`bpftool prog show` filtered by map ids). What a
/// fresh process (`switchyard inspect`) compares attachments with.
pub fn our_program_ids(cfg: &EbpfConfig) -> BTreeSet<u32> {
    let maps = pinned_map_ids(cfg);
    if maps.is_empty() {
        return BTreeSet::new();
    }
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("swy_")))
        .filter(|p| p.map_ids().ok().flatten().is_some_and(|ids| ids.iter().any(|id| maps.contains(id))))
        .map(|p| p.id())
        .collect()
}

/// Hooks where our programs should run and the kernel shows none of
/// `ours`: every TC hook of every interface [`interfaces`] selects, and the
/// socket hooks of `cgroupPath` when set. Read from the kernel only.
pub fn unattached_hooks(cfg: &EbpfConfig, ours: &BTreeSet<u32>, tcx: bool) -> Result<Vec<String>, EbpfError> {
    let mut out = Vec::new();
    for (ifname, index) in interfaces(cfg)? {
        for (_, hook, _) in TC_PROGRAMS {
            match tc_attached_ids(index, hook, tcx) {
                Ok(ids) if ids.iter().any(|id| ours.contains(id)) => {}
                // Gone since the listing: not a hook any more.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                _ => out.push(tc_hook_name(hook, &ifname)),
            }
        }
    }
    if let Some(cg) = &cfg.cgroup_path {
        let dir = open_cgroup(cg).ok();
        for name in SOCK_PROGRAMS {
            let ok = dir.as_ref().and_then(|d| cgroup_attached_ids(d, name).ok());
            if !ok.is_some_and(|ids| ids.iter().any(|id| ours.contains(id))) {
                out.push(cgroup_hook_name(name, cg));
            }
        }
    }
    Ok(out)
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
/// new, empty instance: nothing else on the machine sees these pins. An
/// existing one (a previous run's, which left it for the next run so that
/// routing continued meanwhile) is reused, never stacked over. It records
/// the namespace it serves (`netns-<inode>-<cookie>`, a directory in it),
/// so that [`collect_dead_private_bpffs`] knows when it has outlived it.
/// Runs on a thread inside that namespace.
pub fn mount_private_bpffs(mount: &Path) -> Result<(), EbpfError> {
    fs::create_dir_all(mount).map_err(|e| EbpfError::io(format!("create {}", mount.display()), e))?;
    if !is_bpffs(mount) {
        nix::mount::mount(Some("bpf"), mount, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| EbpfError::io(format!("mount -t bpf bpf {}", mount.display()), io::Error::from(e)))?;
        tracing::info!(mount = %mount.display(), "mounted a private bpffs (/sys/fs/bpf is not a bpffs here)");
    }
    if let Some(ino) = netns_inode("/proc/thread-self/ns/net") {
        let _ = fs::create_dir(mount.join(format!("{NETNS_MARKER}{ino}-{}", netns_cookie())));
    }
    Ok(())
}

const NETNS_MARKER: &str = "netns-";

fn netns_inode(path: impl AsRef<Path>) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Unmounts and removes a bpffs [`mount_private_bpffs`] created
/// (`umount MOUNT && rmdir MOUNT`; every mount stacked there, should an
/// older version have stacked some), and its parent directories when empty.
pub fn unmount_private_bpffs(mount: &Path) -> Result<(), EbpfError> {
    for _ in 0..16 {
        if !is_bpffs(mount) {
            break;
        }
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

/// Unmounts the private bpffs instances (under `/run/switchyard/bpffs/`)
/// whose network namespace no longer exists: runs that ended without
/// `--cleanup` leave theirs mounted on purpose (routing continues while
/// the daemon is down), but once the namespace is deleted nothing will use
/// them again, and their maps hold kernel memory. A namespace counts as
/// alive while `/run/netns/<name>` exists, or a mount of it (nsfs: `ip
/// netns`, bind mounts) or a thread in it has the recorded inode and, the
/// kernel reusing inode numbers of freed namespaces, the recorded netns
/// cookie (never reused). Returns what was unmounted.
pub fn collect_dead_private_bpffs(keep: Option<&Path>) -> Vec<PathBuf> {
    let base = Path::new(crate::config::PRIVATE_BPFFS_DIR);
    let Ok(entries) = fs::read_dir(base) else { return Vec::new() };
    let mut live: Option<BTreeMap<u64, PathBuf>> = None;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let mount = entry.path();
        if Some(mount.as_path()) == keep || !is_bpffs(&mount) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if Path::new("/run/netns").join(&name).exists() {
            continue;
        }
        // (inode, cookie; 0 = unknown) of the namespace it served.
        let marker = fs::read_dir(&mount).ok().and_then(|d| {
            d.flatten().find_map(|e| {
                let name = e.file_name();
                let (ino, cookie) = name.to_str()?.strip_prefix(NETNS_MARKER)?.split_once('-')?;
                Some((ino.parse::<u64>().ok()?, cookie.parse::<u64>().ok()?))
            })
        });
        let owner = marker.or_else(|| name.strip_prefix("ino-").and_then(|n| n.parse().ok()).map(|ino| (ino, 0)));
        if let Some((ino, cookie)) = owner {
            let live = live.get_or_insert_with(live_netns_paths);
            // Unreadable (the thread just went away): alive, to be safe.
            if live.get(&ino).is_some_and(|path| cookie == 0 || netns_cookie_of(path).is_none_or(|c| c == cookie)) {
                continue;
            }
        }
        // Else neither a name that still exists nor a namespace that is
        // alive (or an older version's mount of a deleted named namespace).
        match unmount_private_bpffs(&mount) {
            Ok(()) => removed.push(mount),
            Err(e) => tracing::warn!(mount = %mount.display(), error = %e, "removing a stale private bpffs failed"),
        }
    }
    if !removed.is_empty() {
        tracing::info!(mounts = ?removed, "removed private bpffs mounts whose network namespace is gone");
    }
    removed
}

/// A path to every network namespace that is mounted (nsfs) or has a
/// thread in it, by inode.
fn live_netns_paths() -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            // "46 45 0:4 net:[4026532433] /run/netns/x rw … - nsfs nsfs rw"
            let mut fields = line.split_whitespace();
            let (Some(root), Some(point)) = (fields.nth(3), fields.next()) else { continue };
            if let Some(ino) = root.strip_prefix("net:[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse().ok())
            {
                out.entry(ino).or_insert_with(|| PathBuf::from(point));
            }
        }
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(tasks) = fs::read_dir(p.path().join("task")) else { continue };
            for t in tasks.flatten() {
                let path = t.path().join("ns/net");
                if let Some(ino) = netns_inode(&path) {
                    out.entry(ino).or_insert(path);
                }
            }
        }
    }
    out
}

/// The netns cookie of the namespace at `path`, read on a short-lived
/// thread that enters it.
fn netns_cookie_of(path: &Path) -> Option<u64> {
    let f = fs::File::open(path).ok()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            Some(netns_cookie()).filter(|c| *c != 0)
        })
        .join()
        .ok()
        .flatten()
    })
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
