//! The demo's children: each runs in the temporary home until it ends, its deadline passes or a
//! signal arrives; why a step failed, in one line.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::exit;
use crate::text::printable;

use super::home::{Finished, Home, Running, Stop, Waited};

/// The demo's exit codes besides 0 (rotation shown), 126 and 127 (the real CLI is not
/// executable, not found): 1 the rotation did not happen (the reason is on stderr), and
/// 128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
pub(super) const FAILED: i32 = exit::FAILURE;

/// Any other child (`--version`, `--rotation-add`, `--rotation-status`, `node --version`).
pub(super) const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// Why the demo stopped early: the exit code and one line.
pub(super) struct Fail(pub(super) i32, pub(super) String);

pub(super) type Step<T> = Result<T, Fail>;

/// Runs `program args` in the home until it ends, the deadline passes or a signal arrives.
pub(super) fn run_child(
    home: &Home,
    program: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    deadline: Duration,
    stop: &Stop,
) -> Step<Finished> {
    let mut cmd = home.command(program);
    cmd.args(args);
    run_command(cmd, program, input, deadline, stop)
}

/// Runs this binary, as the profile's CLI, with `args` in the home until it ends, the deadline
/// passes or a signal arrives.
pub(super) fn run_shim(
    home: &Home,
    me: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    stop: &Stop,
) -> Step<Finished> {
    let mut cmd = home.shim(me);
    cmd.args(args);
    run_command(cmd, me, input, STEP_DEADLINE, stop)
}

/// Runs `cmd` (from [`Home::command`]) until it ends, the deadline passes or a signal arrives.
pub(super) fn run_command(
    cmd: std::process::Command,
    program: &Path,
    input: Option<&[u8]>,
    deadline: Duration,
    stop: &Stop,
) -> Step<Finished> {
    let shown = printable(&program.to_string_lossy());
    let running = Running::spawn(cmd, input).map_err(|e| {
        Fail(
            FAILED,
            format!("cannot start {shown}: {}", crate::text::io_reason(&e)),
        )
    })?;
    let done = running.finish_with(Instant::now() + deadline, stop, || {});
    match done.waited {
        Waited::Interrupted(sig) => Err(interrupted(sig)),
        _ => Ok(done),
    }
}

pub(super) fn interrupted(sig: i32) -> Fail {
    Fail(
        128 + sig,
        "interrupted; the demo's child was stopped and its temporary home removed".into(),
    )
}

/// "exited 1", "was killed by signal 9", "did not finish within the deadline".
pub(super) fn ended(w: &Waited) -> String {
    use std::os::unix::process::ExitStatusExt;
    match w {
        Waited::Exited(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".into(),
        },
        Waited::TimedOut => "did not finish within the deadline".into(),
        Waited::Interrupted(_) => "was interrupted".into(),
    }
}

pub(super) fn ended_with(done: &Finished) -> String {
    format!(" {}{}", ended(&done.waited), last_line(&done.stderr))
}

/// `: <the last non-empty line>` of a child's stderr, printable, or nothing.
pub(super) fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| format!(": {}", printable(l)))
        .unwrap_or_default()
}
