//! Where the kernel's time goes in an nf_tables transaction: an experiment,
//! not a benchmark of the backend. In a throwaway namespace
//! (`swy-nftk-<pid>`), one table per set shape holding N elements shaped
//! like the backend's `endpoints` map (a 20-byte concatenated key, 8 bytes
//! of data); for each shape and N it times
//!
//! - `load`: adding the N elements in one transaction,
//! - `change`: one transaction deleting one element and adding another
//!   (what an endpoint change sends), on an open socket,
//!
//! and, once, the fixed costs around a transaction: entering the namespace
//! (a thread and `setns`), opening the socket, a `GETGEN`, and an empty
//! commit. With `--monitor` a socket subscribed to `NFNLGRP_NFTABLES` (as
//! the backend's event monitor) is drained by a thread during the runs.
//!
//! ```text
//! cargo bench -p backend-nftables --bench kernel_cost -- [--sizes 0,1000,10000,100000] [--reps 100] [--monitor]
//! ```

#![allow(clippy::print_stdout, reason = "an experiment reports on stdout")]
#![allow(clippy::unwrap_used, reason = "an experiment with broken setup should stop")]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backend_nftables::netlink::nft::{self, set_flags, types};
use backend_nftables::netlink::{Batch, Conn, Elem, ElemData, SetData, SetSpec};
use proxy_core::NetNamespace;

const FAMILY: u8 = nft::NFPROTO_IPV4;

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// An `endpoints`-shaped element: address . protocol . port . route . slot → address . port.
fn elem(i: u32) -> Elem {
    let mut key = Vec::with_capacity(20);
    key.extend_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    key.extend_from_slice(&[6, 0, 0, 0]);
    key.extend_from_slice(&[0, 80, 0, 0]);
    key.extend_from_slice(&0u32.to_be_bytes());
    key.extend_from_slice(&(i % 10).to_be_bytes());
    Elem { key, data: ElemData::Value(vec![10, 200, (i >> 8) as u8, i as u8, 0x1f, 0x90, 0, 0]), userdata: None }
}

struct Shape {
    name: &'static str,
    spec: fn(n: u32) -> SetSpec,
}

fn base() -> SetSpec {
    SetSpec {
        name: "s".into(),
        key_type: nft::concat(&[types::IPADDR, types::INET_PROTOCOL, types::INET_SERVICE, types::MARK, types::MARK]),
        key_len: 20,
        data: Some(SetData::Value(nft::concat(&[types::IPADDR, types::INET_SERVICE]), 8)),
        ..SetSpec::default()
    }
}

fn shapes() -> Vec<Shape> {
    vec![
        Shape { name: "flags 0 (rhash)", spec: |_| base() },
        Shape {
            name: "concat described (rhash)",
            spec: |_| SetSpec { flags: set_flags::CONCAT, fields: vec![4; 5], ..base() },
        },
        Shape { name: "size hint (hash)", spec: |n| SetSpec { size: Some((2 * n).max(64)), ..base() } },
        Shape {
            name: "timeout|eval (rhash)",
            spec: |_| SetSpec { flags: set_flags::TIMEOUT | set_flags::EVAL, ..base() },
        },
    ]
}

fn apply(c: &mut Conn, b: Batch) -> Duration {
    let (bytes, last) = b.finish();
    let t = Instant::now();
    c.apply(&bytes, last, &|s| format!("message {s}")).unwrap();
    t.elapsed()
}

fn main() {
    let mut sizes = vec![0u32, 1000, 10_000, 100_000];
    let mut reps = 100usize;
    let mut monitor = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => sizes = it.next().unwrap().split(',').map(|s| s.parse().unwrap()).collect(),
            "--reps" => reps = it.next().unwrap().parse().unwrap(),
            "--monitor" => monitor = true,
            _ => {}
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root (a network namespace)");
        return;
    }
    let ns = Netns(format!("swy-nftk-{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    let netns = NetNamespace::named(&ns.0);

    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let drain = monitor.then(|| {
        let (stop, events, netns) = (stop.clone(), events.clone(), netns.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            netns
                .run(|| {
                    let sock = Conn::monitor().unwrap();
                    tx.send(()).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        if Conn::readable(&sock, Duration::from_millis(100))
                            && let Ok((d, _)) = sock.recv_from_full()
                        {
                            events.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap()
        });
        rx.recv().unwrap();
        h
    });

    // Fixed costs around a transaction.
    let mut enter = Vec::new();
    let mut open = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        netns.run(|| ()).unwrap();
        enter.push(t.elapsed());
        let t = Instant::now();
        netns.run(|| drop(Conn::open().unwrap())).unwrap();
        open.push(t.elapsed());
    }
    // A socket per request (what the backend did): the commit, then the
    // close. Closing an nf_tables netlink socket waits for the destruction
    // of the last transaction's objects (nf_tables' NETLINK_URELEASE
    // notifier flushes its destroy work, which waits for an RCU grace period).
    netns
        .run(|| {
            let mut c = Conn::open().unwrap();
            let mut b = Batch::new(FAMILY, 1);
            b.add_table("tc");
            b.add_set("tc", &base(), 1);
            apply(&mut c, b);
        })
        .unwrap();
    let mut per_request = Vec::new();
    let mut close_after = Vec::new();
    for r in 0..reps as u32 {
        let t = Instant::now();
        let close = netns
            .run(|| {
                let mut c = Conn::open().unwrap();
                let mut b = Batch::new(FAMILY, 1);
                if r > 0 {
                    b.elements("tc", "s", &[&elem(r - 1)], true);
                }
                b.elements("tc", "s", &[&elem(r)], false);
                apply(&mut c, b);
                let t = Instant::now();
                drop(c);
                t.elapsed()
            })
            .unwrap();
        per_request.push(t.elapsed());
        close_after.push(close);
    }
    let (getgen, empty) = netns
        .run(|| {
            let mut c = Conn::open().unwrap();
            let mut b = Batch::new(FAMILY, 1);
            b.add_table("t0");
            apply(&mut c, b);
            let (mut g, mut e) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let t = Instant::now();
                c.generation().unwrap();
                g.push(t.elapsed());
                // `add table` of an existing table: a commit that changes nothing.
                let mut b = Batch::new(FAMILY, 1);
                b.add_table("t0");
                e.push(apply(&mut c, b));
            }
            (g, e)
        })
        .unwrap();
    println!("| step | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (what, v) in [
        ("enter the namespace (thread + setns)", &enter),
        ("enter + open the socket", &open),
        ("GETGEN on an open socket", &getgen),
        ("commit of `add table` (no change)", &empty),
        ("enter + open + one-element change + close", &per_request),
        ("of which closing the socket after the commit", &close_after),
    ] {
        println!("| {what} | {} | {} |", ms(pct(v, 0.5)), ms(pct(v, 0.99)));
    }
    println!();
    println!("| set shape | N | load N (ms) | change p50 ms | change p99 ms |");
    println!("|---|---|---|---|---|");
    for (si, shape) in shapes().iter().enumerate() {
        for &n in &sizes {
            let table = format!("t{si}-{n}");
            let (load, change) = netns
                .run(|| {
                    let mut c = Conn::open().unwrap();
                    let mut b = Batch::new(FAMILY, 1);
                    b.add_table(&table);
                    b.add_set(&table, &(shape.spec)(n), 1);
                    apply(&mut c, b);
                    let elems: Vec<Elem> = (0..n).map(elem).collect();
                    let mut b = Batch::new(FAMILY, 1);
                    b.elements(&table, "s", &elems.iter().collect::<Vec<_>>(), false);
                    let load = apply(&mut c, b);
                    let mut change = Vec::new();
                    for r in 0..reps as u32 {
                        // Replace element r with element n + r (an endpoint replaced).
                        let mut b = Batch::new(FAMILY, 1);
                        let old = if r < n { Some(elem(r)) } else { r.checked_sub(1).map(|p| elem(n + p)) };
                        if let Some(old) = &old {
                            b.elements(&table, "s", &[old], true);
                        }
                        b.elements(&table, "s", &[&elem(n + r)], false);
                        change.push(apply(&mut c, b));
                    }
                    let mut b = Batch::new(FAMILY, 1);
                    b.del_table(&table);
                    apply(&mut c, b);
                    (load, change)
                })
                .unwrap();
            println!(
                "| {} | {n} | {} | {} | {} |",
                shape.name,
                ms(load),
                ms(pct(&change, 0.5)),
                ms(pct(&change, 0.99))
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = drain {
        h.join().unwrap();
        println!("(monitor received {} bytes of events)", events.load(Ordering::Relaxed));
    }
}
