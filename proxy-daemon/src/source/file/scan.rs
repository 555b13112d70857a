//! The disk side of the file source: which files there are, which changed,
//! and reading only those.
//!
//! A sweep lists the path (one `readdir` and one `stat` per file, following
//! symlinks) and compares each file's stamp — (device, inode, size, mtime,
//! ctime) — with the one it was last read at. Only files whose stamp moved
//! are read, and only files whose bytes changed are parsed. An idle sweep
//! reads nothing. A ConfigMap mount's `..data` swap changes every file's
//! inode (the symlinks now lead to new files), so it is seen.
//!
//! Two races are closed:
//! - A file rewritten within the file system's timestamp granularity keeps
//!   its stamp (same size, same coarse mtime). As git does with its index
//!   ("racy git"), a file whose mtime was less than [`RACY_WINDOW`] old when
//!   it was read is read again by the next sweep, whatever its stamp; a
//!   content hash makes that re-read cheap when nothing changed.
//! - A file being written while we read it: its stamp is taken again after
//!   the read, and a file that moved meanwhile is read again shortly
//!   ([`SETTLE`]) instead of being parsed half-written.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::Hasher;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::catalog::Catalog;
use super::parse::{ManifestError, parse};

/// How recent an mtime makes a read unreliable (file systems with 2 s
/// timestamps, FAT and some network ones, are the coarsest in practice).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// How long to wait before reading a file that was changing under us.
pub const SETTLE: Duration = Duration::from_millis(10);

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    pub fn mtime(&self) -> SystemTime {
        let (s, ns) = self.mtime;
        let nanos = u32::try_from(ns).unwrap_or(0);
        match u64::try_from(s) {
            Ok(s) => UNIX_EPOCH + Duration::new(s, nanos),
            Err(_) => UNIX_EPOCH,
        }
    }
}

/// The manifest files a path names, with their metadata (symlinks
/// followed), sorted by path: the path itself when it is a file, else its
/// `.yaml`, `.yml` and `.json` entries that are files, hidden ones skipped
/// (a ConfigMap mount's `..data` and `..2024_...` entries).
pub fn list_files(path: &Path) -> io::Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![(path.to_path_buf(), meta)]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = entry.path();
        if !matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            continue;
        }
        // A dangling symlink (a key removed from a ConfigMap) is no file.
        if let Ok(m) = std::fs::metadata(&p)
            && m.is_file()
        {
            files.push((p, m));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// What we know of one file on disk.
#[derive(Debug)]
struct DiskFile {
    stamp: Stamp,
    /// Hash of the bytes last read (`None`: the file could not be read).
    hash: Option<u64>,
    /// Read too soon after its mtime: read again at the next sweep.
    racy: bool,
    /// The directory its symlink leads to, when it is one (watched too).
    target_dir: Option<PathBuf>,
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// Files parsed.
    pub parsed: usize,
    /// Sweep again after this long: a file was changing, or is being written.
    pub retry_after: Option<Duration>,
}

impl SweepOutcome {
    fn retry(&mut self, after: Duration) {
        self.retry_after = Some(self.retry_after.map_or(after, |r| r.min(after)));
    }
}

/// The files under the watched path and the catalog of their objects.
#[derive(Debug)]
pub struct Disk {
    root: PathBuf,
    pub catalog: Catalog,
    files: BTreeMap<PathBuf, DiskFile>,
    /// The watched path itself cannot be listed (gone, unreadable).
    pub path_error: Option<ManifestError>,
    /// Manifest files found by the last successful listing.
    pub listed: usize,
    root_is_dir: bool,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

fn is_racy(mtime: SystemTime, now: SystemTime) -> bool {
    now.duration_since(mtime).map_or(true, |age| age < RACY_WINDOW)
}

fn symlink_target_dir(path: &Path) -> Option<PathBuf> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return None;
    }
    std::fs::canonicalize(path).ok()?.parent().map(Path::to_path_buf)
}

impl Disk {
    pub fn new(root: PathBuf) -> Disk {
        Disk {
            root,
            catalog: Catalog::default(),
            files: BTreeMap::new(),
            path_error: None,
            listed: 0,
            root_is_dir: false,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lists the path and reads what changed into the catalog. `busy` says
    /// how much longer a file is being written (see the watcher), so it is
    /// read when its writer is done.
    pub fn sweep(&mut self, busy: &dyn Fn(&Path) -> Option<Duration>) -> SweepOutcome {
        let mut out = SweepOutcome::default();
        let listed = match list_files(&self.root) {
            Ok(l) => l,
            Err(e) => {
                // Never a delete: a vanished mount, a permission change or
                // a typo in a rename must not take the node's Services down.
                self.path_error = Some(ManifestError::file(
                    &self.root,
                    format!("cannot read: {e}; every object stays in place until it can be read again"),
                ));
                return out;
            }
        };
        self.path_error = None;
        self.listed = listed.len();
        self.root_is_dir = std::fs::metadata(&self.root).is_ok_and(|m| m.is_dir());

        let present: HashSet<&Path> = listed.iter().map(|(p, _)| p.as_path()).collect();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(p.as_path())).cloned().collect();
        for path in gone {
            self.files.remove(&path);
            self.catalog.remove(&path);
        }

        let now = SystemTime::now();
        for (path, meta) in &listed {
            let stamp = Stamp::of(meta);
            let known = self.files.get(path);
            if known.is_some_and(|k| k.stamp == stamp && !k.racy) {
                continue;
            }
            if let Some(wait) = busy(path) {
                out.retry(wait);
                continue;
            }
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Gone between listing and reading: the next listing decides.
                    out.retry(SETTLE);
                    continue;
                }
                Err(e) => {
                    let error = ManifestError::file(path, format!("cannot read: {e}"));
                    self.catalog.read_failed(path, error);
                    let target_dir = symlink_target_dir(path);
                    self.files.insert(path.clone(), DiskFile { stamp, hash: None, racy: false, target_dir });
                    continue;
                }
            };
            if std::fs::metadata(path).map(|m| Stamp::of(&m)).ok() != Some(stamp) {
                out.retry(SETTLE);
                continue;
            }
            let hash = hash(&bytes);
            let unchanged = known.and_then(|k| k.hash) == Some(hash);
            let racy = is_racy(stamp.mtime(), now);
            let target_dir = symlink_target_dir(path);
            self.files.insert(path.clone(), DiskFile { stamp, hash: Some(hash), racy, target_dir });
            if unchanged {
                continue;
            }
            out.parsed += 1;
            self.catalog.update(path, parse(path, &bytes));
        }
        out
    }

    /// The directories to watch: the path (or, for a file, its directory,
    /// as editors and `kubectl cp` replace files by renaming) and the
    /// directories symlinked files lead to.
    pub fn watch_dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        if self.path_error.is_some() {
            // The path is gone: watch where it would come back. Its own
            // watches are dropped, as a directory made again under the same
            // name needs a new one.
            if let Some(parent) = self.root.parent().filter(|p| p.is_dir()) {
                dirs.insert(parent.to_path_buf());
            }
            return dirs;
        }
        if self.root_is_dir {
            dirs.insert(self.root.clone());
        } else if let Some(parent) = self.root.parent() {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            dirs.insert(parent.to_path_buf());
        }
        dirs.extend(self.files.values().filter_map(|f| f.target_dir.clone()));
        dirs
    }

    /// The mtime of the version of `path` that was read.
    pub fn mtime(&self, path: &Path) -> Option<SystemTime> {
        self.files.get(path).map(|f| f.stamp.mtime())
    }
}
