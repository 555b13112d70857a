//! Removing everything the backend installs, from any process.

use crate::EbpfError;
use crate::client;
use crate::config::EbpfConfig;

/// Detaches the TC program from every interface of the current namespace
/// (netlink filters; TCX links go with their pins), then unpins links
/// (detaching TCX and cgroup programs) and maps, and removes the pin
/// directory. Succeeds when there is nothing to remove.
///
/// Also unmounts the private bpffs of namespaces that no longer exist
/// (runs that ended without cleanup leave theirs; see
/// [`client::collect_dead_private_bpffs`]).
///
/// CLI equivalent: `tc filter del dev IF ingress prio 0x5359 handle 1 bpf`
/// per interface, then `rm -r /sys/fs/bpf/switchyard` (and `umount` of a
/// private bpffs the backend mounted for a test namespace).
pub fn cleanup(cfg: &EbpfConfig) -> Result<(), EbpfError> {
    if let Ok(ifaces) = nix::net::if_::if_nameindex() {
        for i in ifaces.iter() {
            let name = i.name().to_string_lossy();
            if name != "lo" {
                client::detach_tc(cfg, &name);
            }
        }
    }
    client::unpin_all(cfg)?;
    if let Some(mount) = &cfg.private_bpffs {
        client::unmount_private_bpffs(mount)?;
    }
    client::collect_dead_private_bpffs(None);
    Ok(())
}
