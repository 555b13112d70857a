//! Logging through tracing, text or JSON on stderr, with a level that can
//! be changed at runtime from the admin port.
//!
//! Verbosity follows kube-proxy's `-v`: 0-1 lifecycle at info; 2-3 adds our
//! debug lines (one summary per sync) while keeping dependencies at info;
//! 4-5 is debug everywhere; 6 and above is trace.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;

/// Dependencies kept at info at verbosity 2-3.
const QUIET_DEPENDENCIES: &[&str] =
    &["kube", "kube_client", "kube_runtime", "hyper", "hyper_util", "h2", "tower", "tower_http", "rustls", "axum"];

/// The filter directive for a verbosity.
pub fn directive_for(verbosity: u8) -> String {
    match verbosity {
        0..=1 => "info".to_string(),
        2..=3 => {
            let mut d = "debug".to_string();
            for dep in QUIET_DEPENDENCIES {
                d.push_str(&format!(",{dep}=info"));
            }
            d
        }
        4..=5 => "debug".to_string(),
        _ => "trace".to_string(),
    }
}

/// Changes the log level of a running process.
#[derive(Clone)]
pub struct LogHandle {
    inner: Option<Arc<reload::Handle<EnvFilter, Registry>>>,
    current: Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle").field("current", &self.current()).finish()
    }
}

impl LogHandle {
    /// A handle that changes nothing (logging set up elsewhere, e.g. in tests).
    pub fn detached() -> LogHandle {
        LogHandle { inner: None, current: Arc::new(std::sync::Mutex::new("info".into())) }
    }

    /// The current filter directive.
    pub fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets a filter directive (`info`, `debug,kube=info`, ...).
    pub fn set(&self, directive: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directive).map_err(|e| format!("invalid log filter {directive:?}: {e}"))?;
        if let Some(h) = &self.inner {
            h.reload(filter).map_err(|e| format!("cannot change the log filter: {e}"))?;
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = directive.to_string();
        Ok(())
    }

    pub fn set_verbosity(&self, verbosity: u8) -> Result<(), String> {
        self.set(&directive_for(verbosity))
    }
}

/// Installs the global subscriber. `SWITCHYARD_LOG` (an EnvFilter directive)
/// overrides the verbosity when set.
pub fn init(format: LogFormat, verbosity: u8) -> LogHandle {
    let directive =
        std::env::var("SWITCHYARD_LOG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| directive_for(verbosity));
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new(directive_for(verbosity)));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = match format {
        LogFormat::Text => {
            // Colours only on a terminal: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed()
        }
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr).boxed()
        }
    };
    // A subscriber may already be installed (a custom build's main, tests):
    // keep it and run with a detached handle.
    match tracing_subscriber::registry().with(filter).with(fmt).try_init() {
        Ok(()) => LogHandle { inner: Some(Arc::new(handle)), current: Arc::new(std::sync::Mutex::new(directive)) },
        Err(_) => LogHandle::detached(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_levels() {
        assert_eq!(directive_for(0), "info");
        assert!(directive_for(2).starts_with("debug,kube=info"));
        assert_eq!(directive_for(4), "debug");
        assert_eq!(directive_for(9), "trace");
    }

    #[test]
    fn detached_handle_validates() {
        let h = LogHandle::detached();
        assert!(h.set("debug,kube=warn").is_ok());
        assert_eq!(h.current(), "debug,kube=warn");
        assert!(h.set("=[").is_err());
    }
}
