//! The `plugin:` configuration section.
//!
//! ```yaml
//! plugin:
//!   command: [python3, /opt/plugins/nft-example/plugin.py]   # started by the daemon, stdin/stdout
//!   # socket: /run/switchyard/plugin.sock                    # or: a sidecar listening here
//!   options: {table: switchyard_example}                      # handed to the plugin in `hello`
//!   requestTimeout: 60s        # answer to a barrier, inspect or cleanup
//!   handshakeTimeout: 10s      # answer to hello (and the socket appearing)
//!   restartBackoff: 500ms      # first restart delay; doubles up to restartBackoffMax
//!   restartBackoffMax: 30s
//! ```
//!
//! `command` may also be one string, split on whitespace (handy for
//! `--plugin-command` and `SWITCHYARD_PLUGIN__COMMAND`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// How the daemon reaches the plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Start this program (inside the backend's network namespace) and
    /// speak over its stdin/stdout.
    Command(Vec<String>),
    /// Connect to a plugin listening on this Unix socket (a sidecar).
    Socket(PathBuf),
}

impl Transport {
    /// A label for logs and errors before the plugin has told its name.
    pub fn label(&self) -> String {
        match self {
            Transport::Command(argv) => argv.join(" "),
            Transport::Socket(path) => format!("at {}", path.display()),
        }
    }
}

/// The parsed section.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    pub transport: Transport,
    pub options: Value,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
}

impl PluginConfig {
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_millis(500);
    pub const DEFAULT_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

    /// Parses a section. `Ok(None)`: no plugin configured (neither
    /// `command` nor `socket`), which is fine for `--cleanup` and for
    /// daemons running another mode.
    pub fn parse(section: &Value) -> Result<Option<PluginConfig>, Vec<String>> {
        let mut problems = Vec::new();
        let empty = serde_json::Map::new();
        let map = match section {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => return Err(vec!["expected a mapping".into()]),
        };
        let mut command = None;
        let mut socket = None;
        let mut cfg = PluginConfig {
            transport: Transport::Command(Vec::new()),
            options: Value::Object(serde_json::Map::new()),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            restart_backoff: Self::DEFAULT_RESTART_BACKOFF,
            restart_backoff_max: Self::DEFAULT_RESTART_BACKOFF_MAX,
        };
        for (key, value) in map {
            let mut duration = |slot: &mut Duration| match value.as_str().and_then(parse_duration) {
                Some(d) if !d.is_zero() => *slot = d,
                _ => problems.push(format!("{key}: {value} is not a duration such as \"10s\" or \"500ms\"")),
            };
            match key.as_str() {
                "command" => match value {
                    Value::String(s) if !s.trim().is_empty() => {
                        command = Some(s.split_whitespace().map(str::to_string).collect::<Vec<_>>());
                    }
                    Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
                        command = Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect());
                    }
                    _ => problems.push(format!("command: expected a non-empty list of strings, found {value}")),
                },
                "socket" => match value.as_str() {
                    Some(s) if !s.is_empty() => socket = Some(PathBuf::from(s)),
                    _ => problems.push(format!("socket: expected a path, found {value}")),
                },
                "options" => cfg.options = value.clone(),
                "requestTimeout" => duration(&mut cfg.request_timeout),
                "handshakeTimeout" => duration(&mut cfg.handshake_timeout),
                "restartBackoff" => duration(&mut cfg.restart_backoff),
                "restartBackoffMax" => duration(&mut cfg.restart_backoff_max),
                other => problems.push(format!(
                    "{other}: unknown field (known: command, socket, options, requestTimeout, handshakeTimeout, restartBackoff, restartBackoffMax)"
                )),
            }
        }
        if cfg.restart_backoff > cfg.restart_backoff_max {
            problems.push("restartBackoff: longer than restartBackoffMax".into());
        }
        cfg.transport = match (command, socket) {
            (Some(_), Some(_)) => {
                problems.push(
                    "command: set either command (a plugin the daemon starts) or socket (a sidecar), not both".into(),
                );
                return Err(problems);
            }
            (Some(argv), None) => Transport::Command(argv),
            (None, Some(path)) => Transport::Socket(path),
            (None, None) if problems.is_empty() => return Ok(None),
            (None, None) => return Err(problems),
        };
        if problems.is_empty() { Ok(Some(cfg)) } else { Err(problems) }
    }
}

/// Go durations (`500ms`, `10s`, `1m30s`, `2h`), with the workspace's one
/// parser (Go's grammar; a negative one is refused).
pub fn parse_duration(text: &str) -> Option<Duration> {
    proxy_core::duration::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_or_socket() {
        let c = PluginConfig::parse(&json!({"command": ["python3", "p.py"], "requestTimeout": "2s"})).unwrap().unwrap();
        assert_eq!(c.transport, Transport::Command(vec!["python3".into(), "p.py".into()]));
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        let c = PluginConfig::parse(&json!({"command": "python3  p.py --x"})).unwrap().unwrap();
        assert_eq!(c.transport, Transport::Command(vec!["python3".into(), "p.py".into(), "--x".into()]));
        let c = PluginConfig::parse(&json!({"socket": "/run/p.sock", "options": {"a": 1}})).unwrap().unwrap();
        assert_eq!(c.transport, Transport::Socket("/run/p.sock".into()));
        assert_eq!(c.options, json!({"a": 1}));
        assert_eq!(PluginConfig::parse(&Value::Null), Ok(None));
        assert_eq!(PluginConfig::parse(&json!({})), Ok(None));
    }

    #[test]
    fn problems_name_their_field() {
        let p = PluginConfig::parse(&json!({"command": [], "colour": 1, "requestTimeout": "soon"})).unwrap_err();
        assert!(p.iter().any(|p| p.starts_with("command: ")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("colour: unknown field")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("requestTimeout: ")), "{p:?}");
        let p = PluginConfig::parse(&json!({"command": ["x"], "socket": "/s"})).unwrap_err();
        assert!(p[0].contains("not both"), "{p:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration(""), None);
    }
}
