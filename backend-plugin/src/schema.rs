//! The JSON Schema of protocol v1, and the validator the daemon runs on
//! every line a plugin sends.
//!
//! The schema (`schema/plugin-protocol-v1.schema.json`, JSON Schema 2020-12)
//! is the protocol's reference for plugin authors in any language. The
//! validator implements the part of JSON Schema that file uses — `$ref` to
//! `#/$defs/…`, `type`, `properties`, `required`, `additionalProperties`,
//! `items`, `enum`, `const`, `oneOf` (chosen by the `type` property when the
//! branches have one), `minimum`, `maximum`, `minLength`, and the formats
//! `ip`, `cidr` and `socket-address` — and reports every problem with its
//! JSON pointer (`/state/frontends/0/frontend/port: 70000 is above the maximum 65535`).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::Value;

/// The schema's text, as in the repository.
pub const SCHEMA_TEXT: &str = include_str!("../schema/plugin-protocol-v1.schema.json");

/// The parsed schema.
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The file is checked by this crate's tests; an invalid file is a build defect.
        serde_json::from_str(SCHEMA_TEXT).unwrap_or(Value::Null)
    })
}

/// Which half of the protocol a line belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// What the daemon sends (`#/$defs/DaemonMessage`).
    ToPlugin,
    /// What a plugin sends (`#/$defs/PluginMessage`).
    FromPlugin,
}

impl Direction {
    fn root(self) -> &'static str {
        match self {
            Direction::ToPlugin => "DaemonMessage",
            Direction::FromPlugin => "PluginMessage",
        }
    }
}

/// One schema violation: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the message (`/state/frontends/0/port`), `` for the whole message.
    pub pointer: String,
    pub problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.pointer, self.problem)
        }
    }
}

/// Validates a message against the schema; empty means valid.
pub fn validate(direction: Direction, message: &Value) -> Vec<Violation> {
    let mut v = Validator { root: schema(), out: Vec::new(), seen: None };
    v.check_ref(direction.root(), message, "");
    v.out
}

/// Like [`validate`], also recording every `$defs` entry and property the
/// message exercised (`Def` and `Def.property`), so tests can check that
/// samples cover the whole schema.
pub fn validate_recording(direction: Direction, message: &Value, seen: &mut BTreeSet<String>) -> Vec<Violation> {
    let mut v = Validator { root: schema(), out: Vec::new(), seen: Some(seen) };
    v.check_ref(direction.root(), message, "");
    v.out
}

/// Every `$defs` entry and property the schema declares (`Def`, `Def.property`).
pub fn declared() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(defs) = schema().get("$defs").and_then(Value::as_object) {
        for (name, def) in defs {
            out.insert(name.clone());
            for branch in std::iter::once(def).chain(def.get("oneOf").and_then(Value::as_array).into_iter().flatten()) {
                if let Some(props) = branch.get("properties").and_then(Value::as_object) {
                    out.extend(props.keys().map(|p| format!("{name}.{p}")));
                }
            }
        }
    }
    out
}

struct Validator<'a> {
    root: &'a Value,
    out: Vec<Violation>,
    seen: Option<&'a mut BTreeSet<String>>,
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 { format!("{}…", &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)]) } else { s }
}

impl Validator<'_> {
    fn fail(&mut self, pointer: &str, problem: impl Into<String>) {
        self.out.push(Violation { pointer: pointer.to_string(), problem: problem.into() });
    }

    fn record(&mut self, what: String) {
        if let Some(seen) = self.seen.as_deref_mut() {
            seen.insert(what);
        }
    }

    fn check_ref(&mut self, name: &str, value: &Value, pointer: &str) {
        self.record(name.to_string());
        let root = self.root;
        match root.get("$defs").and_then(|d| d.get(name)) {
            Some(schema) => self.check(schema, value, pointer, Some(name)),
            None => self.fail(pointer, format!("schema error: no definition {name:?}")),
        }
    }

    fn check(&mut self, schema: &Value, value: &Value, pointer: &str, def: Option<&str>) {
        let Some(s) = schema.as_object() else { return };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix("#/$defs/") {
                Some(name) => self.check_ref(name, value, pointer),
                None => self.fail(pointer, format!("schema error: unsupported $ref {r:?}")),
            }
            return;
        }
        if let Some(t) = s.get("type") {
            let actual = type_of(value);
            let allowed: Vec<&str> = match t {
                Value::String(one) => vec![one.as_str()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let ok = allowed.iter().any(|a| *a == actual || (*a == "number" && actual == "integer"));
            if !ok {
                self.fail(pointer, format!("expected {}, found {actual} {}", allowed.join(" or "), short(value)));
                return;
            }
        }
        if let Some(c) = s.get("const")
            && c != value
        {
            self.fail(pointer, format!("expected {c}, found {}", short(value)));
            return;
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array)
            && !e.contains(value)
        {
            let names: Vec<String> = e.iter().map(Value::to_string).collect();
            self.fail(pointer, format!("{} is not one of {}", short(value), names.join(", ")));
            return;
        }
        if let Some(branches) = s.get("oneOf").and_then(Value::as_array) {
            self.check_one_of(branches, value, pointer, def);
        }
        match value {
            Value::Number(n) => {
                if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), n.as_f64())
                    && x < min
                {
                    self.fail(pointer, format!("{n} is below the minimum {min}"));
                }
                if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), n.as_f64())
                    && x > max
                {
                    self.fail(pointer, format!("{n} is above the maximum {max}"));
                }
            }
            Value::String(text) => {
                if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                    && (text.chars().count() as u64) < min
                {
                    self.fail(pointer, format!("shorter than {min} characters"));
                }
                if let Some(format) = s.get("format").and_then(Value::as_str) {
                    let ok = match format {
                        "ip" => text.parse::<std::net::IpAddr>().is_ok(),
                        "cidr" => text.parse::<ipnet::IpNet>().is_ok(),
                        "socket-address" => text.parse::<std::net::SocketAddr>().is_ok(),
                        _ => true,
                    };
                    if !ok {
                        self.fail(pointer, format!("{text:?} is not a valid {format}"));
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = s.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &format!("{pointer}/{i}"), None);
                    }
                }
            }
            Value::Object(map) => {
                let props = s.get("properties").and_then(Value::as_object);
                if let Some(required) = s.get("required").and_then(Value::as_array) {
                    for r in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(r) {
                            self.fail(pointer, format!("missing required property {r:?}"));
                        }
                    }
                }
                for (key, v) in map {
                    let child = format!("{pointer}/{key}");
                    match props.and_then(|p| p.get(key)) {
                        Some(prop_schema) => {
                            if let Some(d) = def {
                                self.record(format!("{d}.{key}"));
                            }
                            self.check(prop_schema, v, &child, None);
                        }
                        None => match s.get("additionalProperties") {
                            Some(Value::Bool(false)) => self.fail(&child, "unknown property"),
                            Some(extra @ Value::Object(_)) => self.check(extra, v, &child, None),
                            _ => {}
                        },
                    }
                }
            }
            _ => {}
        }
    }

    /// `oneOf`: when the branches are told apart by a `type` constant (the
    /// messages), only the branch the value names is checked, so errors
    /// speak about that message; otherwise exactly one branch must match.
    fn check_one_of(&mut self, branches: &[Value], value: &Value, pointer: &str, def: Option<&str>) {
        let root = self.root;
        let tag_of = |b: &Value| {
            let target = match b.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
                Some(name) => root.get("$defs").and_then(|d| d.get(name)).unwrap_or(b),
                None => b,
            };
            target.pointer("/properties/type/const").and_then(Value::as_str).map(str::to_string)
        };
        let tags: Vec<Option<String>> = branches.iter().map(tag_of).collect();
        if tags.iter().all(Option::is_some) {
            let names: Vec<&str> = tags.iter().flatten().map(String::as_str).collect();
            let Some(tag) = value.get("type").and_then(Value::as_str) else {
                self.fail(pointer, format!("missing \"type\" (one of {})", names.join(", ")));
                return;
            };
            match tags.iter().position(|t| t.as_deref() == Some(tag)) {
                Some(i) => self.check(&branches[i], value, pointer, def),
                None => {
                    self.fail(pointer, format!("unknown message type {tag:?} (expected one of {})", names.join(", ")))
                }
            }
            return;
        }
        let mut passing = 0;
        let mut failures = Vec::new();
        for b in branches {
            let mut sub = Validator { root: self.root, out: Vec::new(), seen: None };
            sub.check(b, value, pointer, def);
            if sub.out.is_empty() {
                passing += 1;
            } else {
                // A branch of another JSON type (null vs string) is not worth reporting.
                let wrong_type = sub.out.iter().any(|v| v.pointer == pointer && v.problem.starts_with("expected "));
                failures.push((wrong_type, sub.out));
            }
        }
        if passing == 0 {
            let same_type: Vec<&Vec<Violation>> = failures.iter().filter(|(w, _)| !w).map(|(_, v)| v).collect();
            if let [only] = same_type.as_slice() {
                self.out.extend(only.iter().cloned());
                return;
            }
        }
        let first_errors = failures.into_iter().next().map(|(_, v)| v);
        match passing {
            1 => {
                // Re-run the passing branch with recording on.
                if self.seen.is_some() {
                    for b in branches {
                        let mut probe = Validator { root: self.root, out: Vec::new(), seen: None };
                        probe.check(b, value, pointer, def);
                        if probe.out.is_empty() {
                            self.check(b, value, pointer, def);
                            break;
                        }
                    }
                }
            }
            0 => {
                let why = first_errors.unwrap_or_default().iter().map(ToString::to_string).collect::<Vec<_>>();
                self.fail(pointer, format!("matches none of the allowed shapes ({})", why.join("; ")));
            }
            n => self.fail(pointer, format!("matches {n} shapes; exactly one is allowed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schema_parses_and_has_both_roots() {
        let s: Value = serde_json::from_str(SCHEMA_TEXT).expect("the schema file is JSON");
        assert!(s.pointer("/$defs/DaemonMessage").is_some());
        assert!(s.pointer("/$defs/PluginMessage").is_some());
    }

    #[test]
    fn violations_name_the_message_and_the_place() {
        let bad = json!({"type": "ack"});
        let v = validate(Direction::FromPlugin, &bad);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].to_string(), "missing required property \"id\"");

        let v = validate(Direction::FromPlugin, &json!({"type": "acknowledge", "id": 1}));
        assert!(v[0].problem.starts_with("unknown message type \"acknowledge\""), "{v:?}");

        let v = validate(Direction::FromPlugin, &json!({"type": "ack", "id": -1, "colour": 1}));
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"/id: -1 is below the minimum 0".to_string()), "{text:?}");
        assert!(text.contains(&"/colour: unknown property".to_string()), "{text:?}");

        let state = json!({"type": "state", "id": 3, "state": {"frontends": [{
            "frontend": {"kind": "ClusterIP", "ip": "10.96.0.300", "port": 70000, "protocol": "TCP"},
            "endpoints": ["10.0.0.1:80"]
        }]}});
        let text: Vec<String> = validate(Direction::FromPlugin, &state).iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"/state/frontends/0/frontend/ip: \"10.96.0.300\" is not a valid ip".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"/state/frontends/0/frontend/port: 70000 is above the maximum 65535".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn a_message_without_a_type_is_named_as_such() {
        let v = validate(Direction::FromPlugin, &json!({"id": 1}));
        assert!(v[0].problem.starts_with("missing \"type\""), "{v:?}");
        let v = validate(Direction::FromPlugin, &json!([1, 2]));
        assert!(v[0].problem.starts_with("expected object"), "{v:?}");
    }
}
