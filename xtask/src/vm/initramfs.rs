//! Building the initramfs: an in-memory tree written as a `newc` cpio archive.
//!
//! The tree is described, not staged on disk: files are read when the
//! archive is written. ELF files bring their shared libraries (found with
//! `ldd`) so that host binaries run unchanged in the guest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// One entry of the guest's file tree.
#[derive(Clone, Debug)]
enum Node {
    Dir,
    /// Content from a host file, with a mode.
    File {
        source: PathBuf,
        mode: u32,
    },
    /// Inline content.
    Data {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
}

/// The guest's root file system.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
}

/// Normalizes a guest path to a relative one without `.`/`..`.
fn guest(path: impl AsRef<Path>) -> PathBuf {
    path.as_ref().components().filter(|c| matches!(c, Component::Normal(_))).collect()
}

impl Tree {
    pub fn new() -> Self {
        Tree::default()
    }

    fn parents(&mut self, path: &Path) {
        let mut p = path.parent();
        while let Some(dir) = p {
            if dir.as_os_str().is_empty() {
                break;
            }
            self.nodes.entry(dir.to_path_buf()).or_insert(Node::Dir);
            p = dir.parent();
        }
    }

    pub fn dir(&mut self, path: impl AsRef<Path>) {
        let path = guest(path);
        self.parents(&path);
        self.nodes.insert(path, Node::Dir);
    }

    pub fn data(&mut self, path: impl AsRef<Path>, data: impl Into<Vec<u8>>, mode: u32) {
        let path = guest(path);
        self.parents(&path);
        self.nodes.insert(path, Node::Data { data: data.into(), mode });
    }

    pub fn symlink(&mut self, path: impl AsRef<Path>, target: &str) {
        let path = guest(path);
        self.parents(&path);
        self.nodes.insert(path, Node::Symlink(target.to_string()));
    }

    /// Copies one host file (following symlinks) to `dest` in the guest.
    pub fn file(&mut self, source: &Path, dest: impl AsRef<Path>) -> io::Result<()> {
        let meta = fs::metadata(source).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
        let path = guest(dest);
        self.parents(&path);
        self.nodes.insert(path, Node::File { source: source.to_path_buf(), mode: meta.permissions().mode() & 0o7777 });
        Ok(())
    }

    /// Copies a host file or directory tree to `dest`; ELF executables and
    /// libraries bring their shared-library closure along.
    pub fn add(&mut self, source: &Path, dest: impl AsRef<Path>) -> io::Result<()> {
        let dest = guest(dest);
        let meta = fs::metadata(source).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
        if meta.is_dir() {
            self.dir(&dest);
            for entry in fs::read_dir(source)? {
                let entry = entry?;
                // Build output and VCS data never belong in a guest.
                if matches!(entry.file_name().to_str(), Some("target" | ".git")) {
                    continue;
                }
                self.add(&entry.path(), dest.join(entry.file_name()))?;
            }
            return Ok(());
        }
        self.file(source, &dest)?;
        if is_elf(source)? {
            self.libraries(source)?;
        }
        Ok(())
    }

    /// Adds the shared libraries `ldd` lists for an ELF file, at their host paths.
    pub fn libraries(&mut self, elf: &Path) -> io::Result<()> {
        for lib in shared_libraries(elf)? {
            if !self.nodes.contains_key(&guest(&lib)) {
                self.file(&lib, &lib)?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.nodes.contains_key(&guest(path))
    }

    /// Writes the tree as an uncompressed `newc` cpio archive (the kernel's
    /// initramfs format, `Documentation/driver-api/early-userspace/buffer-format.rst`).
    pub fn write_cpio(&self, out: &Path) -> io::Result<u64> {
        let mut w = CpioWriter::new(BufWriter::new(fs::File::create(out)?));
        for (path, node) in &self.nodes {
            let name = path.to_string_lossy();
            match node {
                Node::Dir => w.entry(&name, 0o040_755, &[])?,
                Node::Data { data, mode } => w.entry(&name, 0o100_000 | mode, data)?,
                Node::File { source, mode } => {
                    let data = fs::read(source)?;
                    w.entry(&name, 0o100_000 | mode, &data)?;
                }
                Node::Symlink(target) => w.entry(&name, 0o120_777, target.as_bytes())?,
            }
        }
        w.finish()
    }
}

fn is_elf(path: &Path) -> io::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(path)?;
    Ok(f.read(&mut magic)? == 4 && &magic == b"\x7fELF")
}

/// The shared libraries of an ELF file, by `ldd` (statically linked files have none).
fn shared_libraries(elf: &Path) -> io::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd").arg(elf).output()?;
    let mut libs = BTreeSet::new();
    // "not a dynamic executable" exits 1: nothing to add.
    if !out.status.success() {
        return Ok(libs);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// A `newc` cpio writer.
struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    fn new(out: W) -> Self {
        CpioWriter { out, ino: 1, written: 0 }
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..pad])
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let size = u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB")))?;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so archives are reproducible
            size,
            0,
            0,
            0,
            0,
            name.len() + 1,
            0, // check
        );
        self.ino += 1;
        self.raw(header.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()?;
        self.raw(data)?;
        self.pad()
    }

    fn finish(mut self) -> io::Result<u64> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_header_layout() {
        let mut buf = Vec::new();
        let mut w = CpioWriter::new(&mut buf);
        w.entry("a", 0o100_644, b"xy").unwrap();
        // 110-byte header, "a\0" (2 bytes) padded to 112, data 2 bytes padded to 116.
        assert_eq!(w.written, 116);
        assert!(buf.starts_with(b"07070100000001000081A4"));
        assert_eq!(&buf[110..112], b"a\0");
        assert_eq!(&buf[112..114], b"xy");
    }

    #[test]
    fn parents_are_created() {
        let mut t = Tree::new();
        t.data("/usr/lib/x/y", "z", 0o644);
        assert!(t.contains("usr") && t.contains("usr/lib") && t.contains("usr/lib/x"));
    }
}
