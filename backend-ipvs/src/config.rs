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
    /// `scheduler`: rr (default), wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh.
    pub scheduler: String,
    /// `tcpTimeout`, `tcpFinTimeout`, `udpTimeout` in seconds (`ipvsadm --set`);
    /// 0 leaves the kernel's value. They are per network namespace.
    pub tcp_timeout: u32,
    pub tcp_fin_timeout: u32,
    pub udp_timeout: u32,
    /// How long a leaving real server may drain at weight 0 before it is deleted.
    pub graceful_termination_seconds: u64,
    /// `--service-node-port-range`: virtual servers on node addresses with a
    /// port in this range are ours (IPVS has no place for an owner tag).
    #[serde(deserialize_with = "port_range")]
    pub node_port_range: (u16, u16),
    /// `masqueradeBit` (kube-proxy's `iptables.masqueradeBit`, default 14):
    /// the fwmark bit the helper rules set for traffic to masquerade.
    pub masquerade_bit: u8,
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
            graceful_termination_seconds: 15,
            node_port_range: (30000, 32767),
            masquerade_bit: 14,
            iptables_variant: backend_iptables::config::VariantChoice::Auto,
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
        let mut problems = Vec::new();
        if !SCHEDULERS.contains(&config.scheduler.as_str()) || config.scheduler.len() >= SCHED_NAME_MAX {
            problems.push(format!("ipvs.scheduler: {:?} is not one of {}", config.scheduler, SCHEDULERS.join(", ")));
        }
        if config.masquerade_bit > 31 {
            problems.push(format!("ipvs.masqueradeBit: {} is not in 0..=31", config.masquerade_bit));
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
}
