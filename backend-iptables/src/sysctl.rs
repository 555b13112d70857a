//! Sysctls we change, recorded so that cleanup puts back what was there.
//!
//! A backend that changes a sysctl (the iptables mode's
//! `net.ipv4.conf.all.route_localnet=1` for localhost node ports, the IPVS
//! mode's `net.ipv4.vs.*`) first records the value it found, then writes its
//! own; cleanup (`switchyard --cleanup`, or another mode's start-up cleanup,
//! both fresh processes) writes the recorded value back, if the sysctl still
//! holds the value we wrote (someone who changed it since wins), and forgets
//! the record. A value that was already what we want is not recorded, so
//! cleanup leaves it alone.
//!
//! The record is a file `/run/switchyard/sysctl/<owner>-<netns>.json`, where
//! `<netns>` names the network namespace: `cookie-<N>` with the namespace's
//! cookie (`SO_NETNS_COOKIE`, Linux ≥ 5.14: unique for the boot and never
//! reused, unlike namespace inode numbers), else `inode-<dev>-<ino>` of the
//! namespace. `/run` is a tmpfs, so records end with the boot, as the
//! namespaces do. In a container, `/run/switchyard` must be the host's
//! (a hostPath, as in `deploy/base/daemonset.yaml`) for a restarted container
//! to find them. Without a record, cleanup changes nothing (the behaviour
//! before records existed).
//!
//! Sysctls under `/proc/sys/net` resolve to the network namespace of the
//! calling thread: run everything here through [`proxy_core::NetNamespace::run`].

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// Where records live.
pub const RUN_DIR: &str = "/run/switchyard/sysctl";

/// A sysctl operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {name}: cannot {operation}")]
pub struct SysctlError {
    /// The sysctl, dotted (`net.ipv4.conf.all.route_localnet`), or the record file.
    pub name: String,
    pub operation: &'static str,
    #[source]
    pub source: io::Error,
}

/// One recorded change: the value found before, and the value we wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub before: String,
    pub set: String,
}

/// The sysctls one owner (a proxy mode) changed in one network namespace.
#[derive(Clone, Debug)]
pub struct Sysctls {
    dir: PathBuf,
    owner: String,
}

fn proc_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// The value of a sysctl in the calling thread's namespace (trimmed).
pub fn read(name: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(proc_path(name)).map(|v| v.trim().to_string()).map_err(|source| SysctlError {
        name: name.into(),
        operation: "read",
        source,
    })
}

fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(proc_path(name), value).map_err(|source| SysctlError {
        name: name.into(),
        operation: "write",
        source,
    })
}

/// A name for the calling thread's network namespace, stable for its life.
pub fn netns_key() -> io::Result<String> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the socket is open for the duration of the call; `cookie` and
    // `len` are valid for writes and `len` holds the size of `cookie`.
    // (No crate wraps SO_NETNS_COOKIE: nix 0.29 does not have it.)
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r == 0 {
        return Ok(format!("cookie-{cookie}"));
    }
    // Kernels before 5.14: the namespace's inode (may be reused after the
    // namespace is gone; good enough where nothing better exists).
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(format!("inode-{}-{}", meta.dev(), meta.ino()))
}

impl Sysctls {
    /// The records of `owner` (a proxy mode) under [`RUN_DIR`].
    pub fn new(owner: &str) -> Self {
        Sysctls::in_dir(RUN_DIR, owner)
    }

    /// The records of `owner` under another directory (tests).
    pub fn in_dir(dir: impl Into<PathBuf>, owner: &str) -> Self {
        Sysctls { dir: dir.into(), owner: owner.into() }
    }

    fn record_path(&self) -> Result<PathBuf, SysctlError> {
        let key = netns_key().map_err(|source| SysctlError {
            name: "network namespace cookie".into(),
            operation: "read",
            source,
        })?;
        Ok(self.dir.join(format!("{}-{key}.json", self.owner)))
    }

    /// What this owner recorded in the calling thread's namespace.
    pub fn recorded(&self) -> Result<BTreeMap<String, Change>, SysctlError> {
        let path = self.record_path()?;
        let err = |operation, source| SysctlError { name: path.display().to_string(), operation, source };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err("parse record", io::Error::other(e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(err("read record", e)),
        }
    }

    fn store(&self, record: &BTreeMap<String, Change>) -> Result<(), SysctlError> {
        let path = self.record_path()?;
        let err = |operation, source| SysctlError { name: path.display().to_string(), operation, source };
        if record.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err("remove record", e)),
                _ => Ok(()),
            };
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| err("create record directory", e))?;
        let text = serde_json::to_vec_pretty(record).map_err(|e| err("encode record", io::Error::other(e)))?;
        // Written aside and renamed: a crash never leaves half a record.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| err("write record", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err("write record", e))
    }

    /// Sets `name` to `value`, recording the value found first (unless a
    /// record for `name` exists already: then the value found is our own
    /// from an earlier run). Returns whether the value changed.
    ///
    /// A record that cannot be written is logged and the sysctl set anyway:
    /// the dataplane needs it; cleanup will then leave it as it is.
    pub fn set(&self, name: &str, value: &str) -> Result<bool, SysctlError> {
        let current = read(name)?;
        if current == value {
            return Ok(false);
        }
        let recorded = self.recorded().and_then(|mut record| {
            if !record.contains_key(name) {
                record.insert(name.into(), Change { before: current.clone(), set: value.into() });
                self.store(&record)?;
            }
            Ok(())
        });
        if let Err(e) = recorded {
            warn!(sysctl = name, error = %proxy_core::ErrorChain(&e), "cannot record the sysctl's value; cleanup will not restore it");
        }
        write(name, value)?;
        debug!(sysctl = name, before = %current, value, "sysctl set");
        Ok(true)
    }

    /// Writes back every value this owner recorded in the calling thread's
    /// namespace, where the sysctl still holds what we wrote, and forgets the
    /// records. Returns the sysctls restored.
    pub fn restore(&self) -> Result<Vec<String>, SysctlError> {
        let record = self.recorded()?;
        let mut restored = Vec::new();
        for (name, change) in &record {
            match read(name) {
                Ok(v) if v == change.set => {
                    write(name, &change.before)?;
                    info!(sysctl = %name, value = %change.before, "sysctl restored to its value before switchyard set it");
                    restored.push(name.clone());
                }
                Ok(v) => {
                    info!(sysctl = %name, value = %v, "sysctl changed by someone else since we set it; left as it is")
                }
                // Gone with its module or namespace: nothing to restore.
                Err(e) => debug!(sysctl = %name, error = %e, "cannot read a recorded sysctl"),
            }
        }
        self.store(&BTreeMap::new())?;
        Ok(restored)
    }
}
