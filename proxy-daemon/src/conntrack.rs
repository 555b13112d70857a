//! kube-proxy's conntrack sysctls (`conntrack:` in its configuration),
//! applied at start as kube-proxy's `pkg/proxy/conntrack/sysctls.go` does:
//!
//! - `nf_conntrack_max` = `maxPerCore` × CPUs (the node's online CPUs),
//!   at least `min`, at most 1,048,576; raised only, never lowered; then
//!   the module's `hashsize` raised to a quarter of it if smaller. Nothing
//!   when `maxPerCore` is 0.
//! - `nf_conntrack_tcp_timeout_established`, `..._close_wait`,
//!   `nf_conntrack_udp_timeout`, `..._udp_timeout_stream` in whole seconds,
//!   each only when its setting is above 0; `nf_conntrack_tcp_be_liberal`
//!   = 1 when `tcpBeLiberal`. Each is written only when it differs.
//!
//! Scope: the timeouts and `be_liberal` belong to a network namespace
//! (Linux ≥ 4.x keeps them per namespace), and are written in the one the
//! proxy programs (`--netns`, else its own). `nf_conntrack_max` and
//! `hashsize` are global to the host: outside the host's initial namespace
//! the kernel shows `nf_conntrack_max` read-only (0444) and `hashsize` is a
//! module parameter of the whole machine. kube-proxy, run in a namespace,
//! fails trying; switchyard leaves both alone there (and says so), so a lab
//! or a test never changes the machine's conntrack table. Failure to write
//! is a start-up failure, as in kube-proxy: a privileged container (or one
//! with `/proc/sys` writable) is needed unless every value is 0.

use std::io;
use std::path::Path;

use proxy_core::NetNamespace;
use tracing::info;

use crate::config::ConntrackConfig;

/// kube-proxy's cap on the scaled maximum (memory on many-core machines).
pub const MAX_LIMIT: u64 = 1_048_576;

const NETFILTER: &str = "/proc/sys/net/netfilter";
const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// The sysctls, as a fake-able interface (tests use [`FakeSysctls`]).
pub trait ConntrackSysctls {
    /// Reads `net/netfilter/<name>`.
    fn get(&mut self, name: &str) -> io::Result<u64>;
    /// Writes `net/netfilter/<name>`.
    fn set(&mut self, name: &str, value: u64) -> io::Result<()>;
    fn get_hashsize(&mut self) -> io::Result<u64>;
    fn set_hashsize(&mut self, value: u64) -> io::Result<()>;
    /// The node's online CPUs.
    fn cpus(&self) -> u64;
    /// Whether the namespace is the host's initial one (the global values may be changed).
    fn is_host_namespace(&self) -> bool;
}

/// A sysctl write that failed, named.
#[derive(Debug, thiserror::Error)]
#[error("could not set conntrack parameter {name} to {value}")]
pub struct ConntrackError {
    pub name: String,
    pub value: u64,
    #[source]
    pub source: io::Error,
}

/// kube-proxy's `getConntrackMax`: 0 means leave `nf_conntrack_max` as it is.
pub fn conntrack_max(cfg: &ConntrackConfig, cpus: u64) -> u64 {
    if cfg.max_per_core == 0 {
        return 0;
    }
    let scaled = u64::from(cfg.max_per_core) * cpus;
    if scaled > MAX_LIMIT {
        return MAX_LIMIT;
    }
    scaled.max(u64::from(cfg.min))
}

/// What was written (name, value), for the log and the tests.
pub fn apply(cfg: &ConntrackConfig, sys: &mut dyn ConntrackSysctls) -> Result<Vec<(String, u64)>, ConntrackError> {
    let mut written = Vec::new();
    let err = |name: &str, value: u64| {
        let name = name.to_string();
        move |source| ConntrackError { name, value, source }
    };
    let max = conntrack_max(cfg, sys.cpus());
    if max > 0 {
        if sys.is_host_namespace() {
            let current = sys.get("nf_conntrack_max").ok();
            if current.is_none_or(|c| c < max) {
                sys.set("nf_conntrack_max", max).map_err(err("nf_conntrack_max", max))?;
                written.push(("nf_conntrack_max".to_string(), max));
            }
            let hashsize = sys.get_hashsize().map_err(err("hashsize", max / 4))?;
            if hashsize < max / 4 {
                sys.set_hashsize(max / 4).map_err(err("hashsize", max / 4))?;
                written.push(("hashsize".to_string(), max / 4));
            }
        } else {
            info!(
                nf_conntrack_max = max,
                "not setting nf_conntrack_max and hashsize: they are global to the host, and the proxy \
                 programs a network namespace other than the host's"
            );
        }
    }
    let seconds = |d: std::time::Duration| d.as_secs();
    let per_netns = [
        ("nf_conntrack_tcp_timeout_established", seconds(cfg.tcp_established_timeout)),
        ("nf_conntrack_tcp_timeout_close_wait", seconds(cfg.tcp_close_wait_timeout)),
        ("nf_conntrack_tcp_be_liberal", u64::from(cfg.tcp_be_liberal)),
        ("nf_conntrack_udp_timeout", seconds(cfg.udp_timeout)),
        ("nf_conntrack_udp_timeout_stream", seconds(cfg.udp_stream_timeout)),
    ];
    for (name, value) in per_netns {
        if value == 0 {
            continue;
        }
        if sys.get(name).ok() != Some(value) {
            sys.set(name, value).map_err(err(name, value))?;
            written.push((name.to_string(), value));
        }
    }
    Ok(written)
}

/// The real sysctls of one network namespace (read and written from a
/// thread inside it: `/proc/sys/net` resolves to the caller's namespace).
#[derive(Debug)]
pub struct ProcSysctls {
    netns: NetNamespace,
    host: bool,
    cpus: u64,
}

impl ProcSysctls {
    pub fn new(netns: NetNamespace) -> ProcSysctls {
        let host = is_host_namespace(&netns);
        ProcSysctls { netns, host, cpus: online_cpus() }
    }

    fn in_ns<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        self.netns.run(f)?
    }
}

impl ConntrackSysctls for ProcSysctls {
    fn get(&mut self, name: &str) -> io::Result<u64> {
        let path = format!("{NETFILTER}/{name}");
        self.in_ns(|| read_u64(Path::new(&path)))
    }

    fn set(&mut self, name: &str, value: u64) -> io::Result<()> {
        let path = format!("{NETFILTER}/{name}");
        self.in_ns(|| std::fs::write(&path, value.to_string()))
    }

    fn get_hashsize(&mut self) -> io::Result<u64> {
        read_u64(Path::new(HASHSIZE))
    }

    fn set_hashsize(&mut self, value: u64) -> io::Result<()> {
        std::fs::write(HASHSIZE, value.to_string())
    }

    fn cpus(&self) -> u64 {
        self.cpus
    }

    fn is_host_namespace(&self) -> bool {
        self.host
    }
}

fn read_u64(path: &Path) -> io::Result<u64> {
    std::fs::read_to_string(path)?.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The node's online CPUs (`/sys/devices/system/cpu/online`, as kube-proxy's
/// cpuset.NumCPU: not the process's affinity, which a static CPU policy narrows).
pub fn online_cpus() -> u64 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}

/// `0-3,8,10-11` → 7.
fn parse_cpu_list(s: &str) -> Option<u64> {
    let mut n = 0;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => n += b.parse::<u64>().ok()?.checked_sub(a.parse::<u64>().ok()?)? + 1,
            None => {
                part.parse::<u64>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// Whether `netns` is the namespace of PID 1 (the host's, for a hostNetwork pod as for a node).
fn is_host_namespace(netns: &NetNamespace) -> bool {
    use std::os::unix::fs::MetadataExt;
    let target = match netns.path() {
        Some(p) => std::fs::metadata(p),
        None => std::fs::metadata("/proc/self/ns/net"),
    };
    match (target, std::fs::metadata("/proc/1/ns/net")) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// A fake for tests: a map of values; global writes recorded.
#[derive(Debug, Default)]
pub struct FakeSysctls {
    pub values: std::collections::BTreeMap<String, u64>,
    pub hashsize: u64,
    pub cpus: u64,
    pub host: bool,
    /// Names whose write fails (a read-only /proc/sys).
    pub read_only: Vec<String>,
}

impl ConntrackSysctls for FakeSysctls {
    fn get(&mut self, name: &str) -> io::Result<u64> {
        self.values.get(name).copied().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn set(&mut self, name: &str, value: u64) -> io::Result<()> {
        if self.read_only.iter().any(|n| n == name) {
            return Err(io::Error::from(io::ErrorKind::ReadOnlyFilesystem));
        }
        self.values.insert(name.to_string(), value);
        Ok(())
    }
    fn get_hashsize(&mut self) -> io::Result<u64> {
        Ok(self.hashsize)
    }
    fn set_hashsize(&mut self, value: u64) -> io::Result<()> {
        self.hashsize = value;
        Ok(())
    }
    fn cpus(&self) -> u64 {
        self.cpus
    }
    fn is_host_namespace(&self) -> bool {
        self.host
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> ConntrackConfig {
        ConntrackConfig {
            max_per_core: 32768,
            min: 131072,
            tcp_established_timeout: Duration::from_secs(86400),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }

    #[test]
    fn max_scales_with_cpus_between_min_and_the_cap() {
        assert_eq!(conntrack_max(&cfg(), 2), 131072, "2 × 32768 is under min");
        assert_eq!(conntrack_max(&cfg(), 8), 262144);
        assert_eq!(conntrack_max(&cfg(), 64), MAX_LIMIT, "capped");
        assert_eq!(conntrack_max(&ConntrackConfig { max_per_core: 0, ..cfg() }, 8), 0, "0 leaves it");
    }

    #[test]
    fn in_the_host_namespace_max_is_raised_never_lowered_and_hashsize_follows() {
        let mut sys = FakeSysctls { cpus: 8, host: true, hashsize: 16384, ..Default::default() };
        sys.values.insert("nf_conntrack_max".into(), 65536);
        let w = apply(&cfg(), &mut sys).unwrap();
        assert_eq!(sys.values["nf_conntrack_max"], 262144);
        assert_eq!(sys.hashsize, 65536);
        assert!(w.contains(&("nf_conntrack_max".into(), 262144)));
        // Already higher: left alone.
        let mut sys = FakeSysctls { cpus: 8, host: true, hashsize: 1 << 20, ..Default::default() };
        sys.values.insert("nf_conntrack_max".into(), 1 << 22);
        apply(&cfg(), &mut sys).unwrap();
        assert_eq!(sys.values["nf_conntrack_max"], 1 << 22);
        assert_eq!(sys.hashsize, 1 << 20);
    }

    #[test]
    fn outside_the_host_namespace_the_global_values_are_left_alone() {
        let mut sys = FakeSysctls { cpus: 8, host: false, hashsize: 1024, ..Default::default() };
        sys.values.insert("nf_conntrack_max".into(), 100);
        let w = apply(&cfg(), &mut sys).unwrap();
        assert_eq!(sys.values["nf_conntrack_max"], 100);
        assert_eq!(sys.hashsize, 1024);
        let names: Vec<&str> = w.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait"]);
        assert_eq!(sys.values["nf_conntrack_tcp_timeout_established"], 86400);
    }

    #[test]
    fn zero_leaves_as_is_and_equal_values_are_not_written() {
        let mut c = ConntrackConfig::leave_as_is();
        c.udp_timeout = Duration::from_secs(30);
        c.tcp_be_liberal = true;
        let mut sys = FakeSysctls { cpus: 2, host: true, ..Default::default() };
        sys.values.insert("nf_conntrack_udp_timeout".into(), 30);
        let w = apply(&c, &mut sys).unwrap();
        assert_eq!(w, vec![("nf_conntrack_tcp_be_liberal".to_string(), 1)]);
    }

    #[test]
    fn a_failed_write_names_the_sysctl() {
        let mut sys = FakeSysctls {
            cpus: 2,
            read_only: vec!["nf_conntrack_tcp_timeout_established".into()],
            ..Default::default()
        };
        let e = apply(&cfg(), &mut sys).unwrap_err();
        assert_eq!(e.name, "nf_conntrack_tcp_timeout_established");
        assert!(e.to_string().contains("86400"), "{e}");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
