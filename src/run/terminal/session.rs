//! The relay loop (`Session`): our stdin to the pty master, the master to our stdout and the
//! detector, signals, notices and job control, until qwen exits and its output is drained.
//!
//! Invariant: every byte flows through this one loop, in order and complete.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::signal::{self, Signal};
use nix::sys::termios::{self, LocalFlags, SpecialCharacterIndices};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Pid};

use super::controls::{Control, Controls};
use super::notice::{Escapes, notice_bytes};
use super::raw::RawMode;
use super::signals::{SignalGuard, bit, last_seen, stop_group, stop_self};
use crate::run::signals::Outcome;

/// Read buffer for the master (one pty read returns at most its 4 KiB line buffer).
pub(super) const CHUNK: usize = 64 * 1024;

/// After the child exited: a pty still held open by a stray descendant ends the drain after
/// this long without output (the child's own bytes are all readable by then; EIO is the normal end).
const DRAIN_IDLE: Duration = Duration::from_millis(250);

/// After the child exited: the drain ends after this long even if a stray descendant keeps writing.
const DRAIN_CAP: Duration = Duration::from_secs(2);

/// A notice waits at most this long for qwen to finish an escape sequence.
const NOTICE_WAIT: Duration = Duration::from_millis(300);

/// Typed bytes queued for the child beyond which we stop reading our stdin (backpressure).
const INPUT_LIMIT: usize = 64 * 1024;

/// Longest a signal waits while output floods in (see `let_pending_in`).
const SIGNAL_LATENCY: Duration = Duration::from_millis(5);

/// The relay loop's state.
pub(super) struct Session<'a> {
    pub(super) master: OwnedFd,
    pub(super) child: Pid,
    pub(super) signals: &'a SignalGuard,
    pub(super) raw: &'a RawMode,
    pub(super) controls: Controls,
    /// Bytes for the child (typed, or `Control::Input`), in order; written as the pty accepts them.
    pub(super) input: Vec<u8>,
    pub(super) stdin_open: bool,
    pub(super) master_open: bool,
    /// False once our terminal refuses output (hung up): the child's output is then discarded.
    pub(super) outer_open: bool,
    pub(super) status: Option<Outcome>,
    pub(super) exited_at: Option<Instant>,
    pub(super) last_output: Instant,
    pub(super) signals_let_in: Instant,
    pub(super) notices: VecDeque<String>,
    pub(super) notice_since: Option<Instant>,
    pub(super) escapes: Escapes,
    /// False after `on_output` panicked once: the session goes on without detection.
    pub(super) detector_ok: bool,
    pub(super) buf: Vec<u8>,
}

impl Session<'_> {
    pub(super) fn run(&mut self, on_output: &mut dyn FnMut(&[u8])) -> Outcome {
        loop {
            self.service_signals();
            self.take_controls();
            self.show_notices();
            if let Some(outcome) = self.finished() {
                return outcome;
            }
            let stdin = io::stdin();
            // A descriptor we do not want to hear from is replaced by the signal pipe with no
            // events: a hung-up fd reports POLLHUP even with no events asked for (poll(2)).
            let idle = || PollFd::new(self.signals.pipe_r.as_fd(), PollFlags::empty());
            let mut fds = [
                if self.stdin_open && self.input.len() < INPUT_LIMIT {
                    PollFd::new(stdin.as_fd(), PollFlags::POLLIN)
                } else {
                    idle()
                },
                if self.master_open {
                    let out = if self.input.is_empty() {
                        PollFlags::empty()
                    } else {
                        PollFlags::POLLOUT
                    };
                    PollFd::new(self.master.as_fd(), PollFlags::POLLIN | out)
                } else {
                    idle()
                },
                PollFd::new(self.signals.pipe_r.as_fd(), PollFlags::POLLIN),
                match &self.controls.wake {
                    Some(w) => PollFd::new(w.as_fd(), PollFlags::POLLIN),
                    None => idle(),
                },
            ];
            let timeout = self.timeout().map(TimeSpec::from_duration);
            let polled = ppoll(&mut fds, timeout, Some(self.signals.old_mask));
            let ready = |fd: &PollFd| fd.revents().unwrap_or(PollFlags::empty());
            let (stdin_ready, master_ready) = (ready(&fds[0]), ready(&fds[1]));
            let (signal_ready, wake_ready) = (ready(&fds[2]), ready(&fds[3]));
            match polled {
                // Signals wait for ppoll to block; while descriptors are ready at every call (a
                // flood of output) they are let in every few milliseconds instead.
                Ok(_) if self.signals_let_in.elapsed() >= SIGNAL_LATENCY => {
                    self.signals.let_pending_in();
                    self.signals_let_in = Instant::now();
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => return self.abandon(e),
            }
            if !signal_ready.is_empty() {
                self.signals.drain_pipe();
            }
            if master_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            {
                self.pump_output(on_output);
            }
            if !stdin_ready.is_empty() {
                self.read_stdin();
            }
            if master_ready.contains(PollFlags::POLLOUT) {
                self.flush_input();
            }
            if !wake_ready.is_empty()
                && let Some(w) = &self.controls.wake
            {
                let mut sink = [0u8; 64];
                let mut w: &UnixStream = w;
                while matches!(io::Read::read(&mut w, &mut sink), Ok(n) if n > 0) {}
            }
        }
    }

    /// The child's status, once it exited and its output is drained.
    fn finished(&self) -> Option<Outcome> {
        let status = self.status?;
        if !self.master_open {
            return Some(status);
        }
        let exited = self.exited_at?;
        let idle = self.last_output.max(exited).elapsed();
        (idle >= DRAIN_IDLE || exited.elapsed() >= DRAIN_CAP).then_some(status)
    }

    /// How long ppoll may sleep: forever, unless a drain, a deferred notice or a missing wake-up
    /// socket needs a deadline.
    fn timeout(&self) -> Option<Duration> {
        let mut t: Option<Duration> = None;
        let mut at_most = |d: Duration| t = Some(t.map_or(d, |t| t.min(d)));
        if let (Some(exited), true) = (self.exited_at, self.master_open) {
            let idle = self.last_output.max(exited).elapsed();
            at_most(DRAIN_IDLE.saturating_sub(idle));
            at_most(DRAIN_CAP.saturating_sub(exited.elapsed()));
        }
        if let Some(since) = self.notice_since {
            at_most(NOTICE_WAIT.saturating_sub(since.elapsed()));
        }
        if self.controls.wake.is_none() {
            at_most(Duration::from_millis(100));
        }
        t
    }

    /// Reads what the master has (one read(2), as script(1) does: a pty hands out at most its
    /// 4 KiB line buffer per read, and a second read would mostly return EAGAIN), shows it, then
    /// hands it on.
    fn pump_output(&mut self, on_output: &mut dyn FnMut(&[u8])) {
        let n = loop {
            match unistd::read(self.master.as_fd(), &mut self.buf) {
                Ok(0) => {
                    self.master_open = false;
                    return;
                }
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                // EIO: every holder of the slave closed it (pty(7)); anything else ends the
                // relay's reading the same way.
                Err(_) => {
                    self.master_open = false;
                    return;
                }
            }
        };
        self.last_output = Instant::now();
        let chunk = &self.buf[..n];
        self.escapes.feed(chunk);
        if self.outer_open && write_out(chunk).is_err() {
            self.outer_open = false;
        }
        if self.detector_ok {
            let chunk = &self.buf[..n];
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_output(chunk)));
            if caught.is_err() {
                // The panic hook restored the terminal and printed the message; the session goes
                // on, raw again, without detection (fail open, DESIGN.md "Non-negotiables").
                self.detector_ok = false;
                let _ = self.raw.apply();
                self.redraw();
            }
        }
    }

    /// Reads one chunk of keystrokes from our terminal and queues it for the child.
    fn read_stdin(&mut self) {
        let mut keys = [0u8; 4096];
        let stdin = io::stdin();
        let n = match unistd::read(stdin.as_fd(), &mut keys) {
            Ok(n) if n > 0 => n,
            Err(Errno::EINTR | Errno::EAGAIN) => return,
            // EIO from the background means SIGTTIN (blocked here, so the kernel says EIO
            // instead, tty(4)): stop as the kernel would have stopped us.
            Err(Errno::EIO)
                if unistd::tcgetpgrp(stdin.as_fd()).is_ok_and(|fg| fg != unistd::getpgrp()) =>
            {
                self.suspend(Signal::SIGTTIN, true, false);
                return;
            }
            // EOF: a hung-up terminal reads 0 (or EIO while the hang-up is in progress).
            _ => {
                self.stdin_open = false;
                self.send_eof();
                return;
            }
        };
        let mut keys = &keys[..n];
        while let Some(at) = self
            .suspend_key()
            .and_then(|k| keys.iter().position(|&b| b == k))
        {
            self.input.extend_from_slice(&keys[..at]);
            self.flush_input();
            // The key stops the whole foreground job, as the outer terminal would have: our
            // process group, which may hold more than the shim (`( qwen; … )` in a shell).
            self.suspend(Signal::SIGTSTP, true, true);
            keys = &keys[at + 1..];
        }
        self.input.extend_from_slice(keys);
        self.flush_input();
    }

    /// Our stdin ended: a canonical child reads EOF once (the pty's VEOF character, as
    /// pty-session in util-linux does); a raw one (qwen's TUI) gets nothing it did not type.
    fn send_eof(&mut self) {
        if let Ok(t) = termios::tcgetattr(self.master.as_fd())
            && t.local_flags.contains(LocalFlags::ICANON)
        {
            self.input
                .push(t.control_chars[SpecialCharacterIndices::VEOF as usize]);
            self.flush_input();
        }
    }

    /// The pty's suspend character, when the line discipline would turn it into a SIGTSTP that
    /// the kernel then discards: ISIG set and the child's own (orphaned) group in the foreground.
    /// A job-control shell running as the child puts its jobs in other groups: those get the byte.
    fn suspend_key(&self) -> Option<u8> {
        // On Linux termios requests on the master act on the slave (tty_ioctl(4)).
        let t = termios::tcgetattr(self.master.as_fd()).ok()?;
        let key = t.control_chars[SpecialCharacterIndices::VSUSP as usize];
        let orphaned_foreground = unistd::tcgetpgrp(self.master.as_fd()).ok() == Some(self.child);
        (t.local_flags.contains(LocalFlags::ISIG)
            && key != libc::_POSIX_VDISABLE
            && orphaned_foreground
            && self.status.is_none())
        .then_some(key)
    }

    /// Writes queued input to the master as far as the pty accepts it.
    fn flush_input(&mut self) {
        while !self.input.is_empty() && self.master_open {
            match unistd::write(self.master.as_fd(), &self.input) {
                Ok(n) => {
                    self.input.drain(..n);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => break,
            }
        }
        if !self.master_open || self.status.is_some() {
            self.input.clear();
        }
    }

    /// Acts on every signal that arrived since the last call.
    fn service_signals(&mut self) {
        let got = self.signals.take();
        let has = |s: Signal| got & bit(s) != 0;
        if has(Signal::SIGCHLD) {
            self.reap();
        }
        if has(Signal::SIGWINCH) {
            self.copy_window_size();
        }
        for s in [
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ] {
            if has(s) {
                // Forwarded to the whole group: qwen re-launches itself (a node parent and a node
                // child), and a signal to the parent alone leaves the child running (signals.rs).
                let _ = signal::killpg(self.child, s);
            }
        }
        let stop = [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU]
            .into_iter()
            .filter(|&s| has(s))
            .max_by_key(|&s| last_seen(s));
        // A SIGCONT sent after the stop request cancels it, as the kernel cancels a pending stop.
        if let Some(s) = stop
            && !(has(Signal::SIGCONT) && last_seen(Signal::SIGCONT) > last_seen(s))
        {
            self.suspend(s, true, false);
        }
        if has(Signal::SIGCONT) {
            // Continued (after our own stop, or a SIGSTOP from outside): raw again, and a redraw.
            let _ = self.raw.apply();
            self.copy_window_size();
            self.redraw();
        }
    }

    /// Collects the status of the child and reaps every other exited descendant.
    fn reap(&mut self) {
        let mut stopped = None;
        loop {
            let mut raw_status = 0;
            // SAFETY: waitpid(2) writes one int through the pointer, which lives on this frame.
            let pid =
                unsafe { libc::waitpid(-1, &mut raw_status, libc::WNOHANG | libc::WUNTRACED) };
            if pid == -1 && Errno::last() == Errno::EINTR {
                continue;
            }
            if pid <= 0 {
                break;
            }
            if pid != self.child.as_raw() {
                continue;
            }
            if libc::WIFEXITED(raw_status) {
                self.exited(Outcome::Exited(libc::WEXITSTATUS(raw_status)));
            } else if libc::WIFSIGNALED(raw_status) {
                self.exited(Outcome::Signaled(libc::WTERMSIG(raw_status)));
            } else if libc::WIFSTOPPED(raw_status) {
                stopped = Some(libc::WSTOPSIG(raw_status));
            }
        }
        // The child stopped itself (or was stopped from outside): follow it, as script(1) does,
        // so the shell regains the terminal. Our own SIGSTOP during a suspend is already undone
        // by the SIGCONT we sent on resuming, so the child no longer shows as stopped.
        if let Some(sig) = stopped
            && self.status.is_none()
            && is_stopped(self.child)
        {
            let ours = match Signal::try_from(sig) {
                Ok(s @ (Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU)) => s,
                // SIGSTOP itself: we stop with SIGTSTP, which the kernel discards when our group
                // is orphaned (no shell could continue us), instead of hanging there forever.
                _ => Signal::SIGTSTP,
            };
            self.suspend(ours, false, false);
        }
    }

    fn exited(&mut self, outcome: Outcome) {
        self.status = Some(outcome);
        self.exited_at = Some(Instant::now());
    }

    /// Gives the terminal back and stops the shim (and, unless it stopped by itself, the child);
    /// returns once continued, with the terminal raw again and the child running.
    fn suspend(&mut self, sig: Signal, stop_child: bool, whole_job: bool) {
        self.raw.restore();
        if stop_child {
            // SIGSTOP, not SIGTSTP: the child's group is orphaned, the kernel drops SIGTSTP there.
            let _ = signal::killpg(self.child, Signal::SIGSTOP);
        }
        if whole_job {
            stop_group(sig);
        } else {
            stop_self(sig);
        }
        // Continued. From the background (`bg`) this tcsetattr stops us again until `fg`.
        let _ = self.raw.apply();
        self.copy_window_size();
        let _ = signal::killpg(self.child, Signal::SIGCONT);
        // The SIGCONT that woke us is pending: its handling sends the redraw.
    }

    /// TIOCGWINSZ on our terminal, TIOCSWINSZ on the pty; the kernel sends SIGWINCH to the
    /// pty's foreground group when the size changed (tty_ioctl(4)).
    fn copy_window_size(&self) {
        if let Some(ws) = window_size(io::stdin().as_fd()) {
            // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, a live local.
            unsafe {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// SIGWINCH to the pty's foreground group even though the size did not change: a full-screen
    /// client (Ink) redraws, repairing what the shell or a panic message drew over it.
    fn redraw(&self) {
        let group = unistd::tcgetpgrp(self.master.as_fd()).unwrap_or(self.child);
        let _ = signal::killpg(group, Signal::SIGWINCH);
    }

    /// Moves every pending control message into the session.
    fn take_controls(&mut self) {
        while let Ok(c) = self.controls.rx.try_recv() {
            match c {
                Control::Notice(line) => {
                    if self.notices.is_empty() {
                        self.notice_since = Some(Instant::now());
                    }
                    self.notices.push_back(line);
                }
                Control::Input(bytes) => {
                    self.input.extend_from_slice(&bytes);
                    self.flush_input();
                }
            }
        }
    }

    /// Draws the pending notices, when qwen's output is between escape sequences (or has been
    /// stuck inside one for `NOTICE_WAIT`).
    fn show_notices(&mut self) {
        if self.notices.is_empty() || !self.outer_open {
            return;
        }
        let waited = self
            .notice_since
            .is_some_and(|t| t.elapsed() >= NOTICE_WAIT);
        if !self.escapes.at_rest() && !waited {
            return;
        }
        let ws = window_size(io::stdout().as_fd()).or_else(|| window_size(io::stdin().as_fd()));
        let (rows, cols) = ws.map_or((0, 0), |w| (w.ws_row, w.ws_col));
        let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        while let Some(line) = self.notices.pop_front() {
            if write_out(&notice_bytes(&line, rows, cols, colour)).is_err() {
                self.outer_open = false;
                break;
            }
        }
        self.notice_since = None;
    }

    /// ppoll itself failed (EINVAL, ENOMEM): no relay is possible any more. The terminal is given
    /// back, the child is hung up as a closing terminal would, and its status is awaited.
    fn abandon(&mut self, e: Errno) -> Outcome {
        self.raw.restore();
        crate::error::warn(format!(
            "the terminal relay stopped ({e}); ending {}'s session",
            crate::profile::active().name
        ));
        let _ = signal::killpg(self.child, Signal::SIGHUP);
        let _ = signal::killpg(self.child, Signal::SIGCONT);
        while self.status.is_none() {
            let mut raw_status = 0;
            // SAFETY: waitpid(2) writes one int through the pointer, which lives on this frame.
            let pid = unsafe { libc::waitpid(self.child.as_raw(), &mut raw_status, 0) };
            if pid == self.child.as_raw() {
                if libc::WIFEXITED(raw_status) {
                    self.exited(Outcome::Exited(libc::WEXITSTATUS(raw_status)));
                } else if libc::WIFSIGNALED(raw_status) {
                    self.exited(Outcome::Signaled(libc::WTERMSIG(raw_status)));
                }
            } else if Errno::last() != Errno::EINTR {
                self.exited(Outcome::Exited(1));
            }
        }
        self.status.unwrap_or(Outcome::Exited(1))
    }
}

/// Writes all of `bytes` to our stdout (fd 1, unbuffered). Our stdout may have been left
/// O_NONBLOCK by a previous program sharing the terminal: EAGAIN waits for POLLOUT.
fn write_out(mut bytes: &[u8]) -> io::Result<()> {
    let stdout = io::stdout();
    let fd = stdout.as_fd();
    while !bytes.is_empty() {
        match unistd::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// TIOCGWINSZ (tty_ioctl(4)).
pub(super) fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// Whether `pid` is in the stopped state now ('T' in /proc/PID/stat, proc(5)).
fn is_stopped(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}
