//! The shim's ways out: exec the real qwen in its place, or report its own failure and exit.
//!
//! Invariant: nothing here starts a thread or a child; `exec` replaces the process (or fails
//! with 126/127), `fail` prints once and exits with the error's code.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::Error;

/// Replaces this process with the real qwen.
pub(super) fn exec(real: &Path, args: &[OsString], env: &[(OsString, OsString)]) -> ! {
    let mut cmd = Command::new(real);
    cmd.args(args);
    // Also when rotation is off: the shared pool's URL and password are ours, never qwen's.
    for k in crate::config::pool_variables() {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let e = cmd.exec();
    fail(&spawn_error(real, e))
}

/// EAGAIN (RLIMIT_NPROC, a full pid table) or ENOMEM from fork(2) or pthread_create(3).
pub(super) fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EAGAIN | nix::libc::ENOMEM)
    )
}

pub(super) fn spawn_error(real: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::RealNotFound {
            searched: Vec::new(),
            override_path: Some(real.to_path_buf()),
        },
        _ => Error::RealNotExecutable {
            path: real.to_path_buf(),
            source: e,
        },
    }
}

/// Reports a failure of the shim itself and exits with its code.
pub fn fail(e: &Error) -> ! {
    crate::error::say(e);
    std::process::exit(e.exit_code())
}

pub(super) fn notice(line: &str) {
    crate::error::say(line);
}

/// Time until `t`, when that is within `max`.
pub(super) fn within(t: chrono::DateTime<chrono::Utc>, max: Duration) -> Option<Duration> {
    let pause = (t - chrono::Utc::now()).to_std().unwrap_or_default();
    (pause <= max).then_some(pause)
}
