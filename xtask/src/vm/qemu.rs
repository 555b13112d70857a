//! Booting QEMU and reading the guest's verdict from the serial console.
//!
//! `/dev/kvm` exists on our machines but a KVM guest hangs early in boot (or
//! QEMU aborts setting an MSR), so `auto` tries KVM with a short boot
//! deadline and falls back to TCG; the outcome is remembered per host boot
//! (`/proc/sys/kernel/random/boot_id`) so later runs go straight to what works.
//!
//! A run is bounded by a [`Watchdog`] on progress, not by a fixed time: the
//! VM is killed when the guest (or QEMU) has printed nothing for the quiet
//! window (5 min by default), or at a wide overall cap (60 min). A fixed
//! 1,200 s bound failed `./x test` on a loaded machine while the guest was
//! still making progress (usual runs: 890-970 s); a hung guest, on the other
//! hand, goes quiet and is caught after the quiet window whatever the load.

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
    /// The overall cap.
    pub timeout: Duration,
    /// Killed after this long without a line of output.
    pub quiet_timeout: Duration,
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

/// Why a watched run must stop now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing printed for the quiet window.
    Quiet(Duration),
    /// The overall cap.
    Overall(Duration),
}

/// A deadline that moves with progress: each line of output pushes it to
/// `quiet` from then, and it never passes `overall` from the start.
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    start: Instant,
    last_output: Instant,
    quiet: Duration,
    overall: Duration,
}

impl Watchdog {
    pub fn new(start: Instant, quiet: Duration, overall: Duration) -> Watchdog {
        Watchdog { start, last_output: start, quiet, overall }
    }

    /// The guest printed a line at `at`.
    pub fn output(&mut self, at: Instant) {
        self.last_output = self.last_output.max(at);
    }

    /// When the run must be stopped, and why, unless more output comes first.
    pub fn deadline(&self) -> (Instant, Expiry) {
        let quiet = self.last_output + self.quiet;
        let overall = self.start + self.overall;
        if quiet < overall { (quiet, Expiry::Quiet(self.quiet)) } else { (overall, Expiry::Overall(self.overall)) }
    }

    /// Whether the run must stop at `now`.
    pub fn expired(&self, now: Instant) -> Option<Expiry> {
        let (at, why) = self.deadline();
        (now >= at).then_some(why)
    }
}

/// The quiet window: `SWITCHYARD_VM_QUIET_TIMEOUT` seconds, default 300.
pub fn default_quiet_timeout() -> Duration {
    Duration::from_secs(env_secs("SWITCHYARD_VM_QUIET_TIMEOUT", 300))
}

/// The overall cap: `SWITCHYARD_VM_TIMEOUT` seconds, default 3600.
pub fn default_timeout() -> Duration {
    Duration::from_secs(env_secs("SWITCHYARD_VM_TIMEOUT", 3600))
}

/// How following a child's output ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// Its output closed (the guest powered off).
    Closed,
    /// The watchdog expired; the child is still running (kill it).
    Expired(Expiry),
    /// The boot deadline passed before the boot marker (KVM probe).
    BootDeadline,
    /// `on_line` asked to stop.
    Stopped,
}

/// What `on_line` tells [`follow`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Stop,
}

/// Reads a child's stdout and stderr lines (stderr prefixed `qemu: `) into a channel; `None` when stdout closes.
fn read_lines(child: &mut Child) -> Result<mpsc::Receiver<Option<String>>> {
    let stdout = child.stdout.take().ok_or_else(|| Error::msg("child stdout is not piped"))?;
    let stderr = child.stderr.take();
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
    if let Some(stderr) = stderr {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                let _ = tx_err.send(Some(format!("qemu: {line}")));
            }
        });
    }
    Ok(rx)
}

/// Follows the lines on `rx` under `watchdog` (and, until `booted` says
/// so, a boot deadline from the start), handing each to `on_line`.
fn follow(
    rx: &mpsc::Receiver<Option<String>>,
    watchdog: &mut Watchdog,
    boot_deadline: Option<Instant>,
    mut booted: impl FnMut() -> bool,
    mut on_line: impl FnMut(String) -> Next,
) -> Followed {
    loop {
        let now = Instant::now();
        if let Some(why) = watchdog.expired(now) {
            return Followed::Expired(why);
        }
        let (mut until, _) = watchdog.deadline();
        if let Some(boot) = boot_deadline.filter(|_| !booted()) {
            if now >= boot {
                return Followed::BootDeadline;
            }
            until = until.min(boot);
        }
        match rx.recv_timeout(until.saturating_duration_since(now)) {
            Ok(Some(line)) => {
                watchdog.output(Instant::now());
                if on_line(line) == Next::Stop {
                    return Followed::Stopped;
                }
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return Followed::Closed,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
        }
    }
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
    let rx = read_lines(&mut child)?;
    let guard = Guard(child);

    let mut console = String::new();
    let boot_seconds = std::cell::Cell::new(None);
    let mut exit = None;
    let mut kvm_error = None;
    let stdout = std::io::stdout();
    let mut watchdog = Watchdog::new(start, b.quiet_timeout, b.timeout);
    let followed = follow(
        &rx,
        &mut watchdog,
        boot_deadline.map(|d| start + d),
        || boot_seconds.get().is_some(),
        |line| {
            if line.starts_with("qemu: ") && kvm && boot_seconds.get().is_none() && boot_deadline.is_some() {
                kvm_error = Some(line);
                return Next::Stop;
            }
            if line.contains(BOOT_MARKER) {
                boot_seconds.set(Some(start.elapsed().as_secs_f64()));
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
            Next::Continue
        },
    );
    let boot_seconds = boot_seconds.get();
    match followed {
        Followed::Closed => {}
        Followed::Stopped => return Err(Error::KvmFailed(kvm_error.unwrap_or_default())),
        Followed::BootDeadline => {
            let limit = boot_deadline.unwrap_or_default();
            return Err(Error::KvmFailed(format!("no /init marker within {}s", limit.as_secs())));
        }
        Followed::Expired(why) => {
            if boot_seconds.is_none() && boot_deadline.is_some() {
                return Err(Error::KvmFailed(format!("no /init marker ({why:?})")));
            }
            drop(guard);
            let stage = if boot_seconds.is_none() { " before /init started" } else { "" };
            let text = match why {
                Expiry::Quiet(d) => format!(
                    "VM killed: the guest printed nothing for {}s{stage} (after {:.0}s; SWITCHYARD_VM_QUIET_TIMEOUT)",
                    d.as_secs(),
                    start.elapsed().as_secs_f64()
                ),
                Expiry::Overall(d) => {
                    format!(
                        "VM killed at the overall cap of {}s{stage} (--timeout, SWITCHYARD_VM_TIMEOUT)",
                        d.as_secs()
                    )
                }
            };
            return Err(Error::msg(text));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_moves_the_deadline_up_to_the_overall_cap() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watchdog::new(t0, s(300), s(3600));
        assert_eq!(w.deadline(), (t0 + s(300), Expiry::Quiet(s(300))));
        assert_eq!(w.expired(t0 + s(299)), None);
        assert_eq!(w.expired(t0 + s(300)), Some(Expiry::Quiet(s(300))));
        // A guest that keeps printing outlives any fixed bound (the old 1,200 s).
        for minute in 1..=50 {
            w.output(t0 + s(60 * minute));
            assert_eq!(w.expired(t0 + s(60 * minute + 299)), None, "minute {minute}");
        }
        assert_eq!(w.deadline(), (t0 + s(3000 + 300), Expiry::Quiet(s(300))));
        // Near the cap, the cap wins however chatty the guest is.
        w.output(t0 + s(3500));
        assert_eq!(w.deadline(), (t0 + s(3600), Expiry::Overall(s(3600))));
        assert_eq!(w.expired(t0 + s(3600)), Some(Expiry::Overall(s(3600))));
        // Output reported out of order never moves the deadline back.
        w.output(t0 + s(10));
        assert_eq!(w.deadline().0, t0 + s(3600));
    }

    /// A fake guest: prints, then hangs without a word. The watchdog stops
    /// following it after the quiet window, long before the overall cap,
    /// having seen every line it printed.
    #[test]
    fn a_child_that_stops_printing_is_caught_by_the_quiet_window() {
        let mut child = Command::new("sh")
            .args(["-c", "echo booted; echo working; exec sleep 600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let rx = read_lines(&mut child).expect("pipes");
        let guard = Guard(child);
        let start = Instant::now();
        let quiet = Duration::from_millis(300);
        let mut watchdog = Watchdog::new(start, quiet, Duration::from_secs(600));
        let mut lines = Vec::new();
        let followed = follow(
            &rx,
            &mut watchdog,
            None,
            || true,
            |l| {
                lines.push(l);
                Next::Continue
            },
        );
        assert_eq!(followed, Followed::Expired(Expiry::Quiet(quiet)));
        assert_eq!(lines, ["booted", "working"]);
        assert!(start.elapsed() >= quiet, "not before the quiet window");
        assert!(start.elapsed() < Duration::from_secs(600), "well before the cap");
        // The runner then kills it (by dropping the guard): its output closes.
        drop(guard);
        assert!(matches!(rx.recv_timeout(Duration::from_secs(60)), Ok(None) | Err(_)));
    }

    /// A guest that powers off (its output closes) ends the run normally.
    #[test]
    fn a_child_that_exits_ends_the_run() {
        let mut child = Command::new("sh")
            .args(["-c", "echo one; echo two >&2; echo SWITCHYARD-VM-RESULT exit=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let rx = read_lines(&mut child).expect("pipes");
        let _guard = Guard(child);
        let mut watchdog = Watchdog::new(Instant::now(), Duration::from_secs(600), Duration::from_secs(600));
        let mut lines = Vec::new();
        let followed = follow(
            &rx,
            &mut watchdog,
            None,
            || true,
            |l| {
                lines.push(l);
                Next::Continue
            },
        );
        assert_eq!(followed, Followed::Closed);
        assert!(lines.contains(&"one".to_string()) && lines.contains(&"SWITCHYARD-VM-RESULT exit=0".to_string()));
    }
}
