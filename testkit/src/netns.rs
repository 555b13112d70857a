//! Network namespaces made for one test or lab, deleted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{CommandError, cgroup2_root, ip};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name prefix unique to this run and call: `swy-<kind>-<pid>-<n>`. The
/// pid lets [`collect_stale`] find what a killed run left behind.
pub fn unique_prefix(kind: &str) -> String {
    format!("swy-{kind}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A network namespace this process created (`ip netns add`), loopback up;
/// deleted (`ip netns del`) when dropped: on success, failure and panic.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name`. It must be unique to this run: start it with [`unique_prefix`].
    pub fn create(name: impl Into<String>) -> Result<Netns, CommandError> {
        let name = name.into();
        ip(&["netns", "add", &name])?;
        // The guard exists from here on: a failure below still deletes it.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace of its own: `swy-<kind>-<pid>-<n>`.
    pub fn unique(kind: &str) -> Result<Netns, CommandError> {
        Netns::create(unique_prefix(kind))
    }

    /// [`Netns::unique`] for a test: panics (failing the test) when it cannot.
    pub fn for_test(kind: &str) -> Netns {
        Netns::unique(kind).unwrap_or_else(|e| panic!("a network namespace for the test (needs root): {e}"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<(), CommandError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip netns exec <name> sysctl -q -w k=v ...`: this namespace's sysctls only.
    pub fn sysctl(&self, settings: &[&str]) -> Result<(), CommandError> {
        let mut args = vec!["netns", "exec", self.name.as_str(), "sysctl", "-q", "-w"];
        args.extend_from_slice(settings);
        ip(&args)
    }

    /// A command run inside the namespace (`ip netns exec <name> PROGRAM`).
    /// `ip netns exec` remounts `/sys`, which hides bpffs: BPF work enters
    /// the namespace in-process instead (`proxy_core::NetNamespace::run`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).stdin(Stdio::null());
        c
    }

    /// Deletes the namespace now, saying whether it worked (dropping the
    /// guard deletes it too, silently).
    pub fn delete(mut self) -> Result<(), CommandError> {
        let name = std::mem::take(&mut self.name);
        ip(&["netns", "del", &name])
    }

    /// Runs `PROGRAM ARGS` inside the namespace to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::io::Result<Output> {
        self.command(program).args(args).output()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Empty once `delete` has run.
        if !self.name.is_empty() {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

/// Deletes namespaces and lab cgroups named `swy-<kind>-<pid>-...` whose
/// process is gone (a run killed with SIGKILL cannot clean up after itself);
/// what was removed.
pub fn collect_stale(kind: &str) -> Vec<String> {
    let mut removed = Vec::new();
    let head = format!("swy-{kind}-");
    let stale = |name: &str| {
        name.strip_prefix(&head)
            .and_then(|rest| rest.split('-').next())
            .is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists())
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if stale(&name) && ip(&["netns", "del", &name]).is_ok() {
                removed.push(name);
            }
        }
    }
    if let Some(root) = cgroup2_root()
        && let Ok(entries) = std::fs::read_dir(&root)
    {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if stale(&name) && std::fs::remove_dir(e.path()).is_ok() {
                removed.push(e.path().display().to_string());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_carry_the_pid() {
        let (a, b) = (unique_prefix("t"), unique_prefix("t"));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("swy-t-{}-", std::process::id())), "{a}");
    }

    #[crate::needs_root]
    #[test]
    fn a_namespace_is_deleted_on_every_exit_path() {
        let ns = Netns::for_test("tk");
        let path = ns.path();
        assert!(path.exists());
        let up = ns.exec("ip", &["-o", "link", "show", "lo"]).expect("ip");
        assert!(String::from_utf8_lossy(&up.stdout).contains("UP"), "loopback is up");
        drop(ns);
        assert!(!path.exists(), "deleted on drop");
        // A panicking test unwinds through the guard too.
        let kept = std::panic::catch_unwind(|| {
            let ns = Netns::for_test("tk");
            let path = ns.path();
            std::panic::panic_any(path);
        });
        let path = kept.err().and_then(|p| p.downcast::<PathBuf>().ok()).expect("the panic carried the path");
        assert!(!path.exists(), "deleted while unwinding");
    }
}
