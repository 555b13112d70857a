//! The `ebpf:` configuration section.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

/// Where everything is pinned unless the configuration says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/switchyard";

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
    /// balancing (host-network clients are not served). `cgroup` is accepted
    /// too (the conformance runner's spelling).
    #[serde(alias = "cgroup")]
    pub cgroup_path: Option<PathBuf>,
    /// Interfaces that get the TC program; None: every interface but `lo`,
    /// re-scanned at every sync so that new pod interfaces are covered.
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
        }
    }
}

impl MapSizes {
    /// (map name, configured size) for every sized map.
    pub fn by_map(&self) -> [(&'static str, u32); 8] {
        [
            ("swy_svc", self.services),
            ("swy_route", self.routes),
            ("swy_backend", self.backends),
            ("swy_maglev", self.maglev),
            ("swy_ct", self.conntrack),
            ("swy_affinity", self.affinity),
            ("swy_sock", self.sockets),
            ("swy_srcrange", self.source_ranges),
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

    /// The section for a backend programming `netns`: without an explicit
    /// pinPath, a named namespace (a lab) gets its own directory
    /// `/sys/fs/bpf/switchyard/netns-<name>`, so that labs never share pins.
    pub fn for_netns(section: &serde_json::Value, netns: &proxy_core::NetNamespace) -> Result<EbpfConfig, Vec<String>> {
        let mut cfg = EbpfConfig::parse(section)?;
        let explicit = section.get("pinPath").is_some();
        if let (false, Some(name)) = (explicit, netns.path().and_then(|p| p.file_name())) {
            cfg.pin_path = cfg.pin_path.join(format!("netns-{}", name.to_string_lossy()));
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
