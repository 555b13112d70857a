//! Typed decoding of the merged configuration value, reporting every type
//! error (not only serde's first) and every field the types do not know.
//!
//! serde stops at the first error; `serde_path_to_error` names where it
//! was. To report them all, the offending value is set to `null` (every
//! field is optional, so `null` always decodes) and decoding runs again,
//! as many times as there are errors. `serde_ignored` names the fields no
//! type consumed: unknown fields, or sections that belong to a backend.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A decoded value, its type errors (path, message) and the paths nothing consumed.
#[derive(Debug)]
pub struct Decoded<T> {
    pub value: T,
    pub errors: Vec<(String, String)>,
    pub unknown: Vec<String>,
}

/// Decodes `input`, collecting every error. Gives `T::default()` only if
/// even a fully nulled document does not decode (a non-mapping root).
pub fn decode<T: DeserializeOwned + Default>(input: &Value) -> Decoded<T> {
    // serde derive also reads a struct from a sequence (fields by position):
    // a configuration is a mapping, so anything else is one error at the root.
    if !(input.is_object() || input.is_null()) {
        return Decoded {
            value: T::default(),
            errors: vec![(String::new(), "expected a mapping".into())],
            unknown: Vec::new(),
        };
    }
    let mut value = input.clone();
    let mut errors = Vec::new();
    // Each round nulls one more node; a document has finitely many.
    for _ in 0..=count_nodes(input) {
        let mut unknown = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(render(&path));
        let de = serde_ignored::Deserializer::new(&value, &mut record);
        let result = serde_path_to_error::deserialize::<_, T>(de);
        match result {
            Ok(v) => return Decoded { value: v, errors, unknown },
            Err(e) => {
                let path = e.path().to_string();
                let message = e.inner().to_string();
                let path = if path == "." { String::new() } else { path };
                // A list element nulled still fails (as null); its list is
                // nulled next round: report the place once.
                let nulled = null_at(&mut value, &path);
                if !errors.iter().any(|(p, _)| *p == path) {
                    errors.push((path, message));
                }
                if !nulled {
                    break;
                }
            }
        }
    }
    Decoded { value: T::default(), errors, unknown: Vec::new() }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(m) => m.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// `a.b[2].c` for serde_ignored's path (its `?` segments for options left out).
fn render(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render(parent)),
        Path::Map { parent, key } => {
            let p = render(parent);
            if p.is_empty() { key.clone() } else { format!("{p}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => render(parent),
    }
}

/// Splits `a.b[2].c` into keys and indices.
pub fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push(Segment::Key(rest[..i].to_string()));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    out.push(Segment::Index(n));
                }
                rest = &rest[end + 1..];
            }
        } else {
            out.push(Segment::Key(rest.to_string()));
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// The value at `path`, if any.
pub fn get<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    segments(path).iter().try_fold(root, |v, s| match s {
        Segment::Key(k) => v.get(k),
        Segment::Index(i) => v.get(i),
    })
}

/// Sets the node at `path` to null; if it is null already (a list element
/// whose type refuses null), the nearest non-null ancestor. False when
/// nothing could change (the root).
fn null_at(root: &mut Value, path: &str) -> bool {
    let segs = segments(path);
    for len in (1..=segs.len()).rev() {
        if let Some(node) = get_mut(root, &segs[..len])
            && !node.is_null()
        {
            *node = Value::Null;
            return true;
        }
    }
    false
}

fn get_mut<'a>(root: &'a mut Value, segs: &[Segment]) -> Option<&'a mut Value> {
    segs.iter().try_fold(root, |v, s| match s {
        Segment::Key(k) => v.get_mut(k.as_str()),
        Segment::Index(i) => v.get_mut(*i),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code, reason = "decoded to test the decoder; only some fields are read back")]
    struct Doc {
        a: Option<bool>,
        b: Option<Inner>,
        list: Option<Vec<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[allow(dead_code, reason = "decoded to test the decoder")]
    struct Inner {
        n: Option<u8>,
    }

    #[test]
    fn every_type_error_with_its_path_and_every_unknown_field() {
        let d: Decoded<Doc> = decode(&json!({"a": "yes", "b": {"n": 300, "zz": 1}, "list": ["x", 3], "extra": {}}));
        let paths: Vec<&str> = d.errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["a", "b.n", "list[1]"], "{:?}", d.errors);
        assert!(d.unknown.contains(&"b.zz".to_string()), "{:?}", d.unknown);
        assert!(d.unknown.contains(&"extra".to_string()), "{:?}", d.unknown);
        assert_eq!(d.value.list, None, "a list with a bad element is dropped whole");
    }

    #[test]
    fn a_root_that_is_not_a_mapping() {
        let d: Decoded<Doc> = decode(&json!([1, 2]));
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].0, "");
    }

    #[test]
    fn paths() {
        assert_eq!(
            segments("a.b[2].c"),
            vec![Segment::Key("a".into()), Segment::Key("b".into()), Segment::Index(2), Segment::Key("c".into())]
        );
        assert_eq!(get(&json!({"a": [{"b": 1}]}), "a[0].b"), Some(&json!(1)));
    }
}
