//! The real daemon under test: the `switchyard` binary inside the lab's node
//! namespace, watching the fake API server (also inside that namespace, on
//! its loopback), logging one JSON line per sync that we read back.
//!
//! "Kernel acknowledged" is the timestamp of the daemon's `synced` line: it
//! is written right after the backend's `sync()` returned (iptables-restore
//! exited 0, netlink acknowledged, maps written). Which sync carries a
//! change is known from the tracker generation in that line's span: every
//! change the harness makes bumps it by exactly one.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proxy_daemon::fake_apiserver::FakeApiServer;

use crate::lab::{CLUSTER_CIDR, LEFTOVERS};
use crate::objects::NODE_NAME;

/// The fake API server, served from a thread inside a lab namespace.
pub struct ApiHost {
    server: Arc<FakeApiServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiHost {
    pub fn start(netns: &Path) -> Result<ApiHost, String> {
        let fd = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(e) = nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = tx.send(Err(format!("setns: {e}")));
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match FakeApiServer::start().await {
                    Ok(s) => {
                        let _ = tx.send(Ok(Arc::new(s)));
                        let _ = stop_rx.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("fake API server: {e}")));
                    }
                }
            });
        });
        let server =
            rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "fake API server did not start".to_string())??;
        Ok(ApiHost { server, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn api(&self) -> &FakeApiServer {
        &self.server
    }
}

impl Drop for ApiHost {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `synced` line of the daemon.
#[derive(Clone, Debug)]
pub struct SyncEvent {
    pub at: SystemTime,
    pub generation: u64,
    /// How long the backend's `sync()` took (µs).
    pub sync_us: f64,
}

#[derive(Default)]
struct LogState {
    syncs: Vec<SyncEvent>,
    tail: VecDeque<String>,
    problems: Vec<String>,
    closed: bool,
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    pub pid: i32,
    pub spawned: SystemTime,
    log: Arc<(Mutex<LogState>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

/// How the daemon is started.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    pub binary: PathBuf,
    pub mode: String,
    pub min_sync_period: String,
    /// The backend's configuration section, if any.
    pub section: Option<serde_json::Value>,
    pub cpu: Option<usize>,
}

fn parse_time(s: &str) -> Option<SystemTime> {
    let t: jiff::Timestamp = s.parse().ok()?;
    let us = t.as_microsecond();
    Some(UNIX_EPOCH + Duration::from_micros(u64::try_from(us).ok()?))
}

fn parse_sync(v: &serde_json::Value) -> Option<SyncEvent> {
    if v.get("message")?.as_str()? != "synced" {
        return None;
    }
    let span = v.get("span")?;
    Some(SyncEvent {
        at: parse_time(v.get("timestamp")?.as_str()?)?,
        generation: span.get("generation")?.as_u64()?,
        sync_us: v.get("elapsed_ms").and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN) * 1e3,
    })
}

impl Daemon {
    /// Starts `switchyard` inside `netns`, pointed at `kubeconfig`.
    pub fn start(spec: &DaemonSpec, netns: &Path, kubeconfig: &Path, workdir: &Path) -> Result<Daemon, String> {
        let mut cmd = Command::new(&spec.binary);
        cmd.args(["--proxy-mode", &spec.mode, "--hostname-override", NODE_NAME, "--cluster-cidr", CLUSTER_CIDR])
            .args(["--min-sync-period", &spec.min_sync_period, "--logging-format", "json"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env(
                "SWITCHYARD_LOG",
                std::env::var("SWY_BENCH_DAEMON_FILTER").unwrap_or_else(|_| "info,proxy_core::proxier=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(section) = &spec.section {
            let path = workdir.join(format!("config-{}.json", spec.mode));
            let body = serde_json::json!({ spec.mode.clone(): section });
            std::fs::write(&path, body.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
            cmd.arg("--config").arg(path);
        }
        let fd = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        crate::lab::spawn_inside(&mut cmd, fd, spec.cpu);
        let spawned = SystemTime::now();
        let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", spec.binary.display()))?;
        let pid = child.id() as i32;
        LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()).pids.insert(pid);
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new((Mutex::new(LogState::default()), Condvar::new()));
        let shared = log.clone();
        // SWY_BENCH_DAEMON_LOG=DIR keeps every daemon's log (debugging the harness).
        let mut keep = std::env::var_os("SWY_BENCH_DAEMON_LOG")
            .and_then(|d| std::fs::File::create(PathBuf::from(d).join(format!("daemon-{pid}.log"))).ok());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = keep.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                let mut st = shared.0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(v) = &parsed {
                    if let Some(ev) = parse_sync(v) {
                        st.syncs.push(ev);
                    }
                    let level = v.get("level").and_then(serde_json::Value::as_str).unwrap_or("");
                    if (level == "ERROR" || (level == "WARN" && !line.contains("Node"))) && st.problems.len() < 20 {
                        st.problems.push(line.clone());
                    }
                }
                st.tail.push_back(line);
                if st.tail.len() > 30 {
                    st.tail.pop_front();
                }
                shared.1.notify_all();
            }
            let mut st = shared.0.lock().unwrap_or_else(|e| e.into_inner());
            st.closed = true;
            shared.1.notify_all();
        });
        Ok(Daemon { child, pid, spawned, log, reader: Some(reader) })
    }

    /// Waits for the first sync whose generation is at least `generation`
    /// (0: any sync), or `None` after `timeout` or when the daemon died.
    pub fn wait_sync(&self, generation: u64, timeout: Duration) -> Option<SyncEvent> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.log;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(ev) = st.syncs.iter().find(|s| s.generation >= generation) {
                return Some(ev.clone());
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Every sync seen so far.
    pub fn syncs(&self) -> Vec<SyncEvent> {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner()).syncs.clone()
    }

    /// The generation of the latest sync.
    pub fn synced_generation(&self) -> u64 {
        self.syncs().iter().map(|s| s.generation).max().unwrap_or(0)
    }

    /// Errors and warnings (except the fake API server's missing Node GET) the daemon logged, and its last lines.
    pub fn problems(&self) -> (Vec<String>, Vec<String>) {
        let st = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        (st.problems.clone(), st.tail.iter().cloned().collect())
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Peak RSS (MiB), CPU seconds of the daemon and of the children it waited for.
    pub fn footprint(&self) -> Option<(f64, f64, f64)> {
        proc_footprint(self.pid)
    }

    /// SIGTERM (rules stay), then SIGKILL after 10 s.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()).pids.remove(&self.pid);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// (peak RSS MiB, own CPU s, waited-for children's CPU s) from /proc.
pub fn proc_footprint(pid: i32) -> Option<(f64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // Fields after the command: state(0) … utime(11) stime(12) cutime(13) cstime(14).
    let own = (f.get(11)? + f.get(12)?) / tck;
    let children = (f.get(13)? + f.get(14)?) / tck;
    Some((hwm_kib / 1024.0, own, children))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_sync_line() {
        let line = r#"{"timestamp":"2025-03-01T10:00:00.123456Z","level":"DEBUG","elapsed_ms":12.5,"did_full":true,"objects":"x","message":"synced","target":"proxy_core::proxier","span":{"backend":"iptables","changed":3,"full":true,"generation":7,"services":3,"name":"sync"}}"#;
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let ev = parse_sync(&v).expect("a sync");
        assert_eq!(ev.generation, 7);
        let us = ev.at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() % 1_000_000).unwrap_or(0);
        assert_eq!(us, 123_456);
    }

    #[test]
    fn own_footprint() {
        let (rss, cpu, _) = proc_footprint(std::process::id() as i32).expect("/proc");
        assert!(rss > 0.0 && cpu >= 0.0);
    }
}
