//! The background thread: new interfaces get the TC programs at once, and
//! a detached datapath is seen and repaired within about a second, between
//! syncs and independently of them (the maps are shared: attaching needs
//! no plan).
//!
//! It lives in the backend's network namespace and waits in poll(2) on an
//! rtnetlink socket subscribed to link events (`ip monitor link`) and on an
//! eventfd that stops it. A link event (a veth created or moved in, renamed,
//! deleted) re-reads the interface list and attaches where needed; every
//! [`CHECK_INTERVAL`] it also checks every hook in the kernel
//! ([`crate::hooks::Hooks::verify`]). Repairs it makes are logged at once
//! and reported by the next sync's outcome.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proxy_core::{DataplaneHealth, NetNamespace};

use crate::config::EbpfConfig;
use crate::dataplane::Loaded;
use crate::netlink::LinkEvents;

/// How often the background thread checks every hook in the kernel: one
/// `BPF_PROG_QUERY` per hook and one pin lookup per link (tens of
/// microseconds for a node's interfaces).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A running background thread; stopped and joined when dropped.
#[derive(Debug)]
pub struct Monitor {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

/// What the thread needs.
pub(crate) struct Shared {
    pub netns: NetNamespace,
    pub cfg: EbpfConfig,
    pub tcx: bool,
    pub loaded: Arc<Mutex<Loaded>>,
    pub health: Arc<Mutex<DataplaneHealth>>,
}

impl Monitor {
    pub(crate) fn start(shared: Shared) -> io::Result<Monitor> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor eventfd just returned, owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(fd) };
        let stop_rx = stop.try_clone()?;
        let thread = std::thread::Builder::new().name("swy-ebpf-monitor".into()).spawn(move || run(shared, stop_rx))?;
        Ok(Monitor { stop, thread: Some(thread) })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&raw const one).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: Shared, stop: OwnedFd) {
    if let Some(path) = shared.netns.path() {
        let entered = std::fs::File::open(path)
            .and_then(|f| nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
        if let Err(e) = entered {
            tracing::error!(backend = crate::MODE, error = %e, "the eBPF monitor cannot enter the namespace; only syncs check the datapath");
            return;
        }
    }
    // Subscribed before the first pass, so that no interface created in between is missed.
    let mut events = match LinkEvents::open() {
        Ok(ev) => Some(ev),
        Err(e) => {
            tracing::warn!(backend = crate::MODE, error = %e, "no rtnetlink link events; new interfaces are found every {CHECK_INTERVAL:?}");
            None
        }
    };
    let mut next_check = Instant::now();
    loop {
        let wait = next_check.saturating_duration_since(Instant::now());
        let mut fds = [
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: events.as_ref().map_or(-1, LinkEvents::fd), events: libc::POLLIN, revents: 0 },
        ];
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: two pollfds owned by this frame (a negative fd is ignored).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            tracing::error!(backend = crate::MODE, error = %io::Error::last_os_error(), "the eBPF monitor stopped");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        let changed = fds[1].revents != 0 && events.as_mut().is_some_and(LinkEvents::drain);
        let check = Instant::now() >= next_check;
        if !changed && !check {
            continue;
        }
        if check {
            next_check = Instant::now() + CHECK_INTERVAL;
        }
        let mut loaded = shared.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if stopping(&stop) {
            return;
        }
        let Some(pass) = crate::dataplane::background_pass(&mut loaded, &shared.cfg, shared.tcx, check) else {
            continue;
        };
        drop(loaded);
        if !pass.new_interfaces.is_empty() {
            tracing::info!(backend = crate::MODE, interfaces = ?pass.new_interfaces, "attached to new interfaces");
        }
        // A check sees every hook: it decides. Between checks, only a new
        // failure (an interface that refused the programs) changes health.
        if check || !pass.failures.is_empty() {
            crate::dataplane::set_health(&shared.health, pass.health());
        }
    }
}

fn stopping(stop: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: one pollfd owned by this frame; zero timeout.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) > 0 }
}
