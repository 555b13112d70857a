//! The `iptables:` section of the configuration, in kube-proxy's field names
//! (`KubeProxyIPTablesConfiguration`), plus our own `variant`.

use serde::Deserialize;

use crate::exec::Variant;

/// Which iptables implementation to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantChoice {
    /// Detect as kube-proxy's iptables wrapper does: the implementation
    /// kubelet (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY) or we already use,
    /// else the one with more rules, else nft.
    #[default]
    Auto,
    Nft,
    Legacy,
}

impl VariantChoice {
    pub fn fixed(self) -> Option<Variant> {
        match self {
            VariantChoice::Auto => None,
            VariantChoice::Nft => Some(Variant::Nft),
            VariantChoice::Legacy => Some(Variant::Legacy),
        }
    }
}

/// The section as written in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IptablesConfig {
    /// The fwmark bit for "masquerade this" (kube-proxy's default 14, 0x4000).
    #[serde(default = "default_bit")]
    pub masquerade_bit: u8,
    /// Accepted for compatibility; the daemon folds it into the planner's
    /// masquerade configuration, which is what rendering follows.
    #[serde(default)]
    pub masquerade_all: bool,
    /// Node ports answer on 127.0.0.1 (IPv4 only), which sets
    /// `net.ipv4.conf.all.route_localnet=1` as kube-proxy does.
    #[serde(default = "default_true")]
    pub localhost_node_ports: bool,
    /// Accepted for compatibility; the sync runner's periods come from the daemon.
    #[serde(default)]
    pub sync_period: Option<String>,
    #[serde(default)]
    pub min_sync_period: Option<String>,
    /// `auto`, `nft` or `legacy`.
    #[serde(default)]
    pub variant: VariantChoice,
}

fn default_bit() -> u8 {
    14
}

fn default_true() -> bool {
    true
}

impl Default for IptablesConfig {
    fn default() -> Self {
        IptablesConfig {
            masquerade_bit: default_bit(),
            masquerade_all: false,
            localhost_node_ports: true,
            sync_period: None,
            min_sync_period: None,
            variant: VariantChoice::Auto,
        }
    }
}

impl IptablesConfig {
    /// Reads the section (`null` means all defaults); problems name their field.
    pub fn from_section(section: &serde_json::Value) -> Result<Self, Vec<String>> {
        if section.is_null() {
            return Ok(IptablesConfig::default());
        }
        let cfg: IptablesConfig =
            serde_json::from_value(section.clone()).map_err(|e| vec![format!("iptables: {e}")])?;
        let mut problems = Vec::new();
        if cfg.masquerade_bit > 31 {
            problems.push(format!("iptables.masqueradeBit: {} is not in 0..=31", cfg.masquerade_bit));
        }
        if problems.is_empty() { Ok(cfg) } else { Err(problems) }
    }

    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit.min(31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_fields() {
        assert_eq!(IptablesConfig::from_section(&serde_json::Value::Null).unwrap().masquerade_mark(), 0x4000);
        let c = IptablesConfig::from_section(
            &json!({"masqueradeBit": 3, "localhostNodePorts": false, "variant": "legacy", "syncPeriod": "30s"}),
        )
        .unwrap();
        assert_eq!((c.masquerade_mark(), c.localhost_node_ports, c.variant), (8, false, VariantChoice::Legacy));
        let e = IptablesConfig::from_section(&json!({"masqueradeBit": 40})).unwrap_err();
        assert!(e[0].contains("masqueradeBit"), "{e:?}");
        let e = IptablesConfig::from_section(&json!({"masqueradBit": 4})).unwrap_err();
        assert!(e[0].contains("masqueradBit"), "{e:?}");
        assert!(IptablesConfig::from_section(&json!({"variant": "bpf"})).is_err());
    }
}
