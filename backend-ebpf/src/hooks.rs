//! Where our programs are attached, checked against the kernel and repaired.
//!
//! The backend keeps every link it attaches open (TCX links per interface
//! and hook, cgroup links per socket hook), so removing a pin detaches
//! nothing while it runs; pins only carry the datapath across restarts.
//! What it holds is not trusted as evidence: [`Hooks::verify`] asks the
//! kernel which programs run on every hook (`BPF_PROG_QUERY` on the
//! ifindex for TCX or on the cgroup, a tc filter dump before TCX) and
//! re-attaches ours where they are missing, re-pins what lost its pin, and
//! reports both. It runs on every full sync and, cheaply, every second in
//! the background ([`crate::monitor`]). [`Hooks::reconcile_interfaces`]
//! attaches to interfaces that appeared and forgets those that went away,
//! on every sync and on every rtnetlink link event.

use std::collections::BTreeMap;

use aya::Ebpf;
use proxy_core::{DataplaneHealth, ErrorChain};

use crate::client::{self, HeldLink};
use crate::config::EbpfConfig;

/// Repair kinds reported in `SyncOutcome.repairs`.
pub const REPAIR_TC: &str = "tc attachment";
pub const REPAIR_CGROUP: &str = "cgroup attachment";
pub const REPAIR_PIN: &str = "pin";

/// What is attached to one interface.
#[derive(Debug)]
pub struct Attachment {
    pub ifindex: u32,
    /// The TCX links of [`client::TC_PROGRAMS`], by index; None on kernels
    /// without TCX (a clsact filter has no descriptor) or after a failed attach.
    pub links: [Option<HeldLink>; 2],
}

/// The attachments of the loaded programs.
#[derive(Debug, Default)]
pub struct Hooks {
    pub attached: BTreeMap<String, Attachment>,
    /// Socket-hook links held open, by program.
    pub cgroup: BTreeMap<&'static str, HeldLink>,
    /// Our programs' ids (what the kernel's attachment lists are compared with).
    pub prog_ids: BTreeMap<&'static str, u32>,
    /// Repairs made between syncs, for the next sync's outcome.
    pub pending: BTreeMap<String, u64>,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Pass {
    pub repairs: BTreeMap<String, u64>,
    /// Hooks that should run our programs and do not, with why re-attaching failed.
    pub failures: Vec<String>,
    /// Interfaces attached for the first time.
    pub new_interfaces: Vec<String>,
}

impl Pass {
    fn repaired(&mut self, kind: &str, what: &str) {
        tracing::warn!(
            backend = crate::MODE,
            kind,
            hook = what,
            "repaired: our datapath was detached or unpinned there"
        );
        *self.repairs.entry(kind.to_string()).or_insert(0) += 1;
    }

    fn failed(&mut self, what: String, e: &(dyn std::error::Error + 'static)) {
        self.failures.push(format!("{what}: {}", ErrorChain(e)));
    }

    /// The dataplane's health after a pass that checked every hook.
    pub fn health(&self) -> DataplaneHealth {
        if self.failures.is_empty() {
            DataplaneHealth::Up
        } else {
            DataplaneHealth::Down {
                reason: format!("eBPF datapath detached and re-attaching failed: {}", self.failures.join("; ")),
            }
        }
    }
}

impl Hooks {
    /// Attaches to interfaces that appeared (or were recreated under the
    /// same name) and forgets those that went away, removing their pins.
    /// Fails only when the interfaces cannot be listed; an interface that
    /// refuses the programs is a failure in the pass.
    pub fn reconcile_interfaces(
        &mut self,
        ebpf: &mut Ebpf,
        cfg: &EbpfConfig,
        tcx: bool,
        pass: &mut Pass,
    ) -> Result<(), crate::EbpfError> {
        let present = client::interfaces(cfg)?;
        for (ifname, index) in &present {
            if self.attached.get(ifname).is_some_and(|a| a.ifindex == *index) {
                continue;
            }
            match client::attach_tc(ebpf, cfg, ifname, tcx) {
                Ok(held) => {
                    // TCX: one link per hook, in TC_PROGRAMS order; none for clsact filters.
                    let mut held = held.into_iter();
                    let links = [held.next(), held.next()];
                    self.attached.insert(ifname.clone(), Attachment { ifindex: *index, links });
                    pass.new_interfaces.push(ifname.clone());
                }
                Err(e) => {
                    self.attached.remove(ifname);
                    pass.failed(format!("tc on {ifname}"), &e);
                }
            }
        }
        self.attached.retain(|name, _| present.contains_key(name));
        for gone in client::stale_tc_pins(cfg, &present) {
            client::detach_tc(cfg, &gone);
        }
        Ok(())
    }

    /// Checks every hook in the kernel and repairs what is missing; see the module comment.
    pub fn verify(&mut self, ebpf: &mut Ebpf, cfg: &EbpfConfig, tcx: bool, pass: &mut Pass) {
        match client::repin_maps(ebpf, cfg) {
            Ok(n) => {
                for _ in 0..n {
                    pass.repaired(REPAIR_PIN, "maps");
                }
            }
            Err(e) => pass.failed("map pins".into(), &e),
        }
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for ifname in names {
            for (i, (prog, hook, _)) in client::TC_PROGRAMS.iter().enumerate() {
                let Some(att) = self.attached.get_mut(&ifname) else { break };
                let Some(want) = self.prog_ids.get(prog) else { continue };
                let what = client::tc_hook_name(*hook, &ifname);
                match client::tc_attached_ids(att.ifindex, *hook, tcx) {
                    Ok(ids) if ids.contains(want) => {
                        if let Some(link) = &att.links[i]
                            && !link.pinned()
                        {
                            repin(link, cfg, &what, pass);
                        }
                        continue;
                    }
                    // The interface went away: reconcile_interfaces forgets it.
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => break,
                    Err(e) => {
                        tracing::debug!(hook = %what, error = %e, "reading attachments failed; re-attaching");
                    }
                    Ok(_) => {}
                }
                match client::attach_tc_hook(ebpf, cfg, &ifname, i, tcx) {
                    Ok(link) => {
                        att.links[i] = link;
                        pass.repaired(REPAIR_TC, &what);
                    }
                    Err(e) => pass.failed(what, &e),
                }
            }
        }
        let Some(cg) = &cfg.cgroup_path else { return };
        let dir = match std::fs::File::open(cg) {
            Ok(dir) => dir,
            Err(e) => {
                pass.failed(format!("cgroup {}", cg.display()), &e);
                return;
            }
        };
        for name in client::SOCK_PROGRAMS {
            let what = client::cgroup_hook_name(name, cg);
            let attached = self
                .prog_ids
                .get(name)
                .is_some_and(|want| client::cgroup_attached_ids(&dir, name).is_ok_and(|ids| ids.contains(want)));
            if attached && let Some(link) = self.cgroup.get(name) {
                if !link.pinned() {
                    repin(link, cfg, &what, pass);
                }
                continue;
            }
            match client::attach_cgroup_hook(ebpf, cfg, &dir, cg, name) {
                Ok(link) => {
                    // Held before: it was attached and is not any more. Not
                    // held: the first attach (at start, or after a failure).
                    if self.cgroup.insert(name, link).is_some() {
                        pass.repaired(REPAIR_CGROUP, &what);
                    }
                }
                Err(e) => pass.failed(what, &e),
            }
        }
    }

    /// Adds a pass's repairs to those the next successful sync reports.
    pub fn defer(&mut self, pass: &Pass) {
        for (kind, n) in &pass.repairs {
            *self.pending.entry(kind.clone()).or_insert(0) += n;
        }
    }
}

fn repin(link: &HeldLink, cfg: &EbpfConfig, what: &str, pass: &mut Pass) {
    let _ = std::fs::create_dir_all(cfg.links_dir());
    // A pin naming another (defunct) link is in the way.
    let _ = std::fs::remove_file(&link.pin);
    match link.pin_at(&link.pin) {
        Ok(()) => pass.repaired(REPAIR_PIN, what),
        Err(e) => {
            // The link stays attached through our descriptor: not a broken
            // datapath, but a restart would lose it. Logged, retried.
            tracing::warn!(hook = what, pin = %link.pin.display(), error = %e, "re-pinning a link failed");
        }
    }
}
