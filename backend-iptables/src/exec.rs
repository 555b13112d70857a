//! Running `iptables-restore` and `iptables-save` inside the backend's network namespace.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use proxy_core::{IpFamily, NetNamespace};
use tracing::debug;

use crate::error::Error;
use crate::restore::{RestoreInput, Table};

/// Which iptables implementation writes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// `iptables-nft`: the iptables API on nf_tables (kernel ≥ 3.13, iptables ≥ 1.8).
    Nft,
    /// `iptables-legacy`: x_tables.
    Legacy,
    /// Whatever plain `iptables` is on this system (when no suffixed binaries exist).
    Plain,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
            Variant::Plain => "plain",
        }
    }

    /// The binary for a tool: `iptables-nft-restore`, `ip6tables-legacy-save`, ...
    pub fn binary(self, family: IpFamily, tool: Tool) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let suffix = match tool {
            Tool::Iptables => "",
            Tool::Restore => "-restore",
            Tool::Save => "-save",
        };
        match self {
            Variant::Plain => format!("{base}{suffix}"),
            v => format!("{base}-{}{suffix}", v.as_str()),
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The iptables programs we run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Iptables,
    Restore,
    Save,
}

/// Programs the kernel state: the real binaries, or [`crate::fake::FakeIptables`].
pub trait Executor: Send + Sync + fmt::Debug {
    /// `iptables-restore --noflush` with `payload` on stdin. Each table
    /// section commits atomically; on error the failing table is unchanged.
    fn restore(&self, family: IpFamily, payload: &str) -> Result<(), Error>;

    /// [`restore`](Self::restore) with the input written as it is produced.
    /// The real binaries get it streamed into their stdin; the default
    /// renders it to text first (fakes and tools keep the text anyway).
    fn restore_from(&self, family: IpFamily, input: &dyn RestoreInput) -> Result<(), Error> {
        self.restore(family, &input.to_text())
    }

    /// `iptables-save -t TABLE`.
    fn save(&self, family: IpFamily, table: Table) -> Result<String, Error>;

    /// A counter the kernel increments on every change of the tables this
    /// executor programs, in any family, by anyone (nf_tables' ruleset
    /// generation, see [`crate::generation`]); `None` where there is none
    /// (legacy iptables) or it cannot be read: the tables are then read back.
    fn generation(&self) -> Option<u32> {
        None
    }
}

/// The real binaries, run inside a network namespace.
#[derive(Clone, Debug)]
pub struct SystemExecutor {
    pub netns: NetNamespace,
    pub variant: Variant,
}

/// Runs a program in `netns`, feeding `input`; returns stdout.
pub(crate) fn run(netns: &NetNamespace, program: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    run_with(netns, program, args, input.map(Input::Text))
}

/// What a program gets on stdin.
pub(crate) enum Input<'a> {
    Text(&'a str),
    Streamed(&'a dyn RestoreInput),
}

pub(crate) fn run_with(
    netns: &NetNamespace,
    program: &str,
    args: &[&str],
    input: Option<Input<'_>>,
) -> Result<String, Error> {
    let spawn_err = |source| Error::Spawn { program: program.to_string(), netns: netns.label(), source };
    let mut cmd: Command = netns.command(program).map_err(spawn_err)?;
    cmd.args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(input) = &input
        && let Some(stdin) = child.stdin.take()
    {
        // A failed write (the program exited early) shows up in its status below.
        let _ = match input {
            Input::Text(text) => {
                let mut stdin = stdin;
                stdin.write_all(text.as_bytes())
            }
            Input::Streamed(payload) => {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, stdin);
                payload.write_to(&mut w).and_then(|()| w.flush())
            }
        };
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // Streamed input is rendered again only to quote the failing line.
    let detail = match input {
        None => explain(&stderr, None),
        Some(Input::Text(text)) => explain(&stderr, Some(text)),
        Some(Input::Streamed(payload)) => explain(&stderr, Some(&payload.to_text())),
    };
    Err(Error::Command { program: program.to_string(), status: out.status.to_string(), detail })
}

/// Adds the failing input line to iptables-restore's "line N failed".
fn explain(stderr: &str, input: Option<&str>) -> String {
    let line_no = stderr
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok());
    match (line_no, input) {
        (Some(n), Some(text)) => match text.lines().nth(n.saturating_sub(1)) {
            Some(line) => format!("{stderr} [input line {n}: {line}]"),
            None => stderr.to_string(),
        },
        _ => stderr.to_string(),
    }
}

impl Executor for SystemExecutor {
    /// `ip netns exec NS iptables-nft-restore --noflush -w 5 < payload`
    fn restore(&self, family: IpFamily, payload: &str) -> Result<(), Error> {
        let program = self.variant.binary(family, Tool::Restore);
        debug!(%program, bytes = payload.len(), "iptables-restore");
        run(&self.netns, &program, &["--noflush", "-w", "5"], Some(payload)).map(drop)
    }

    /// The same, with the payload written into the program's stdin as it is
    /// produced (through a 64 KiB buffer) instead of rendered first.
    fn restore_from(&self, family: IpFamily, input: &dyn RestoreInput) -> Result<(), Error> {
        let program = self.variant.binary(family, Tool::Restore);
        debug!(%program, "iptables-restore (streamed)");
        run_with(&self.netns, &program, &["--noflush", "-w", "5"], Some(Input::Streamed(input))).map(drop)
    }

    /// `ip netns exec NS iptables-nft-save -t TABLE`
    fn save(&self, family: IpFamily, table: Table) -> Result<String, Error> {
        let program = self.variant.binary(family, Tool::Save);
        run(&self.netns, &program, &["-t", table.as_str()], None)
    }

    /// nf_tables' ruleset generation, for the nft implementation only (plain
    /// `iptables` may be either implementation: not trusted).
    fn generation(&self) -> Option<u32> {
        if self.variant != Variant::Nft {
            return None;
        }
        crate::generation::read(&self.netns)
            .inspect_err(|e| debug!(error = %e, "cannot read the nf_tables generation; reading the tables instead"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries() {
        assert_eq!(Variant::Nft.binary(IpFamily::V6, Tool::Restore), "ip6tables-nft-restore");
        assert_eq!(Variant::Legacy.binary(IpFamily::V4, Tool::Save), "iptables-legacy-save");
        assert_eq!(Variant::Plain.binary(IpFamily::V4, Tool::Iptables), "iptables");
    }

    #[test]
    fn failing_line_is_quoted() {
        let e = explain("iptables-restore: line 3 failed", Some("*nat\n:A - [0:0]\n-A B -j A\nCOMMIT\n"));
        assert!(e.ends_with("[input line 3: -A B -j A]"), "{e}");
    }
}
