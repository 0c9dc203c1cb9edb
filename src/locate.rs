//! Finding the real qwen: walk PATH, skip ourselves, take the first executable `qwen`.
//!
//! Invariant: the result is never a copy of the shim. "Ourselves" is decided by identity, not by
//! name: a candidate is skipped when it is our executable (the same device and inode: the file
//! itself, a symlink or a hard link to it), when it sits in the directory we were run from, or
//! when its first bytes are our own build's (another copy of the shim elsewhere on PATH). A `qwen` started from inside
//! a qwen run (a tool calling `qwen`) reaches the shim again and walks PATH the same way, so it
//! lands on the same real qwen: there is no loop to break. `QWEN_ROTATION_REAL` is checked the
//! same way (by identity and by content) and refused when it names a shim.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the real qwen is, and why that one.
#[derive(Debug, Clone)]
pub struct Located {
    pub path: PathBuf,
    pub via: Via,
    /// PATH entries that were looked at, in order.
    pub searched: Vec<PathBuf>,
    /// Candidates passed over, with the reason.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `QWEN_ROTATION_REAL` named it.
    Override,
    /// The first real `qwen` on PATH, in this directory.
    Path(PathBuf),
}

/// A marker compiled into every build of the shim, so a copy of it is recognised by content.
pub const SHIM_MARKER: &str = "qwen-rotation-shim-marker:7f3a91c2";

/// Finds the real CLI of the active profile (`qwen`) from this process's environment.
pub fn real_qwen() -> Result<Located> {
    let me = std::env::current_exe().ok();
    let argv0 = std::env::args_os().next();
    find(
        std::env::var_os(crate::profile::active().pool_vars.real),
        std::env::var_os("PATH"),
        me.as_deref(),
        argv0.as_deref().map(Path::new),
    )
}

/// The search itself, with every input explicit (for tests and `doctor`); the name looked for
/// on PATH is the active profile's.
pub fn find(
    override_path: Option<OsString>,
    path_var: Option<OsString>,
    me: Option<&Path>,
    argv0: Option<&Path>,
) -> Result<Located> {
    let self_id = me.and_then(Identity::of);
    if let Some(p) = override_path.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::RealNotFound {
                searched: Vec::new(),
                override_path: Some(p),
            });
        }
        // The override gets the same identity check as PATH: `QWEN_ROTATION_REAL=$(command -v
        // qwen)` names the shim, and running it would start the next shim, which reads the same
        // variable, without end (a chain of thousands of processes until fork fails).
        if self_id.as_ref().is_some_and(|me| me.same_file(&p)) || is_shim_copy(&p) {
            return Err(Error::RealIsShim { path: p });
        }
        return Ok(Located {
            path: p,
            via: Via::Override,
            searched: Vec::new(),
            skipped: Vec::new(),
        });
    }
    // The directory we were run from, when argv[0] names one (a shim run by absolute path).
    // Directories are compared by identity too: one stat each, where resolving a path costs a
    // readlink per component.
    let run_dir = argv0
        .filter(|a| a.components().count() > 1)
        .and_then(|a| a.parent())
        .and_then(Identity::of);
    let self_dir = me.and_then(|m| m.parent()).and_then(Identity::of);

    let mut searched = Vec::new();
    let mut skipped = Vec::new();
    for dir in std::env::split_paths(&path_var.unwrap_or_default()) {
        // An empty PATH entry means the current directory (execvp(3)).
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        searched.push(dir.clone());
        let candidate = dir.join(crate::profile::active().name);
        let Ok(meta) = fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let dir_id = Identity::of(&dir);
        if dir_id.is_some() && (dir_id == self_dir || dir_id == run_dir) {
            skipped.push((candidate, "in the shim's own directory"));
            continue;
        }
        if self_id.as_ref() == Some(&Identity::from(&meta)) {
            skipped.push((candidate, "is the shim itself"));
            continue;
        }
        if is_shim_copy(&candidate) {
            skipped.push((candidate, "is another copy of the shim"));
            continue;
        }
        if meta.permissions().mode() & 0o111 == 0 {
            skipped.push((candidate, "not executable"));
            continue;
        }
        return Ok(Located {
            path: candidate,
            via: Via::Path(dir),
            searched,
            skipped,
        });
    }
    Err(Error::RealNotFound {
        searched,
        override_path: None,
    })
}

/// Device and inode: equal for symlinks and hard links to the same file (two paths that resolve
/// to the same canonical path always share them, so no path needs resolving).
#[derive(PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(path: &Path) -> Option<Identity> {
        fs::metadata(path).ok().map(|m| Identity::from(&m))
    }

    fn from(meta: &fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    fn same_file(&self, other: &Path) -> bool {
        Identity::of(other).as_ref() == Some(self)
    }
}

/// True when `path` is an ELF file that carries our marker (another copy of the shim). Scripts
/// (the npm `qwen` is a JavaScript file) are never shim copies; only ELF files are scanned.
fn is_shim_copy(path: &Path) -> bool {
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return false;
    }
    // A release shim is a few MiB; read at most 64 MiB looking for the marker.
    let mut data = Vec::new();
    if f.take(64 << 20).read_to_end(&mut data).is_err() {
        return false;
    }
    let marker = SHIM_MARKER.as_bytes();
    data.windows(marker.len()).any(|w| w == marker)
}
