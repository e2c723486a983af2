//! A writer for the Linux initramfs format: the `newc` cpio archive (`070701` headers,
//! 8-hex-digit fields, names and data padded to 4 bytes, a `TRAILER!!!` entry at the end).
//!
//! Written here rather than with `cpio`/busybox because the guest needs a `/dev/console`
//! character device before it mounts devtmpfs, and creating device nodes with the cpio
//! tool needs root and a real node on disk. The writer only builds bytes in memory: it never
//! touches the file system. The kernel accepts several archives one after the other, so a
//! cached base archive and a per-run archive are simply concatenated.

/// Entry kinds (the `mode` high bits).
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being built.
#[derive(Debug, Default)]
pub struct Archive {
    bytes: Vec<u8>,
    ino: u32,
}

impl Archive {
    /// An empty archive.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino = self.ino.wrapping_add(1);
        let name = name.trim_start_matches('/');
        let namesize = name.len().saturating_add(1);
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
            0, // mtime: reproducible
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// A directory (parents must be added first).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[]);
    }

    /// A regular file with permission bits `perm` (`0o755`, `0o644`).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), data);
    }

    /// A symbolic link `name -> target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | (perm & 0o7777), (major, minor), &[]);
    }

    /// The archive with its trailer.
    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // Round to 512 bytes like cpio(1) does; the kernel skips the zeros between archives.
        while !self.bytes.len().is_multiple_of(512) {
            self.bytes.push(0);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_headers_parse_back() {
        let mut a = Archive::new();
        a.dir("dev");
        a.char_dev("/dev/console", 0o600, 5, 1);
        a.file("init", 0o755, b"#!/bin/sh\n");
        a.symlink("bin/sh", "busybox");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 512, 0);
        // Walk the archive as the kernel does.
        let mut at = 0;
        let mut names = Vec::new();
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "header at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_at = at + 110;
            let name = std::str::from_utf8(&bytes[name_at..name_at + namesize - 1]).unwrap();
            names.push(name.to_owned());
            if name == "dev/console" {
                assert_eq!((mode as u32) & 0o170_000, S_IFCHR);
                assert_eq!((rmaj, rmin), (5, 1));
            }
            let data_at = (name_at + namesize).next_multiple_of(4);
            if name == "bin/sh" {
                assert_eq!(&bytes[data_at..data_at + size], b"busybox");
            }
            at = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "bin/sh", "TRAILER!!!"]
        );
    }
}
