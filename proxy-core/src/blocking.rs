//! Where a backend's blocking kernel work runs: one adapter for every backend.
//!
//! Backends block: netlink requests, BPF syscalls, `iptables-restore`. The
//! [`Dataplane`](crate::Dataplane) contract says that work runs off the
//! async executor, and it must run in the network namespace the backend
//! programs (the node's own in production, a lab namespace in tests).
//! `setns(2)` affects only the calling thread, so tokio's blocking pool is
//! no place for it: its threads are shared, and one left in a namespace
//! would run the next task there.
//!
//! [`KernelWorker`] is one long-lived thread per backend that entered the
//! namespace once. A backend's `sync`, `inspect` and `cleanup` hand it
//! closures with [`KernelWorker::run`] and await the result:
//!
//! - off the executor, inside the namespace: sockets opened and commands
//!   started by the closure belong to it (a command's child inherits the
//!   thread's namespace);
//! - one closure at a time, in the order they were handed over: a sync, an
//!   inspect and a cleanup never overlap (a backend's background threads
//!   still need its own locks);
//! - cheap: a sync that writes one Service costs less than starting a
//!   thread (about half a millisecond), which a thread per call would add;
//! - a closure that panics fails its own call only; the thread goes on.
//!
//! The thread starts on first use (building a backend changes nothing in
//! the kernel), again if it ever went away, and is stopped and joined when
//! the worker is dropped: a thread left in a namespace keeps the namespace
//! alive, and the eBPF backend decides by that whether a namespace's bpffs
//! is garbage.
//!
//! Work outside a backend's lifetime (a factory's `probe`, or `cleanup`
//! from a fresh process) is one call: [`once`] runs it on a thread of its
//! own in the namespace.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use crate::netns::NetNamespace;

type Job = Box<dyn FnOnce() + Send>;

/// A thread in a network namespace that runs a backend's blocking work in order.
#[derive(Debug)]
pub struct KernelWorker {
    name: String,
    netns: NetNamespace,
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for KernelWorker {
    fn drop(&mut self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Its queued jobs finish first; never join from the worker itself.
        if let Some(h) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            let _ = h.join();
        }
    }
}

impl KernelWorker {
    /// A worker for `netns`; `name` names its thread (`swy-<mode>`). No
    /// thread starts until the first [`run`](Self::run).
    pub fn new(name: impl Into<String>, netns: NetNamespace) -> KernelWorker {
        KernelWorker { name: name.into(), netns, tx: Mutex::new(None), thread: Mutex::new(None) }
    }

    /// The namespace the work runs in.
    pub fn netns(&self) -> &NetNamespace {
        &self.netns
    }

    fn start(&self) -> io::Result<Sender<Job>> {
        let (tx, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<io::Result<()>>();
        let netns = self.netns.clone();
        let handle = std::thread::Builder::new().name(self.name.clone()).spawn(move || {
            let entered = netns.enter();
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
        ready_rx.recv().map_err(|_| io::Error::other("kernel worker thread did not start"))??;
        Ok(tx)
    }

    /// Runs `f` on the worker, inside its namespace, after the work handed
    /// over before; waits for the result without blocking the executor.
    /// Fails when the namespace cannot be entered or `f` panicked.
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
                    tx.send(returned.0).map_err(|_| io::Error::other("kernel worker stopped"))?;
                    *guard = Some(tx);
                }
            }
        }
        orx.await.map_err(|_| io::Error::other("kernel work panicked"))
    }
}

/// Runs blocking `f` once inside `netns`, on a thread of its own, without
/// blocking the executor: for work outside a backend's lifetime (probes,
/// cleanup from a fresh process). A backend's own work goes through its
/// [`KernelWorker`].
pub async fn once<T, F>(netns: &NetNamespace, f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    netns.run_async(f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work runs in order on one thread that outlives each call; a panic
    /// fails only its own call.
    #[tokio::test]
    async fn runs_in_order_on_one_thread_and_survives_a_panic() {
        let worker = KernelWorker::new("swy-test", NetNamespace::current());
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..5 {
            let order = order.clone();
            threads.push(
                worker
                    .run(move || {
                        order.lock().unwrap_or_else(|e| e.into_inner()).push(i);
                        std::thread::current().id()
                    })
                    .await
                    .expect("run"),
            );
        }
        assert_eq!(*order.lock().unwrap_or_else(|e| e.into_inner()), vec![0, 1, 2, 3, 4]);
        assert!(threads.windows(2).all(|w| w[0] == w[1]), "one thread for every call");
        assert_ne!(threads[0], std::thread::current().id(), "off the caller's thread");
        let panicked = worker.run(|| -> u32 { panic!("boom") }).await;
        assert!(panicked.is_err());
        assert_eq!(worker.run(|| std::thread::current().id()).await.expect("after a panic"), threads[0]);
    }

    /// A namespace that cannot be entered fails the call, not the process.
    #[tokio::test]
    async fn a_missing_namespace_is_an_error() {
        let worker = KernelWorker::new("swy-test", NetNamespace::at("/nonexistent/netns"));
        assert!(worker.run(|| ()).await.is_err());
    }
}
