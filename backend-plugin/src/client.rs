//! One connection to a plugin: framing, schema validation, request ids.
//!
//! A reader task turns each line the plugin sends into a [`PluginMessage`]
//! (after checking it against the schema), hands answers to whoever waits
//! for their id and relays `log` lines into tracing. Anything else — a line
//! that is not JSON, a schema violation, an answer nobody asked for, the
//! plugin closing its output — closes the connection with a reason that
//! names the message; the supervisor restarts the plugin.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::config::Transport;
use crate::error::Error;
use crate::protocol::{self, DaemonMessage, LineError, LogLevel, PluginMessage};

/// Longer lines are a protocol violation (a full state is many lines, never one huge one).
pub const MAX_LINE_BYTES: usize = 64 << 20;

type Writer = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The plugin broke the protocol in `message`.
    Violation { message: String, reason: String },
    /// The plugin closed its output, exited, or the socket went away.
    Gone(String),
    /// The daemon closed it (timeout, shutdown).
    ByDaemon(String),
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Violation { message, reason } => write!(f, "protocol violation in {message}: {reason}"),
            Closed::Gone(why) | Closed::ByDaemon(why) => f.write_str(why),
        }
    }
}

/// One live connection.
pub struct Connection {
    /// Distinguishes connections over restarts (full state is owed to each new one).
    pub epoch: u64,
    label: Mutex<String>,
    writer: tokio::sync::Mutex<Option<Writer>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<PluginMessage>>>,
    next_id: AtomicU64,
    closed: watch::Sender<Option<Closed>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("epoch", &self.epoch)
            .field("label", &self.label())
            .field("closed", &self.closed_reason())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps a reader and writer and starts the reader task.
    pub fn start(epoch: u64, label: String, reader: Reader, writer: Box<dyn AsyncWrite + Send + Unpin>) -> Arc<Self> {
        let conn = Arc::new(Connection {
            epoch,
            label: Mutex::new(label),
            writer: tokio::sync::Mutex::new(Some(BufWriter::with_capacity(1 << 16, writer))),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: watch::Sender::new(None),
        });
        tokio::spawn(read_loop(Arc::downgrade(&conn), conn.closed.subscribe(), reader));
        conn
    }

    /// The plugin's name (its command or socket until the handshake).
    pub fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_label(&self, label: &str) {
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_string();
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Why it closed, once it has.
    pub fn closed_reason(&self) -> Option<Closed> {
        self.closed.borrow().clone()
    }

    /// Resolves when the connection closes.
    pub async fn closed(&self) -> Closed {
        let mut rx = self.closed.subscribe();
        let got = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        got.ok().flatten().unwrap_or_else(|| Closed::Gone("connection dropped".into()))
    }

    /// Closes it (the first reason wins): pending requests fail, the writer
    /// is dropped, so a started plugin sees end of input.
    pub fn close(&self, why: Closed) {
        let first = self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(why.clone());
                true
            } else {
                false
            }
        });
        if first {
            // Dropping the senders wakes every waiter with an error.
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Drops the writing half (a started plugin then sees end of input and should exit).
    pub async fn close_input(&self) {
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = w.flush().await;
            let _ = w.shutdown().await;
        }
    }

    fn down(&self) -> Error {
        let reason = self.closed_reason().map_or_else(|| "connection closed".to_string(), |c| c.to_string());
        match self.closed_reason() {
            Some(Closed::Violation { message, reason }) => Error::Protocol { plugin: self.label(), message, reason },
            _ => Error::Down { plugin: self.label(), reason },
        }
    }

    /// Sends `messages` (the last one is the request with id `id`) and
    /// waits for the answer with that id.
    pub async fn request(
        &self,
        id: u64,
        what: &str,
        messages: impl IntoIterator<Item = DaemonMessage>,
        timeout: Duration,
    ) -> Result<PluginMessage, Error> {
        if self.closed_reason().is_some() {
            return Err(self.down());
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        if let Err(e) = self.send(messages).await {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(self.down()),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                let err = Error::Timeout {
                    plugin: self.label(),
                    request: what.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                };
                self.close(Closed::ByDaemon(err.to_string()));
                Err(err)
            }
        }
    }

    /// Writes messages, one line each, and flushes.
    pub async fn send(&self, messages: impl IntoIterator<Item = DaemonMessage>) -> Result<(), Error> {
        let mut guard = self.writer.lock().await;
        let Some(w) = guard.as_mut() else { return Err(self.down()) };
        let io = |source| Error::Io { plugin: self.label(), source };
        for m in messages {
            let line = protocol::encode(&m).map_err(|e| io(std::io::Error::other(e)))?;
            w.write_all(line.as_bytes()).await.map_err(io)?;
        }
        w.flush().await.map_err(io)
    }
}

async fn read_loop(conn: std::sync::Weak<Connection>, mut closed: watch::Receiver<Option<Closed>>, reader: Reader) {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let read = tokio::select! {
            r = reader.read_until(b'\n', &mut buf) => r,
            _ = closed.wait_for(Option::is_some) => return,
        };
        let Some(conn) = conn.upgrade() else { return };
        line_no += 1;
        let verdict = match read {
            Ok(0) => Err(Closed::Gone("the plugin closed its output (exited?)".into())),
            Ok(_) if buf.len() > MAX_LINE_BYTES => Err(Closed::Violation {
                message: format!("line {line_no}"),
                reason: format!("longer than {MAX_LINE_BYTES} bytes"),
            }),
            Ok(_) => handle_line(&conn, line_no, &buf),
            Err(e) => Err(Closed::Gone(format!("reading from the plugin: {e}"))),
        };
        if let Err(why) = verdict {
            if matches!(why, Closed::Violation { .. }) {
                error!(plugin = %conn.label(), "{why}; closing the connection");
            } else {
                debug!(plugin = %conn.label(), "{why}");
            }
            conn.close(why);
            return;
        }
    }
}

/// One line: parse, validate, deliver.
fn handle_line(conn: &Connection, line_no: u64, raw: &[u8]) -> Result<(), Closed> {
    let parsed = match protocol::decode_plugin_line(raw) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(LineError::NotJson { reason }) => {
            return Err(Closed::Violation { message: format!("line {line_no}"), reason });
        }
        Err(LineError::Invalid { type_name, reason }) => {
            return Err(Closed::Violation { message: format!("line {line_no} (message {type_name:?})"), reason });
        }
    };
    let message = format!("line {line_no} (message {:?})", parsed.type_name());
    match parsed {
        PluginMessage::Log(log) => {
            let plugin = conn.label();
            match log.level {
                LogLevel::Error => error!(plugin = %plugin, "{}", log.message),
                LogLevel::Warn => warn!(plugin = %plugin, "{}", log.message),
                LogLevel::Info => info!(plugin = %plugin, "{}", log.message),
                LogLevel::Debug => debug!(plugin = %plugin, "{}", log.message),
            }
            Ok(())
        }
        answer => {
            let id = answer.reply_to().unwrap_or_default();
            let waiter = conn.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            match waiter {
                Some(tx) => {
                    let _ = tx.send(answer);
                    Ok(())
                }
                None => Err(Closed::Violation {
                    message,
                    reason: format!("answers id {id}, which no request is waiting for"),
                }),
            }
        }
    }
}

/// A started plugin process.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    exited: watch::Receiver<Option<String>>,
}

impl Process {
    /// Waits until it exited; its status.
    pub async fn exited(&mut self) -> String {
        let got = self.exited.wait_for(Option::is_some).await.map(|s| s.clone());
        got.ok().flatten().unwrap_or_else(|| "exited".into())
    }

    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// End of input first (a well-behaved plugin exits), then SIGKILL by pid after `grace`.
    pub async fn stop(&mut self, conn: &Connection, grace: Duration) -> String {
        conn.close_input().await;
        if let Ok(status) = tokio::time::timeout(grace, self.exited()).await {
            return status;
        }
        if !self.has_exited() {
            // We started it; we stop it, by its pid.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        self.exited().await
    }
}

/// Opens a transport: starts the plugin in `netns`, or connects to its socket.
/// Returns the connection and, for a started plugin, its process.
pub async fn open(
    transport: &Transport,
    netns: &proxy_core::NetNamespace,
    epoch: u64,
    connect_patience: Duration,
) -> Result<(Arc<Connection>, Option<Process>), Error> {
    match transport {
        Transport::Command(argv) => {
            let label = transport.label();
            let spawn_err = |source| Error::Spawn { command: label.clone(), source };
            let (program, args) = argv.split_first().ok_or_else(|| Error::Config("command is empty".into()))?;
            let mut child = netns
                .tokio_command(program)
                .map_err(spawn_err)?
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .env("SWITCHYARD_PLUGIN_PROTOCOL", protocol::PROTOCOL_VERSION.to_string())
                .kill_on_drop(true)
                .spawn()
                .map_err(spawn_err)?;
            let pid = child.id().unwrap_or_default();
            let (Some(stdin), Some(stdout), Some(stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(spawn_err(std::io::Error::other("no stdio pipes")));
            };
            let name = program.rsplit('/').next().unwrap_or(program).to_string();
            tokio::spawn(relay_stderr(name, pid, stderr));
            let conn = Connection::start(epoch, label, Box::new(stdout), Box::new(stdin));
            let (tx, exited) = watch::channel(None);
            {
                let conn = Arc::downgrade(&conn);
                tokio::spawn(async move {
                    let status = match child.wait().await {
                        Ok(s) => format!("exited with {s}"),
                        Err(e) => format!("cannot be waited for: {e}"),
                    };
                    if let Some(c) = conn.upgrade() {
                        c.close(Closed::Gone(format!("the plugin process {status}")));
                    }
                    let _ = tx.send(Some(status));
                });
            }
            debug!(pid, command = ?argv, netns = %netns.label(), "plugin started");
            Ok((conn, Some(Process { pid, exited })))
        }
        Transport::Socket(path) => {
            // A sidecar may still be starting: retry until its socket answers.
            let deadline = tokio::time::Instant::now() + connect_patience;
            let stream = loop {
                match tokio::net::UnixStream::connect(path).await {
                    Ok(s) => break s,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(Error::Connect { path: path.display().to_string(), source: e });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let (r, w) = stream.into_split();
            Ok((Connection::start(epoch, transport.label(), Box::new(r), Box::new(w)), None))
        }
    }
}

/// The plugin's stderr, line by line, into the daemon's log.
async fn relay_stderr(name: String, pid: u32, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(plugin = %name, pid, "{line}");
    }
}
