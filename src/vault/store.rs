//! The pool's shared record: the `Store` trait (its lock, its state, its history) and
//! `FileStore`, the default (`state.yaml`, `rotation.lock`, `rotation.log`); `RedisStore`
//! (`redis_store.rs`) shares it between hosts.
//! Credentials never go through a store: slot files and the live file are the vault's.
//!
//! A transaction is `lock` → `load_locked` → (the vault's work) → `commit`. The one-fsync rule:
//! state.yaml is replaced without its own directory fsync, and `commit` fsyncs that directory
//! once (plus the live file's home when that is another directory), so the live file's rename
//! and the state's share one fsync. The crash tests' fault points `<op>.locked`,
//! `<op>.state_written` and `<op>.logged` mark the steps.

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::files::{self, fsync_dir, keep_owner, replace_file, write_atomic};
use crate::text::io_reason;

use super::audit::{self, Event, events};
use super::slots::read_bounded;
use super::state::{Loaded, State};

/// The shared view of one pool: `FileStore`, or `RedisStore` for a fleet. Each keeps the same
/// order of steps and the same fault points.
pub trait Store: Send + Sync {
    /// Lock-free read: a whole old or a whole new state (every write is a rename).
    fn peek(&self) -> Loaded;
    /// Can the state be opened and read? (`NotFound` when there is none yet.)
    fn readable(&self) -> io::Result<()>;
    /// Takes the pool lock within `timeout` (`LockTimeout` names the lock).
    fn lock(&self, timeout: Duration) -> Result<Locked>;
    /// Under the lock: the state. Present but unreadable → Err; corrupt → a `.corrupt` copy,
    /// one warning, a `state_rebuilt` event and an empty state. The bool: must be written.
    fn load_locked(
        &self,
        held: &Locked,
        now: DateTime<Utc>,
        events: &mut Vec<Event>,
    ) -> Result<(State, bool)>;
    /// Ends a transaction (see the module notes), then releases the lock. The events are
    /// logged whether or not the state changed. `Conflict`: a shared store changed since
    /// `load_locked` and nothing was written; the caller runs the transaction again.
    fn commit(&self, held: Locked, op: &'static str, c: Commit<'_>) -> Result<Committed>;
    /// One event outside a transaction (a run's line); the lock only to rotate the log.
    fn append(&self, event: Event, lock_timeout: Duration);
    /// The history, oldest first.
    fn history(&self, scope: Scope) -> io::Result<audit::Read>;
    /// Who holds the lock now ("pid 123 (qwen)"), for doctor.
    fn holders(&self) -> Vec<String>;
    /// The files this store keeps.
    fn files(&self) -> StoreFiles;
    /// Where the pool is kept, as status and doctor say it (`files in ~/.qwen`,
    /// `redis://host:6379/0 (default)`; never a password).
    fn shown(&self) -> String;
    /// A shared pool's health for doctor; `None` for a pool in files.
    fn fleet(&self) -> Option<FleetCheck> {
        None
    }
    /// False when the last `peek` found something only a transaction puts right (a shared pool
    /// that lacks this host's accounts, or local files behind the pool): the run's lock-free
    /// path then takes the locked one.
    fn settled(&self) -> bool {
        true
    }
    /// Is the pool shared with other hosts (so it may change without this host's lock)?
    fn shared(&self) -> bool {
        false
    }
}

/// What doctor learns from a shared pool.
#[derive(Debug, Clone, Default)]
pub struct FleetCheck {
    /// Why the pool cannot be used now (down, refused the password, bad URL).
    pub problem: Option<String>,
    /// This host's accounts the pool does not know yet ("account 2 (key:1a2b3c4d)").
    pub only_here: Vec<String>,
    /// The pool's accounts this host lacks (their identities).
    pub only_there: Vec<String>,
}

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Done,
    /// Another host changed the shared pool first: nothing was written.
    Conflict,
}

/// The pool lock, held until dropped or handed to `commit`.
pub struct Locked {
    _held: Box<dyn Any + Send>,
}

impl Locked {
    pub(super) fn new(held: impl Any + Send) -> Locked {
        Locked {
            _held: Box::new(held),
        }
    }

    /// What a store put in it.
    pub(super) fn get<T: Any>(&self) -> Option<&T> {
        self._held.downcast_ref()
    }

    pub(super) fn into_inner<T: Any>(self) -> Option<T> {
        self._held.downcast().ok().map(|b| *b)
    }
}

/// What `commit` writes.
pub struct Commit<'a> {
    /// The new state, when it changed.
    pub state: Option<&'a State>,
    pub events: &'a [Event],
    /// A directory with a rename not yet fsynced (the live file's home), synced with the state.
    pub also_sync: Option<&'a Path>,
    /// The transaction's last try: a shared store writes what it has instead of `Conflict`.
    pub last_try: bool,
}

/// Which part of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Both generations of the log (stats, log).
    All,
    /// The current generation only (doctor's count against `switches_total`).
    Current,
}

/// The files a store keeps (doctor checks their modes, status names the state).
#[derive(Debug, Clone)]
pub struct StoreFiles {
    pub state: PathBuf,
    pub log: PathBuf,
    pub lock: PathBuf,
}

/// Test-only crash points, named `<operation>.<step>` (see the report in `fault.rs`).
pub(super) fn point(op: &str, step: &str) {
    if cfg!(feature = "fault-injection") {
        crate::fault::point(&format!("{op}.{step}"));
    }
}

/// state.yaml, rotation.lock and rotation.log in one directory (the home, or an environment
/// pool's state directory).
#[derive(Debug)]
pub struct FileStore {
    files: StoreFiles,
    /// Where state.yaml lives: fsynced once per commit.
    dir: PathBuf,
    /// Named in the warning about a rebuilt state (`accounts/`).
    rebuilt_from: PathBuf,
    /// The last state `peek` parsed, with the bytes it was parsed from. A run asks several
    /// times (prepare, the attempt count, after a success): while the file holds the same
    /// bytes, one parse serves them all (reading a few KiB costs far less than parsing them).
    seen: Mutex<Option<(Vec<u8>, State)>>,
    /// How many times `peek` parsed (for the test that one parse serves a run).
    #[cfg(test)]
    parses: std::sync::atomic::AtomicUsize,
}

impl FileStore {
    pub fn new(paths: &Paths) -> FileStore {
        FileStore {
            files: StoreFiles {
                state: paths.state.clone(),
                log: paths.log.clone(),
                lock: paths.lock.clone(),
            },
            dir: paths.state.parent().unwrap_or(&paths.home).to_path_buf(),
            rebuilt_from: paths.accounts.clone(),
            seen: Mutex::new(None),
            #[cfg(test)]
            parses: Default::default(),
        }
    }
}

impl Store for FileStore {
    fn peek(&self) -> Loaded {
        let read = State::read(&self.files.state);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let (Ok(bytes), Some((then, st))) = (&read, seen.as_ref())
            && bytes == then
        {
            return Loaded::Ok(st.clone());
        }
        let bytes = read.as_ref().ok().cloned();
        #[cfg(test)]
        self.parses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let loaded = State::from_read(read);
        *seen = match (bytes, &loaded) {
            (Some(bytes), Loaded::Ok(st)) => Some((bytes, st.clone())),
            _ => None,
        };
        loaded
    }

    fn readable(&self) -> io::Result<()> {
        readable_file(&self.files.state)
    }

    fn lock(&self, timeout: Duration) -> Result<Locked> {
        let lock = RotationLock::acquire(&self.files.lock, timeout)?;
        Ok(Locked::new(lock))
    }

    fn load_locked(
        &self,
        _held: &Locked,
        now: DateTime<Utc>,
        events: &mut Vec<Event>,
    ) -> Result<(State, bool)> {
        let state = &self.files.state;
        // A state.yaml we cannot read (a directory in its place, another user's 0600 file) is
        // not corrupt text: a rebuild would replace what we could not even look at, and its
        // write would fail anyway. The transaction fails; the caller warns once.
        if let Err(e) = self.readable()
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(Error::io("read", state, e));
        }
        Ok(match State::load(state) {
            Loaded::Ok(st) => (st, false),
            Loaded::Missing => (State::default(), true),
            Loaded::Corrupt(problem) => {
                let copy = state.with_extension("yaml.corrupt");
                let kept = keep_corrupt(state, &copy);
                let where_ = if kept {
                    format!("kept a copy as {}", copy.display())
                } else {
                    "could not keep a copy".into()
                };
                crate::error::warn(format!(
                    "{} is unreadable ({problem}); {where_} and rebuilt it from {}",
                    state.display(),
                    self.rebuilt_from.display()
                ));
                events.push(
                    Event::new(events::STATE_REBUILT, now)
                        .warn()
                        .reason(problem),
                );
                (State::default(), true)
            }
        })
    }

    fn commit(&self, held: Locked, op: &'static str, c: Commit<'_>) -> Result<Committed> {
        let saved = match c.state {
            Some(st) => replace_file(&self.files.state, st.to_yaml().as_bytes()),
            None => Ok(()),
        };
        // One directory fsync makes both renames in the home (live file, state.yaml) durable.
        // An environment pool may keep state.yaml elsewhere (its live file is never written).
        if c.state.is_some() || c.also_sync.is_some() {
            fsync_dir(&self.dir).map_err(|e| Error::io("sync", &self.dir, e))?;
        }
        if let Some(other) = c.also_sync
            && other != self.dir
        {
            fsync_dir(other).map_err(|e| Error::io("sync", other, e))?;
        }
        saved?;
        if c.state.is_some() {
            point(op, "state_written");
        }
        let log = &self.files.log;
        if !c.events.is_empty()
            && let Err(e) = audit::rotate_if_large(log, audit::MAX_LOG_BYTES)
        {
            crate::error::warn(format!(
                "cannot rotate {}: {}",
                log.display(),
                io_reason(&e)
            ));
        }
        if let Err(e) = audit::append(log, c.events) {
            crate::error::warn(format!(
                "cannot append to {}: {}",
                log.display(),
                io_reason(&e)
            ));
        }
        point(op, "logged");
        drop(held);
        Ok(Committed::Done)
    }

    /// One O_APPEND write, no fsync (a lost line after a power cut costs one count in the
    /// stats, not a credential). A pool that never rotates writes only run lines: the size cap
    /// is checked here too (one stat), and the move made under the lock, as every rotation.
    fn append(&self, event: Event, lock_timeout: Duration) {
        let log = &self.files.log;
        if fs::metadata(log).is_ok_and(|m| m.len() > audit::MAX_LOG_BYTES)
            && let Ok(_lock) = RotationLock::acquire(&self.files.lock, lock_timeout)
            && let Err(e) = audit::rotate_if_large(log, audit::MAX_LOG_BYTES)
        {
            crate::error::warn(format!("cannot rotate {}: {e}", log.display()));
        }
        if let Err(e) = audit::append(log, &[event]) {
            crate::error::warn(format!("cannot append to {}: {e}", log.display()));
        }
    }

    fn history(&self, scope: Scope) -> io::Result<audit::Read> {
        match scope {
            Scope::All => audit::read_all(&self.files.log),
            Scope::Current => audit::read(&self.files.log),
        }
    }

    fn holders(&self) -> Vec<String> {
        lock_holders(&self.files.lock)
    }

    fn files(&self) -> StoreFiles {
        self.files.clone()
    }

    fn shown(&self) -> String {
        format!("files in {}", self.dir.display())
    }
}

/// Can `path` be opened and read as a file? (Without blocking: see `files`.)
fn readable_file(path: &Path) -> io::Result<()> {
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

/// Processes holding a flock on `path` (from /proc/locks), as "pid 123 (qwen)".
fn lock_holders(path: &Path) -> Vec<String> {
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    let Ok(text) = fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let ino = meta.ino().to_string();
    let mut out = Vec::new();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dev_ino) = fields.iter().find(|f| f.matches(':').count() == 2) else {
            continue;
        };
        if line.contains("->") || dev_ino.rsplit(':').next() != Some(ino.as_str()) {
            continue;
        }
        let pid = fields
            .iter()
            .position(|f| f == dev_ino)
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| fields.get(i));
        if let Some(pid) = pid {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            out.push(format!("pid {pid} ({comm})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> FileStore {
        FileStore::new(&Paths::at(dir))
    }

    fn state(current: usize) -> State {
        State {
            current_index: current,
            ..State::default()
        }
    }

    fn current(loaded: Loaded) -> usize {
        match loaded {
            Loaded::Ok(st) => st.current_index,
            other => panic!("not a state: {other:?}"),
        }
    }

    #[test]
    fn peek_sees_every_write_of_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (store(dir.path()), store(dir.path()));
        assert!(matches!(ours.peek(), Loaded::Missing));
        for n in 1..=3 {
            write_atomic(
                &dir.path().join("state.yaml"),
                state(n).to_yaml().as_bytes(),
            )
            .unwrap();
            assert_eq!(current(ours.peek()), n);
            assert_eq!(current(ours.peek()), n, "asked again, unchanged");
        }
        // A commit by another store (same files) is seen too, and so is a removal.
        let held = theirs.lock(Duration::from_secs(5)).unwrap();
        let next = state(7);
        let commit = Commit {
            state: Some(&next),
            events: &[],
            also_sync: None,
            last_try: true,
        };
        theirs.commit(held, "test", commit).unwrap();
        assert_eq!(current(ours.peek()), 7);
        fs::remove_file(dir.path().join("state.yaml")).unwrap();
        assert!(matches!(ours.peek(), Loaded::Missing));
    }

    #[test]
    fn peek_parses_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let ours = store(dir.path());
        let parses = || ours.parses.load(std::sync::atomic::Ordering::Relaxed);
        write_atomic(
            &dir.path().join("state.yaml"),
            state(1).to_yaml().as_bytes(),
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(current(ours.peek()), 1);
        }
        assert_eq!(parses(), 1, "one parse for three reads of the same bytes");
        // Same bytes in a new file (a rewrite that changed nothing): still no parse.
        write_atomic(
            &dir.path().join("state.yaml"),
            state(1).to_yaml().as_bytes(),
        )
        .unwrap();
        assert_eq!(current(ours.peek()), 1);
        assert_eq!(parses(), 1);
        write_atomic(
            &dir.path().join("state.yaml"),
            state(2).to_yaml().as_bytes(),
        )
        .unwrap();
        assert_eq!(current(ours.peek()), 2);
        assert_eq!(parses(), 2);
    }

    #[test]
    fn peek_reports_a_corrupt_state_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let ours = store(dir.path());
        write_atomic(
            &dir.path().join("state.yaml"),
            state(2).to_yaml().as_bytes(),
        )
        .unwrap();
        assert_eq!(current(ours.peek()), 2);
        write_atomic(&dir.path().join("state.yaml"), b"current_index: [").unwrap();
        assert!(matches!(ours.peek(), Loaded::Corrupt(_)));
        assert!(matches!(ours.peek(), Loaded::Corrupt(_)));
    }
}
