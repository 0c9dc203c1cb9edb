//! The file store's pieces: `rotation.lock` (flock, bounded wait) and loading state.yaml under
//! it, keeping a corrupt copy aside before rebuilding from `accounts/`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::files::{self, keep_owner, write_atomic};

use super::audit::{Event, events};
use super::handle::Vault;
use super::slots::read_bounded;
use super::state::{Loaded, State};

/// Can `path` be opened and read as a file? (Without blocking: see `files`.)
pub(super) fn readable_file(path: &Path) -> io::Result<()> {
    files::open_regular(path, false).map(drop)
}

/// `rotation.lock`: flock(2) on a file in the qwen home (shared by containers that mount the
/// home). The kernel drops it when the holder dies, so a crash never blocks anyone. The file
/// is never deleted: deleting a lock file lets two processes lock two different inodes.
pub struct RotationLock {
    pub(super) _file: File,
}

impl RotationLock {
    pub fn acquire(path: &Path, timeout: Duration) -> Result<RotationLock> {
        // O_NOFOLLOW: a symlink in the lock's place is refused, not followed (run as root,
        // it would create or open any file the link names).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::ELOOP) => Error::Invalid {
                    path: path.to_path_buf(),
                    problem: "is a symbolic link; remove it (the lock is recreated as a file)"
                        .into(),
                },
                _ => Error::io("open the lock", path, e),
            })?;
        keep_owner(Some(&file), path);
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RotationLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
            }
            if Instant::now() >= deadline {
                return Err(Error::LockTimeout {
                    path: path.to_path_buf(),
                    seconds: timeout.as_secs(),
                });
            }
            // Polling with a short, growing pause: a rotation holds the lock for milliseconds.
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Vault {
    /// Reads state.yaml under the lock. Corrupt: keep a `.corrupt` copy, warn, start empty
    /// (reconcile then rebuilds it from `accounts/`). The bool says "must be written".
    pub(super) fn load_locked(&self, now: DateTime<Utc>, events: &mut Vec<Event>) -> (State, bool) {
        match State::load(&self.paths.state) {
            Loaded::Ok(st) => (st, false),
            Loaded::Missing => (State::default(), true),
            Loaded::Corrupt(problem) => {
                let copy = self.paths.state.with_extension("yaml.corrupt");
                let kept = keep_corrupt(&self.paths.state, &copy);
                let where_ = if kept {
                    format!("kept a copy as {}", copy.display())
                } else {
                    "could not keep a copy".into()
                };
                crate::warn(format!(
                    "{} is unreadable ({problem}); {where_} and rebuilt it from {}",
                    self.paths.state.display(),
                    self.paths.accounts.display()
                ));
                events.push(
                    Event::new(events::STATE_REBUILT, now)
                        .warn()
                        .reason(problem),
                );
                (State::default(), true)
            }
        }
    }
}

/// Keeps a corrupt state.yaml as `copy` (0600). A regular file with a single link moves aside
/// whole, whatever its size (an oversized one could not be read back); its mode is set through
/// a descriptor opened without following links, and only while it still has one link, so a
/// chmod never reaches a file elsewhere (run as root in another user's home). A symlink or a
/// hard link is copied instead, as a fresh 0600 file; a link already at `copy` is replaced,
/// never written through.
pub(super) fn keep_corrupt(state: &Path, copy: &Path) -> bool {
    let private = |f: File| {
        f.metadata().is_ok_and(|m| m.nlink() == 1)
            && f.set_permissions(fs::Permissions::from_mode(0o600)).is_ok()
    };
    match fs::symlink_metadata(state) {
        Ok(m) if m.is_file() && m.nlink() == 1 => {
            fs::rename(state, copy).is_ok() && files::open_regular(copy, true).is_ok_and(private)
        }
        _ => read_bounded(state)
            .map_err(|e| Error::io("read", state, e))
            .and_then(|bytes| write_atomic(copy, &bytes))
            .is_ok(),
    }
}
