//! The `nftables:` section of the configuration, in kube-proxy's field
//! names (`KubeProxyNFTablesConfiguration`).

use serde::Deserialize;

/// The section as written in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NftablesConfig {
    /// The fwmark bit for "masquerade this" (kube-proxy's default 14, 0x4000).
    #[serde(default = "default_bit")]
    pub masquerade_bit: u8,
    /// Accepted for compatibility; the daemon folds it into the planner's
    /// masquerade configuration, which is what rendering follows.
    #[serde(default)]
    pub masquerade_all: bool,
    /// Accepted for compatibility; the sync runner's periods come from the daemon.
    #[serde(default)]
    pub sync_period: Option<String>,
    #[serde(default)]
    pub min_sync_period: Option<String>,
}

fn default_bit() -> u8 {
    14
}

impl Default for NftablesConfig {
    fn default() -> Self {
        NftablesConfig {
            masquerade_bit: default_bit(),
            masquerade_all: false,
            sync_period: None,
            min_sync_period: None,
        }
    }
}

impl NftablesConfig {
    /// Reads the section (absent or null: defaults); every problem names its field.
    pub fn from_section(section: &serde_json::Value) -> Result<Self, Vec<String>> {
        if section.is_null() {
            return Ok(NftablesConfig::default());
        }
        let cfg: NftablesConfig =
            serde_json::from_value(section.clone()).map_err(|e| vec![format!("nftables: {e}")])?;
        if cfg.masquerade_bit > 31 {
            return Err(vec![format!(
                "nftables.masqueradeBit: {} is not a bit of a 32-bit mark (0-31)",
                cfg.masquerade_bit
            )]);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_field() {
        assert_eq!(NftablesConfig::from_section(&serde_json::Value::Null), Ok(NftablesConfig::default()));
        let e = NftablesConfig::from_section(&serde_json::json!({"masqueradeBit": 40})).unwrap_err();
        assert!(e[0].contains("nftables.masqueradeBit"), "{e:?}");
        let e = NftablesConfig::from_section(&serde_json::json!({"bogus": 1})).unwrap_err();
        assert!(e[0].contains("bogus"), "{e:?}");
    }
}
