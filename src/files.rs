//! Reading a file of ours (slot files, state.yaml, rotation.yaml, the live `oauth_creds.json`,
//! qwen's settings, the log) without letting whatever sits in its place stall a run.
//!
//! Invariants:
//! - `open(2)` never blocks: every open carries O_NONBLOCK. A FIFO with no writer, or a
//!   device, would otherwise block in open(2) forever, inside `rotation.lock`, and every other
//!   caller would then wait `lock_timeout`. O_NONBLOCK has no effect on reading a regular file.
//! - Only regular files are read (fstat on the open descriptor, so nothing can be swapped in
//!   between the check and the read); anything else is refused with one line naming what it is
//!   and the fix.
//! - Never more than the caller's limit is read into memory, and text meant for a recursive
//!   parser is pre-scanned for its nesting depth first (`too_deep`): 100,000 `[` cost the YAML
//!   parser about 20 s before qwen could start.
//!
//! Writing one of ours: every file is replaced atomically (`write_atomic`), what we create
//! keeps the owner of its directory (`keep_owner`), and directories are 0700 (`ensure_dir`).
//!
//! This module imports only `error` (and the `fault` points of the crash tests).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::error::{Error, Result};

/// Our YAML and JSON files are a few KiB; anything past 1 MiB is not one of them.
pub const MAX_OWN_FILE: u64 = 1 << 20;

/// Deepest nesting our YAML/JSON files need is about 5 levels; 64 leaves room for any hand
/// edit and stays far below what makes a recursive parser slow or exhausts its stack.
pub const MAX_NESTING: usize = 64;

/// Opens `path` for reading without blocking, and only when it is a regular file. With
/// `no_follow` a symlink in its place is refused (ELOOP), for files whose design refuses links.
pub fn open_regular(path: &Path, no_follow: bool) -> io::Result<File> {
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if no_follow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) if no_follow => io::Error::other(
                "it is a symbolic link, which is never read through; put a copy of its target in its place",
            ),
            _ => e,
        })?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    if kind.is_dir() {
        return Err(io::ErrorKind::IsADirectory.into());
    }
    let what = if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a file"
    };
    Err(io::Error::other(format!(
        "it is {what}, not a regular file; move it out of the way: mv {0} {0}.bak",
        path.display()
    )))
}

/// The whole content of the regular file at `path`, refused when larger than `limit`.
pub fn read_regular(path: &Path, limit: u64, no_follow: bool) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    open_regular(path, no_follow)?
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {}", size_name(limit)),
        ));
    }
    Ok(buf)
}

/// `read_regular` for text: not UTF-8 is `InvalidData`.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, limit, false)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

fn size_name(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Why `text` (YAML or JSON) nests too deeply to be handed to a parser, or `None`. A cheap,
/// conservative pre-scan: flow brackets (`[` `{`) that open a node (at a line's start or after
/// `:` `,` `-` `?` or another bracket; outside quoted strings and comments) are counted, and a
/// block line's indentation (spaces plus `- `/`? `/`: ` indicators, each of which opens a
/// level) is measured; a file a parser could nest more than `max` levels deep exceeds one of
/// the two. A bracket inside plain text (`reason: a [b`) opens nothing and is not counted, so
/// a long state.yaml of such reasons is never taken for a deep one.
pub fn too_deep(text: &str, max: usize) -> Option<String> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for line in text.lines() {
        if quote.is_none() && depth == 0 && block_indent(line) > 2 * max {
            return Some(format!("it is indented more than {} columns deep", 2 * max));
        }
        // The last character that is not a space: where a node may start.
        let mut prev = '\n';
        let mut after_space = true;
        for c in line.chars() {
            match quote {
                Some(q) => match c {
                    '\\' if q == '"' && !escaped => {
                        escaped = true;
                        continue;
                    }
                    c if c == q && !escaped => quote = None,
                    _ => {}
                },
                None => {
                    let node_start = "\n:,-?[{".contains(prev);
                    match c {
                        '#' if after_space => break,
                        // A quote opens a string only where a node starts (`it's`, `a 'b` are
                        // plain text): text can never hide a bracket from the count.
                        '"' | '\'' if node_start => quote = Some(c),
                        '[' | '{' if node_start => {
                            depth += 1;
                            if depth > max {
                                return Some(format!("it nests deeper than {max} levels"));
                            }
                        }
                        ']' | '}' => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            escaped = false;
            after_space = c.is_whitespace();
            if !after_space {
                prev = c;
            }
        }
    }
    None
}

/// Columns of a line's block structure: leading spaces, and `- `/`? `/`: ` indicators that
/// open a nested node on the same line.
fn block_indent(line: &str) -> usize {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' => i += 1,
            b'-' | b'?' | b':' if bytes.get(i + 1).is_none_or(|b| *b == b' ') => i += 2,
            _ => break,
        }
    }
    i
}

// ---------------------------------------------------------------------------------------------
// Writing: atomic replacement, modes, directories
// ---------------------------------------------------------------------------------------------

/// Prefix of our temp files, so `doctor` can recognise leftovers of a crash.
pub const TEMP_PREFIX: &str = ".qwen-rotation-";

/// A name `replace_file` gives its temporaries: `TEMP_PREFIX` and tempfile's 6 random
/// alphanumeric characters, nothing else (so no other file is ever taken for one).
pub fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .is_some_and(|rest| rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Replaces `path` with `bytes` atomically: a 0600 temp file in the same directory, written,
/// fsynced, renamed over `path` (a symlink at `path` is replaced, not followed), then the
/// directory fsynced so the rename itself survives a power cut. The new file's mtime is now,
/// which is what makes a running qwen reload it (QWEN_FACTS.md: it compares mtimes).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, bytes)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fsync_dir(dir).map_err(|e| Error::io("write", path, e))
}

/// `write_atomic` without the directory fsync: for the live file and state.yaml, which share
/// the qwen home, a transaction fsyncs that directory once after both renames (one fsync less
/// per rotation; a process crash never loses a rename, and after a power cut either order of
/// the two is handled: state.yaml and the live file are checked against each other).
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fail = |e: io::Error| Error::io("write", path, e);
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(fail)?;
    // tempfile already creates 0600; set it anyway so a future default cannot widen it.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    keep_owner(Some(tmp.as_file()), path);
    // Through the File: NamedTempFile's own Write adds its random name to every error.
    tmp.as_file().write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    // A SIGKILL here leaves the temporary behind (the crash tests sweep it up).
    crate::fault::point("write.temp_synced");
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Run as root in a home that belongs to someone else (a container with the user's home
/// mounted, `sudo` keeping HOME), what we create would belong to root, and its 0600 / 0700 would
/// lock the owner's own qwen (and the owner's own runs of this shim) out of it. So what we create
/// takes the owner of the directory it is in. Best effort: without the privilege to give a file
/// away (not root), the directory is ours anyway or nothing changes.
///
/// Only a file of ours with a single link is given away (`file`: one we just created, or our
/// lock or log): never one reached through a hard link that the home's owner planted to a file
/// elsewhere (/etc/shadow, say). `file: None` is a directory we just created (lchown: a link
/// put in its place is not followed).
pub fn keep_owner(file: Option<&File>, path: &Path) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Ok(owner) = fs::metadata(dir) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    if owner.uid() == me {
        return;
    }
    let (uid, gid) = (Some(owner.uid()), Some(owner.gid()));
    let _ = match file {
        Some(f) => match f.metadata() {
            Ok(m) if m.is_file() && m.nlink() == 1 && m.uid() == me => {
                std::os::unix::fs::fchown(f, uid, gid)
            }
            _ => Ok(()),
        },
        None => std::os::unix::fs::lchown(path, uid, gid),
    };
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) when missing, 0700 regardless of umask.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() || (m.file_type().is_symlink() && dir.is_dir()) => return Ok(()),
        Ok(_) => {
            return Err(Error::Invalid {
                path: dir.to_path_buf(),
                problem: "exists but is not a directory; move it out of the way".into(),
            });
        }
        Err(_) => {}
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create", dir, e))?;
    keep_owner(None, dir);
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("chmod", dir, e))
}

/// `ensure_dir`, and an existing `dir` that group or other may enter is made 0700: adding an
/// account puts credentials in the qwen home, which the real qwen creates 0755. Only a real
/// directory is changed (never through a symlink), and only one that is ours, or any when we
/// are root (the shim keeps the home's owner, see `keep_owner`).
pub fn make_private(dir: &Path) -> Result<()> {
    ensure_dir(dir)?;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.is_dir() && too_open(meta.mode()) && (meta.uid() == me || me == 0) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod", dir, e))?;
    }
    Ok(())
}

/// `dir/<stem>.<UTC time><suffix>`, with `-2`, `-3`… added until no file has that name.
/// Callers hold `rotation.lock`, so no other process of ours picks the same name meanwhile.
pub fn unused_name(dir: &Path, stem: &str, suffix: &str) -> PathBuf {
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let mut candidate = dir.join(format!("{stem}.{stamp}{suffix}"));
    let mut n = 2;
    while fs::symlink_metadata(&candidate).is_ok() {
        candidate = dir.join(format!("{stem}.{stamp}-{n}{suffix}"));
        n += 1;
    }
    candidate
}

/// Group or other may read, write or enter it.
pub fn too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Stable 64-bit FNV-1a of `bytes`, as 16 hex digits (state.yaml `installed_digest`).
pub fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_fnv1a() {
        assert_eq!(digest(b""), "cbf29ce484222325");
        assert_eq!(digest(b"a"), "af63dc4c8601ec8c");
        assert_ne!(digest(b"ab"), digest(b"ba"));
    }

    #[test]
    fn nesting_is_measured_outside_strings_and_comments() {
        assert_eq!(too_deep("a: [1, [2, {b: 3}]]\n", 3), None);
        assert!(too_deep("a: [1, [2, {b: [3]}]]\n", 3).is_some());
        assert_eq!(too_deep("a: \"[[[[[[\"\nb: '{{{{'\n# [[[[[\n", 2), None);
        assert!(too_deep("a: it's\nb: [[[[\n", 3).is_some());
        assert!(too_deep("a:[[[[\n", 3).is_some());
        assert!(too_deep("a: [x 'y, [[[[\n", 3).is_some());
        assert!(too_deep("- - [\n  [\n   {x: [1]}]]\n", 3).is_some());
        let reasons = "  last_reason: quota [429 from the provider\n".repeat(200);
        assert_eq!(too_deep(&reasons, MAX_NESTING), None);
        assert!(too_deep(&"[".repeat(100_000), MAX_NESTING).is_some());
        assert!(too_deep(&format!("{}x: 1\n", " ".repeat(200)), MAX_NESTING).is_some());
        assert!(too_deep(&format!("{}x\n", "- ".repeat(100)), MAX_NESTING).is_some());
        let ordinary = "strategy: round-robin\npatterns:\n  quota:\n    - \"x\"\n";
        assert_eq!(too_deep(ordinary, MAX_NESTING), None);
    }

    #[test]
    fn only_regular_files_are_read_and_never_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Would block forever in open(2) without O_NONBLOCK.
        let e = read_regular(&fifo, 10, false).unwrap_err();
        assert!(e.to_string().contains("named pipe (FIFO)"), "{e}");
        let e = read_regular(dir.path(), 10, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory);
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 11]).unwrap();
        assert!(read_regular(&big, 10, false).is_err());
        assert_eq!(read_regular(&big, 11, false).unwrap().len(), 11);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert!(read_regular(&link, 11, false).is_ok());
        let e = read_regular(&link, 11, true).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
