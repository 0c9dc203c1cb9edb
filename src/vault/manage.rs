//! The account vault: slots on disk, the rotation step, and the management operations.
//!
//! Layout (DESIGN.md, "Files under the qwen home"): OAuth slot N is
//! `accounts/oauth_creds_N.json` (the seeds' file, copied verbatim into the live
//! `oauth_creds.json` when installed); API-key slot N is `accounts/api_key_N.json`
//! (`{"api_key","base_url","model","env_key"}`, injected into the child's environment).
//! Slot numbers are shared by both kinds.
//!
//! Invariants (each one is what makes "never lose a credential" true):
//! - Every change happens inside one `transact` call: under `rotation.lock` (flock, bounded
//!   wait), state read and reconciled with `accounts/`, then live file, then state.yaml, then
//!   the log. Readers (the `prepare` fast path, `--rotation-status`) take no lock: every file
//!   is replaced by rename, so they always see a whole old or a whole new version.
//! - A slot file is written only by `add` (a new number) and by the validated sync-back, and
//!   a sync-back writes only content that parses and holds a refresh and an access token, into
//!   the slot that content belongs to (same bytes or same refresh token as a slot; else the
//!   slot last installed, whose previous content is first kept in `accounts/backup/`). An
//!   `invalid` slot file is never written. `remove` moves the file to `accounts/removed/`.
//! - The live file is replaced only while holding qwen's own `oauth_creds.lock`, only after
//!   its current content was synced back (or, when it belongs to no slot, kept in
//!   `accounts/backup/`), and always atomically (temp + fsync + rename + fsync dir), so after a
//!   crash at any point it is a complete credential file of one account.
//! - `switches_total` and the `account_switch` log lines change together (`Tx::switch_to`).
//! - Nothing here formats a token or a key: `Secret` redacts itself, error messages name
//!   paths and problems, never contents.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Event, events};
use crate::config::{Config, Paths};
use crate::detect::{Class, Hit};
use crate::error::{Error, Result};
use crate::files::{self, fsync_dir, replace_file, unused_name};
pub use crate::files::{
    TEMP_PREFIX, digest, ensure_dir, is_temp_name, keep_owner, make_private, too_open, write_atomic,
};
use crate::model::Strategy;
pub use crate::model::{Kind, Secret};
use crate::state::{Account, Loaded, State, Status};
use crate::text::io_reason;

/// What one attempt runs with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// 1-based slot number.
    pub slot: usize,
    /// Safe to print (`Account::shown_label`): it is only ever shown, in notices.
    pub label: Option<String>,
    pub kind: Kind,
    /// API-key slots: the variables to inject into the child (key, base URL, model).
    /// Empty for OAuth slots (their credentials are in the live file).
    pub env: Vec<(String, Secret)>,
    /// API-key slots: the real base URL and key, for the loopback relay. `None` for OAuth
    /// slots and for API-key slots stored without a base URL (qwen then uses its settings).
    pub api: Option<ApiTarget>,
}

#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub base_url: String,
    pub key: Secret,
    pub model: Option<String>,
    /// The variable qwen reads the key from (`OPENAI_API_KEY` unless settings name another).
    pub env_key: String,
}

/// The result of the rotation step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// This call moved the live account.
    Switched { from: usize, to: usize },
    /// Another process had already rotated away from the failed slot; use `to`.
    AlreadyRotated { to: usize },
    /// No eligible slot is left.
    Exhausted { earliest: Option<DateTime<Utc>> },
}

// ---------------------------------------------------------------------------------------------
// Slot files and their content
// ---------------------------------------------------------------------------------------------

/// The default variable an API key is injected as (QWEN_FACTS_APIKEY.md §1).
pub const DEFAULT_ENV_KEY: &str = "OPENAI_API_KEY";
/// qwen 0.12 treats its `oauth_creds.lock` as stale after 10 s (0.24: 35 s).
const QWEN_LOCK_STALE: Duration = Duration::from_secs(10);
/// Credential files are a few hundred bytes; anything past this is not one.
const MAX_CRED_BYTES: u64 = files::MAX_OWN_FILE;
/// Backups kept in `accounts/backup/` (oldest pruned first).
const MAX_BACKUPS: usize = 20;

/// `oauth_creds_3.json` → (3, OAuth); `api_key_2.json` → (2, ApiKey).
pub fn parse_slot_name(name: &str) -> Option<(usize, Kind)> {
    let (digits, kind) = if let Some(rest) = name.strip_prefix("oauth_creds_") {
        (rest.strip_suffix(".json")?, Kind::OAuth)
    } else if let Some(rest) = name.strip_prefix("api_key_") {
        (rest.strip_suffix(".json")?, Kind::ApiKey)
    } else {
        return None;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let n: usize = digits.parse().ok()?;
    Some((n, kind))
}

pub fn slot_path(paths: &Paths, n: usize, kind: Kind) -> PathBuf {
    match kind {
        Kind::OAuth => paths.oauth_slot(n),
        Kind::ApiKey => paths.api_key_slot(n),
    }
}

/// Which files exist for each slot number.
pub type Scan = BTreeMap<usize, Vec<Kind>>;

/// Lists `accounts/` (missing → empty). Only names of slot files count.
pub fn scan(accounts: &Path) -> io::Result<Scan> {
    let mut out: Scan = BTreeMap::new();
    let entries = match fs::read_dir(accounts) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
        Ok(entries) => entries,
    };
    for entry in entries.flatten() {
        if let Some((n, kind)) = entry.file_name().to_str().and_then(parse_slot_name) {
            out.entry(n).or_default().push(kind);
        }
    }
    for kinds in out.values_mut() {
        kinds.sort();
    }
    Ok(out)
}

/// Checks OAuth credentials (qwen's `oauth_creds.json` shape) and returns the refresh token.
/// The problem text never quotes the content.
pub fn check_oauth(bytes: &[u8]) -> std::result::Result<Secret, &'static str> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty");
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "not valid JSON")?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    let text = |k: &str| {
        obj.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
    };
    let refresh = text("refresh_token").ok_or("no refresh_token in it")?;
    text("access_token").ok_or("no access_token in it")?;
    Ok(Secret::new(refresh))
}

/// An API-key slot file.
#[derive(Serialize, Deserialize)]
struct ApiKeyFile {
    api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env_key: Option<String>,
}

/// The content of an API-key slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySlot {
    pub key: Secret,
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub env_key: String,
}

impl ApiKeySlot {
    pub fn to_json(&self) -> String {
        let file = ApiKeyFile {
            api_key: self.key.expose().to_string(),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            env_key: Some(self.env_key.clone()),
        };
        // Plain strings: serialising cannot fail.
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The environment for an attempt: the key, and base URL and model when set.
    pub fn env(&self) -> Vec<(String, Secret)> {
        let mut env = vec![(self.env_key.clone(), self.key.clone())];
        if let Some(url) = &self.base_url {
            env.push(("OPENAI_BASE_URL".into(), Secret::new(url.clone())));
        }
        if let Some(model) = &self.model {
            env.push(("OPENAI_MODEL".into(), Secret::new(model.clone())));
        }
        env
    }
}

/// A usable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An API key as qwen can use it: printable ASCII, no spaces, not absurdly long.
pub fn valid_api_key(key: &str) -> std::result::Result<(), &'static str> {
    if key.is_empty() {
        return Err("the key is empty");
    }
    if key.len() > 4096 {
        return Err("the key is longer than 4096 characters");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the key contains spaces or non-printable characters");
    }
    Ok(())
}

pub fn check_api_key(bytes: &[u8]) -> std::result::Result<ApiKeySlot, &'static str> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty");
    }
    let file: ApiKeyFile = serde_json::from_slice(bytes)
        .map_err(|_| "not a JSON object with an \"api_key\" string")?;
    valid_api_key(&file.api_key)?;
    let env_key = file
        .env_key
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| DEFAULT_ENV_KEY.into());
    if !valid_env_name(&env_key) {
        return Err("env_key is not a valid environment variable name");
    }
    let clean = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(ApiKeySlot {
        key: Secret::new(file.api_key),
        base_url: clean(file.base_url),
        model: clean(file.model),
        env_key,
    })
}

/// What one slot's file holds, as read under the lock (or for a status view).
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub kind: Option<Kind>,
    pub path: PathBuf,
    /// Why the slot is unusable (`invalid`), phrased for a person; `None` when valid.
    pub problem: Option<String>,
    pub digest: Option<String>,
    pub refresh: Option<Secret>,
    pub api: Option<ApiKeySlot>,
    /// Permission bits of the file.
    pub mode: u32,
    /// Owned by another user.
    pub foreign_owner: bool,
}

fn inspect_slot(paths: &Paths, n: usize, kinds: &[Kind]) -> SlotInfo {
    let kind = (kinds.len() == 1).then(|| kinds[0]);
    let path = slot_path(paths, n, kind.unwrap_or(Kind::OAuth));
    let mut info = SlotInfo {
        kind,
        path: path.clone(),
        problem: None,
        digest: None,
        refresh: None,
        api: None,
        mode: 0,
        foreign_owner: false,
    };
    let Some(kind) = kind else {
        info.problem = Some(format!(
            "both oauth_creds_{n}.json and api_key_{n}.json exist; remove the one you do not want"
        ));
        return info;
    };
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => {
            // Never read or written through: a sync-back would land in the link's target,
            // wherever that is. The fix puts a copy of the target in the link's place.
            let target = fs::read_link(&path).unwrap_or_default();
            let (target, path) = (
                crate::error::printable(&target.to_string_lossy()),
                crate::error::printable(&path.to_string_lossy()),
            );
            info.problem = Some(format!(
                "the slot file is a symlink to {target}; slots must be regular files: \
                 cp --remove-destination {target} {path}"
            ));
            return info;
        }
        Ok(m) => {
            info.mode = m.mode() & 0o7777;
            info.foreign_owner = m.uid() != nix::unistd::geteuid().as_raw();
        }
        Err(_) => {}
    }
    let bytes = match read_slot(&path) {
        Ok(b) => b,
        Err(e) => {
            info.problem = Some(format!("cannot read it: {}", io_reason(&e)));
            return info;
        }
    };
    info.digest = Some(digest(&bytes));
    match kind {
        Kind::OAuth => match check_oauth(&bytes) {
            Ok(rt) => info.refresh = Some(rt),
            Err(p) => info.problem = Some(p.to_string()),
        },
        Kind::ApiKey => match check_api_key(&bytes) {
            Ok(api) => info.api = Some(api),
            Err(p) => info.problem = Some(p.to_string()),
        },
    }
    info
}

/// The slots of the pool: the environment's when one is declared, else `accounts/`.
pub fn scan_slots(paths: &Paths) -> io::Result<Scan> {
    match &paths.pool {
        Some(pool) => Ok(pool
            .slots
            .keys()
            .map(|n| (*n, vec![Kind::ApiKey]))
            .collect()),
        None => scan(&paths.accounts),
    }
}

/// A slot of the environment's pool, as `inspect_slot` describes a file. Its `digest` is the
/// slot's identity (variable and key fingerprint), never the key.
fn inspect_env_slot(slot: &crate::env_pool::EnvSlot) -> SlotInfo {
    SlotInfo {
        kind: Some(Kind::ApiKey),
        path: PathBuf::from(format!("${}", slot.source)),
        problem: None,
        digest: Some(slot.identity()),
        refresh: None,
        api: Some(slot.api.clone()),
        mode: 0o600,
        foreign_owner: false,
    }
}

/// The variable an environment slot's key came from (`None` for a slot file).
fn env_source(info: &SlotInfo) -> Option<&str> {
    info.path.to_str()?.strip_prefix('$')
}

/// Reads every slot of the pool (the environment's, or the files in `accounts/`).
pub fn inspect_all(paths: &Paths) -> Result<BTreeMap<usize, SlotInfo>> {
    if let Some(pool) = &paths.pool {
        return Ok(pool
            .slots
            .iter()
            .map(|(n, slot)| (*n, inspect_env_slot(slot)))
            .collect());
    }
    let scanned = scan(&paths.accounts).map_err(|e| Error::io("read", &paths.accounts, e))?;
    Ok(scanned
        .iter()
        .map(|(n, kinds)| (*n, inspect_slot(paths, *n, kinds)))
        .collect())
}

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

// ---------------------------------------------------------------------------------------------
// Files: atomic writes, modes, directories
// ---------------------------------------------------------------------------------------------

/// Can `path` be opened and read as a file? (Without blocking: see `files`.)
fn readable_file(path: &Path) -> io::Result<()> {
    files::open_regular(path, false).map(drop)
}

/// The live file (or what its symlink points at): a regular file of at most 1 MiB, read
/// without blocking (see `files`).
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    files::read_regular(path, MAX_CRED_BYTES, false)
}

/// A slot file: as `read_bounded`, and a symlink in its place is refused, never read through
/// (a sync-back would land in the link's target).
pub fn read_slot(path: &Path) -> io::Result<Vec<u8>> {
    files::read_regular(path, MAX_CRED_BYTES, true)
}

// ---------------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------------

/// `rotation.lock`: flock(2) on a file in the qwen home (shared by containers that mount the
/// home). The kernel drops it when the holder dies, so a crash never blocks anyone. The file
/// is never deleted: deleting a lock file lets two processes lock two different inodes.
pub struct RotationLock {
    _file: File,
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

/// qwen's own `oauth_creds.lock` (QWEN_FACTS.md §0): created with O_CREAT|O_EXCL, treated as
/// stale after 10 s. Holding it while we read and replace the live file means qwen never
/// saves a refreshed token in the middle of our swap (and we never read half of its save).
struct QwenLock {
    path: PathBuf,
    ino: u64,
}

impl QwenLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<QwenLock> {
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
                    return Ok(QwenLock {
                        path: path.to_path_buf(),
                        ino,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if qwen_lock_is_stale(path) {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                }
                Err(e) => return Err(Error::io("create qwen's lock", path, e)),
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

impl Drop for QwenLock {
    fn drop(&mut self) {
        // Remove it only while it is still ours (qwen may have judged it stale and replaced it).
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// "qwen-rotation pid=123 ns=pid:[4026531836]": the pid namespace makes the pid meaningful
/// only to processes that share it (another container sees other pids).
fn holder_signature() -> String {
    format!(
        "qwen-rotation pid={} ns={}\n",
        std::process::id(),
        pid_namespace()
    )
}

fn pid_namespace() -> String {
    fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Stale: older than qwen's own 10 s rule, or written by a qwen-rotation process of our pid
/// namespace that no longer exists (a crash between taking and releasing it).
pub fn qwen_lock_is_stale(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    if age.is_some_and(|a| a >= QWEN_LOCK_STALE) {
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

// ---------------------------------------------------------------------------------------------
// The vault
// ---------------------------------------------------------------------------------------------

pub struct Vault {
    pub paths: Paths,
    pub config: Config,
}

/// A read-only picture of the vault for `status`, `stats` and `doctor` (takes no lock).
#[derive(Debug, Clone)]
pub struct Overview {
    /// The state as a locked operation would see it (reconciled in memory, not written).
    pub state: State,
    /// state.yaml could not be read: why (the view was rebuilt from `accounts/`).
    pub state_problem: Option<String>,
    pub slots: BTreeMap<usize, SlotInfo>,
    pub live: LiveFile,
    /// The slot the live file belongs to, when one does.
    pub live_owner: Option<usize>,
    pub now: DateTime<Utc>,
}

/// What a management command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub from: usize,
    pub to: usize,
}

impl Vault {
    pub fn open(paths: Paths, config: Config) -> Vault {
        Vault { paths, config }
    }

    /// Cheap check for the fast path: is there at least one slot file in `accounts/`?
    /// One `read_dir`, no file opened.
    pub fn has_accounts(paths: &Paths) -> bool {
        if let Some(pool) = &paths.pool {
            return !pool.slots.is_empty();
        }
        let Ok(entries) = fs::read_dir(&paths.accounts) else {
            return false;
        };
        entries
            .flatten()
            .any(|e| e.file_name().to_str().and_then(parse_slot_name).is_some())
    }

    /// Before an attempt: make sure the slot to use is eligible and installed, and say how to
    /// run it. The common case takes no lock and writes nothing: state.yaml is read, the
    /// live file is read and its digest compared with what we installed. Anything else (a
    /// symlinked or changed live file, a spent current slot, new slot files, a pin to another
    /// slot) goes through one locked transaction. `pinned` (`--rotation-account`) picks the
    /// slot for this run without moving `current_index`. Err(Exhausted) when nothing is
    /// eligible (for a pin: when the pinned slot is not).
    pub fn prepare(&self, pinned: Option<&str>) -> Result<Launch> {
        crate::error::guarded(|| self.prepare_unguarded(pinned))
    }

    fn prepare_unguarded(&self, pinned: Option<&str>) -> Result<Launch> {
        let now = Utc::now();
        if self.paths.pool.is_none()
            && let Ok(scanned) = scan(&self.paths.accounts)
        {
            self.warn_wide_modes(&scanned);
        }
        match self.fast_launch(pinned, now) {
            Ok(Some(launch)) => return Ok(launch),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        self.transact("prepare", |tx| tx.prepare(pinned))
    }

    /// The lock-free path of `prepare`: `Ok(None)` means "something needs changing".
    fn fast_launch(&self, pinned: Option<&str>, now: DateTime<Utc>) -> Result<Option<Launch>> {
        let Ok(scanned) = scan_slots(&self.paths) else {
            return Ok(None);
        };
        // Credential copies left by a killed write: the locked path removes them.
        if !self.leftover_temporaries().is_empty() {
            return Ok(None);
        }
        let Loaded::Ok(st) = State::load(&self.paths.state) else {
            return Ok(None);
        };
        // The slots on disk must be the ones the state knows, with the same kinds.
        let same_slots = scanned.len() == st.accounts.len()
            && scanned.iter().all(|(n, kinds)| {
                st.accounts.get(n).is_some_and(|a| match kinds.as_slice() {
                    [k] => a.kind == Some(*k),
                    _ => a.status == Status::Invalid,
                })
            });
        if !same_slots {
            return Ok(None);
        }
        let target = match pinned {
            Some(spec) => match st.find(spec) {
                Some(n) if st.eligible(n, now) => n,
                Some(_) => return Ok(None),
                None => return Err(Error::NoSuchSlot(spec.to_string())),
            },
            None => match st.desired(self.config.strategy, now) {
                Some(n) if n == st.current_index => n,
                _ => return Ok(None),
            },
        };
        let Some(account) = st.accounts.get(&target) else {
            return Ok(None);
        };
        let Ok(live) = LiveFile::read(&self.paths.live_creds) else {
            return Ok(None);
        };
        match account.kind {
            Some(Kind::OAuth) => {
                // Steady state: live file == what we installed == the slot file. The slot file
                // is read too, so a file replaced by hand (a new login) gets installed.
                let installed = account.installed_digest.as_deref();
                let live_ok = matches!(&live, LiveFile::Regular { bytes, .. }
                    if st.live_slot == Some(target) && installed == Some(digest(bytes).as_str()));
                let slot_ok = live_ok
                    && read_slot(&self.paths.oauth_slot(target))
                        .is_ok_and(|b| installed == Some(digest(&b).as_str()));
                if !slot_ok {
                    return Ok(None);
                }
                Ok(Some(Launch {
                    slot: target,
                    label: account.shown_label(),
                    kind: Kind::OAuth,
                    env: Vec::new(),
                    api: None,
                }))
            }
            Some(Kind::ApiKey) => {
                if matches!(live, LiveFile::Symlink { .. }) {
                    return Ok(None);
                }
                let api = match &self.paths.pool {
                    Some(pool) => match pool.slots.get(&target) {
                        // A changed key (another identity) goes through reconcile first.
                        Some(slot)
                            if account.installed_digest.as_deref()
                                == Some(slot.identity().as_str()) =>
                        {
                            slot.api.clone()
                        }
                        _ => return Ok(None),
                    },
                    None => {
                        let Ok(bytes) = read_slot(&self.paths.api_key_slot(target)) else {
                            return Ok(None);
                        };
                        let Ok(api) = check_api_key(&bytes) else {
                            return Ok(None);
                        };
                        api
                    }
                };
                Ok(Some(api_launch(target, account, api)))
            }
            None => Ok(None),
        }
    }

    /// One warning line per run when a credential file (or `accounts/`) is readable by others.
    /// The home directory itself is left to `doctor`: qwen creates it 0755, and a warning on
    /// every run for qwen's own default would be noise on every caller's stderr.
    fn warn_wide_modes(&self, scanned: &Scan) {
        let mut wide: Vec<PathBuf> = Vec::new();
        if fs::metadata(&self.paths.accounts).is_ok_and(|m| too_open(m.mode())) {
            wide.push(self.paths.accounts.clone());
        }
        let mut files = vec![self.paths.live_creds.clone()];
        for (n, kinds) in scanned {
            files.extend(kinds.iter().map(|k| slot_path(&self.paths, *n, *k)));
        }
        for f in files {
            if fs::symlink_metadata(&f).is_ok_and(|m| m.is_file() && too_open(m.mode())) {
                wide.push(f);
            }
        }
        if let Some(first) = wide.first() {
            let more = match wide.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            crate::warn(format!(
                "{}{more} can be read by other users; run `qwen --rotation-doctor --fix` (files 0600, directories 0700)",
                first.display()
            ));
        }
    }

    /// The rotation step (DESIGN.md), compare-and-swap on `failed`.
    pub fn report(&self, failed: usize, hit: &Hit) -> Result<Rotation> {
        crate::error::guarded(|| self.report_unguarded(failed, hit))
    }

    fn report_unguarded(&self, failed: usize, hit: &Hit) -> Result<Rotation> {
        // Lock-free answer for the N-1 losers of a compare-and-swap: another process already
        // moved to a usable slot and marked `failed` at least this strongly, so the locked step
        // would change nothing. (A state read is a whole file: every write is a rename.)
        let now = Utc::now();
        if let Loaded::Ok(st) = State::load(&self.paths.state)
            && st.current_index != failed
            && st.eligible(st.current_index, now)
        {
            let mut probe = st.clone();
            let c = &self.config;
            // An OAuth auth report that lost the race marks nothing (`Tx::doubtful`).
            let doubtful = hit.class == Class::Auth
                && st.accounts.get(&failed).and_then(|a| a.kind) == Some(Kind::OAuth);
            if doubtful
                || !probe.mark(
                    failed,
                    hit.class,
                    hit.reset_at,
                    "",
                    now,
                    c.quota_cooldown,
                    c.throttle_cooldown,
                )
            {
                return Ok(Rotation::AlreadyRotated {
                    to: st.current_index,
                });
            }
        }
        self.transact("rotate", |tx| tx.rotate(failed, hit))
    }

    /// An attempt on `slot` succeeded: a `needs_login` mark on it is lifted (the credentials
    /// work again). Writes only on that change. Only the current slot is touched: a success
    /// reported for a slot the vault has since moved away from is older news than the mark
    /// that moved it (a run that started before another process saw the quota run out). An
    /// unexpired cooldown is never cleared by a success for the same reason; expired ones
    /// read as healthy without a write.
    pub fn record_success(&self, slot: usize) -> Result<()> {
        let now = Utc::now();
        let needs_change = |st: &State| {
            st.current_index == slot
                && st
                    .accounts
                    .get(&slot)
                    .is_some_and(|a| a.status_at(now) == Status::NeedsLogin)
        };
        if let Loaded::Ok(st) = State::load(&self.paths.state)
            && !needs_change(&st)
        {
            return Ok(());
        }
        self.transact("success", |tx| {
            if !needs_change(&tx.st) {
                return Ok(());
            }
            tx.clear_status(slot, "auto: a run succeeded");
            Ok(())
        })
    }

    /// Err(Usage) when the pool is declared in the environment: its accounts are changed there.
    pub fn files_pool(&self, what: &str) -> Result<()> {
        match &self.paths.pool {
            None => Ok(()),
            Some(_) => Err(Error::Usage(format!(
                "the accounts come from {} and QWEN_ROTATION_KEY_N, so there is nothing to {what} here; change those variables instead (or unset them to use the slot files)",
                crate::env_pool::KEYS
            ))),
        }
    }

    /// Slots that could take a run now.
    pub fn eligible_count(&self) -> usize {
        let now = Utc::now();
        match State::load(&self.paths.state) {
            Loaded::Ok(st) => st.eligible_count(now),
            _ => scan_slots(&self.paths).map(|s| s.len()).unwrap_or(0),
        }
    }

    // -- read-only views ------------------------------------------------------------------

    /// Everything a status or doctor view needs, without taking the lock or writing.
    pub fn overview(&self) -> Result<Overview> {
        let now = Utc::now();
        let slots = inspect_all(&self.paths)?;
        let live = LiveFile::read(&self.paths.live_creds)
            .map_err(|e| Error::io("read", &self.paths.live_creds, e))?;
        let (mut state, state_problem) = match State::load(&self.paths.state) {
            Loaded::Ok(st) => (st, None),
            Loaded::Missing => (State::default(), None),
            Loaded::Corrupt(p) => (State::default(), Some(p)),
        };
        let live_owner = live
            .bytes()
            .and_then(|b| owner_of(b, &slots, state.live_slot));
        let mut ignored = Vec::new();
        reconcile(
            &mut state,
            &slots,
            now,
            self.config.strategy,
            live_owner,
            &mut ignored,
            false,
        );
        Ok(Overview {
            state,
            state_problem,
            slots,
            live,
            live_owner,
            now,
        })
    }

    // -- management -----------------------------------------------------------------------

    /// `--rotation-switch N|LABEL`: make that slot the live one. A cooldown or needs_login
    /// on it is cleared (the person asked for it); a disabled or invalid slot is refused.
    pub fn switch(&self, spec: &str) -> Result<Switch> {
        self.transact("switch", |tx| {
            let to = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            let from = tx.st.current_index;
            let account = tx.st.accounts.get(&to).cloned().unwrap_or_default();
            if !account.enabled {
                return Err(Error::Other(format!(
                    "{} is disabled; enable it first: qwen --rotation-enable {to}",
                    account.describe(to)
                )));
            }
            if let Some(problem) = tx.infos.get(&to).and_then(|i| i.problem.clone()) {
                return Err(Error::Invalid {
                    path: tx.slot_file(to),
                    problem,
                });
            }
            tx.clear_status(to, "qwen --rotation-switch");
            if from == to {
                tx.install(to)?;
            } else {
                tx.switch_to(from, to, "manual", "qwen --rotation-switch", None)?;
            }
            Ok(Switch { from, to })
        })
    }

    /// `--rotation-next`: move to the next eligible slot in order. `Ok(None)`: none.
    pub fn next(&self) -> Result<Option<Switch>> {
        self.transact("next", |tx| {
            let from = tx.st.current_index;
            let to = tx.switch_auto(
                from,
                from,
                "manual",
                "qwen --rotation-next",
                None,
                Strategy::RoundRobin,
            )?;
            Ok(to.map(|to| Switch { from, to }))
        })
    }

    /// `--rotation-add`: store OAuth credentials (`bytes`, read from `source`) as a new slot.
    /// Refuses content that is not valid credentials and a refresh token already stored.
    /// When `source` is the live file, that file now belongs to the new slot.
    pub fn add_oauth(&self, bytes: &[u8], source: &Path, label: Option<&str>) -> Result<usize> {
        self.files_pool("add")?;
        let rt = check_oauth(bytes).map_err(|p| Error::Invalid {
            path: source.to_path_buf(),
            problem: p.to_string(),
        })?;
        make_private(&self.paths.home)?;
        make_private(&self.paths.accounts)?;
        self.transact("add", |tx| {
            if let Some((n, _)) = tx.infos.iter().find(|(_, i)| i.refresh.as_ref() == Some(&rt)) {
                let who = tx.st.accounts.get(n).map_or_else(|| format!("account {n}"), |a| a.describe(*n));
                return Err(Error::Other(format!(
                    "these credentials are already stored as {who}; log in to another account first (qwen --rotation-add --login)"
                )));
            }
            tx.check_label_free(label, None)?;
            let n = tx.next_slot_number();
            let path = tx.vault.paths.oauth_slot(n);
            write_atomic(&path, bytes)?;
            tx.point("slot_written");
            let mut account = Account::new(Kind::OAuth);
            account.label = label.map(str::to_string);
            account.installed_digest = Some(digest(bytes));
            tx.st.accounts.insert(n, account);
            tx.infos.insert(n, inspect_slot(&tx.vault.paths, n, &[Kind::OAuth]));
            if source == tx.vault.paths.live_creds {
                tx.st.live_slot = Some(n);
                tx.live = Some(Live::Owned(n));
            }
            tx.added(n, Kind::OAuth, label);
            Ok(n)
        })
    }

    /// `--rotation-add --api-key`: store an API-key slot. Refuses a key already stored.
    pub fn add_api_key(&self, slot: &ApiKeySlot, label: Option<&str>) -> Result<usize> {
        self.files_pool("add")?;
        valid_api_key(slot.key.expose())
            .map_err(|p| Error::Usage(format!("{p}; give the key on stdin or at the prompt")))?;
        make_private(&self.paths.home)?;
        make_private(&self.paths.accounts)?;
        self.transact("add", |tx| {
            if let Some((n, _)) = tx
                .infos
                .iter()
                .find(|(_, i)| i.api.as_ref().is_some_and(|a| a.key == slot.key))
            {
                let who = tx
                    .st
                    .accounts
                    .get(n)
                    .map_or_else(|| format!("account {n}"), |a| a.describe(*n));
                return Err(Error::Other(format!(
                    "this key is already stored as {who}; nothing added"
                )));
            }
            tx.check_label_free(label, None)?;
            let n = tx.next_slot_number();
            write_atomic(&tx.vault.paths.api_key_slot(n), slot.to_json().as_bytes())?;
            tx.point("slot_written");
            let mut account = Account::new(Kind::ApiKey);
            account.label = label.map(str::to_string);
            tx.st.accounts.insert(n, account);
            tx.infos
                .insert(n, inspect_slot(&tx.vault.paths, n, &[Kind::ApiKey]));
            tx.added(n, Kind::ApiKey, label);
            Ok(n)
        })
    }

    /// `--rotation-remove N`: moves the slot file to `accounts/removed/` (a mistaken remove
    /// is undone by moving it back). Removing the live slot first syncs its live credentials
    /// back and then switches to the next slot. Returns where the file went.
    pub fn remove(&self, spec: &str) -> Result<PathBuf> {
        self.files_pool("remove")?;
        self.transact("remove", |tx| {
            let n = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            if tx
                .infos
                .get(&n)
                .is_some_and(|i| i.kind == Some(Kind::OAuth))
                && tx.st.live_slot == Some(n)
            {
                tx.sync_live()?;
            }
            let removed_dir = tx.vault.paths.accounts.join("removed");
            ensure_dir(&removed_dir)?;
            let mut moved = None;
            for kind in [Kind::OAuth, Kind::ApiKey] {
                let from = slot_path(&tx.vault.paths, n, kind);
                if fs::symlink_metadata(&from).is_err() {
                    continue;
                }
                let name = from
                    .file_name()
                    .and_then(|f| f.to_str())
                    .unwrap_or("slot.json");
                // rename(2) replaces an existing target: the name must be new, or a slot number
                // reused and removed again would destroy the first removed login.
                let to = unused_name(&removed_dir, name, "");
                fs::rename(&from, &to).map_err(|e| Error::io("move", &from, e))?;
                moved = Some(to);
            }
            fsync_dir(&tx.vault.paths.accounts)
                .map_err(|e| Error::io("sync", &tx.vault.paths.accounts, e))?;
            tx.point("slot_moved");
            let label = tx.st.accounts.get(&n).and_then(|a| a.label.clone());
            tx.st.accounts.remove(&n);
            tx.infos.remove(&n);
            tx.st.total_accounts = tx.st.accounts.len();
            if tx.st.live_slot == Some(n) {
                tx.st.live_slot = None;
                // The live file still holds the removed account; it is kept in removed/.
                tx.live = Some(Live::Removed);
            }
            tx.dirty = true;
            tx.log(
                Event::new(events::SLOT_REMOVED, tx.now)
                    .slot(n)
                    .label(label.as_deref())
                    .trigger("qwen --rotation-remove"),
            );
            if tx.st.current_index == n {
                tx.move_off(n, "removed", "qwen --rotation-remove")?;
            }
            moved.ok_or_else(|| Error::NoSuchSlot(spec.to_string()))
        })
    }

    /// `--rotation-enable N` / `--rotation-disable N`. Disabling the live slot moves to the
    /// next one; enabling a slot when none is live makes it live.
    pub fn set_enabled(&self, spec: &str, enabled: bool) -> Result<bool> {
        let op = if enabled { "enable" } else { "disable" };
        self.transact(op, |tx| {
            let n = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            let trigger = format!("qwen --rotation-{op}");
            let changed = tx.st.accounts.get(&n).is_some_and(|a| a.enabled != enabled);
            if changed {
                if let Some(a) = tx.st.accounts.get_mut(&n) {
                    a.enabled = enabled;
                }
                tx.dirty = true;
                let name = if enabled {
                    events::ENABLED
                } else {
                    events::DISABLED
                };
                tx.log(Event::new(name, tx.now).slot(n).trigger(trigger.clone()));
            }
            let current = tx.st.current_index;
            if !enabled && current == n {
                tx.move_off(n, "disabled", &trigger)?;
            } else if enabled
                && tx.st.accounts.get(&current).is_none_or(|a| !a.enabled)
                && tx.st.eligible(n, tx.now)
            {
                tx.switch_to(current, n, "enabled", &trigger, None)?;
            }
            Ok(changed)
        })
    }

    /// `--rotation-reset [N|all]`: clears cooldowns and needs_login. Returns the slots reset.
    pub fn reset(&self, spec: Option<&str>) -> Result<Vec<usize>> {
        self.transact("reset", |tx| {
            let targets: Vec<usize> = match spec {
                None => tx.st.slots().collect(),
                Some(s) if s.eq_ignore_ascii_case("all") => tx.st.slots().collect(),
                Some(s) => vec![
                    tx.st
                        .find(s)
                        .ok_or_else(|| Error::NoSuchSlot(s.to_string()))?,
                ],
            };
            let mut done = Vec::new();
            for n in targets {
                if tx.clear_status(n, "qwen --rotation-reset") {
                    done.push(n);
                }
            }
            // A live slot that was spent may be usable again; nothing to install here: the
            // next run's prepare installs what the strategy picks.
            Ok(done)
        })
    }

    /// `--rotation-label N LABEL` (an empty label removes it).
    pub fn set_label(&self, spec: &str, label: Option<&str>) -> Result<()> {
        self.transact("label", |tx| {
            let n = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            tx.check_label_free(label, Some(n))?;
            if let Some(a) = tx.st.accounts.get_mut(&n) {
                a.label = label.map(str::to_string);
            }
            tx.dirty = true;
            tx.log(
                Event::new(events::LABEL, tx.now)
                    .slot(n)
                    .label(label)
                    .trigger("qwen --rotation-label"),
            );
            Ok(())
        })
    }

    /// `doctor --fix`: rebuild a corrupt state, migrate a symlinked live file, reinstall a
    /// missing or invalid live file of the current OAuth slot. Returns what was done.
    pub fn repair(&self) -> Result<Vec<String>> {
        self.transact("doctor", |tx| {
            let mut done = Vec::new();
            let current = tx.st.current_index;
            let oauth_current = tx
                .infos
                .get(&current)
                .is_some_and(|i| i.kind == Some(Kind::OAuth) && i.problem.is_none());
            let live_before = LiveFile::read(&tx.vault.paths.live_creds)
                .map_err(|e| Error::io("read", &tx.vault.paths.live_creds, e))?;
            if tx.any_oauth() || matches!(live_before, LiveFile::Symlink { .. }) {
                tx.sync_live()?;
                if matches!(live_before, LiveFile::Symlink { .. }) {
                    done.push(
                        "replaced the symlinked oauth_creds.json with a regular file".to_string(),
                    );
                }
            }
            if oauth_current
                && tx.st.eligible(current, tx.now)
                && !matches!(tx.live, Some(Live::Owned(n)) if n == current)
            {
                tx.install(current)?;
                done.push(format!(
                    "installed account {current} as the live oauth_creds.json"
                ));
            }
            Ok(done)
        })
    }

    /// Runs `f` as one locked transaction (see the module invariants).
    fn transact<T>(&self, op: &'static str, f: impl FnOnce(&mut Tx) -> Result<T>) -> Result<T> {
        let lock = RotationLock::acquire(&self.paths.lock, self.config.lock_timeout)?;
        point(op, "locked");
        let now = Utc::now();
        let mut events = Vec::new();
        let swept = self.sweep_temporaries();
        if swept > 0 {
            events.push(Event::new(events::TEMP_REMOVED, now).reason(format!(
                "removed {swept} leftover temporary file(s) of an interrupted write"
            )));
        }
        // A state.yaml we cannot read (a directory in its place, another user's 0600 file) is
        // not corrupt text: a rebuild would replace what we could not even look at, and its
        // write would fail anyway. The transaction fails; the caller warns once.
        if let Err(e) = readable_file(&self.paths.state)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(Error::io("read", &self.paths.state, e));
        }
        let (mut st, mut dirty) = self.load_locked(now, &mut events);
        let infos = inspect_all(&self.paths)?;
        // A state without a valid current slot (new or rebuilt): prefer the account whose
        // credentials are live, so a rebuild does not swap the person's login.
        let live_hint = if st.accounts.contains_key(&st.current_index) {
            None
        } else {
            LiveFile::read(&self.paths.live_creds)
                .ok()
                .and_then(|l| l.bytes().and_then(|b| owner_of(b, &infos, st.live_slot)))
        };
        dirty |= reconcile(
            &mut st,
            &infos,
            now,
            self.config.strategy,
            live_hint,
            &mut events,
            true,
        );
        let mut tx = Tx {
            vault: self,
            op,
            st,
            now,
            infos,
            events,
            dirty,
            qlock: None,
            live: None,
            home_unsynced: false,
        };
        let result = f(&mut tx);
        // qwen's lock covers only the live file: release it before our own bookkeeping.
        drop(tx.qlock.take());
        let Tx {
            st,
            events,
            dirty,
            home_unsynced,
            ..
        } = tx;
        let saved = if dirty {
            replace_file(&self.paths.state, st.to_yaml().as_bytes())
        } else {
            Ok(())
        };
        // One directory fsync makes both renames in the home (live file, state.yaml) durable.
        // An environment pool may keep state.yaml elsewhere (its live file is never written).
        let state_dir = self.paths.state.parent().unwrap_or(&self.paths.home);
        if dirty || home_unsynced {
            fsync_dir(state_dir).map_err(|e| Error::io("sync", state_dir, e))?;
        }
        if home_unsynced && state_dir != self.paths.home {
            fsync_dir(&self.paths.home).map_err(|e| Error::io("sync", &self.paths.home, e))?;
        }
        saved?;
        if dirty {
            point(op, "state_written");
        }
        if !events.is_empty()
            && let Err(e) = audit::rotate_if_large(&self.paths.log, audit::MAX_LOG_BYTES)
        {
            crate::warn(format!(
                "cannot rotate {}: {}",
                self.paths.log.display(),
                io_reason(&e)
            ));
        }
        if let Err(e) = audit::append(&self.paths.log, &events) {
            crate::warn(format!(
                "cannot append to {}: {}",
                self.paths.log.display(),
                io_reason(&e)
            ));
        }
        point(op, "logged");
        drop(lock);
        result
    }

    /// The directories our temporaries are written in, all guarded by `rotation.lock`: its own
    /// directory (the home, or an environment pool's state dir) and, for the slot files,
    /// `accounts/` and `accounts/backup/`.
    fn temp_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.paths
                .lock
                .parent()
                .unwrap_or(&self.paths.home)
                .to_path_buf(),
        ];
        if self.paths.pool.is_none() {
            dirs.push(self.paths.accounts.clone());
            dirs.push(self.paths.accounts.join("backup"));
        }
        dirs
    }

    /// Our temporaries left in `temp_dirs` (see `is_temp_name`).
    fn leftover_temporaries(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in self.temp_dirs() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            found.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(is_temp_name))
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path()),
            );
        }
        found
    }

    /// Removes the temporaries a process killed in the middle of a write left behind (each a
    /// full 0600 credential copy). Call only under `rotation.lock`: every temporary is written
    /// under it, so while we hold it none of them is in use, whatever its age.
    fn sweep_temporaries(&self) -> usize {
        self.leftover_temporaries()
            .into_iter()
            .filter(|p| fs::remove_file(p).is_ok())
            .count()
    }

    /// Reads state.yaml under the lock. Corrupt: keep a `.corrupt` copy, warn, start empty
    /// (reconcile then rebuilds it from `accounts/`). The bool says "must be written".
    fn load_locked(&self, now: DateTime<Utc>, events: &mut Vec<Event>) -> (State, bool) {
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
fn keep_corrupt(state: &Path, copy: &Path) -> bool {
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

fn api_launch(n: usize, account: &Account, api: ApiKeySlot) -> Launch {
    let env = api.env();
    let target = api.base_url.clone().map(|base_url| ApiTarget {
        base_url,
        key: api.key.clone(),
        model: api.model.clone(),
        env_key: api.env_key.clone(),
    });
    Launch {
        slot: n,
        label: account.shown_label(),
        kind: Kind::ApiKey,
        env,
        api: target,
    }
}

/// Test-only crash points, named `<operation>.<step>` (see the report in `fault.rs`).
fn point(op: &str, step: &str) {
    if cfg!(feature = "fault-injection") {
        crate::fault::point(&format!("{op}.{step}"));
    }
}

/// Brings `st` in line with the slot files: adds slots found on disk, drops slots whose files
/// are gone (with a warning), marks unreadable ones invalid (and valid ones no longer
/// invalid), clears passed cooldowns and makes sure `current_index` names a slot. Returns
/// whether anything changed. `loud`: print the warnings (not for read-only views).
fn reconcile(
    st: &mut State,
    infos: &BTreeMap<usize, SlotInfo>,
    now: DateTime<Utc>,
    strategy: Strategy,
    live_owner: Option<usize>,
    events: &mut Vec<Event>,
    loud: bool,
) -> bool {
    let before = st.clone();
    let gone: Vec<usize> = st.slots().filter(|n| !infos.contains_key(n)).collect();
    let env_pool = infos.values().any(|i| env_source(i).is_some());
    for n in gone {
        if loud && env_pool {
            crate::warn(format!(
                "account {n} is in state.yaml but no key variable declares it any more; dropped it"
            ));
        } else if loud {
            crate::warn(format!(
                "account {n} is in state.yaml but its file is gone from accounts/; dropped it"
            ));
        }
        st.accounts.remove(&n);
        events.push(
            Event::new(events::SLOT_REMOVED, now)
                .warn()
                .slot(n)
                .reason("file missing")
                .trigger("scan"),
        );
    }
    for (n, info) in infos {
        let a = st.accounts.entry(*n).or_insert_with(|| {
            events.push(
                Event::new(events::SLOT_ADDED, now)
                    .slot(*n)
                    .kind(info.kind.map_or("unknown", Kind::as_str))
                    .trigger("scan"),
            );
            Account::default()
        });
        a.kind = info.kind;
        if let Some(source) = env_source(info)
            && a.installed_digest != info.digest
        {
            // An environment slot is known by its variable and key fingerprint: another key
            // under the same number is another account, which starts with a clean slate.
            if a.installed_digest.is_some() {
                *a = Account {
                    label: a.label.take(),
                    enabled: a.enabled,
                    ..Account::new(Kind::ApiKey)
                };
                a.last_reset = Some(now);
                a.last_reason = Some(format!("the key in {source} changed"));
                events.push(
                    Event::new(events::RESET, now)
                        .slot(*n)
                        .reason(format!("the key in {source} changed"))
                        .trigger("scan"),
                );
            }
            a.installed_digest = info.digest.clone();
        }
        match (&info.problem, a.status) {
            (Some(problem), s)
                if s != Status::Invalid || a.last_reason.as_deref() != Some(problem.as_str()) =>
            {
                a.status = Status::Invalid;
                a.cooldown_until = None;
                a.last_reason = Some(problem.clone());
                events.push(
                    Event::new(events::INVALID, now)
                        .warn()
                        .slot(*n)
                        .reason(problem.clone())
                        .trigger("scan"),
                );
            }
            (None, Status::NeedsLogin)
                if info.kind == Some(Kind::OAuth)
                    && a.installed_digest.is_some()
                    && info.digest != a.installed_digest =>
            {
                // The person put a new login into the slot file.
                a.status = Status::Healthy;
                a.last_reset = Some(now);
                a.last_reason = Some("new credentials in the slot file".into());
                events.push(
                    Event::new(events::RESET, now)
                        .slot(*n)
                        .reason("new credentials in the slot file")
                        .trigger("scan"),
                );
            }
            (None, Status::Invalid) => {
                a.status = Status::Healthy;
                a.last_reset = Some(now);
                a.last_reason = Some("file valid again".into());
                events.push(
                    Event::new(events::RESET, now)
                        .slot(*n)
                        .reason("file valid again")
                        .trigger("scan"),
                );
            }
            _ => {}
        }
    }
    st.clear_expired(now);
    st.total_accounts = st.accounts.len();
    if st
        .live_slot
        .is_some_and(|n| infos.get(&n).is_none_or(|i| i.kind != Some(Kind::OAuth)))
    {
        st.live_slot = None;
    }
    let current_ok = st
        .accounts
        .get(&st.current_index)
        .is_some_and(|a| a.enabled);
    let any_enabled = st.accounts.values().any(|a| a.enabled);
    if !st.accounts.contains_key(&st.current_index) || (!current_ok && any_enabled) {
        // Prefer the account whose credentials are live (a rebuilt state), then the strategy.
        st.current_index = live_owner
            .filter(|n| st.eligible(*n, now))
            .or_else(|| st.select(strategy, 0, None, now))
            .or_else(|| st.accounts.iter().find(|(_, a)| a.enabled).map(|(n, _)| *n))
            .or_else(|| st.slots().next())
            .unwrap_or(0);
    }
    *st != before
}

/// The live file as a transaction has settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
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

/// One locked transaction.
struct Tx<'v> {
    vault: &'v Vault,
    op: &'static str,
    st: State,
    now: DateTime<Utc>,
    infos: BTreeMap<usize, SlotInfo>,
    events: Vec<Event>,
    dirty: bool,
    qlock: Option<QwenLock>,
    /// Set by `sync_live` (once per transaction) and kept current by `install`.
    live: Option<Live>,
    /// A file in the qwen home was renamed and the directory not yet fsynced.
    home_unsynced: bool,
}

impl Tx<'_> {
    fn point(&self, step: &str) {
        point(self.op, step);
    }

    fn log(&mut self, e: Event) {
        self.events.push(e);
    }

    fn any_oauth(&self) -> bool {
        self.infos.values().any(|i| i.kind == Some(Kind::OAuth))
    }

    fn kind(&self, n: usize) -> Option<Kind> {
        self.infos.get(&n).and_then(|i| i.kind)
    }

    fn slot_file(&self, n: usize) -> PathBuf {
        slot_path(&self.vault.paths, n, self.kind(n).unwrap_or(Kind::OAuth))
    }

    fn next_slot_number(&self) -> usize {
        self.infos
            .keys()
            .chain(self.st.accounts.keys())
            .max()
            .map_or(1, |m| m + 1)
    }

    fn check_label_free(&self, label: Option<&str>, except: Option<usize>) -> Result<()> {
        let Some(label) = label else { return Ok(()) };
        match self.st.find(label) {
            Some(n) if Some(n) != except => Err(Error::Usage(format!(
                "the label `{label}` is already used by account {n}; choose another label"
            ))),
            _ => Ok(()),
        }
    }

    fn added(&mut self, n: usize, kind: Kind, label: Option<&str>) {
        self.st.total_accounts = self.st.accounts.len();
        self.dirty = true;
        self.log(
            Event::new(events::SLOT_ADDED, self.now)
                .slot(n)
                .kind(kind.as_str())
                .label(label)
                .trigger("qwen --rotation-add"),
        );
        // The first slot (or the first enabled one) becomes the live account.
        let current = self.st.current_index;
        if self.st.accounts.get(&current).is_none_or(|a| !a.enabled) || current == n {
            self.st.current_index = n;
            if current != n && self.st.accounts.contains_key(&current) {
                self.st.record_switch(n, self.now);
                self.log(
                    Event::new(events::ACCOUNT_SWITCH, self.now)
                        .from(current)
                        .to(n)
                        .reason("added")
                        .trigger("qwen --rotation-add"),
                );
            }
        }
    }

    /// Clears a cooldown or needs_login on `n` (not invalid: only a valid file clears that).
    fn clear_status(&mut self, n: usize, trigger: &str) -> bool {
        let now = self.now;
        let Some(a) = self.st.accounts.get_mut(&n) else {
            return false;
        };
        if !matches!(a.status, Status::CoolingDown | Status::NeedsLogin) {
            return false;
        }
        let was = a.status;
        a.status = Status::Healthy;
        a.cooldown_until = None;
        a.last_reset = Some(now);
        self.dirty = true;
        self.log(
            Event::new(events::RESET, now)
                .slot(n)
                .reason(format!("was {}", was.as_str()))
                .trigger(trigger),
        );
        true
    }

    fn qwen_lock(&mut self) -> Result<()> {
        if self.qlock.is_none() {
            self.qlock = Some(QwenLock::acquire(
                &self.vault.paths.qwen_lock,
                self.vault.config.lock_timeout,
            )?);
            self.point("qwen_locked");
        }
        Ok(())
    }

    /// Settles the live file (once per transaction, under qwen's lock): migrates a symlink
    /// to a regular file, and syncs changed, valid content back into the slot it belongs to.
    fn sync_live(&mut self) -> Result<Live> {
        if let Some(live) = self.live {
            return Ok(live);
        }
        self.qwen_lock()?;
        let paths = &self.vault.paths;
        let file = LiveFile::read(&paths.live_creds)
            .map_err(|e| Error::io("read", &paths.live_creds, e))?;
        let was_symlink = matches!(file, LiveFile::Symlink { .. });
        let Some(bytes) = file.bytes().map(<[u8]>::to_vec) else {
            let live = if matches!(file, LiveFile::Other) {
                Live::Invalid
            } else {
                Live::Missing
            };
            self.live = Some(live);
            return Ok(live);
        };
        let d = digest(&bytes);
        let known = self.st.live_slot.filter(|n| {
            self.st
                .accounts
                .get(n)
                .is_some_and(|a| a.installed_digest.as_deref() == Some(d.as_str()))
                && self.infos.get(n).is_some_and(|i| i.problem.is_none())
        });
        let live = if let Some(n) = known {
            Live::Owned(n)
        } else if check_oauth(&bytes).is_err() {
            Live::Invalid
        } else {
            // Same bytes or same refresh token as a slot; else (the refresh token rotated) the
            // slot we installed last, if it is a valid OAuth slot.
            let by_content = owner_of(&bytes, &self.infos, self.st.live_slot);
            let lineage_unknown = by_content.is_none();
            // The fallback needs the slot file unchanged since we installed it: a file the
            // person replaced meanwhile (a new login) is newer than anything in the live file.
            let owner = by_content.or_else(|| {
                self.st.live_slot.filter(|n| {
                    let installed = self
                        .st
                        .accounts
                        .get(n)
                        .and_then(|a| a.installed_digest.clone());
                    self.infos.get(n).is_some_and(|i| {
                        i.kind == Some(Kind::OAuth) && i.problem.is_none() && i.digest == installed
                    })
                })
            });
            match owner {
                None => Live::Foreign,
                Some(n) => {
                    let same =
                        self.infos.get(&n).and_then(|i| i.digest.as_deref()) == Some(d.as_str());
                    if !same {
                        let slot = paths.oauth_slot(n);
                        if lineage_unknown {
                            // Probably qwen saved a refresh with a new refresh token; keep the
                            // previous slot content in case it was a different login.
                            self.backup(&slot, &format!("oauth_creds_{n}"))?;
                        }
                        write_atomic(&slot, &bytes)?;
                        self.point("synced_back");
                        if let Some(info) = self.infos.get_mut(&n) {
                            info.digest = Some(d.clone());
                            info.refresh = check_oauth(&bytes).ok();
                        }
                        self.log(Event::new(events::SYNC_BACK, self.now).slot(n).reason(
                            if lineage_unknown {
                                "refreshed credentials (new refresh token)"
                            } else {
                                "refreshed credentials"
                            },
                        ));
                    }
                    if let Some(a) = self.st.accounts.get_mut(&n) {
                        a.installed_digest = Some(d.clone());
                    }
                    self.st.live_slot = Some(n);
                    self.dirty = true;
                    Live::Owned(n)
                }
            }
        };
        if was_symlink {
            // Replace the link itself with a regular file of the same content; the slot file
            // it pointed to is untouched.
            replace_file(&paths.live_creds, &bytes)?;
            self.home_unsynced = true;
            self.point("migrated");
            self.log(
                Event::new(events::MIGRATED_SYMLINK, self.now)
                    .reason("oauth_creds.json was a symlink"),
            );
        }
        self.live = Some(live);
        Ok(live)
    }

    /// Keeps a copy of `path` in `accounts/backup/` (pruned to the newest few).
    fn backup(&mut self, path: &Path, stem: &str) -> Result<()> {
        let Ok(bytes) = read_bounded(path) else {
            return Ok(());
        };
        let dir = self.vault.paths.accounts.join("backup");
        ensure_dir(&dir)?;
        let path = unused_name(&dir, stem, ".json");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_atomic(&path, &bytes)?;
        self.point("backup_written");
        self.log(Event::new(events::BACKUP, self.now).reason(format!(
            "kept the previous content as accounts/backup/{name}"
        )));
        if let Ok(entries) = fs::read_dir(&dir) {
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            names.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
            let excess = names.len().saturating_sub(MAX_BACKUPS);
            for old in names.into_iter().take(excess) {
                let _ = fs::remove_file(old);
            }
        }
        Ok(())
    }

    /// Makes `n` the slot whose credentials a run gets. OAuth: writes its file as the live
    /// file (after the live content is synced back or kept). API key: nothing on disk.
    fn install(&mut self, n: usize) -> Result<()> {
        let info = self
            .infos
            .get(&n)
            .cloned()
            .ok_or_else(|| Error::NoSuchSlot(n.to_string()))?;
        if let Some(problem) = info.problem {
            return Err(Error::Invalid {
                path: info.path,
                problem,
            });
        }
        if info.kind != Some(Kind::OAuth) {
            return Ok(());
        }
        let live = self.sync_live()?;
        let installed = self
            .st
            .accounts
            .get(&n)
            .and_then(|a| a.installed_digest.clone());
        if live == Live::Owned(n) && self.st.live_slot == Some(n) && info.digest == installed {
            return Ok(());
        }
        let bytes = read_slot(&info.path).map_err(|e| Error::io("read", &info.path, e))?;
        if let Err(problem) = check_oauth(&bytes) {
            return Err(Error::Invalid {
                path: info.path,
                problem: problem.into(),
            });
        }
        if matches!(live, Live::Foreign | Live::Invalid) {
            // Not a slot's content: keep it before it is replaced (a login made by hand, or a
            // file we cannot judge), so installing an account never destroys anything.
            let paths = &self.vault.paths;
            let live_path = paths.live_creds.clone();
            let backups = paths.accounts.join("backup");
            if fs::metadata(&live_path).is_ok_and(|m| m.len() > 0) {
                self.backup(&live_path, "oauth_creds.live")?;
                if live == Live::Foreign {
                    crate::warn(format!(
                        "{} held a login that is not one of your accounts; kept it in {} (add it with qwen --rotation-add)",
                        live_path.display(),
                        backups.display()
                    ));
                }
            }
        }
        replace_file(&self.vault.paths.live_creds, &bytes)?;
        self.home_unsynced = true;
        self.point("live_written");
        if let Some(a) = self.st.accounts.get_mut(&n) {
            a.installed_digest = Some(digest(&bytes));
        }
        self.st.live_slot = Some(n);
        self.live = Some(Live::Owned(n));
        self.dirty = true;
        Ok(())
    }

    /// Installs `to` and records the switch: the only place `switches_total` grows, always
    /// together with one `account_switch` line.
    fn switch_to(
        &mut self,
        from: usize,
        to: usize,
        reason: &str,
        trigger: &str,
        hit: Option<&Hit>,
    ) -> Result<()> {
        self.install(to)?;
        self.st.record_switch(to, self.now);
        self.dirty = true;
        let mut e = Event::new(events::ACCOUNT_SWITCH, self.now)
            .from(from)
            .to(to)
            .reason(reason)
            .trigger(trigger);
        if let Some(hit) = hit {
            e = e.hit(hit);
        }
        self.log(e);
        Ok(())
    }

    /// Switches to the next eligible slot after `after` (never `exclude`), skipping slots whose
    /// file turns out unusable at install time (they are marked invalid). `Ok(None)`: none.
    fn switch_auto(
        &mut self,
        from: usize,
        after: usize,
        reason: &str,
        trigger: &str,
        hit: Option<&Hit>,
        strategy: Strategy,
    ) -> Result<Option<usize>> {
        loop {
            let Some(to) = self.st.select(strategy, after, Some(from), self.now) else {
                return Ok(None);
            };
            match self.switch_to(from, to, reason, trigger, hit) {
                Ok(()) => return Ok(Some(to)),
                Err(Error::Invalid { problem, .. }) => self.mark_invalid(to, &problem),
                Err(e) => return Err(e),
            }
        }
    }

    fn mark_invalid(&mut self, n: usize, problem: &str) {
        if let Some(a) = self.st.accounts.get_mut(&n) {
            a.status = Status::Invalid;
            a.last_reason = Some(problem.to_string());
        }
        if let Some(i) = self.infos.get_mut(&n) {
            i.problem = Some(problem.to_string());
        }
        self.dirty = true;
        self.log(
            Event::new(events::INVALID, self.now)
                .warn()
                .slot(n)
                .reason(problem.to_string()),
        );
    }

    /// After `n` stopped being usable (disabled, removed): move `current_index` to the next
    /// eligible slot, else the next enabled one, else nowhere.
    fn move_off(&mut self, n: usize, reason: &str, trigger: &str) -> Result<()> {
        if self
            .switch_auto(n, n, reason, trigger, None, Strategy::RoundRobin)?
            .is_some()
        {
            return Ok(());
        }
        let fallback = {
            let later = self
                .st
                .accounts
                .range(n + 1..)
                .chain(self.st.accounts.range(..n));
            later.filter(|(_, a)| a.enabled).map(|(k, _)| *k).next()
        };
        match fallback {
            // Cooling down: it becomes current without being installed; prepare installs it
            // (or the next one) when it is usable again.
            Some(to) => {
                self.st.record_switch(to, self.now);
                self.dirty = true;
                self.log(
                    Event::new(events::ACCOUNT_SWITCH, self.now)
                        .from(n)
                        .to(to)
                        .reason(reason)
                        .trigger(trigger),
                );
            }
            None if !self.st.accounts.contains_key(&n) => {
                let first = self.st.slots().next().unwrap_or(0);
                self.st.current_index = first;
                self.dirty = true;
            }
            None => {}
        }
        Ok(())
    }

    /// `prepare`'s slow path.
    fn prepare(&mut self, pinned: Option<&str>) -> Result<Launch> {
        let symlinked = fs::symlink_metadata(&self.vault.paths.live_creds)
            .is_ok_and(|m| m.file_type().is_symlink());
        if self.any_oauth() || symlinked {
            self.sync_live()?;
        }
        let now = self.now;
        let target = match pinned {
            Some(spec) => {
                let n = self
                    .st
                    .find(spec)
                    .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
                let a = self.st.accounts.get(&n).cloned().unwrap_or_default();
                if !a.eligible(now) {
                    let why = if !a.enabled {
                        "disabled".to_string()
                    } else {
                        a.status_at(now).human().to_string()
                    };
                    crate::warn(format!(
                        "{} (from --rotation-account) is {why}",
                        a.describe(n)
                    ));
                    let earliest = (a.status_at(now) == Status::CoolingDown && a.enabled)
                        .then_some(a.cooldown_until)
                        .flatten();
                    return Err(Error::Exhausted { earliest });
                }
                if let Err(e) = self.install(n) {
                    if let Error::Invalid { problem, .. } = &e {
                        self.mark_invalid(n, problem);
                    }
                    return Err(e);
                }
                n
            }
            None => loop {
                let current = self.st.current_index;
                match self.st.desired(self.vault.config.strategy, now) {
                    None => {
                        return Err(Error::Exhausted {
                            earliest: self.st.earliest_return(now),
                        });
                    }
                    Some(n) if n == current => match self.install(n) {
                        Ok(()) => break n,
                        Err(Error::Invalid { problem, .. }) => self.mark_invalid(n, &problem),
                        Err(e) => return Err(e),
                    },
                    Some(n) => {
                        let reason = match self.st.accounts.get(&current) {
                            Some(a) if !a.enabled => "disabled".to_string(),
                            Some(a) if a.status_at(now) != Status::Healthy => {
                                a.status_at(now).as_str().to_string()
                            }
                            _ => "fill_first".to_string(),
                        };
                        match self.switch_to(current, n, &reason, "auto", None) {
                            Ok(()) => break n,
                            Err(Error::Invalid { problem, .. }) => self.mark_invalid(n, &problem),
                            Err(e) => return Err(e),
                        }
                    }
                }
            },
        };
        let account = self.st.accounts.get(&target).cloned().unwrap_or_default();
        match self.kind(target) {
            Some(Kind::ApiKey) => {
                let api = self
                    .infos
                    .get(&target)
                    .and_then(|i| i.api.clone())
                    .ok_or_else(|| Error::Invalid {
                        path: self.slot_file(target),
                        problem: "not a valid API-key slot".into(),
                    })?;
                Ok(api_launch(target, &account, api))
            }
            _ => Ok(Launch {
                slot: target,
                label: account.shown_label(),
                kind: Kind::OAuth,
                env: Vec::new(),
                api: None,
            }),
        }
    }

    /// The rotation step, after the lock and the state read (DESIGN.md steps 2–6).
    fn rotate(&mut self, failed: usize, hit: &Hit) -> Result<Rotation> {
        let now = self.now;
        let strategy = self.vault.config.strategy;
        let reason_text = format!("{}: {}", audit::class_name(hit.class), hit.phrase);
        let current = self.st.current_index;
        // 2. Compare-and-swap: someone already moved on; only make sure `failed` is marked.
        if current != failed {
            if !self.doubtful(failed, hit) {
                self.mark(failed, hit, &reason_text);
            }
            return Ok(if self.st.eligible(current, now) {
                Rotation::AlreadyRotated { to: current }
            } else {
                match self.st.desired(strategy, now) {
                    Some(to) => Rotation::AlreadyRotated { to },
                    None => Rotation::Exhausted {
                        earliest: self.st.earliest_return(now),
                    },
                }
            });
        }
        if !self.st.accounts.contains_key(&failed) {
            return Err(Error::NoSuchSlot(failed.to_string()));
        }
        // 3. Sync-back of the live file into the failed OAuth slot; a missing or unusable
        //    live file of that slot means qwen dropped the login: needs_login.
        let mut marked = false;
        if self.kind(failed) == Some(Kind::OAuth) {
            let owned_before = self.st.live_slot == Some(failed);
            let live = self.sync_live()?;
            if owned_before && matches!(live, Live::Missing | Live::Invalid) {
                let why = if live == Live::Missing {
                    "the live credentials were deleted (refresh failed)"
                } else {
                    "the live credentials are unusable"
                };
                let auth = Hit {
                    class: Class::Auth,
                    phrase: hit.phrase.clone(),
                    reset_at: None,
                };
                self.mark(failed, &auth, why);
                marked = true;
            }
        }
        // 4. Mark the failed slot.
        if !marked && self.mark(failed, hit, &reason_text) {
            marked = true;
        }
        // 5–6. Pick and install the next slot.
        let reason = match hit.class {
            Class::Quota => "quota_exhausted",
            Class::Throttle => "throttled",
            Class::Auth => "auth_failed",
        };
        match self.switch_auto(failed, failed, reason, "auto", Some(hit), strategy)? {
            Some(to) => Ok(Rotation::Switched { from: failed, to }),
            None => {
                let earliest = self.st.earliest_return(now);
                if marked {
                    self.log(
                        Event::new(events::EXHAUSTED, now)
                            .warn()
                            .from(failed)
                            .until(earliest)
                            .hit(hit)
                            .trigger("auto"),
                    );
                }
                Ok(Rotation::Exhausted { earliest })
            }
        }
    }

    /// An auth failure reported on an OAuth slot after another process moved the live file
    /// away from it proves nothing about that slot: qwen reads `oauth_creds.json` when it
    /// starts, and a run launched on `failed` may have started after the swap and failed on
    /// the account installed since. needs_login is permanent (only a person or a successful
    /// run clears it), so it waits for a failure seen while `failed` is live. Cooldowns expire
    /// by themselves and an API key is in the child's own environment: those are marked.
    fn doubtful(&self, failed: usize, hit: &Hit) -> bool {
        hit.class == Class::Auth
            && self.kind(failed) == Some(Kind::OAuth)
            && self.st.current_index != failed
    }

    /// Marks slot `n` for `hit` (cooldown or needs_login) and logs it; false when that changed
    /// nothing (already marked at least as strongly).
    fn mark(&mut self, n: usize, hit: &Hit, reason: &str) -> bool {
        let cfg = &self.vault.config;
        let (quota_cd, throttle_cd) = (cfg.quota_cooldown, cfg.throttle_cooldown);
        let changed = self.st.mark(
            n,
            hit.class,
            hit.reset_at,
            reason,
            self.now,
            quota_cd,
            throttle_cd,
        );
        if changed {
            self.dirty = true;
            self.log_mark(n, hit);
        }
        changed
    }

    fn log_mark(&mut self, n: usize, hit: &Hit) {
        let a = self.st.accounts.get(&n);
        let until = a.and_then(|a| a.cooldown_until);
        let name = match a.map(|a| a.status) {
            Some(Status::NeedsLogin) => events::NEEDS_LOGIN,
            _ => events::COOLDOWN,
        };
        let e = Event::new(name, self.now)
            .slot(n)
            .hit(hit)
            .until(until)
            .trigger("auto");
        self.log(if name == events::NEEDS_LOGIN {
            e.warn()
        } else {
            e
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(tok: &str) -> String {
        format!(
            "{{\"access_token\":\"{tok}\",\"refresh_token\":\"refresh-{tok}\",\"token_type\":\"Bearer\",\"resource_url\":\"http://127.0.0.1:1\",\"expiry_date\":4102444800000}}"
        )
    }

    #[test]
    fn slot_names_parse_strictly() {
        assert_eq!(
            parse_slot_name("oauth_creds_3.json"),
            Some((3, Kind::OAuth))
        );
        assert_eq!(parse_slot_name("api_key_12.json"), Some((12, Kind::ApiKey)));
        for bad in [
            "oauth_creds_.json",
            "oauth_creds_0.json",
            "oauth_creds_03.json",
            "oauth_creds_1.json.bak",
            "oauth_creds_x.json",
            ".qwen-rotation-abc",
            "api_key_-1.json",
        ] {
            assert_eq!(parse_slot_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn oauth_content_is_validated_without_quoting_it() {
        assert!(check_oauth(creds("tokA").as_bytes()).is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("{", "JSON"),
            ("[1]", "object"),
            ("{\"access_token\":\"x\"}", "refresh_token"),
            (
                "{\"access_token\":\"x\",\"refresh_token\":\"\"}",
                "refresh_token",
            ),
            ("{\"refresh_token\":\"secret-xyz\"}", "access_token"),
        ] {
            let err = check_oauth(bad.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("secret-xyz"));
        }
    }

    #[test]
    fn api_key_slots_round_trip_and_give_env() {
        let slot = ApiKeySlot {
            key: Secret::new("sk-test-123"),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            model: None,
            env_key: "BAILIAN_CODING_PLAN_API_KEY".into(),
        };
        let back = check_api_key(slot.to_json().as_bytes()).unwrap();
        assert_eq!(back, slot);
        let env = back.env();
        assert_eq!(env[0].0, "BAILIAN_CODING_PLAN_API_KEY");
        assert_eq!(env[0].1.expose(), "sk-test-123");
        assert_eq!(env[1].0, "OPENAI_BASE_URL");
        assert_eq!(env.len(), 2);
        assert!(!format!("{back:?}").contains("sk-test-123"));
        let minimal = check_api_key(br#"{"api_key":"k1"}"#).unwrap();
        assert_eq!(minimal.env_key, DEFAULT_ENV_KEY);
        assert!(check_api_key(br#"{"api_key":"has space"}"#).is_err());
        assert!(check_api_key(br#"{"api_key":"k","env_key":"1BAD"}"#).is_err());
    }

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("tok_very_secret");
        assert_eq!(format!("{s}"), "<redacted>");
        assert!(!format!("{s:?}").contains("very"));
        let live = LiveFile::Regular {
            bytes: b"tok_very_secret".to_vec(),
            mode: 0o600,
        };
        assert!(!format!("{live:?}").contains("116"), "{live:?}");
        let info = SlotInfo {
            kind: Some(Kind::OAuth),
            path: PathBuf::from("x"),
            problem: None,
            digest: None,
            refresh: Some(s.clone()),
            api: Some(ApiKeySlot {
                key: s,
                base_url: None,
                model: None,
                env_key: "K".into(),
            }),
            mode: 0o600,
            foreign_owner: false,
        };
        assert!(!format!("{info:?}").contains("very"));
    }
}
