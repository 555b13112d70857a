//! The `ipvs:` section of the configuration, as kube-proxy's
//! `KubeProxyConfiguration.ipvs` spells it, plus our own fields.

use serde::Deserialize;

use crate::message::{Request, SCHED_NAME_MAX};

/// Schedulers IPVS offers (`net/netfilter/ipvs/ip_vs_*.c`), each a module.
pub const SCHEDULERS: &[&str] =
    &["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"];

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IpvsConfig {
    /// `scheduler`: rr (default, also when empty, as kube-proxy), wrr, lc,
    /// wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh.
    pub scheduler: String,
    /// `tcpTimeout`, `tcpFinTimeout`, `udpTimeout`: Go durations as
    /// kube-proxy writes them (`900s`), or numbers of seconds; applied in
    /// whole seconds (`ipvsadm --set`); 0 leaves the kernel's value. They
    /// are per network namespace.
    #[serde(deserialize_with = "seconds")]
    pub tcp_timeout: u32,
    #[serde(deserialize_with = "seconds")]
    pub tcp_fin_timeout: u32,
    #[serde(deserialize_with = "seconds")]
    pub udp_timeout: u32,
    /// `strictARP`: kube-proxy sets `arp_ignore=1` and `arp_announce=2` on
    /// all interfaces, so that only the owner of an address answers ARP for
    /// it (MetalLB's L2 mode needs it, as the VIPs sit on the dummy link).
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    /// `excludeCIDRs`: virtual servers in these CIDRs are never cleaned up.
    /// Accepted and validated; the backend deletes only virtual servers it
    /// owns anyway (see [`IpvsConfig::node_port_range`]).
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Vec<ipnet::IpNet>,
    /// The fwmark bit for masquerading, from `iptables.masqueradeBit`
    /// (kube-proxy's ipvs mode takes it from there; the daemon copies it here).
    pub masquerade_bit: u8,
    /// How long a leaving real server may drain at weight 0 before it is deleted.
    pub graceful_termination_seconds: u64,
    /// `--service-node-port-range`: virtual servers on node addresses with a
    /// port in this range are ours (IPVS has no place for an owner tag).
    #[serde(deserialize_with = "port_range")]
    pub node_port_range: (u16, u16),
    /// `iptablesVariant`: auto (detect as backend-iptables does), nft or legacy.
    pub iptables_variant: backend_iptables::config::VariantChoice,
}

impl Default for IpvsConfig {
    fn default() -> Self {
        IpvsConfig {
            scheduler: "rr".into(),
            tcp_timeout: 0,
            tcp_fin_timeout: 0,
            udp_timeout: 0,
            strict_arp: false,
            exclude_cidrs: Vec::new(),
            masquerade_bit: 14,
            graceful_termination_seconds: 15,
            node_port_range: (30000, 32767),
            iptables_variant: backend_iptables::config::VariantChoice::Auto,
        }
    }
}

/// A timeout in whole seconds: a Go duration string (the workspace's one
/// parser) or a number of seconds.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u32),
        Text(String),
    }
    match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a duration such as \"900s\""))? {
        Raw::Seconds(n) => Ok(n),
        Raw::Text(t) => {
            let d = proxy_core::duration::parse_duration(&t).map_err(serde::de::Error::custom)?;
            u32::try_from(d.as_secs()).map_err(|_| serde::de::Error::custom(format!("{t:?} is too long")))
        }
    }
}

fn port_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    let s = String::deserialize(d)?;
    let (a, b) = s.split_once('-').ok_or_else(|| serde::de::Error::custom("expected FIRST-LAST"))?;
    let a: u16 = a.trim().parse().map_err(serde::de::Error::custom)?;
    let b: u16 = b.trim().parse().map_err(serde::de::Error::custom)?;
    if a > b {
        return Err(serde::de::Error::custom("range is empty"));
    }
    Ok((a, b))
}

impl IpvsConfig {
    /// Parses and validates the section (`null` means defaults); problems name their field.
    pub fn from_section(section: &serde_json::Value) -> Result<IpvsConfig, Vec<String>> {
        let config: IpvsConfig = if section.is_null() {
            IpvsConfig::default()
        } else {
            serde_json::from_value(section.clone()).map_err(|e| vec![format!("ipvs: {e}")])?
        };
        let mut config = config;
        if config.scheduler.is_empty() {
            config.scheduler = "rr".into();
        }
        let mut problems = Vec::new();
        if config.masquerade_bit > 31 {
            problems.push(format!("ipvs.masqueradeBit: {}: must be within the range [0, 31]", config.masquerade_bit));
        }
        if !SCHEDULERS.contains(&config.scheduler.as_str()) || config.scheduler.len() >= SCHED_NAME_MAX {
            problems.push(format!("ipvs.scheduler: {:?} is not one of {}", config.scheduler, SCHEDULERS.join(", ")));
        }
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }

    /// `ipvsadm --set` when any timeout is configured.
    pub fn timeouts(&self) -> Option<Request> {
        (self.tcp_timeout | self.tcp_fin_timeout | self.udp_timeout != 0).then_some(Request::SetTimeouts {
            tcp: self.tcp_timeout,
            tcp_fin: self.tcp_fin_timeout,
            udp: self.udp_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        assert_eq!(IpvsConfig::from_section(&serde_json::Value::Null).unwrap(), IpvsConfig::default());
        let c = IpvsConfig::from_section(
            &serde_json::json!({"scheduler": "mh", "udpTimeout": 30, "nodePortRange": "30000-30100"}),
        )
        .unwrap();
        assert_eq!((c.scheduler.as_str(), c.udp_timeout, c.node_port_range), ("mh", 30, (30000, 30100)));
        assert!(c.timeouts().is_some());
        let bad = IpvsConfig::from_section(&serde_json::json!({"scheduler": "fastest"})).unwrap_err();
        assert!(bad[0].starts_with("ipvs.scheduler"));
        assert!(IpvsConfig::from_section(&serde_json::json!({"schedular": "rr"})).is_err());
    }

    #[test]
    fn kube_proxy_spellings() {
        // As kubeadm and kube-proxy's --write-config-to write the section.
        let c = IpvsConfig::from_section(&serde_json::json!({
            "scheduler": "", "strictARP": true, "excludeCIDRs": ["10.0.0.0/8"],
            "tcpTimeout": "15m0s", "tcpFinTimeout": "0s", "udpTimeout": "1m30.5s", "masqueradeBit": 12
        }))
        .unwrap();
        assert_eq!(c.scheduler, "rr", "empty means rr");
        assert!(c.strict_arp);
        assert_eq!(c.exclude_cidrs, vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!((c.tcp_timeout, c.tcp_fin_timeout, c.udp_timeout), (900, 0, 90));
        assert_eq!(c.masquerade_bit, 12);
        let bad = IpvsConfig::from_section(&serde_json::json!({"tcpTimeout": "15 minutes"})).unwrap_err();
        assert!(bad[0].contains("tcpTimeout") || bad[0].contains("time: "), "{bad:?}");
    }
}
