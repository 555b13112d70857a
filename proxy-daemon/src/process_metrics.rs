//! The `process_*` metrics every Go program (kube-proxy included) exports
//! through client_golang's process collector, with the same names, types
//! and units, read from `/proc/self` at each scrape.
//!
//! Hand-written because prometheus-client (the registry we use) has no
//! process collector, and the crates that have one bring a second metrics
//! library and registry along; this is a few reads of procfs.

use std::fmt::Error as FmtError;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registers itself with [`prometheus_client::registry::Registry::register_collector`].
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of `/proc/self`.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub virtual_memory_bytes: f64,
    pub virtual_memory_max_bytes: f64,
    pub resident_memory_bytes: f64,
    pub start_time_seconds: f64,
}

/// `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses): field 3 (state) is the first.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default()
}

/// Reads the process's numbers; an unreadable one is 0 (never an error at scrape time).
pub fn read() -> ProcessStats {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as f64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f = stat_fields(&stat);
    // Fields counted from `state` (3): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
        .unwrap_or(0.0);
    ProcessStats {
        cpu_seconds: (field(14) + field(15)) / ticks,
        open_fds: std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0),
        max_fds: limit("Max open files"),
        virtual_memory_bytes: field(23),
        virtual_memory_max_bytes: limit("Max address space"),
        resident_memory_bytes: field(24) * page,
        start_time_seconds: boot + field(22) / ticks,
    }
}

/// A soft limit from `/proc/self/limits`; "unlimited" is 2^64 - 1, as
/// client_golang's procfs reads it.
fn limit(name: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with(name)) else { return 0.0 };
    match line[name.len()..].split_whitespace().next() {
        Some("unlimited") => u64::MAX as f64,
        Some(v) => v.parse().unwrap_or(0.0),
        None => 0.0,
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        let s = read();
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_open_fds", "Number of open file descriptors.", s.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", s.max_fds),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", s.virtual_memory_bytes),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                s.virtual_memory_max_bytes,
            ),
            ("process_resident_memory_bytes", "Resident memory size in bytes.", s.resident_memory_bytes),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read();
        assert!(s.open_fds >= 3.0, "{s:?}");
        assert!(s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.resident_memory_bytes > 1e5, "{s:?}");
        assert!(s.virtual_memory_bytes >= s.resident_memory_bytes, "{s:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds > now - 86400.0 && s.start_time_seconds <= now + 1.0, "{s:?} vs {now}");
    }

    #[test]
    fn exported_as_client_golang_names_them() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_max_fds ",
            "process_virtual_memory_bytes ",
            "process_virtual_memory_max_bytes ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
    }

    #[test]
    fn the_command_name_may_hold_parentheses() {
        let f = stat_fields("42 (a) b) S 1 2 3");
        assert_eq!(f, ["S", "1", "2", "3"]);
    }
}
