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
//!   Held text is never classified (an answer may quote a quota phrase); stderr decides.
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
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::Pid;

use crate::detect::{Anchor, Class, Detector, Hit, Patterns, classify_json_output};
use crate::signals::{self, Outcome};

/// How qwen's stdout is to be treated, from `--output-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutMode {
    /// Our stdout is a terminal: the child gets it directly.
    Inherit,
    Text,
    /// `text`, held until the attempt ends (bounded by `HOLD_LIMIT`).
    HeldText,
    Json,
    StreamJson,
}

impl StdoutMode {
    /// Reads `--output-format X`, `--output-format=X`, `-o X` from the child's argv (before `--`).
    pub fn from_args(args: &[OsString]) -> StdoutMode {
        let mut format = None;
        let mut it = args.iter().take_while(|a| *a != "--");
        while let Some(a) = it.next() {
            let a = a.to_string_lossy();
            if a == "--output-format" || a == "-o" {
                format = it.next().map(|v| v.to_string_lossy().into_owned());
            } else if let Some(v) = a.strip_prefix("--output-format=") {
                format = Some(v.to_string());
            }
        }
        match format.as_deref() {
            Some("json") => StdoutMode::Json,
            Some("stream-json") => StdoutMode::StreamJson,
            _ => StdoutMode::Text,
        }
    }

    /// `Text` becomes `HeldText` when `hold` is asked for; every other mode stays itself (a
    /// terminal is never held: the person reads the answer as it arrives).
    pub fn held(self, hold: bool) -> StdoutMode {
        match self {
            StdoutMode::Text if hold => StdoutMode::HeldText,
            other => other,
        }
    }
}

/// Where the child's stdin comes from.
pub enum StdinSource {
    /// A terminal or nothing worth replaying: the child inherits our stdin.
    Inherit,
    /// A regular file: rewound to `offset` before every attempt after the first.
    Seekable { offset: u64 },
    /// A pipe or socket: pumped through a bounded copy.
    Pumped(Arc<StdinPump>),
    /// A pipe or socket that could not be pumped: inherited, and never replayed.
    Unreplayable,
}

impl StdinSource {
    /// Chooses by what fd 0 is.
    pub fn detect(limit: u64) -> StdinSource {
        use nix::sys::stat::{SFlag, fstat};
        let stdin = io::stdin();
        if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return StdinSource::Inherit;
        }
        match fstat(stdin.as_fd()) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {
                match nix::unistd::lseek(stdin.as_fd(), 0, nix::unistd::Whence::SeekCur) {
                    Ok(offset) if offset >= 0 => StdinSource::Seekable {
                        offset: offset as u64,
                    },
                    _ => StdinSource::Inherit,
                }
            }
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR => {
                // /dev/null and other devices: nothing to replay, and reading them is harmless.
                StdinSource::Inherit
            }
            Ok(_) => match StdinPump::start(limit) {
                Ok(pump) => StdinSource::Pumped(pump),
                // No thread for the copy (EAGAIN): qwen reads the pipe itself, unreplayable.
                Err(e) => {
                    crate::warn(format!(
                        "cannot start a thread to keep a copy of stdin ({e}); this run will not be retried"
                    ));
                    StdinSource::Unreplayable
                }
            },
            Err(_) => StdinSource::Inherit,
        }
    }

    /// Can the input be given again to another attempt?
    pub fn replayable(&self) -> bool {
        match self {
            StdinSource::Pumped(p) => !p.overflowed(),
            StdinSource::Unreplayable => false,
            _ => true,
        }
    }
}

/// Our stdin, read once and kept (up to `limit` bytes) so every attempt can be given all of it.
pub struct StdinPump {
    state: Mutex<PumpState>,
    changed: Condvar,
    limit: usize,
}

struct PumpState {
    data: Vec<u8>,
    /// Absolute offset of `data[0]`: non-zero once the limit was passed and old bytes dropped.
    start: usize,
    /// Furthest absolute offset a writer has reached.
    consumed: usize,
    eof: bool,
    overflowed: bool,
}

impl StdinPump {
    fn start(limit: u64) -> io::Result<Arc<StdinPump>> {
        let pump = Arc::new(StdinPump {
            state: Mutex::new(PumpState {
                data: Vec::new(),
                start: 0,
                consumed: 0,
                eof: false,
                overflowed: false,
            }),
            changed: Condvar::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
        let p = Arc::clone(&pump);
        thread::Builder::new().spawn(move || p.fill()).map(|_| pump)
    }

    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PumpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self) {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let mut st = self.lock();
            if n == 0 {
                st.eof = true;
                self.changed.notify_all();
                return;
            }
            if st.data.len() + n > self.limit {
                // Past the limit the input cannot be replayed: keep only what the running
                // attempt has not read yet, so memory stays bounded by the limit.
                st.overflowed = true;
                while st.consumed < st.start + st.data.len() {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.start += st.data.len();
                st.data.clear();
            }
            st.data.extend_from_slice(&buf[..n]);
            self.changed.notify_all();
        }
    }

    /// Feeds everything (from the start) into one attempt's stdin, then closes it.
    fn feed(&self, mut sink: impl Write) {
        let mut pos = 0usize;
        loop {
            let chunk = {
                let mut st = self.lock();
                while pos == st.start + st.data.len() && !st.eof {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if pos < st.start {
                    return; // dropped after an overflow: this attempt cannot be fed in full
                }
                let from = pos - st.start;
                if from == st.data.len() {
                    return; // EOF: dropping `sink` closes the child's stdin
                }
                let to = st.data.len().min(from + 64 * 1024);
                st.data[from..to].to_vec()
            };
            if sink.write_all(&chunk).is_err() {
                return; // the child closed its stdin or died
            }
            pos += chunk.len();
            let mut st = self.lock();
            st.consumed = st.consumed.max(pos);
            self.changed.notify_all();
        }
    }
}

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

enum Event {
    Hit(Class),
    Exited(Outcome),
    StdoutDone(StdoutResult),
    StderrDone(StderrResult),
}

struct StdoutResult {
    held: Vec<u8>,
    committed: bool,
    closed: bool,
}

struct StderrResult {
    held: Vec<u8>,
    hit: Option<Hit>,
}

/// How long a partial stderr line waits for the rest of its line before it is released.
const PARTIAL_LINE_WAIT_MS: u16 = 20;
/// A partial stderr line longer than this is released without waiting for its end.
const PARTIAL_LINE_LIMIT: usize = 8 * 1024;
/// Held json or text output beyond this is released (and the attempt committed): memory stays
/// bounded. The rest then streams live, and a quota hit later in that attempt ends the run as
/// without the hold (qwen's error shown, the next run uses the next account): retrying would
/// repeat what the caller already has.
pub const HOLD_LIMIT: usize = 64 << 20;
/// Error text kept for a possible release; beyond it the block is dropped (a retry replaces it).
const HELD_STDERR_LIMIT: usize = 1 << 20;

/// Runs one attempt to its end. Err only when the child could not be started.
pub fn run(a: Attempt<'_>) -> io::Result<Finished> {
    let mut cmd = Command::new(a.program);
    cmd.args(a.args);
    for (k, v) in &a.env {
        cmd.env(k, v);
    }
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
            let r = relay_stdout(out, mode, &patterns);
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

/// Writes to our stdout; false once the reader on the other side has gone.
fn write_stdout(bytes: &[u8]) -> bool {
    let mut out = io::stdout().lock();
    out.write_all(bytes).and_then(|_| out.flush()).is_ok()
}

fn relay_stdout(mut src: impl Read, mode: StdoutMode, patterns: &Patterns) -> StdoutResult {
    let mut r = StdoutResult {
        held: Vec::new(),
        committed: false,
        closed: false,
    };
    let mut buf = vec![0u8; 64 * 1024];
    // stream-json: lines held until the gate opens.
    let mut gate_open = mode == StdoutMode::Text;
    // stream-json: held text before this offset is complete lines already judged. Only lines
    // completed by a new read are judged, so a long line arriving in many reads costs linear
    // time, not a rescan of everything held on every read.
    let mut judged = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if r.closed {
            continue;
        }
        if !gate_open {
            r.held.extend_from_slice(chunk);
            gate_open = match mode {
                StdoutMode::Json | StdoutMode::HeldText => r.held.len() > HOLD_LIMIT,
                StdoutMode::StreamJson => {
                    let completed = chunk.iter().rposition(|&b| b == b'\n');
                    let opens =
                        completed.is_some() && stream_gate_opens(&r.held[judged..], patterns);
                    if let Some(at) = completed {
                        judged = r.held.len() - n + at + 1;
                    }
                    opens || r.held.len() > HOLD_LIMIT
                }
                _ => true,
            };
            if !gate_open {
                continue;
            }
            let held = std::mem::take(&mut r.held);
            r.committed = true;
            if !write_stdout(&held) {
                // Closing our end gives the child the same EPIPE/SIGPIPE it would get without us.
                r.closed = true;
                return r;
            }
            continue;
        }
        r.committed = true;
        if !write_stdout(chunk) {
            r.closed = true;
            return r;
        }
    }
    r
}

/// stream-json: the gate opens at the first complete line that is neither the `system` init
/// line nor an error report.
fn stream_gate_opens(held: &[u8], patterns: &Patterns) -> bool {
    held.split(|&b| b == b'\n').rev().skip(1).any(|line| {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return false;
        };
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
        match kind {
            "system" | "result" => false,
            _ => patterns.classify(&String::from_utf8_lossy(line)).is_none(),
        }
    })
}

fn relay_stderr(
    mut src: impl Read + AsFd,
    patterns: Arc<Patterns>,
    tx: &Sender<Event>,
) -> StderrResult {
    let mut detector = Detector::new(patterns, Anchor::Plain);
    let mut r = StderrResult {
        held: Vec::new(),
        hit: None,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out_ok = true;
    // A hit decided on a line that is still held back: keep that line, tell the attempt.
    let decided = |hit: Hit, r: &mut StderrResult, pending: &mut Vec<u8>| {
        let _ = tx.send(Event::Hit(hit.class));
        r.hit = Some(hit);
        hold(&mut r.held, pending);
        pending.clear();
    };
    loop {
        if !pending.is_empty() && !readable_within(src.as_fd(), PARTIAL_LINE_WAIT_MS) {
            // A partial line followed by a pause: decide a phrase it holds, else show it now.
            match detector
                .hit()
                .is_some()
                .then(|| detector.finish())
                .flatten()
            {
                Some(hit) => decided(hit, &mut r, &mut pending),
                None => {
                    out_ok = out_ok && write_stderr(&pending);
                    pending.clear();
                }
            }
        }
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if r.hit.is_some() {
            hold(&mut r.held, chunk);
            continue;
        }
        if let Some(hit) = detector.feed(chunk) {
            pending.extend_from_slice(chunk);
            decided(hit, &mut r, &mut pending);
            continue;
        }
        pending.extend_from_slice(chunk);
        // Release complete lines; a partial line waits for its end, but never beyond
        // PARTIAL_LINE_LIMIT (a stream with no newlines must not grow without bound).
        let end = match pending.iter().rposition(|&b| b == b'\n') {
            Some(end) => Some(end + 1),
            None if pending.len() > PARTIAL_LINE_LIMIT => Some(pending.len()),
            None => None,
        };
        if let Some(end) = end {
            out_ok = out_ok && write_stderr(&pending[..end]);
            pending.drain(..end);
        }
    }
    if r.hit.is_none() {
        match detector.finish() {
            Some(hit) => decided(hit, &mut r, &mut pending),
            None if !pending.is_empty() => {
                let _ = out_ok && write_stderr(&pending);
            }
            None => {}
        }
    }
    r
}

fn hold(held: &mut Vec<u8>, bytes: &[u8]) {
    let room = HELD_STDERR_LIMIT.saturating_sub(held.len());
    held.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn write_stderr(bytes: &[u8]) -> bool {
    let mut err = io::stderr().lock();
    err.write_all(bytes).and_then(|_| err.flush()).is_ok()
}

/// True when `fd` has data (or EOF) within `ms` milliseconds.
fn readable_within(fd: BorrowedFd<'_>, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => n > 0,
        Err(_) => true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A reader that returns the given chunks one read at a time.
    struct Reads(VecDeque<Vec<u8>>);

    impl Read for Reads {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(c) = self.0.pop_front() else {
                return Ok(0);
            };
            buf[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        }
    }

    fn stream(chunks: &[&str]) -> StdoutResult {
        let reads = Reads(chunks.iter().map(|c| c.as_bytes().to_vec()).collect());
        relay_stdout(reads, StdoutMode::StreamJson, &Patterns::defaults())
    }

    const INIT: &str = "{\"type\":\"system\",\"subtype\":\"init\"}\n";
    const ERROR: &str = "{\"type\":\"result\",\"is_error\":true,\"result\":\"[API Error: 429 Free allocated quota exceeded.]\"}\n";

    #[test]
    fn stream_json_gate_opens_on_an_answer_line_completed_across_reads() {
        // The answer's line ends in a later read, together with the start of the next line.
        let r = stream(&[
            &INIT[..10],
            &INIT[10..],
            "{\"type\":\"assis",
            "tant\",\"message\":{}}",
            "\n{\"type\":\"res",
        ]);
        assert!(r.committed);
        assert!(r.held.is_empty());
    }

    #[test]
    fn stream_json_gate_stays_shut_for_init_and_error_lines_in_any_reads() {
        let whole = format!("{INIT}{ERROR}");
        for cut in 1..whole.len() {
            let r = stream(&[&whole[..cut], &whole[cut..]]);
            assert!(!r.committed, "cut at {cut}");
            assert_eq!(r.held, whole.as_bytes(), "cut at {cut}");
        }
    }
}
