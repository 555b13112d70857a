//! The crate's error type.

use proxy_core::DataplaneError;

use crate::MODE;
use crate::protocol::{ErrorKind, TypedError};

/// Everything that can go wrong between the daemon and a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `plugin:` section is unusable.
    #[error("plugin section: {0}")]
    Config(String),
    /// The plugin executable could not be started.
    #[error("starting plugin `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The sidecar's socket could not be reached.
    #[error("connecting to plugin socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The plugin broke the protocol; the connection is closed and the plugin restarted.
    #[error("plugin {plugin} violated the protocol in {message}: {reason}")]
    Protocol { plugin: String, message: String, reason: String },
    /// The plugin speaks no version the daemon speaks.
    #[error("plugin {plugin} speaks protocol version {offered}; this daemon speaks {supported:?}")]
    Version { plugin: String, offered: u32, supported: Vec<u32> },
    /// No answer in time; the connection is closed and the plugin restarted.
    #[error("plugin {plugin} did not answer {request} within {timeout_ms} ms")]
    Timeout { plugin: String, request: String, timeout_ms: u64 },
    /// The connection is gone (the plugin exited, closed its output, or broke the protocol).
    #[error("plugin {plugin} is down: {reason}")]
    Down { plugin: String, reason: String },
    /// The plugin answered a request with a typed error.
    #[error("plugin {plugin}: {request} failed: {message}")]
    Reported { plugin: String, request: String, kind: ErrorKind, message: String, error: TypedError },
    /// Writing to the plugin failed.
    #[error("writing to plugin {plugin}")]
    Io {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the connection can no longer be trusted (the supervisor restarts the plugin).
    pub fn breaks_connection(&self) -> bool {
        matches!(self, Error::Protocol { .. } | Error::Timeout { .. } | Error::Io { .. } | Error::Version { .. })
    }

    /// The error at the `Dataplane` boundary, typed as the plugin typed it.
    pub fn into_dataplane(self, operation: &str) -> DataplaneError {
        match self {
            Error::Reported { error, .. } if error.kind == ErrorKind::Unavailable => {
                DataplaneError::unavailable(MODE, error.message)
            }
            Error::Reported { error, .. } if error.kind == ErrorKind::Config => {
                DataplaneError::Config { mode: MODE.to_string(), problems: vec![error.message] }
            }
            Error::Reported { error, .. } if error.kind == ErrorKind::Full => DataplaneError::Full {
                mode: MODE.to_string(),
                what: error.what.unwrap_or_else(|| error.message.clone()),
                capacity: error.capacity.unwrap_or(0),
            },
            other => DataplaneError::failed(MODE, operation, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The I/O causes are printed once when the chain is (message, then source).
    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such plugin here");
        for e in [
            Error::Spawn { command: "plugin-bin".into(), source: io() },
            Error::Connect { path: "/run/p.sock".into(), source: io() },
            Error::Io { plugin: "p".into(), source: io() },
        ] {
            proxy_core::testing::assert_each_cause_once(&e);
            let text = proxy_core::ErrorChain(&e).to_string();
            assert_eq!(text.matches("no such plugin here").count(), 1, "{text}");
        }
    }
}
