//! Running kernel work inside a network namespace.
//!
//! Backends program "their" network namespace: the daemon's own in
//! production, a lab namespace in tests. `setns(2)` affects only the calling
//! thread, so commands enter the namespace between fork and exec, and
//! in-process work (netlink sockets, BPF syscalls) runs on a fresh thread
//! that entered it; a socket stays bound to the namespace it was created in.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// A network namespace, or the current one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetNamespace {
    path: Option<PathBuf>,
}

impl NetNamespace {
    /// The namespace of the calling process.
    pub fn current() -> Self {
        NetNamespace { path: None }
    }

    /// A namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        NetNamespace { path: Some(path.into()) }
    }

    /// A named namespace as `ip netns` creates it.
    pub fn named(name: &str) -> Self {
        NetNamespace::at(Path::new("/run/netns").join(name))
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A short label for logs: the path, or `current`.
    pub fn label(&self) -> String {
        self.path.as_ref().map_or_else(|| "current".to_string(), |p| p.display().to_string())
    }

    fn open(&self) -> io::Result<Option<File>> {
        self.path.as_ref().map(File::open).transpose()
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<std::process::Command> {
        let mut cmd = std::process::Command::new(program);
        if let Some(fd) = self.open()? {
            // SAFETY: the closure runs between fork and exec and only calls
            // setns(2), which is async-signal-safe; `fd` is owned by the closure.
            unsafe {
                cmd.pre_exec(move || setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
            }
        }
        Ok(cmd)
    }

    /// A tokio command that runs inside this namespace.
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<tokio::process::Command> {
        Ok(tokio::process::Command::from(self.command(program)?))
    }

    /// Moves the calling thread into this namespace (nothing for the
    /// current one). Only for a thread made for it: see [`crate::blocking`].
    pub fn enter(&self) -> io::Result<()> {
        match self.open()? {
            Some(fd) => setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from),
            None => Ok(()),
        }
    }

    /// Runs `f` on a new thread inside this namespace and waits for it.
    /// Blocking: call it from a blocking context or use [`run_async`](Self::run_async).
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.open()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    if let Some(fd) = fd {
                        setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| io::Error::other("namespace worker thread panicked"))?
        })
    }

    /// Runs blocking `f` inside this namespace without blocking the executor.
    pub async fn run_async<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = self.clone();
        tokio::task::spawn_blocking(move || ns.run(f))
            .await
            .map_err(|e| io::Error::other(format!("namespace task failed: {e}")))?
    }
}
