//! Booting QEMU and reading the guest's verdict from the serial console.
//!
//! `/dev/kvm` exists on our machines but a KVM guest hangs early in boot (or
//! QEMU aborts setting an MSR), so `auto` tries KVM with a short boot
//! deadline and falls back to TCG; the outcome is remembered per host boot
//! (`/proc/sys/kernel/random/boot_id`) so later runs go straight to what works.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{BOOT_MARKER, Error, RESULT_MARKER, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn parse(s: &str) -> Option<Accel> {
        match s {
            "auto" => Some(Accel::Auto),
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub memory_mib: u64,
    pub cpus: u32,
    pub out_dir: Option<&'a Path>,
    pub timeout: Duration,
    pub accel: Accel,
    /// Echo the console to our stdout.
    pub echo: bool,
}

/// What a VM run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The guest command's exit status, `None` when no verdict line came back.
    pub exit: Option<i32>,
    /// Seconds from QEMU start to the guest's `/init` marker.
    pub boot_seconds: Option<f64>,
    pub total_seconds: f64,
    pub accel: &'static str,
    /// The whole console, for callers that parse it.
    pub console: String,
}

fn accel_memo() -> PathBuf {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    super::kernel::cache_dir().join(format!("accel-{}", boot_id.trim()))
}

pub fn boot(b: &Boot<'_>) -> Result<Outcome> {
    let kvm_usable = Path::new("/dev/kvm").exists();
    let memo = fs::read_to_string(accel_memo()).unwrap_or_default();
    match b.accel {
        Accel::Tcg => attempt(b, false, None),
        Accel::Kvm => attempt(b, true, None),
        Accel::Auto if !kvm_usable || memo.trim() == "tcg" => attempt(b, false, None),
        Accel::Auto => {
            // A TCG boot takes ~8 s here; a working KVM boot far less.
            let deadline = Duration::from_secs(env_secs("SWITCHYARD_VM_KVM_BOOT_TIMEOUT", 20));
            match attempt(b, true, Some(deadline)) {
                Ok(o) => {
                    let _ = fs::write(accel_memo(), "kvm");
                    Ok(o)
                }
                Err(Error::KvmFailed(why)) => {
                    eprintln!("vm: KVM did not boot ({why}); falling back to TCG");
                    let _ = fs::write(accel_memo(), "tcg");
                    attempt(b, false, None)
                }
                Err(e) => Err(e),
            }
        }
    }
}

fn env_secs(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Kills the QEMU we started (by its pid, through the `Child`) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn attempt(b: &Boot<'_>, kvm: bool, boot_deadline: Option<Duration>) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-machine", if kvm { "q35,accel=kvm" } else { "q35,accel=tcg" }])
        .args(["-cpu", "max"])
        .args(["-m", &b.memory_mib.to_string()])
        .args(["-smp", &b.cpus.to_string()])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init"])
        .args(["-serial", "stdio"]);
    if let Some(dir) = b.out_dir {
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag={},security_model=none,id=swyout",
            dir.display(),
            super::OUT_TAG
        ));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
    let stdout = child.stdout.take().ok_or_else(|| Error::msg("qemu stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| Error::msg("qemu stderr"))?;
    let guard = Guard(child);

    let (tx, rx) = mpsc::channel::<Option<String>>();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    // QEMU's own errors (an MSR assertion under KVM, a bad option) go to stderr.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx_err.send(Some(format!("qemu: {line}")));
        }
    });

    let mut console = String::new();
    let mut boot_seconds = None;
    let mut exit = None;
    let stdout = std::io::stdout();
    loop {
        let now = start.elapsed();
        let limit = match (boot_seconds, boot_deadline) {
            (None, Some(d)) => d.min(b.timeout),
            _ => b.timeout,
        };
        if now >= limit {
            if boot_seconds.is_none() && boot_deadline.is_some() {
                return Err(Error::KvmFailed(format!("no /init marker within {}s", limit.as_secs())));
            }
            drop(guard);
            return Err(Error::msg(format!(
                "VM timed out after {}s{}",
                limit.as_secs(),
                if boot_seconds.is_none() { " before /init started" } else { "" }
            )));
        }
        match rx.recv_timeout(limit - now) {
            Ok(Some(line)) => {
                if line.starts_with("qemu: ") && kvm && boot_seconds.is_none() && boot_deadline.is_some() {
                    return Err(Error::KvmFailed(line));
                }
                if line.contains(BOOT_MARKER) {
                    boot_seconds = Some(start.elapsed().as_secs_f64());
                }
                if let Some(rest) = line.split_once(RESULT_MARKER).map(|(_, r)| r) {
                    exit = rest.trim().strip_prefix("exit=").and_then(|c| c.trim().parse().ok());
                }
                if b.echo {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                }
                console.push_str(&line);
                console.push('\n');
            }
            Ok(None) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // The guest powered off (stdout closed): reap QEMU.
    let mut guard = guard;
    let status = guard.0.wait()?;
    if boot_seconds.is_none() && kvm && boot_deadline.is_some() {
        return Err(Error::KvmFailed(format!("qemu exited with {status} before /init started")));
    }
    Ok(Outcome {
        exit,
        boot_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
        accel: if kvm { "kvm" } else { "tcg" },
        console,
    })
}
