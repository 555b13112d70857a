//! One long-lived thread inside the backend's network namespace.
//!
//! Every kernel operation runs in the namespace the backend programs
//! (interface names, netlink, the netns cookie are per namespace), and
//! `setns(2)` affects only the calling thread. `NetNamespace::run` starts a
//! thread per call; a sync that writes one Service costs less than that
//! thread (about half a millisecond), so the backend keeps one thread that
//! entered the namespace once and hands it closures.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use proxy_core::NetNamespace;

type Job = Box<dyn FnOnce() + Send>;

/// A thread in `netns` running closures in order; started on first use,
/// again if it ever went away, and stopped (and joined) when dropped: a
/// thread left in a namespace keeps it alive, and the next run decides by
/// that whether a namespace's bpffs is garbage.
#[derive(Debug)]
pub struct NsWorker {
    netns: NetNamespace,
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for NsWorker {
    fn drop(&mut self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Its queued jobs finish first; never join from the worker itself.
        if let Some(h) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            let _ = h.join();
        }
    }
}

impl NsWorker {
    pub fn new(netns: NetNamespace) -> NsWorker {
        NsWorker { netns, tx: Mutex::new(None), thread: Mutex::new(None) }
    }

    fn start(&self) -> io::Result<Sender<Job>> {
        let (tx, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<io::Result<()>>();
        let netns = self.netns.clone();
        let handle = std::thread::Builder::new().name("swy-ebpf-netns".into()).spawn(move || {
            let entered = match netns.path().map(std::fs::File::open) {
                None => Ok(()),
                Some(Ok(f)) => nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from),
                Some(Err(e)) => Err(e),
            };
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                for job in rx {
                    // A panicking job must not take the thread (and later jobs) with it.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            }
        })?;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        ready_rx.recv().map_err(|_| io::Error::other("namespace worker did not start"))??;
        Ok(tx)
    }

    /// Runs `f` on the worker and waits for its result without blocking the executor.
    pub async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = otx.send(f());
        });
        {
            let mut guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let tx = match guard.take() {
                Some(tx) => tx,
                None => self.start()?,
            };
            match tx.send(job) {
                Ok(()) => *guard = Some(tx),
                Err(returned) => {
                    // The thread is gone: start another one for this job.
                    let tx = self.start()?;
                    tx.send(returned.0).map_err(|_| io::Error::other("namespace worker stopped"))?;
                    *guard = Some(tx);
                }
            }
        }
        orx.await.map_err(|_| io::Error::other("namespace worker job panicked"))
    }
}
