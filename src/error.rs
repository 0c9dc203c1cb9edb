//! Failures of the shim itself, with the message a user sees and the exit code that goes with it.
//!
//! The real qwen exiting non-zero is *not* an error: that is an `Outcome` (see `pipes`). `Error`
//! is only for the rotation layer breaking. Messages never carry a secret: variants hold paths,
//! slot numbers and reasons, never file contents.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::text::printable;

/// Exit codes of the shim itself (README, "Exit codes").
pub mod exit {
    /// Generic management failure.
    pub const FAILURE: i32 = 1;
    /// Bad `--rotation-*` usage.
    pub const USAGE: i32 = 2;
    /// Every account is exhausted (EX_TEMPFAIL).
    pub const EXHAUSTED: i32 = 75;
    /// The real qwen was found but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// No real qwen was found (or `QWEN_ROTATION_REAL` names the shim itself).
    pub const NOT_FOUND: i32 = 127;
}

#[derive(Debug)]
pub enum Error {
    /// Bad `--rotation-*` usage; the message names the problem and the fix.
    Usage(String),
    /// No real qwen on PATH (or at `QWEN_ROTATION_REAL`).
    RealNotFound {
        searched: Vec<PathBuf>,
        override_path: Option<PathBuf>,
    },
    /// `QWEN_ROTATION_REAL` names the shim itself (a link or a copy of it), not the real qwen.
    RealIsShim { path: PathBuf },
    /// The real qwen exists but exec failed.
    RealNotExecutable { path: PathBuf, source: io::Error },
    /// Reading or writing a file of ours failed.
    Io {
        action: Cow<'static, str>,
        path: PathBuf,
        source: io::Error,
    },
    /// A file of ours exists but cannot be understood.
    Invalid { path: PathBuf, problem: String },
    /// `rotation.lock` could not be taken in time.
    LockTimeout { path: PathBuf, seconds: u64 },
    /// A slot number or label that does not exist.
    NoSuchSlot(String),
    /// Every account is cooling down, disabled or needs login.
    Exhausted {
        earliest: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Anything else, already phrased for the user.
    Other(String),
    /// A bug: code of ours panicked inside [`guarded`]; `at` is the source location.
    Internal { at: String },
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::io_worded(action.into(), path, source)
    }

    /// [`Error::io`] with an action worded at run time (one that names the CLI).
    pub fn io_worded(
        action: Cow<'static, str>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::RealNotFound { .. } | Error::RealIsShim { .. } => exit::NOT_FOUND,
            Error::RealNotExecutable { .. } => exit::NOT_EXECUTABLE,
            Error::Exhausted { .. } => exit::EXHAUSTED,
            _ => exit::FAILURE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The real CLI, its npm package and our variable for its path: the active profile's.
        let profile = crate::profile::active();
        let (name, real, npm) = (profile.name, profile.pool_vars.real, profile.npm_package);
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::RealNotFound {
                searched,
                override_path: Some(p),
            } => {
                let _ = searched;
                write!(
                    f,
                    "{real}={} is not a file; point it at the real {name} or unset it",
                    p.display()
                )
            }
            Error::RealNotFound {
                searched,
                override_path: None,
            } => {
                let dirs: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
                write!(
                    f,
                    "the real {name} was not found on PATH (searched: {}); install it with \
                     `npm install -g {npm}` or set {real}=/path/to/{name}",
                    if dirs.is_empty() {
                        "PATH is empty".to_string()
                    } else {
                        dirs.join(":")
                    }
                )
            }
            Error::RealIsShim { path } => write!(
                f,
                "{real}={} is this qwen-rotation shim (or a copy of it), not the real {name}; \
                 point it at the real {name}'s own file or unset it",
                path.display()
            ),
            Error::RealNotExecutable { path, source } => write!(
                f,
                "cannot run the real {name} at {}: {source}; fix its permissions (chmod +x) or set {real}",
                path.display()
            ),
            Error::Io {
                action,
                path,
                source,
            } => {
                write!(f, "cannot {action} {}: {source}", path.display())?;
                match source.kind() {
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                        write!(f, "; free some space on that disk")
                    }
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => write!(
                        f,
                        "; check its owner and permissions with {name} --rotation-doctor"
                    ),
                    io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => {
                        write!(f, "; move what is in its place out of the way")
                    }
                    _ => Ok(()),
                }
            }
            Error::Invalid { path, problem } => write!(f, "{}: {problem}", path.display()),
            Error::Internal { at } => write!(
                f,
                "internal error at {at} (a bug in qwen-rotation; please report it with `{name} --rotation-version`)"
            ),
            Error::LockTimeout { path, seconds } => write!(
                f,
                "{} is held by another process for more than {seconds}s; see `{name} --rotation-doctor`",
                path.display()
            ),
            Error::NoSuchSlot(which) => write!(
                f,
                "no account {}; list them with `{name} --rotation-status`",
                printable(which)
            ),
            Error::Exhausted { earliest: Some(t) } => write!(
                f,
                "all accounts exhausted; the first one returns at {} (in {}); `{name} --rotation-status` shows each",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                crate::text::human_duration(*t - chrono::Utc::now())
            ),
            Error::Exhausted { earliest: None } => write!(
                f,
                "all accounts exhausted or disabled; `{name} --rotation-status` shows each, \
                 `{name} --rotation-reset all` clears cooldowns"
            ),
            Error::Other(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes one message of ours to stderr, prefixed `qwen-rotation: ` so the user knows who spoke.
///
/// Every line the shim writes to stderr goes through here (or [`say_raw`]). The write may fail
/// and is then dropped: a caller whose stderr is a closed pipe gets EPIPE (Rust ignores SIGPIPE,
/// so write(2) returns the error instead of killing us), and `eprintln!` would panic on it, in
/// the middle of a rotation, before the retry that would have answered the caller.
pub fn say(line: impl fmt::Display) {
    say_raw(format_args!("qwen-rotation: {line}"));
}

/// [`say`] without the prefix: a continuation or a blank line of a longer message.
pub fn say_raw(line: impl fmt::Display) {
    use std::io::Write;
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Runs `f`, turning a panic inside it into [`Error::Internal`], so the caller's fail-open path
/// (one warning, then qwen runs) handles a bug like any other failure. While `f` runs, the panic
/// message is not printed: it could quote data (a file's contents) and it would be a second
/// message; the location alone is kept. Locks and temporary files are released by their
/// guards as the panic unwinds.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    use std::cell::{Cell, RefCell};
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::Once;
    thread_local! {
        static GUARDED: Cell<bool> = const { Cell::new(false) };
        static PANICKED_AT: RefCell<Option<String>> = const { RefCell::new(None) };
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let at = info.location().map_or_else(
                    || "an unknown place".into(),
                    |l| format!("{}:{}", l.file(), l.line()),
                );
                PANICKED_AT.with(|p| *p.borrow_mut() = Some(at));
            } else {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.unwrap_or_else(|_| {
        let at = PANICKED_AT
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "an unknown place".into());
        Err(Error::Internal { at })
    })
}

/// Prints one warning line to stderr, prefixed so the user knows who spoke. Each distinct
/// warning is printed once per process: the shim warns once and gets out of the way.
pub fn warn(message: impl std::fmt::Display) {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static SAID: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));
    let line = message.to_string();
    let first = SAID
        .lock()
        .map(|mut said| said.insert(line.clone()))
        .unwrap_or(true);
    if first {
        say(format_args!("warning: {line}"));
    }
}
