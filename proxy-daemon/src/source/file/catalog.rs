//! Every file's objects, which file holds each key, and what changed.
//!
//! The catalog is the file source's memory. For each file it keeps the
//! objects in effect and the file's problems; for each object key, the files
//! that define it and the one whose object is delivered (its *owner*). The
//! rules, in one place:
//!
//! - A file read cleanly is the truth for its objects.
//! - A file with problems (a broken document, YAML syntax, empty, unreadable)
//!   keeps every object it held before; its good documents still apply.
//! - A removed file's objects are deleted (an explicit delete).
//! - A key defined by two files is an error naming both; the file that
//!   already held it keeps it (on a fresh start: the first in sorted path
//!   order, as files are added in that order). When the owner stops
//!   defining it, the next file in path order takes over.
//!
//! Changes are recorded per key as (value delivered before, value now), so
//! an object moving from one file to another in one sweep is no change at
//! all, and the source delivers only what differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parse::{Held, Kind, ManifestError, Object, ObjectKey, ParsedFile};

/// A file's objects in effect and its current problems.
#[derive(Debug, Default)]
struct FileObjects {
    objects: BTreeMap<ObjectKey, Held>,
    errors: Vec<ManifestError>,
}

/// Which files define a key.
#[derive(Debug)]
struct Holders {
    /// The file whose object is delivered.
    owner: Arc<Path>,
    /// Other files defining it too (a duplicate), in path order.
    others: BTreeSet<Arc<Path>>,
}

/// One key's change: what was delivered before, what is to be delivered now.
#[derive(Clone, Debug)]
pub struct Change {
    pub key: ObjectKey,
    pub old: Option<Arc<Object>>,
    pub new: Option<Arc<Object>>,
    /// The file the new value comes from.
    pub file: Option<Arc<Path>>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Catalog {
    files: BTreeMap<Arc<Path>, FileObjects>,
    holders: HashMap<ObjectKey, Holders>,
    /// Keys with more than one holder.
    duplicates: BTreeSet<ObjectKey>,
    /// Keys touched since the last [`take_changes`](Self::take_changes), with the value delivered before.
    touched: HashMap<ObjectKey, Option<Arc<Object>>>,
    counts: BTreeMap<Kind, usize>,
}

impl Catalog {
    /// The value delivered for `key` now.
    fn delivered(&self, key: &ObjectKey) -> Option<&Held> {
        let h = self.holders.get(key)?;
        self.files.get(&h.owner)?.objects.get(key)
    }

    fn touch(&mut self, key: &ObjectKey) {
        if !self.touched.contains_key(key) {
            let before = self.delivered(key).map(|h| h.object.clone());
            self.touched.insert(key.clone(), before);
        }
    }

    fn intern(&self, path: &Path) -> Arc<Path> {
        self.files.get_key_value(path).map_or_else(|| Arc::from(path), |(k, _)| k.clone())
    }

    /// A file read and parsed. With problems, the file keeps what it held
    /// and its good documents apply on top.
    pub fn update(&mut self, path: &Path, parsed: ParsedFile) {
        let objects = if parsed.errors.is_empty() {
            parsed.objects
        } else {
            let mut kept = self.files.get(path).map(|f| f.objects.clone()).unwrap_or_default();
            kept.extend(parsed.objects);
            kept
        };
        self.set(path, objects, parsed.errors);
    }

    /// A listed file that cannot be read: it keeps what it held.
    pub fn read_failed(&mut self, path: &Path, error: ManifestError) {
        let objects = self.files.get(path).map(|f| f.objects.clone()).unwrap_or_default();
        self.set(path, objects, vec![error]);
    }

    /// A file that is gone from its directory: its objects are deleted.
    pub fn remove(&mut self, path: &Path) {
        if self.files.contains_key(path) {
            self.set(path, BTreeMap::new(), Vec::new());
            self.files.remove(path);
        }
    }

    fn set(&mut self, path: &Path, objects: BTreeMap<ObjectKey, Held>, errors: Vec<ManifestError>) {
        let path = self.intern(path);
        // Touched while the file's current objects are still in place, so
        // the value delivered before is recorded.
        let mut moved = Vec::new();
        let empty = BTreeMap::new();
        let old = self.files.get(&path).map_or(&empty, |f| &f.objects);
        for (key, held) in old {
            if objects.get(key).is_none_or(|h| !same(&h.object, &held.object)) {
                moved.push(key.clone());
            }
        }
        for (key, held) in &objects {
            if old.get(key).is_none_or(|h| !same(&h.object, &held.object)) {
                moved.push(key.clone());
            }
        }
        for key in &moved {
            self.touch(key);
        }
        let old = self.files.remove(&path).unwrap_or_default().objects;
        // The file's new objects are in place before ownership moves, so
        // `delivered` reads the right value for every key.
        let gone: Vec<ObjectKey> = old.keys().filter(|k| !objects.contains_key(*k)).cloned().collect();
        let added: Vec<ObjectKey> = objects.keys().filter(|k| !old.contains_key(*k)).cloned().collect();
        self.files.insert(path.clone(), FileObjects { objects, errors });
        for key in gone {
            self.drop_holder(&key, &path);
        }
        for key in added {
            self.add_holder(key, &path);
        }
    }

    fn add_holder(&mut self, key: ObjectKey, path: &Arc<Path>) {
        match self.holders.get_mut(&key) {
            Some(h) => {
                h.others.insert(path.clone());
                self.duplicates.insert(key);
            }
            None => {
                *self.counts.entry(key.kind).or_default() += 1;
                self.holders.insert(key, Holders { owner: path.clone(), others: BTreeSet::new() });
            }
        }
    }

    fn drop_holder(&mut self, key: &ObjectKey, path: &Arc<Path>) {
        let Some(h) = self.holders.get_mut(key) else { return };
        if h.owner == *path {
            match h.others.pop_first() {
                Some(next) => h.owner = next,
                None => {
                    self.holders.remove(key);
                    if let Some(n) = self.counts.get_mut(&key.kind) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
        } else {
            h.others.remove(path);
        }
        if self.holders.get(key).is_none_or(|h| h.others.is_empty()) {
            self.duplicates.remove(key);
        }
    }

    /// What changed for delivery since the last call (keys whose value
    /// returned to where it was are left out).
    pub fn take_changes(&mut self) -> Vec<Change> {
        let touched = std::mem::take(&mut self.touched);
        let mut out: Vec<Change> = touched
            .into_iter()
            .filter_map(|(key, old)| {
                let new = self.delivered(&key).map(|h| h.object.clone());
                let unchanged = match (&old, &new) {
                    (None, None) => true,
                    (Some(a), Some(b)) => same(a, b),
                    _ => false,
                };
                if unchanged {
                    return None;
                }
                let file = new.as_ref().and_then(|_| self.holders.get(&key)).map(|h| h.owner.clone());
                Some(Change { key, old, new, file })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Everything delivered now, in key order.
    pub fn objects(&self) -> Vec<(ObjectKey, Arc<Object>)> {
        let mut out: Vec<(ObjectKey, Arc<Object>)> =
            self.holders.keys().filter_map(|k| self.delivered(k).map(|h| (k.clone(), h.object.clone()))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Objects delivered now, of one kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(|p| &**p)
    }

    /// Every problem: each file's, in path order, then duplicates by key.
    pub fn errors(&self) -> Vec<ManifestError> {
        let mut out: Vec<ManifestError> = self.files.values().flat_map(|f| f.errors.iter().cloned()).collect();
        for key in &self.duplicates {
            let Some(h) = self.holders.get(key) else { continue };
            let owner_doc = self.files.get(&h.owner).and_then(|f| f.objects.get(key)).map(|o| o.document);
            for other in &h.others {
                let doc = self.files.get(other).and_then(|f| f.objects.get(key)).map(|o| o.document);
                out.push(ManifestError {
                    file: PathBuf::from(&**other),
                    document: doc,
                    object: Some(key.to_string()),
                    message: format!(
                        "duplicate: {key} is also defined in {}{}, which keeps it; this definition is ignored",
                        h.owner.display(),
                        owner_doc.map(|d| format!(", document {d}")).unwrap_or_default()
                    ),
                });
            }
        }
        out
    }
}

/// Same object: the same allocation, or equal values.
fn same(a: &Arc<Object>, b: &Arc<Object>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn svc(name: &str, ip: &str) -> String {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}}}\n")
    }

    fn slice(name: &str, service: &str, ep: &str) -> String {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{ep}]}}]\n"
        )
    }

    fn load(c: &mut Catalog, path: &str, text: &str) {
        c.update(Path::new(path), parse(Path::new(path), text.as_bytes()));
    }

    /// The changes as `+key`, `-key` and `~key`, in key order.
    fn changes(c: &mut Catalog) -> Vec<String> {
        c.take_changes()
            .into_iter()
            .map(|ch| {
                let sign = match (&ch.old, &ch.new) {
                    (None, Some(_)) => "+",
                    (Some(_), None) => "-",
                    _ => "~",
                };
                format!("{sign}{}", ch.key)
            })
            .collect()
    }

    fn cluster_ip(c: &Catalog, name: &str) -> Option<String> {
        c.objects().into_iter().find_map(|(k, o)| match &*o {
            Object::Service(s) if k.name == name => s.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
            _ => None,
        })
    }

    #[test]
    fn only_changed_added_and_removed_objects_are_changes() {
        let mut c = Catalog::default();
        load(&mut c, "/m/a.yaml", &(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2") + &slice("a-1", "a", "10.0.0.1")));
        assert_eq!(changes(&mut c), vec!["+Service default/a", "+Service default/b", "+EndpointSlice default/a-1"]);
        assert!(changes(&mut c).is_empty(), "taken once");

        // The same content again (reordered): nothing.
        load(&mut c, "/m/a.yaml", &(slice("a-1", "a", "10.0.0.1") + &svc("b", "10.96.0.2") + &svc("a", "10.96.0.1")));
        assert!(changes(&mut c).is_empty());

        // b changed, a removed, c added, the slice untouched.
        load(&mut c, "/m/a.yaml", &(svc("b", "10.96.0.3") + &svc("c", "10.96.0.4") + &slice("a-1", "a", "10.0.0.1")));
        assert_eq!(changes(&mut c), vec!["-Service default/a", "~Service default/b", "+Service default/c"]);
        assert_eq!(c.count(Kind::Service), 2);
        assert_eq!(c.count(Kind::EndpointSlice), 1);
    }

    #[test]
    fn a_removed_file_deletes_its_objects() {
        let mut c = Catalog::default();
        load(&mut c, "/m/a.yaml", &svc("a", "10.96.0.1"));
        load(&mut c, "/m/b.yaml", &svc("b", "10.96.0.2"));
        changes(&mut c);
        c.remove(Path::new("/m/b.yaml"));
        assert_eq!(changes(&mut c), vec!["-Service default/b"]);
        assert_eq!(c.files().count(), 1);
    }

    #[test]
    fn an_object_moving_to_another_file_is_not_a_delete() {
        for (from, to) in [("/m/a.yaml", "/m/b.yaml"), ("/m/b.yaml", "/m/a.yaml")] {
            let mut c = Catalog::default();
            load(&mut c, from, &(svc("x1", "10.96.0.1") + &svc("y1", "10.96.0.2")));
            load(&mut c, to, &svc("z1", "10.96.0.3"));
            changes(&mut c);
            // One sweep sees both files change: x moves, unchanged.
            load(&mut c, from, &svc("y1", "10.96.0.2"));
            load(&mut c, to, &(svc("z1", "10.96.0.3") + &svc("x1", "10.96.0.1")));
            assert!(changes(&mut c).is_empty(), "{from} -> {to}");
            assert!(c.errors().is_empty(), "{:?}", c.errors());
            // Moved and changed in the same sweep: an update, not a delete.
            load(&mut c, to, &svc("z1", "10.96.0.3"));
            load(&mut c, from, &(svc("y1", "10.96.0.2") + &svc("x1", "10.96.0.9")));
            assert_eq!(changes(&mut c), vec!["~Service default/x1"]);
            assert_eq!(cluster_ip(&c, "x1").as_deref(), Some("10.96.0.9"));
        }
    }

    #[test]
    fn a_broken_or_empty_file_keeps_what_it_held() {
        let mut c = Catalog::default();
        load(&mut c, "/m/a.yaml", &(svc("a", "10.96.0.1") + &svc("b", "10.96.0.2")));
        changes(&mut c);
        load(&mut c, "/m/a.yaml", "");
        assert!(changes(&mut c).is_empty());
        assert_eq!(c.errors().len(), 1);
        // Good documents apply; b, missing from the broken file, stays.
        load(&mut c, "/m/a.yaml", &(svc("a", "10.96.0.7") + "---\nkind: [\n"));
        assert_eq!(changes(&mut c), vec!["~Service default/a"]);
        assert_eq!(c.count(Kind::Service), 2);
        c.read_failed(Path::new("/m/a.yaml"), ManifestError::file(Path::new("/m/a.yaml"), "permission denied"));
        assert!(changes(&mut c).is_empty());
        // Fixed: the file is the truth again.
        load(&mut c, "/m/a.yaml", &svc("a", "10.96.0.7"));
        assert_eq!(changes(&mut c), vec!["-Service default/b"]);
        assert!(c.errors().is_empty());
    }

    #[test]
    fn duplicates_name_both_files_and_the_holder_keeps_the_key() {
        let mut c = Catalog::default();
        // A fresh start adds files in path order: a.yaml is first.
        load(&mut c, "/m/a.yaml", &svc("web", "10.96.0.1"));
        load(&mut c, "/m/b.yaml", &(svc("other", "10.96.0.5") + &svc("web", "10.96.0.2")));
        assert_eq!(cluster_ip(&c, "web").as_deref(), Some("10.96.0.1"));
        let errors = c.errors();
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.starts_with("/m/b.yaml, document 2 (Service default/web): duplicate"), "{e}");
        assert!(e.contains("/m/a.yaml, document 1, which keeps it"), "{e}");
        changes(&mut c);

        // A later file that adds a held key does not take it either way round.
        load(&mut c, "/m/0.yaml", &svc("other", "10.96.0.9"));
        assert!(changes(&mut c).is_empty(), "b.yaml held it first");
        assert_eq!(c.errors().len(), 2);

        // The holder lets go: the next file in path order takes over.
        load(&mut c, "/m/a.yaml", &svc("unrelated", "10.96.0.3"));
        assert_eq!(changes(&mut c), vec!["+Service default/unrelated", "~Service default/web"]);
        assert_eq!(cluster_ip(&c, "web").as_deref(), Some("10.96.0.2"));
        c.remove(Path::new("/m/b.yaml"));
        assert_eq!(changes(&mut c), vec!["~Service default/other", "-Service default/web"]);
        assert_eq!(cluster_ip(&c, "other").as_deref(), Some("10.96.0.9"));
        assert!(c.errors().is_empty(), "{:?}", c.errors());
    }
}
