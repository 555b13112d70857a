//! Against the real kernel, in throwaway network namespaces (root only;
//! skips loudly otherwise).

use std::process::Command;
use std::sync::Arc;

use backend_nftables::client::{Kernel, SystemKernel, Transaction};
use backend_nftables::netlink::nft::Batch;
use backend_nftables::render::{self, RenderConfig, TABLE};
use proxy_core::{IpFamily, NetNamespace};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace for one test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("swy-nft-{}-{tag}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }

    fn ns(&self) -> NetNamespace {
        NetNamespace::named(&self.0)
    }

    fn nft(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args.split_whitespace())
            .output()
            .expect("nft");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: needs root (network namespaces, nf_tables)");
            return;
        }
    };
}

#[test]
fn skeleton_loads_in_both_families() {
    require_root!();
    let ns = Netns::new("skel");
    let kernel = Arc::new(SystemKernel { netns: ns.ns() });
    for family in [IpFamily::V4, IpFamily::V6] {
        let mut cfg = RenderConfig::new(family);
        cfg.masquerade.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap(), "fd00:10:244::/64".parse().unwrap()];
        let b = |class, node_port, action, masquerade, count, timeout| render::Behaviour {
            class,
            node_port,
            action,
            masquerade,
            count,
            timeout,
        };
        let behaviours = [
            b(render::CLASS_POD, false, render::ACTION_FORWARD, false, 3, 0),
            b(render::CLASS_NODE, true, render::ACTION_FORWARD, true, 1, 10800),
            b(render::CLASS_EXTERNAL, false, render::ACTION_REJECT, false, 0, 0),
            b(render::CLASS_EXTERNAL, true, render::ACTION_DROP, false, 0, 0),
        ];
        let skel = render::skeleton(&cfg, &behaviours.into());
        let mut b = Batch::new(render::nfproto(family), 1);
        b.add_table(TABLE);
        for (i, s) in skel.sets.iter().enumerate() {
            b.add_set(TABLE, s, i as u32 + 1);
        }
        for c in &skel.chains {
            b.add_chain(TABLE, &c.name, c.hook);
        }
        for (set, e) in &skel.elements {
            b.elements(TABLE, set, &[e], false);
        }
        for c in &skel.chains {
            for r in &c.rules {
                b.add_rule(TABLE, &c.name, r, None);
            }
        }
        let r = kernel.apply(&Transaction::from_batch(b));
        assert!(
            r.is_ok(),
            "{family:?}: {:?}\n{}",
            r.map_err(|e| proxy_core::ErrorChain(&e).to_string()),
            ns.nft("list ruleset")
        );
        let dump = kernel.table(family).unwrap();
        assert!(dump.exists);
        assert_eq!(dump.chains.len(), skel.chains.len());
    }
}
