//! The live credential file the real CLI reads (qwen's `oauth_creds.json`) and the CLI's own
//! lock on it (qwen's `oauth_creds.lock`), which we hold whenever we replace the live file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::files::{self, digest, keep_owner};
use crate::model::{Kind, Secret};
use crate::profile::{Creds, Profile};

use super::slots::{SlotInfo, check_oauth, read_bounded};

/// The live `oauth_creds.json` as found on disk. `Debug` shows sizes, never the bytes.
#[derive(Clone)]
pub enum LiveFile {
    Missing,
    /// A symlink (the seeds' layout); `target_bytes` when it resolves.
    Symlink {
        target: PathBuf,
        bytes: Option<Vec<u8>>,
    },
    Regular {
        bytes: Vec<u8>,
        mode: u32,
    },
    /// A directory or something else that is not a file.
    Other,
}

impl fmt::Debug for LiveFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveFile::Missing => f.write_str("Missing"),
            LiveFile::Symlink { target, bytes } => {
                write!(
                    f,
                    "Symlink {{ target: {target:?}, bytes: {:?} }}",
                    bytes.as_ref().map(|b| b.len())
                )
            }
            LiveFile::Regular { bytes, mode } => write!(
                f,
                "Regular {{ bytes: {} bytes, mode: {mode:o} }}",
                bytes.len()
            ),
            LiveFile::Other => f.write_str("Other"),
        }
    }
}

impl LiveFile {
    pub fn read(path: &Path) -> io::Result<LiveFile> {
        let meta = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LiveFile::Missing),
            Err(e) => return Err(e),
            Ok(m) => m,
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(path)?;
            let bytes = match read_bounded(path) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            return Ok(LiveFile::Symlink { target, bytes });
        }
        if !meta.is_file() {
            return Ok(LiveFile::Other);
        }
        match read_bounded(path) {
            Ok(bytes) => Ok(LiveFile::Regular {
                bytes,
                mode: meta.mode() & 0o7777,
            }),
            // Replaced or deleted (by qwen) between stat and open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LiveFile::Missing),
            Err(e) => Err(e),
        }
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            LiveFile::Regular { bytes, .. } => Some(bytes),
            LiveFile::Symlink { bytes: Some(b), .. } => Some(b),
            _ => None,
        }
    }
}

/// Why the CLI keeps its login in encrypted storage (its variable is `true`, or its encrypted
/// file is in the home), if it does: swapping the login file cannot work there. API keys are
/// unaffected.
pub fn encrypted_storage(paths: &Paths) -> Option<String> {
    let enc = paths.profile.creds.encrypted.as_ref()?;
    let file = paths.home.join(enc.file);
    if std::env::var(enc.var).is_ok_and(|val| val.trim().eq_ignore_ascii_case("true")) {
        Some(format!("{}=true", enc.var))
    } else if fs::symlink_metadata(&file).is_ok() {
        Some(format!("{} exists", file.display()))
    } else {
        None
    }
}

/// Which slot the live file's content belongs to: the same bytes as a slot file, else the
/// same refresh token (preferring `prefer`). `None`: no slot matches.
pub fn owner_of(
    bytes: &[u8],
    infos: &BTreeMap<usize, SlotInfo>,
    prefer: Option<usize>,
) -> Option<usize> {
    let d = digest(bytes);
    let oauth = || {
        infos
            .iter()
            .filter(|(_, i)| i.kind == Some(Kind::OAuth) && i.problem.is_none())
    };
    if let Some(p) = prefer
        && infos
            .get(&p)
            .is_some_and(|i| i.digest.as_deref() == Some(d.as_str()) && i.problem.is_none())
    {
        return Some(p);
    }
    if let Some((n, _)) = oauth().find(|(_, i)| i.digest.as_deref() == Some(d.as_str())) {
        return Some(*n);
    }
    let rt = check_oauth(bytes).ok()?;
    let matches: Vec<usize> = oauth()
        .filter(|(_, i)| i.refresh.as_ref() == Some(&rt))
        .map(|(n, _)| *n)
        .collect();
    match prefer {
        Some(p) if matches.contains(&p) => Some(p),
        _ => matches.first().copied(),
    }
}

impl super::Vault {
    /// The access token a request on login `n` goes out with (the relay, for a CLI whose login
    /// requests it serves): the live file's when the live file holds login `n` — the same
    /// refresh token, or one the CLI saved after we installed `n` (it refreshes by itself and
    /// the refresh token rotates) — else the slot's own.
    pub fn login_access(&self, n: usize) -> Result<Secret> {
        let slot_path = self.paths.oauth_slot(n);
        let slot = read_bounded(&slot_path).map_err(|e| Error::io("read", &slot_path, e))?;
        let pointer = self.paths.profile.creds.access;
        let access = |bytes: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()?
                .pointer(pointer)?
                .as_str()
                .filter(|t| !t.trim().is_empty())
                .map(|t| Secret::new(t.to_string()))
        };
        let live = read_bounded(&self.paths.live_creds).ok();
        let live_refresh = live.as_deref().and_then(|b| check_oauth(b).ok());
        let holds_n = live_refresh.as_ref().is_some_and(|live_refresh| {
            check_oauth(&slot).ok().as_ref() == Some(live_refresh)
                || (!other_account(
                    &self.paths.profile.creds,
                    &slot_path,
                    live.as_deref().unwrap_or_default(),
                ) && matches!(self.peek(), super::state::Loaded::Ok(st) if st.live_slot == Some(n)))
        });
        let from_live = live.as_deref().filter(|_| holds_n).and_then(access);
        from_live
            .or_else(|| access(&slot))
            .ok_or_else(|| Error::Invalid {
                path: slot_path,
                problem: format!("no {} in it", pointer.rsplit('/').next().unwrap_or(pointer)),
            })
    }
}

/// The live file names another account than slot file `slot` (both carry the profile's account
/// id, and they differ): a new login, not a refresh of the slot's.
pub(super) fn other_account(creds: &Creds, slot: &Path, live: &[u8]) -> bool {
    let Some(pointer) = creds.account else {
        return false;
    };
    let id = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()?
            .pointer(pointer)?
            .as_str()
            .map(str::to_string)
    };
    match (read_bounded(slot).ok().as_deref().and_then(id), id(live)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

/// The CLI's own lock on its live file, for a CLI that takes one (qwen's `oauth_creds.lock`,
/// QWEN_FACTS.md §0: created with O_CREAT|O_EXCL, treated as stale after 10 s). Holding it
/// while we read and replace the live file means the CLI never saves a refreshed token in the
/// middle of our swap (and we never read half of its save).
pub(super) struct CliLock {
    pub(super) path: PathBuf,
    pub(super) ino: u64,
}

impl CliLock {
    /// Takes `cli`'s lock at `path`.
    pub(super) fn acquire(path: &Path, cli: &Profile, timeout: Duration) -> Result<CliLock> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut f) => {
                    keep_owner(Some(&f), path);
                    // Our signature lets a later run remove the file at once when we crashed.
                    let _ = f.write_all(holder_signature().as_bytes());
                    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    return Ok(CliLock {
                        path: path.to_path_buf(),
                        ino,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if cli_lock_is_stale(path, cli) {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                }
                Err(e) => {
                    let action = format!("create {}'s lock", cli.name);
                    return Err(Error::io_worded(action.into(), path, e));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::LockTimeout {
                    path: path.to_path_buf(),
                    seconds: timeout.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl Drop for CliLock {
    fn drop(&mut self) {
        // Remove it only while it is still ours (the CLI may have judged it stale and replaced it).
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// "qwen-rotation pid=123 ns=pid:[4026531836]": the pid namespace makes the pid meaningful
/// only to processes that share it (another container sees other pids).
pub(super) fn holder_signature() -> String {
    format!(
        "qwen-rotation pid={} ns={}\n",
        std::process::id(),
        pid_namespace()
    )
}

pub(super) fn pid_namespace() -> String {
    fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Stale: older than `cli`'s own rule (its `creds.lock.stale`: qwen's 10 s), or written by a
/// qwen-rotation process of our pid namespace that no longer exists (a crash between taking
/// and releasing it).
pub fn cli_lock_is_stale(path: &Path, cli: &Profile) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    let stale_after = cli.creds.lock.as_ref().map_or(Duration::ZERO, |l| l.stale);
    if age.is_some_and(|a| a >= stale_after) {
        return true;
    }
    let Ok(text) = files::read_text(path, 4096) else {
        return false;
    };
    let Some(rest) = text.strip_prefix("qwen-rotation pid=") else {
        return false;
    };
    let mut parts = rest.split_whitespace();
    let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
    let ns = parts.next().and_then(|p| p.strip_prefix("ns="));
    match (pid, ns) {
        (Some(pid), Some(ns)) if ns == pid_namespace() && !ns.is_empty() => {
            matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            )
        }
        _ => false,
    }
}

/// The live file as a transaction has settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Live {
    Missing,
    Invalid,
    /// Belongs to this slot, which now holds the same bytes.
    Owned(usize),
    /// Valid credentials that belong to no slot (a login the person made by hand): kept in
    /// `accounts/backup/` before it is replaced.
    Foreign,
    /// The slot it belonged to was just removed (its file is in `accounts/removed/`).
    Removed,
}
