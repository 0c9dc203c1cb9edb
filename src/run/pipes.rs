//! Headless attempts: spawn the real qwen on pipes, relay its output as it arrives, and watch it.
//!
//! Invariant: nothing the caller must not see leaves this module before the attempt's fate is
//! known, and nothing else is held back.
//! - stderr passes through line by line as it arrives; a partial line is released after 20 ms of
//!   silence. Every chunk goes through the detector *before* it is released, so qwen's error
//!   block (which is what a retry replaces) is held back from the matching line on.
//! - stdout, `text` format: relayed live. The first byte commits the attempt: a retry would
//!   repeat what the caller already has, so a committed attempt is never retried (qwen prints
//!   its quota errors before any answer, so this costs nothing in practice).
//! - stdout, held `text` (opt-in, `hold_text_output` / `--rotation-hold`, for an attempt that may
//!   be retried): held like `json` until exit, so an agentic run that printed part of its answer
//!   and then hit the quota on a later request is retried without the caller seeing the part.
//!   Held text is never classified (an answer may quote a quota phrase); stderr decides. Except
//!   for a CLI that prints its headless errors on stdout (claude, `detect.stdout_errors`): its
//!   text is held whenever a retry may follow, and the last line of a run that failed (non-zero
//!   exit) is judged by the phrases, held or shown.
//! - stdout, `json`: qwen prints one document at the end, so holding it until exit delays
//!   nothing; a quota error in json mode exits 0 with the error as the result (QWEN_FACTS §2),
//!   so the held document is what is classified.
//! - stdout, `stream-json`: lines pass live once the first line arrives that is neither the
//!   `system` init line nor an error report; until then they are held (the wait is one model
//!   round trip). A failed attempt therefore never leaves a second init line in the stream.
//! - stdout a terminal: inherited. The child writes to it directly (colours, widths exactly as
//!   without the shim); a failed json-mode attempt stays visible there.
//!
//! Stdin that is a pipe is pumped through a bounded copy (`StdinPump`) so a retry can replay
//! it; a regular file is rewound instead; a terminal is inherited.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use nix::unistd::Pid;

use super::signals::{self, Outcome};
use super::stdin::StdinSource;
use super::streams::{
    Event, StderrResult, StdoutMode, StdoutResult, relay_stderr, relay_stdout, text_error,
    write_stderr, write_stdout,
};
use crate::detect::{Patterns, classify_json_output};
use crate::model::{Class, Hit};

/// One attempt's inputs.
pub struct Attempt<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    /// Variables added to (or replacing) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    pub stdin: &'a StdinSource,
    pub stdout: StdoutMode,
    pub patterns: Arc<Patterns>,
    /// Stop the attempt as soon as a hit of one of these classes is seen on stderr (a retry
    /// will follow); other hits let qwen finish on its own.
    pub stop_on: &'a [Class],
    pub stop_grace: Duration,
    /// The CLI prints its headless errors on stdout (the profile's `detect.stdout_errors`): the
    /// last line of a failed run's text output is judged.
    pub stdout_errors: bool,
    /// Set by the signal thread when the user asked us to stop: no early stop, no retry.
    pub interrupted: &'a AtomicBool,
}

/// What an attempt left behind.
pub struct Finished {
    pub outcome: Outcome,
    pub hit: Option<Hit>,
    /// Some stdout already reached the caller.
    pub committed: bool,
    /// stdout not yet released (json, stream-json, held text): the caller gets it unless a retry
    /// follows.
    pub held_stdout: Vec<u8>,
    /// stderr held back from the matching line on: released unless a retry replaces it.
    pub held_stderr: Vec<u8>,
    /// The caller closed our stdout (e.g. `| head -1`).
    pub stdout_closed: bool,
    /// We stopped the attempt (TERM, then KILL) after a hit: its status is ours, not qwen's.
    pub stopped: bool,
}

/// Runs one attempt to its end. Err only when the child could not be started.
pub fn run(a: Attempt<'_>) -> io::Result<Finished> {
    let mut cmd = Command::new(a.program);
    cmd.args(a.args);
    crate::relay::apply_env(&mut cmd, &a.env);
    cmd.stderr(Stdio::piped());
    cmd.stdout(if a.stdout == StdoutMode::Inherit {
        Stdio::inherit()
    } else {
        Stdio::piped()
    });
    match a.stdin {
        StdinSource::Inherit | StdinSource::Unreplayable => {
            cmd.stdin(Stdio::inherit());
        }
        StdinSource::Seekable { offset } => {
            let stdin = io::stdin();
            nix::unistd::lseek(stdin.as_fd(), *offset as i64, nix::unistd::Whence::SeekSet)
                .map_err(io::Error::from)?;
            cmd.stdin(Stdio::inherit());
        }
        StdinSource::Pumped(_) => {
            cmd.stdin(Stdio::piped());
        }
    }
    // Every thread of the attempt starts before the child: when one cannot (EAGAIN from
    // clone(2) under RLIMIT_NPROC), nothing has run yet and the caller can still run qwen.
    let (tx, rx) = mpsc::channel::<Event>();
    let feed = match a.stdin {
        StdinSource::Pumped(pump) => {
            let pump = Arc::clone(pump);
            Some(Standby::spawn(move |sink| pump.feed(sink))?)
        }
        _ => None,
    };
    let relay_out = if a.stdout == StdoutMode::Inherit {
        None
    } else {
        let (tx, mode, patterns) = (tx.clone(), a.stdout, Arc::clone(&a.patterns));
        Some(Standby::spawn(move |out| {
            let hits = tx.clone();
            let on_hit = move |class| {
                let _ = hits.send(Event::Hit(class));
            };
            let r = relay_stdout(out, mode, &patterns, &on_hit);
            let _ = tx.send(Event::StdoutDone(r));
        })?)
    };
    let relay_err = {
        let (tx, patterns) = (tx.clone(), Arc::clone(&a.patterns));
        Standby::spawn(move |err| {
            let r = relay_stderr(err, patterns, &tx);
            let _ = tx.send(Event::StderrDone(r));
        })?
    };
    let waiter = {
        let tx = tx.clone();
        Standby::spawn(move |pid| {
            let _ = tx.send(Event::Exited(wait_for(pid)));
        })?
    };
    drop(tx);
    let mut child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);

    if let (Some(feed), Some(sink)) = (feed, child.stdin.take()) {
        feed.start(sink);
    }
    let mut pending = 1;
    if let (Some(relay_out), Some(out)) = (relay_out, child.stdout.take()) {
        pending += 1;
        relay_out.start(out);
    }
    if let Some(err) = child.stderr.take() {
        relay_err.start(err);
    }
    waiter.start(pid);
    // `child` is not waited through std: `wait_for` reaps it by pid.
    drop(child);

    collect(rx, pending, &a)
}

/// A thread started before the value it works on exists: it waits for [`Standby::start`], then
/// runs its job on the value; dropped unstarted, it ends without running it. This lets a run
/// start every thread it needs before it starts anything that cannot be undone.
struct Standby<T>(Sender<T>);

impl<T: Send + 'static> Standby<T> {
    fn spawn(job: impl FnOnce(T) + Send + 'static) -> io::Result<Standby<T>> {
        let (tx, rx) = mpsc::channel::<T>();
        thread::Builder::new().spawn(move || {
            if let Ok(value) = rx.recv() {
                job(value);
            }
        })?;
        Ok(Standby(tx))
    }

    fn start(self, value: T) {
        let _ = self.0.send(value);
    }
}

fn collect(rx: Receiver<Event>, mut pending: usize, a: &Attempt<'_>) -> io::Result<Finished> {
    let mut outcome = None;
    let mut out = StdoutResult {
        held: Vec::new(),
        committed: false,
        closed: false,
        tail: Vec::new(),
    };
    let mut err = StderrResult {
        held: Vec::new(),
        hit: None,
    };
    let mut stopping = false;
    // The streams end with the child; a descendant that keeps a pipe open past the child's exit
    // (a daemon started by a tool) must not keep us waiting: give the pipes a bounded drain.
    // The bound applies only while such a descendant can exist: with no process left that could
    // hold a pipe, the streams are merely late (a caller that has not read its stdout yet, or
    // relay threads a busy machine has not scheduled) and cutting them off would lose output
    // qwen already wrote.
    let drain = Duration::from_secs(2);
    while pending > 0 || outcome.is_none() {
        let event = if outcome.is_some() {
            match rx.recv_timeout(drain) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) if !children_left() => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(e) => e,
                Err(_) => break,
            }
        };
        match event {
            Event::Hit(class) => {
                if a.stop_on.contains(&class) && !stopping && !a.interrupted.load(Ordering::SeqCst)
                {
                    stopping = true;
                    signals::stop_tree(a.stop_grace);
                }
            }
            Event::Exited(o) => outcome = Some(o),
            Event::StdoutDone(r) => {
                out = r;
                pending -= 1;
            }
            Event::StderrDone(r) => {
                err = r;
                pending -= 1;
            }
        }
    }
    let outcome = outcome.unwrap_or(Outcome::Exited(1));
    let mut hit = err.hit;
    if hit.is_none() && matches!(a.stdout, StdoutMode::Json | StdoutMode::StreamJson) {
        hit = classify_json_output(&out.held, &a.patterns);
    }
    if hit.is_none()
        && a.stdout_errors
        && matches!(a.stdout, StdoutMode::Text | StdoutMode::HeldText)
        && !outcome.success()
    {
        hit = text_error(&out.tail, &a.patterns);
    }
    Ok(Finished {
        outcome,
        hit,
        committed: out.committed,
        held_stdout: out.held,
        held_stderr: err.held,
        stdout_closed: out.closed,
        stopped: stopping,
    })
}

/// Is a descendant of the attempt still running? Asked only once the attempt's own child is
/// reaped, so every child left is a descendant re-parented to us (we are the subreaper,
/// signals::become_subreaper): those that have exited are reaped here, and "none running"
/// means no process can still hold a pipe of the attempt.
fn children_left() -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // ECHILD: no child at all.
            Err(_) => return false,
        }
    }
}

/// Blocks until `pid` terminates (stops and continues are not terminations).
fn wait_for(pid: Pid) -> Outcome {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Outcome::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Outcome::Signaled(sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Outcome::Exited(1),
        }
    }
}

/// Releases what an attempt held back (when no retry replaces it).
pub fn release(f: &Finished) {
    if !f.held_stdout.is_empty() && !f.stdout_closed {
        let _ = write_stdout(&f.held_stdout);
    }
    if !f.held_stderr.is_empty() {
        let _ = write_stderr(&f.held_stderr);
    }
}

/// Is `fd` a terminal?
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}
