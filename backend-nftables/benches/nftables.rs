//! Sync times at scale: full sync (one transaction), one endpoint changed
//! (a partial sync), a periodic full request with nothing changed, and the
//! userspace share of each (render and encode, with a kernel that accepts
//! everything without looking). Each sync is reported as wall time, the
//! time spent in calls to the kernel (netlink round trips, commits), and
//! the process's CPU time (user and system, all threads), which unlike
//! wall time does not grow with the load of a shared machine.
//!
//! ```text
//! cargo bench -p backend-nftables --bench nftables -- [--sizes 1000,10000] [--endpoints 10] [--changes 50]
//! ```
//! Needs root for the kernel figures: runs in a throwaway namespace
//! (`swy-nftb-<pid>-<n>`), deleted at the end. Not a test: it prints
//! figures and asserts nothing about time.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]
#![allow(clippy::unwrap_used, reason = "a benchmark with broken setup should stop")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_nftables::client::{Kernel, SystemKernel, TableDump, Transaction};
use backend_nftables::netlink::Elem;
use backend_nftables::{Error, NftablesDataplane, Settings};
use proxy_core::{Dataplane, IpFamily, NetNamespace};

use proxy_core::testing::scale::{request, snapshot};

/// Accepts every transaction without sending it; counts bytes.
#[derive(Debug, Default)]
struct NullKernel(std::sync::Mutex<(usize, usize)>);

impl Kernel for NullKernel {
    fn apply(&self, tx: &Transaction) -> Result<(), Error> {
        let mut s = self.0.lock().unwrap();
        s.0 += tx.bytes.len();
        s.1 += tx.messages;
        Ok(())
    }
    fn elements(&self, _: IpFamily, _: &str) -> Result<Vec<Elem>, Error> {
        Ok(Vec::new())
    }
    fn table(&self, _: IpFamily) -> Result<TableDump, Error> {
        Ok(TableDump::default())
    }
    fn generation(&self) -> Result<u32, Error> {
        Ok(1)
    }
}

/// Another kernel, timing every call made to it.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn Kernel>,
    spent: std::sync::Mutex<Duration>,
}

impl Timed {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        *self.spent.lock().unwrap() += t.elapsed();
        r
    }

    fn take(&self) -> Duration {
        std::mem::take(&mut *self.spent.lock().unwrap())
    }
}

impl Kernel for Timed {
    fn apply(&self, tx: &Transaction) -> Result<(), Error> {
        self.time(|| self.inner.apply(tx))
    }
    fn elements(&self, family: IpFamily, set: &str) -> Result<Vec<Elem>, Error> {
        self.time(|| self.inner.elements(family, set))
    }
    fn table(&self, family: IpFamily) -> Result<TableDump, Error> {
        self.time(|| self.inner.table(family))
    }
    fn generation(&self) -> Result<u32, Error> {
        self.time(|| self.inner.generation())
    }
    fn commits_from(&self, port: u32) -> bool {
        self.inner.commits_from(port)
    }
}

/// CPU time of the whole process (every thread, user and system): a
/// figure that does not grow with the machine's load as wall time does.
fn cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn figures(n: usize, eps: usize, changes: usize, kernel: Arc<dyn Kernel>, label: &str) {
    let rt = rt();
    let kernel = Arc::new(Timed { inner: kernel, spent: Default::default() });
    let dp =
        NftablesDataplane::new(Settings { conntrack: false, ..Settings::new(NetNamespace::current()) }, kernel.clone());
    let snap = snapshot(n, eps, 0);
    let (t, c) = (Instant::now(), cpu());
    rt.block_on(dp.sync(request(snap.clone(), &[], true))).unwrap();
    let (full, full_cpu) = (t.elapsed(), cpu() - c);
    let full_kernel = kernel.take();
    drop(snap);
    let mut partial = Vec::new();
    let mut partial_kernel = Vec::new();
    let mut partial_cpu = Vec::new();
    for g in 1..=changes {
        let s = snapshot(n, eps, g as u64);
        let (t, c) = (Instant::now(), cpu());
        // `s` stays alive: in the daemon the core holds the snapshot, so
        // dropping it is not part of a sync.
        rt.block_on(dp.sync(request(s.clone(), &["svc-1"], false))).unwrap();
        partial.push(t.elapsed());
        partial_cpu.push(cpu() - c);
        partial_kernel.push(kernel.take());
        drop(s);
    }
    let last = snapshot(n, eps, changes as u64);
    let mut periodic = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        rt.block_on(dp.sync(request(last.clone(), &[], true))).unwrap();
        periodic.push(t.elapsed());
    }
    println!(
        "| {n} x {eps} | {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
        ms(full),
        ms(full_kernel),
        ms(full_cpu),
        ms(pct(partial.clone(), 0.5)),
        ms(pct(partial_kernel, 0.5)),
        ms(pct(partial_cpu, 0.5)),
        ms(pct(partial, 0.99)),
        ms(pct(periodic, 0.5)),
    );
}

fn main() {
    let mut sizes = vec![1000, 10_000];
    let mut endpoints = 10;
    let mut changes = 50;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => sizes = it.next().unwrap().split(',').map(|s| s.parse().unwrap()).collect(),
            "--endpoints" => endpoints = it.next().unwrap().parse().unwrap(),
            "--changes" => changes = it.next().unwrap().parse().unwrap(),
            _ => {}
        }
    }
    let root = testkit::is_root();
    println!(
        "| Services x endpoints | kernel | full sync | in kernel calls | CPU | one endpoint changed p50 | in kernel calls p50 | CPU p50 | wall p99 | periodic full, nothing changed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in &sizes {
        let null = Arc::new(NullKernel::default());
        figures(*n, endpoints, changes, null.clone(), "none (render + encode only)");
        if root {
            // Deleted when the guard drops (`swy-nftb-<pid>-<n>`).
            let ns = testkit::Netns::unique("nftb").unwrap();
            figures(*n, endpoints, changes, Arc::new(SystemKernel::new(NetNamespace::named(ns.name()))), "6.18");
        } else {
            println!("(kernel figures skipped: not root)");
        }
        let (bytes, msgs) = *null.0.lock().unwrap();
        println!("(bytes sent over all runs without a kernel: {bytes}, messages {msgs})");
    }
}
