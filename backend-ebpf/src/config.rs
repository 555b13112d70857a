//! The `ebpf:` configuration section.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

/// Where everything is pinned unless the configuration says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/switchyard";

/// Where a backend programming a test namespace mounts a bpffs of its own
/// when `/sys/fs/bpf` is not a bpffs (`<dir>/<namespace>`). Never the
/// host's `/sys/fs/bpf`: mounting there would change the machine.
pub const PRIVATE_BPFFS_DIR: &str = "/run/switchyard/bpffs";

/// The `ebpf:` section, e.g.
///
/// ```yaml
/// ebpf:
///   pinPath: /sys/fs/bpf/switchyard
///   cgroupPath: /sys/fs/cgroup        # socket LB for host-network clients
///   interfaces: [eth0, cni0]          # default: every interface but lo
///   maglev: false                     # Maglev for every Service
///   maglevServices: [default/web]     # ... or for these
///   mapSizes: { services: 65536, backends: 262144, conntrack: 131072 }
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// bpffs directory for maps and links; one per node (a unique one per test).
    pub pin_path: PathBuf,
    /// cgroup v2 directory for the socket hooks. None: no socket load
    /// balancing (host-network clients are not served; a warning at start
    /// says so, see `NO_CGROUP_LIMITATION`). Never defaulted to the
    /// machine's root cgroup. `cgroup` is accepted too (the conformance
    /// runner's spelling).
    #[serde(alias = "cgroup")]
    pub cgroup_path: Option<PathBuf>,
    /// Interfaces that get the TC program; None: every interface but `lo`,
    /// re-read at every sync and on every rtnetlink link event, so that a new
    /// pod interface gets the programs at once.
    pub interfaces: Option<Vec<String>>,
    pub maglev: bool,
    pub maglev_services: BTreeSet<String>,
    pub map_sizes: MapSizes,
    /// Source ports used for SNAT (outside the kernel's ephemeral range, so
    /// that they never collide with the node's own connections).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// An idle UDP flow picks a backend again after this long.
    pub udp_timeout_seconds: u32,
    /// A bpffs mount point this backend creates (and removes in cleanup)
    /// for `pin_path`: set by [`EbpfConfig::for_netns`] for a test
    /// namespace when `/sys/fs/bpf` is not a bpffs; never configured.
    #[serde(skip)]
    pub private_bpffs: Option<PathBuf>,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            cgroup_path: None,
            interfaces: None,
            maglev: false,
            maglev_services: BTreeSet::new(),
            map_sizes: MapSizes::default(),
            snat_port_min: 61000,
            snat_port_max: 65000,
            udp_timeout_seconds: 120,
            private_bpffs: None,
        }
    }
}

/// Maximum entries of each map.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MapSizes {
    /// Frontends (ClusterIP, NodePort, externalIP, LB IP per port).
    pub services: u32,
    /// Endpoint sets.
    pub routes: u32,
    /// Backend slots over all sets (an update briefly holds both generations of one set).
    pub backends: u32,
    /// Maglev tables (4 KiB each).
    pub maglev: u32,
    pub conntrack: u32,
    pub affinity: u32,
    pub sockets: u32,
    pub source_ranges: u32,
    /// Reply tuples of recent untranslated connections (collision hints).
    pub seen: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            services: 65536,
            routes: 65536,
            backends: 262144,
            maglev: 1024,
            conntrack: 131072,
            affinity: 65536,
            sockets: 65536,
            source_ranges: 16384,
            seen: 65536,
        }
    }
}

impl MapSizes {
    /// (map name, configured size) for every sized map.
    pub fn by_map(&self) -> [(&'static str, u32); 9] {
        [
            ("swy_svc", self.services),
            ("swy_route", self.routes),
            ("swy_backend", self.backends),
            ("swy_maglev", self.maglev),
            ("swy_ct", self.conntrack),
            ("swy_affinity", self.affinity),
            ("swy_sock", self.sockets),
            ("swy_srcrange", self.source_ranges),
            ("swy_seen", self.seen),
        ]
    }
}

impl EbpfConfig {
    /// Parses the section (null means defaults); problems name their field.
    pub fn parse(section: &serde_json::Value) -> Result<EbpfConfig, Vec<String>> {
        let cfg: EbpfConfig = if section.is_null() {
            EbpfConfig::default()
        } else {
            serde_json::from_value(section.clone()).map_err(|e| vec![format!("ebpf: {e}")])?
        };
        let mut problems = Vec::new();
        if cfg.cgroup_path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            problems.push("ebpf.cgroupPath: empty (the lab offered no cgroup?)".to_string());
        }
        if !cfg.pin_path.is_absolute() {
            problems.push(format!("ebpf.pinPath: {:?} is not an absolute path", cfg.pin_path));
        }
        if cfg.snat_port_min == 0 || cfg.snat_port_min > cfg.snat_port_max {
            problems.push("ebpf.snatPortMin/snatPortMax: need 0 < min <= max".to_string());
        }
        for (name, size) in cfg.map_sizes.by_map() {
            if size == 0 {
                problems.push(format!("ebpf.mapSizes: {name} must not be 0"));
            }
        }
        if problems.is_empty() { Ok(cfg) } else { Err(problems) }
    }

    /// The section for a backend programming `netns`. Without an explicit
    /// pinPath, a test namespace (a named one, or any namespace other than
    /// the machine's initial one) gets pins of its own, so that labs never
    /// share them: `/sys/fs/bpf/switchyard/netns-<name>` when `/sys/fs/bpf`
    /// is a bpffs, else a private bpffs mounted at
    /// `/run/switchyard/bpffs/<name>` (removed by cleanup). The initial
    /// namespace (production) keeps `/sys/fs/bpf/switchyard`.
    pub fn for_netns(section: &serde_json::Value, netns: &proxy_core::NetNamespace) -> Result<EbpfConfig, Vec<String>> {
        let mut cfg = EbpfConfig::parse(section)?;
        if section.get("pinPath").is_some() {
            return Ok(cfg);
        }
        let Some(name) = test_namespace_name(netns) else { return Ok(cfg) };
        if crate::client::is_bpffs(std::path::Path::new("/sys/fs/bpf")) {
            cfg.pin_path = cfg.pin_path.join(format!("netns-{name}"));
        } else {
            let mount = PathBuf::from(PRIVATE_BPFFS_DIR).join(&name);
            cfg.pin_path = mount.join("switchyard");
            cfg.private_bpffs = Some(mount);
        }
        Ok(cfg)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.pin_path.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.pin_path.join("links")
    }
}

/// The name of a namespace that is not the machine's initial one: its
/// `ip netns` name, or `ino-<inode>` for an unnamed one; None for the
/// initial namespace (where a production daemon runs).
fn test_namespace_name(netns: &proxy_core::NetNamespace) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if let Some(name) = netns.path().and_then(|p| p.file_name()) {
        return Some(name.to_string_lossy().into_owned());
    }
    let ino = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let own = ino("/proc/thread-self/ns/net")?;
    if ino("/proc/1/ns/net") == Some(own) {
        return None;
    }
    // A daemon started inside a lab namespace (`ip netns exec`, setns): find its name.
    let named = std::fs::read_dir("/run/netns").ok().and_then(|dir| {
        dir.flatten()
            .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| (m.dev(), m.ino()) == own))
            .map(|e| e.file_name().to_string_lossy().into_owned())
    });
    Some(named.unwrap_or_else(|| format!("ino-{}", own.1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_camel_case_and_rejects_unknown_fields() {
        let cfg = EbpfConfig::parse(&serde_json::json!({
            "pinPath": "/sys/fs/bpf/switchyard/t1",
            "cgroupPath": "/sys/fs/cgroup/unified/swy-test",
            "mapSizes": {"services": 10},
            "maglevServices": ["default/web"]
        }))
        .expect("valid");
        assert_eq!(cfg.map_sizes.services, 10);
        assert_eq!(cfg.map_sizes.conntrack, 131072);
        assert!(cfg.maglev_services.contains("default/web"));
        let err = EbpfConfig::parse(&serde_json::json!({"pinpath": "x"})).expect_err("unknown field");
        assert!(err[0].contains("pinpath"), "{err:?}");
        let err = EbpfConfig::parse(&serde_json::json!({"pinPath": "rel", "mapSizes": {"conntrack": 0}}))
            .expect_err("invalid");
        assert_eq!(err.len(), 2, "{err:?}");
    }
}
