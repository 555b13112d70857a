//! YAML for figment through serde-saphyr.
//!
//! figment's own `yaml` feature pulls the deprecated serde_yaml; serde-saphyr
//! is already in our dependency tree (through kube), so configuration files
//! are read with it behind this small [`Format`].

use figment::providers::Format;
use serde::de::DeserializeOwned;

/// The YAML format (JSON is YAML too, so `.json` config files work as well).
#[derive(Debug, Clone, Copy)]
pub struct Yaml;

impl Format for Yaml {
    type Error = serde_saphyr::Error;

    const NAME: &'static str = "YAML";

    fn from_str<T: DeserializeOwned>(string: &str) -> Result<T, Self::Error> {
        serde_saphyr::from_str(string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;

    #[test]
    fn reads_nested_yaml() {
        let v: serde_json::Value =
            Figment::from(Yaml::string("mode: iptables\niptables:\n  masqueradeBit: 14\n")).extract().unwrap();
        assert_eq!(v["mode"], "iptables");
        assert_eq!(v["iptables"]["masqueradeBit"], 14);
    }

    #[test]
    fn reports_syntax_errors() {
        let err = Figment::from(Yaml::string("mode: [unclosed\n")).extract::<serde_json::Value>().unwrap_err();
        assert!(!err.to_string().is_empty());
    }
}
