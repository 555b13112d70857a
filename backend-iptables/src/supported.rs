//! What the node supports: which iptables implementation to use, whether
//! the binaries exist, whether `--random-fully` is there, and whether we may
//! create chains in the target namespace.

use std::path::Path;

use proxy_core::{IpFamily, NetNamespace};
use tracing::debug;

use crate::error::Error;
use crate::exec::{Tool, Variant, run};
use crate::names;

/// Whether a program is on `PATH` (or in the sbin directories iptables lives in).
pub fn has_binary(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].iter().map(Into::into))
        .any(|dir| Path::new(&dir).join(name).is_file())
}

/// Whether a variant's restore and save binaries exist for a family.
pub fn has_variant(variant: Variant, family: IpFamily) -> bool {
    has_binary(&variant.binary(family, Tool::Restore)) && has_binary(&variant.binary(family, Tool::Save))
}

/// How one variant's tables look, for [`detect`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VariantScore {
    /// kubelet's marker chains (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY) exist.
    pub kubelet: bool,
    /// Our chains exist.
    pub ours: bool,
    /// Rules in all tables of both families.
    pub rules: usize,
}

impl VariantScore {
    pub fn of(save_output: &str) -> Self {
        VariantScore {
            kubelet: save_output.contains("KUBE-IPTABLES-HINT") || save_output.contains("KUBE-KUBELET-CANARY"),
            ours: save_output.contains(names::PREFIX),
            rules: save_output.lines().filter(|l| l.starts_with("-A ")).count(),
        }
    }
}

/// kube-proxy's choice (its iptables wrapper): the implementation kubelet
/// uses, else the one our chains are in, else the one with more rules, else nft.
pub fn choose(nft: VariantScore, legacy: VariantScore) -> Variant {
    if nft.kubelet != legacy.kubelet {
        return if nft.kubelet { Variant::Nft } else { Variant::Legacy };
    }
    if nft.ours != legacy.ours {
        return if nft.ours { Variant::Nft } else { Variant::Legacy };
    }
    if legacy.rules > nft.rules { Variant::Legacy } else { Variant::Nft }
}

/// Looks at both implementations' tables in `netns` and picks one.
pub fn detect(netns: &NetNamespace, families: &[IpFamily]) -> Result<Variant, Error> {
    let available: Vec<Variant> =
        [Variant::Nft, Variant::Legacy].into_iter().filter(|v| families.iter().all(|f| has_variant(*v, *f))).collect();
    match available.as_slice() {
        [] if families.iter().all(|f| has_variant(Variant::Plain, *f)) => return Ok(Variant::Plain),
        [] => {
            return Err(Error::Command {
                program: "iptables-restore".into(),
                status: "not found".into(),
                detail: "neither iptables-nft nor iptables-legacy (nor plain iptables) is installed".into(),
            });
        }
        [only] => return Ok(*only),
        _ => {}
    }
    let score = |v: Variant| {
        let mut text = String::new();
        for f in [IpFamily::V4, IpFamily::V6] {
            if let Ok(out) = run(netns, &v.binary(f, Tool::Save), &[], None) {
                text.push_str(&out);
            }
        }
        VariantScore::of(&text)
    };
    let (nft, legacy) = (score(Variant::Nft), score(Variant::Legacy));
    let chosen = choose(nft, legacy);
    debug!(?nft, ?legacy, %chosen, "detected iptables implementation");
    Ok(chosen)
}

/// Whether MASQUERADE knows `--random-fully` (iptables ≥ 1.6.2).
/// CLI: `iptables -j MASQUERADE --help`.
pub fn random_fully(netns: &NetNamespace, variant: Variant) -> bool {
    run(netns, &variant.binary(IpFamily::V4, Tool::Iptables), &["-j", "MASQUERADE", "--help"], None)
        .map(|help| help.contains("random-fully"))
        .unwrap_or(false)
}

/// Creates and deletes a chain in each family's nat table; proves we may
/// program this namespace. CLI: `iptables -t nat -N SWITCHYARD-PROBE; iptables -t nat -X SWITCHYARD-PROBE`.
pub fn probe(netns: &NetNamespace, variant: Variant, families: &[IpFamily]) -> Result<(), Error> {
    let payload = "*nat\n:SWITCHYARD-PROBE - [0:0]\n-X SWITCHYARD-PROBE\nCOMMIT\n";
    for f in families {
        run(netns, &variant.binary(*f, Tool::Restore), &["--noflush", "-w", "5"], Some(payload))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice() {
        let s = |kubelet, ours, rules| VariantScore { kubelet, ours, rules };
        assert_eq!(choose(s(false, false, 0), s(false, false, 0)), Variant::Nft);
        assert_eq!(choose(s(false, false, 3), s(false, false, 10)), Variant::Legacy);
        assert_eq!(choose(s(false, true, 3), s(false, false, 10)), Variant::Nft);
        assert_eq!(choose(s(false, true, 3), s(true, false, 1)), Variant::Legacy);
        let text = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n*nat\n-A PREROUTING -j SWITCHYARD-SERVICES\n";
        assert_eq!(VariantScore::of(text), s(true, true, 1));
    }
}
