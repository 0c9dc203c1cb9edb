//! Interactive sessions: the real qwen on a pseudo-terminal of its own, relayed to ours, in the
//! manner of util-linux script(1).
//!
//! Invariant: the person's terminal looks exactly as it did before the shim started, whatever
//! way the session ends — qwen exits, qwen is killed, the shim receives TERM or HUP, the shim is
//! stopped from outside, or code in this process panics. Between those moments the terminal is
//! raw and every byte flows through one loop, so everything the person types reaches qwen's
//! own terminal, and everything qwen draws reaches theirs, in order and complete.
//!
//! How it is built (script(1), pty(7), termios(3), tty_ioctl(4)):
//! - `openpty` with the outer terminal's termios and window size, so qwen starts on a terminal
//!   that looks like ours. In `pre_exec` the child calls setsid(2) and TIOCSCTTY, so the pty is
//!   its controlling terminal and its process group is the pty's foreground group: Ctrl-C,
//!   Ctrl-\ and Ctrl-D typed by the person are plain bytes in our raw terminal and the *pty's*
//!   line discipline turns them into SIGINT/SIGQUIT/EOF for qwen, once.
//! - Our terminal goes raw (cfmakeraw) and is restored by a guard (`RawMode`, in `Drop`), by a
//!   panic hook before the panic message is printed, and around every stop.
//! - One thread runs the relay: ppoll(2) on our stdin, the pty master, a self-pipe written by
//!   the signal handler, and a wake-up socket written by `Controller::send`. Our handled signals
//!   are blocked everywhere except inside ppoll (and, while output floods in and ppoll never
//!   blocks, for a moment every `SIGNAL_LATENCY`); threads started from the relay thread inherit
//!   the block, so no other system call of the process sees EINTR because of them.
//! - Output: child bytes are written to our stdout first, then given to `on_output` (the
//!   detector), so detection never delays what the person sees. After the child exits the master
//!   is read until EIO: every byte qwen wrote is on the screen before the shim exits (a stray
//!   grandchild still holding the pty open ends the drain after `DRAIN_IDLE` of silence).
//! - Signals aimed at the shim (a kill(2); the raw terminal generates none): TERM, HUP, INT,
//!   QUIT, USR1 and USR2 are forwarded to the child's process group and the relay keeps running
//!   until qwen exits (its last frame is drawn), then restores and reports qwen's status. WINCH
//!   copies our window size to the pty (TIOCSWINSZ); the kernel then signals qwen.
//! - Job control. A person's Ctrl-Z is a byte for qwen, as without the shim (qwen's raw TUI
//!   reads it; it does not suspend itself). When the child's terminal is in a mode where the
//!   line discipline would turn Ctrl-Z into SIGTSTP (ISIG set, e.g. a plain shell script), the
//!   kernel would discard that signal: the child's group is orphaned (its leader's parent, the
//!   shim, is in another session; POSIX "orphaned process group", and Linux's get_signal drops
//!   TSTP/TTIN/TTOU there). So the relay does what the outer terminal would have done without
//!   the shim: it stops the child (SIGSTOP always works), restores the terminal and stops
//!   itself with SIGTSTP, so the shell shows the job as stopped. The same happens for a TSTP,
//!   TTIN or TTOU sent to the shim, and, as script(1) does, when the child stops itself (we
//!   follow it). On SIGCONT (`fg`) the terminal goes raw again, the child is continued and gets
//!   a SIGWINCH, so a full-screen client redraws. Resumed in the background (`bg`), the raw
//!   tcsetattr(3) stops the shim again with SIGTTOU until `fg`, as with any full-screen program.
//! - `Control::Notice` draws one line on the terminal's last row without moving qwen's cursor:
//!   DECSC (ESC 7), CUP to the last row, EL 2, the text (inverse video unless NO_COLOR is set),
//!   SGR 0, DECRC (ESC 8). It is written only between qwen's escape sequences (we track where
//!   qwen's output stands), so it never splits one; it does not scroll and does not change what
//!   Ink believes is on screen, and qwen's next redraw of that row replaces it. The cost: it
//!   overwrites the terminal's single saved-cursor slot (qwen does not use DECSC). `Input` bytes
//!   are queued with the person's keystrokes and written to the master as if typed.
//! - On EOF from our stdin (a hung-up terminal) the pty's EOF character (VEOF) is sent once if
//!   the child's terminal is canonical, and our stdin is no longer read.
//!
//! Only when stdin *and* stdout are terminals does run.rs come here. When only one is (`qwen |
//! less`, `qwen < prompt.txt`), the run is headless (pipes.rs): there is no screen to relay, and
//! a terminal on one side stays the child's, untouched, exactly as if the shell had started qwen.
//!
//! `run` returns Err only before the child is started (our terminal is then as it was), so the
//! caller can still exec qwen directly. One relay per process (signal handlers and the panic
//! hook are process-wide): a second concurrent `run` returns Err. `run` reaps every child of the
//! process (waitpid(-1)): the shim is a subreaper, and orphaned descendants of qwen must not stay
//! zombies. Linux only, like the rest of the shim: ppoll(2), /proc, termios on the pty master.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::libc;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Pid};

use crate::signals::Outcome;

/// After the child exited: a pty still held open by a stray descendant ends the drain after
/// this long without output (the child's own bytes are all readable by then; EIO is the normal end).
const DRAIN_IDLE: Duration = Duration::from_millis(250);
/// After the child exited: the drain ends after this long even if a stray descendant keeps writing.
const DRAIN_CAP: Duration = Duration::from_secs(2);
/// A notice waits at most this long for qwen to finish an escape sequence.
const NOTICE_WAIT: Duration = Duration::from_millis(300);
/// Typed bytes queued for the child beyond which we stop reading our stdin (backpressure).
const INPUT_LIMIT: usize = 64 * 1024;
/// Read buffer for the master (one pty read returns at most its 4 KiB line buffer).
const CHUNK: usize = 64 * 1024;
/// Longest a signal waits while output floods in (see `let_pending_in`).
const SIGNAL_LATENCY: Duration = Duration::from_millis(5);

/// Messages another thread sends into a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Show one line to the person without corrupting qwen's screen.
    Notice(String),
    /// Type these bytes into qwen (e.g. Ctrl+Y, 0x19, to retry).
    Input(Vec<u8>),
}

/// The sending side: cheap to clone, usable from any thread, wakes the relay loop.
#[derive(Clone)]
pub struct Controller {
    tx: mpsc::Sender<Control>,
    /// One byte per message wakes the relay's ppoll. A socket, not a pipe: std writes to sockets
    /// with MSG_NOSIGNAL, so a send after the session ended is EPIPE, never SIGPIPE.
    wake: Option<Arc<UnixStream>>,
}

impl Controller {
    pub fn send(&self, c: Control) {
        if self.tx.send(c).is_ok()
            && let Some(wake) = &self.wake
        {
            // WouldBlock means bytes are already waiting: the relay is woken either way.
            let _ = (&**wake).write(&[1]);
        }
    }
}

/// The receiving side, owned by the relay loop.
pub struct Controls {
    rx: mpsc::Receiver<Control>,
    wake: Option<UnixStream>,
}

pub fn controls() -> (Controller, Controls) {
    let (tx, rx) = mpsc::channel();
    // Without the socket (fd exhaustion) the relay polls the channel every 100 ms instead.
    let pair = UnixStream::pair()
        .ok()
        .filter(|(a, b)| a.set_nonblocking(true).is_ok() && b.set_nonblocking(true).is_ok());
    let (send_end, recv_end) = match pair {
        Some((a, b)) => (Some(Arc::new(a)), Some(b)),
        None => (None, None),
    };
    (
        Controller { tx, wake: send_end },
        Controls { rx, wake: recv_end },
    )
}

/// Runs `cmd` on a new pseudo-terminal relayed to our terminal (stdin and stdout are terminals)
/// until it exits. `on_output` sees every chunk of the child's output after it was written to
/// our terminal. Err only when the terminal could not be set up (the caller then runs qwen
/// directly); the child has not been started then and our terminal is as it was.
pub fn run(
    cmd: Command,
    on_output: &mut dyn FnMut(&[u8]),
    controls: Controls,
) -> io::Result<Outcome> {
    let _one = OneRelay::claim()?;
    // Declared first, dropped last: the terminal is restored while our handlers still catch a
    // late TERM, and only then do the old dispositions come back. Installed before the window
    // size is read, so a resize from then on is not lost.
    let signals = SignalGuard::install()?;
    let stdin = io::stdin();
    let outer = termios::tcgetattr(stdin.as_fd())?;
    let size = window_size(stdin.as_fd()).unwrap_or(libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(&size, &outer)?;
    for fd in [&pty.master, &pty.slave] {
        // Neither end may leak into qwen beyond its stdio: a stray copy of the slave would keep
        // the master from ever reading EIO.
        fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    let flags = OFlag::from_bits_retain(fcntl(pty.master.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        pty.master.as_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;

    let raw = RawMode::enter(outer)?;
    let child = spawn(cmd, pty.slave)?;

    let mut relay = Relay {
        master: pty.master,
        child,
        signals: &signals,
        raw: &raw,
        controls,
        input: Vec::new(),
        stdin_open: true,
        master_open: true,
        outer_open: true,
        status: None,
        exited_at: None,
        last_output: Instant::now(),
        signals_let_in: Instant::now(),
        notices: VecDeque::new(),
        notice_since: None,
        escapes: Escapes::default(),
        detector_ok: true,
        buf: vec![0; CHUNK],
    };
    let outcome = relay.run(on_output);
    let leftover: Vec<String> = relay.notices.drain(..).collect();
    drop(relay);
    drop(raw);
    drop(signals);
    // Notices that never found a quiet moment on screen become ordinary lines, after the restore.
    for line in leftover {
        let _ = writeln!(io::stdout(), "{}", sanitize(&line));
    }
    Ok(outcome)
}

/// Starts `cmd` on the pty's slave as a session leader with the pty as its controlling terminal.
fn spawn(mut cmd: Command, slave: OwnedFd) -> io::Result<Pid> {
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
    // (setsid, ioctl, sigprocmask; signal-safety(7)), allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own (setsid(2)) so that the pty can become its controlling
            // terminal; std has already put the slave on fds 0, 1 and 2.
            unistd::setsid()?;
            // TIOCSCTTY (tty_ioctl(4)): the pty is now the controlling terminal and the child's
            // group its foreground group, so the line discipline signals qwen for Ctrl-C.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The relay blocks its signals outside ppoll; qwen must start with none blocked.
            signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // `cmd` (and its copies of the slave) is dropped on return: from here on only the child's
    // side holds the slave, so the master reads EIO when qwen and its descendants are gone.
    Ok(Pid::from_raw(child.id() as i32))
}

/// The relay loop's state.
struct Relay<'a> {
    master: OwnedFd,
    child: Pid,
    signals: &'a SignalGuard,
    raw: &'a RawMode,
    controls: Controls,
    /// Bytes for the child (typed, or `Control::Input`), in order; written as the pty accepts them.
    input: Vec<u8>,
    stdin_open: bool,
    master_open: bool,
    /// False once our terminal refuses output (hung up): the child's output is then discarded.
    outer_open: bool,
    status: Option<Outcome>,
    exited_at: Option<Instant>,
    last_output: Instant,
    signals_let_in: Instant,
    notices: VecDeque<String>,
    notice_since: Option<Instant>,
    escapes: Escapes,
    /// False after `on_output` panicked once: the session goes on without detection.
    detector_ok: bool,
    buf: Vec<u8>,
}

impl Relay<'_> {
    fn run(&mut self, on_output: &mut dyn FnMut(&[u8])) -> Outcome {
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
        crate::warn(format!(
            "the terminal relay stopped ({e}); ending qwen's session"
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
fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
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

/// One notice as terminal bytes: saved cursor, last row, cleared, the text cut to the width,
/// cursor and attributes restored (DECSC/DECRC save and restore SGR too).
fn notice_bytes(line: &str, rows: u16, cols: u16, colour: bool) -> Vec<u8> {
    // One column short of the width: no autowrap, so never a scroll (terminfo "am").
    let width = usize::from(if cols == 0 { 80 } else { cols }).saturating_sub(1);
    let mut text = String::new();
    let mut used = 0;
    for c in sanitize(line).chars() {
        let w = char_width(c);
        if used + w > width {
            break;
        }
        used += w;
        text.push(c);
    }
    // CUP beyond the last row lands on the last row (ECMA-48 clamps); 999 when the size is unknown.
    let row = if rows == 0 { 999 } else { rows };
    let sgr = if colour { "0;7" } else { "0" };
    format!("\x1b7\x1b[{row};1H\x1b[2K\x1b[{sgr}m{text}\x1b[0m\x1b8").into_bytes()
}

/// Control characters would move the cursor or start a sequence: each becomes a space.
fn sanitize(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Terminal columns of `c`: 2 for East Asian wide and emoji ranges, else 1 (good enough to keep a
/// notice on one row; Unicode UAX #11, simplified).
fn char_width(c: char) -> usize {
    match u32::from(c) {
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// Where the child's output stands between two chunks: inside an escape sequence or a UTF-8
/// character, or at rest. Only at rest may a notice be inserted (ECMA-48 sequence syntax).
#[derive(Default)]
struct Escapes {
    state: EscState,
    /// Continuation bytes still expected for the last UTF-8 character.
    utf8_pending: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum EscState {
    #[default]
    Ground,
    /// After ESC.
    Escape,
    /// ESC followed by intermediate bytes (0x20..=0x2f), e.g. a charset designation.
    Intermediate,
    /// Control sequence (ESC [): parameters until a final byte 0x40..=0x7e.
    Csi,
    /// OSC, DCS, SOS, PM, APC strings: until BEL or ST (ESC \).
    Str,
}

impl Escapes {
    fn at_rest(&self) -> bool {
        self.state == EscState::Ground && self.utf8_pending == 0
    }

    fn feed(&mut self, bytes: &[u8]) {
        use EscState::*;
        const ESC: u8 = 0x1b;
        // Only what follows the last ESC decides: ESC starts a new sequence from any state (in a
        // string it is either ST's first byte or ends the string; the next byte decides both the
        // same way). `contains` is memchr, word-at-a-time: plain text costs next to nothing.
        let mut bytes = bytes;
        if bytes.contains(&ESC) {
            let last = bytes.iter().rposition(|&b| b == ESC).unwrap_or(0);
            self.state = Escape;
            self.utf8_pending = 0;
            bytes = &bytes[last + 1..];
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Ground {
                // No ESC left: the rest is text, and only its last character can be unfinished.
                self.utf8_pending = utf8_pending(self.utf8_pending, &bytes[i..]);
                return;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                // CAN and SUB abort any sequence.
                (_, 0x18 | 0x1a) => Ground,
                (Str, 0x07) => Ground,
                (Str, _) => Str,
                (Escape, b'[') => Csi,
                (Escape, b']' | b'P' | b'X' | b'^' | b'_') => Str,
                // C0 controls inside a sequence are executed without ending it.
                (s, 0x00..=0x1f) => s,
                (Escape | Intermediate, 0x20..=0x2f) => Intermediate,
                // Includes ST (ESC \) ending a string.
                (Escape | Intermediate, _) => Ground,
                (Csi, 0x40..=0x7e) => Ground,
                (Csi, _) => Csi,
                (Ground, _) => Ground,
            };
        }
    }
}

/// UTF-8 continuation bytes still missing after `bytes`, given `prev` missing before them.
fn utf8_pending(prev: usize, bytes: &[u8]) -> usize {
    let continuation = |b: u8| b & 0xc0 == 0x80;
    let mut skip = 0;
    while skip < bytes.len() && skip < prev && continuation(bytes[skip]) {
        skip += 1;
    }
    if skip == bytes.len() {
        return prev - skip;
    }
    let tail = &bytes[skip..];
    for i in (tail.len().saturating_sub(4)..tail.len()).rev() {
        if !continuation(tail[i]) {
            let need: usize = match tail[i] {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            return need.saturating_sub(tail.len() - i);
        }
    }
    0
}

// ---- our terminal: raw mode and its restoration -------------------------------------------

/// The saved terminal settings for the panic hook, with the relay's thread: a panic there
/// restores the terminal before the message is printed.
static PANIC_RESTORE: Mutex<Option<(libc::termios, ThreadId)>> = Mutex::new(None);

/// Our terminal in raw mode; `Drop` puts the saved settings back.
struct RawMode {
    saved: Termios,
    raw: Termios,
}

impl RawMode {
    fn enter(saved: Termios) -> io::Result<RawMode> {
        let mut raw = saved.clone();
        // cfmakeraw(3): no echo, no canonical input, no signals from keys, no output
        // processing (the pty's own ONLCR already turned qwen's \n into \r\n).
        termios::cfmakeraw(&mut raw);
        let mode = RawMode { saved, raw };
        install_panic_hook();
        if let Ok(mut slot) = PANIC_RESTORE.lock() {
            *slot = Some((mode.saved.clone().into(), thread::current().id()));
        }
        // On failure `mode` is dropped, which clears the hook's slot and restores (a no-op).
        mode.apply()?;
        Ok(mode)
    }

    /// Raw mode, with SIGTTOU at its default: started or resumed in the background, the shim
    /// stops here until brought to the foreground, like any full-screen program (tty(4)).
    fn apply(&self) -> io::Result<()> {
        with_default_action(Signal::SIGTTOU, || {
            termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.raw)
        })?;
        Ok(())
    }

    /// The saved settings, from any process group (SIGTTOU blocked, so even a background shim
    /// restores instead of being stopped or interrupted). TCSANOW, not TCSADRAIN: a terminal
    /// nobody reads must not hang the shim's exit.
    fn restore(&self) {
        set_terminal_blocking_ttou(&self.saved);
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
        if let Ok(mut slot) = PANIC_RESTORE.lock() {
            *slot = None;
        }
    }
}

fn set_terminal_blocking_ttou(t: &Termios) {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old));
    let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, t);
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
}

/// Wraps the current panic hook once: a panic on the relay's thread restores the terminal
/// first, so the message is readable and the terminal sane even if the process then ends.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: a panic while the slot is locked must not deadlock the hook.
            if let Ok(slot) = PANIC_RESTORE.try_lock()
                && let Some((saved, thread)) = *slot
                && thread == thread::current().id()
            {
                set_terminal_blocking_ttou(&Termios::from(saved));
            }
            previous(info)
        }));
    });
}

// ---- signals --------------------------------------------------------------------------------

/// The signals the relay handles (module header: what each does).
const HANDLED: [Signal; 12] = [
    Signal::SIGCHLD,
    Signal::SIGWINCH,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGCONT,
];

/// Write end of the self-pipe, or -1 when no relay runs.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// One bit per signal number received and not yet serviced.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Arrival order: a counter, and its value at each signal's latest arrival.
static ARRIVALS: AtomicU64 = AtomicU64::new(0);
static LAST_SEEN: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

fn bit(s: Signal) -> u64 {
    1 << (s as i32)
}

fn last_seen(s: Signal) -> u64 {
    LAST_SEEN[s as usize].load(Ordering::SeqCst)
}

/// The handler: records the signal and wakes the relay. Only atomics and write(2), both
/// async-signal-safe (signal-safety(7)); errno is preserved for the interrupted code.
extern "C" fn on_signal(sig: libc::c_int) {
    let errno = Errno::last_raw();
    if (0..64).contains(&sig) {
        PENDING.fetch_or(1u64 << sig, Ordering::SeqCst);
        if let Some(slot) = LAST_SEEN.get(sig as usize) {
            slot.store(
                ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1,
                Ordering::SeqCst,
            );
        }
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) of one byte from a live local to a non-blocking pipe; a full pipe
        // loses the byte, but the PENDING bit is already set and a wake-up is already queued.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
    Errno::set_raw(errno);
}

/// Our handlers and the block on the handled signals; `Drop` puts back what was there.
///
/// Own handlers, not signal-hook's: stopping ourselves needs SIGTSTP/TTIN/TTOU at their default
/// action for a moment and our handler back afterwards, which signal-hook cannot do.
struct SignalGuard {
    pipe_r: OwnedFd,
    _pipe_w: OwnedFd,
    /// The relay thread's mask before we blocked: ppoll waits with it.
    old_mask: SigSet,
    old_actions: Vec<(Signal, SigAction)>,
}

impl SignalGuard {
    fn install() -> io::Result<SignalGuard> {
        let (pipe_r, pipe_w) = unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        let mut old_mask = SigSet::empty();
        signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old_mask))?;
        PENDING.store(0, Ordering::SeqCst);
        WAKE_FD.store(pipe_w.as_raw_fd(), Ordering::SeqCst);
        let mut guard = SignalGuard {
            pipe_r,
            _pipe_w: pipe_w,
            old_mask,
            old_actions: Vec::new(),
        };
        // SA_RESTART for threads that were running before the relay and still accept our
        // signals; the relay thread only takes them inside ppoll, which is interrupted anyway.
        let ours = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, set);
        for s in HANDLED {
            // SAFETY: `on_signal` is async-signal-safe (see there).
            let old = unsafe { signal::sigaction(s, &ours) }?;
            guard.old_actions.push((s, old));
        }
        Ok(guard)
    }

    /// The signals received since the last call, as a bit set.
    fn take(&self) -> u64 {
        PENDING.swap(0, Ordering::SeqCst)
    }

    /// ppoll lets our signals in only when it is interrupted: a relay that always finds a
    /// descriptor ready (a flood of output) would never see them. A moment with the old mask
    /// delivers whatever is pending (pthread_sigmask(3): pending unblocked signals are delivered
    /// before the call returns).
    fn let_pending_in(&self) {
        if let Ok(blocked) = self.old_mask.thread_swap_mask(SigmaskHow::SIG_SETMASK) {
            let _ = blocked.thread_set_mask();
        }
    }

    fn drain_pipe(&self) {
        let mut sink = [0u8; 64];
        while matches!(unistd::read(self.pipe_r.as_fd(), &mut sink), Ok(n) if n > 0) {}
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (s, old) in self.old_actions.drain(..).rev() {
            // SAFETY: puts back the action that was installed before the relay started.
            unsafe {
                let _ = signal::sigaction(s, &old);
            }
        }
        WAKE_FD.store(-1, Ordering::SeqCst);
        let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}

/// Runs `f` with `sig` at its default action and unblocked on this thread, then puts our
/// handler and the block back.
fn with_default_action<R>(sig: Signal, f: impl FnOnce() -> R) -> R {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL runs no code of ours in signal context.
    let previous = unsafe { signal::sigaction(sig, &default) }.ok();
    let mut set = SigSet::empty();
    set.add(sig);
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    let result = f();
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    if let Some(previous) = previous {
        // SAFETY: puts back the action that was there a moment ago (our async-signal-safe one).
        unsafe {
            let _ = signal::sigaction(sig, &previous);
        }
    }
    result
}

/// Stops this process with `sig`'s default action (raise(3) delivers to this thread before it
/// returns); returns when continued — at once if the kernel discards the stop because our own
/// group is orphaned, which is what would happen to qwen without the shim.
/// Stops our whole process group (the job the shell sees), ourselves included.
fn stop_group(sig: Signal) {
    with_default_action(sig, || {
        let _ = signal::killpg(unistd::getpgrp(), sig);
    });
}

fn stop_self(sig: Signal) {
    with_default_action(sig, || {
        let _ = signal::raise(sig);
    });
}

/// Guards the process-wide state (handlers, self-pipe, panic hook slot): one relay at a time.
struct OneRelay;

static RELAY_RUNNING: AtomicBool = AtomicBool::new(false);

impl OneRelay {
    fn claim() -> io::Result<OneRelay> {
        if RELAY_RUNNING.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other(
                "a terminal relay is already running in this process",
            ));
        }
        Ok(OneRelay)
    }
}

impl Drop for OneRelay {
    fn drop(&mut self) {
        RELAY_RUNNING.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_track_sequences_across_chunks() {
        let mut e = Escapes::default();
        e.feed(b"plain text");
        assert!(e.at_rest());
        e.feed(b"\x1b[3");
        assert!(!e.at_rest());
        e.feed(b"1mred");
        assert!(e.at_rest());
        e.feed(b"\x1b]0;title");
        assert!(!e.at_rest());
        e.feed(b" more\x1b");
        assert!(!e.at_rest());
        e.feed(b"\\after");
        assert!(e.at_rest());
        e.feed(b"\x1b]8;;http://x\x07link");
        assert!(e.at_rest());
        e.feed(b"\x1b(");
        assert!(!e.at_rest());
        e.feed(b"B");
        assert!(e.at_rest());
        e.feed(b"\x1b");
        assert!(!e.at_rest());
        e.feed(b"7");
        assert!(e.at_rest());
    }

    #[test]
    fn escapes_track_utf8_split_across_chunks() {
        let check = "✕ é 😀";
        let bytes = check.as_bytes();
        for cut in 0..=bytes.len() {
            let mut e = Escapes::default();
            e.feed(&bytes[..cut]);
            assert_eq!(e.at_rest(), check.is_char_boundary(cut), "cut at {cut}");
            e.feed(&bytes[cut..]);
            assert!(e.at_rest(), "cut at {cut}");
        }
        // Byte by byte.
        let mut e = Escapes::default();
        for (i, b) in bytes.iter().enumerate() {
            e.feed(std::slice::from_ref(b));
            assert_eq!(e.at_rest(), check.is_char_boundary(i + 1), "after byte {i}");
        }
    }

    #[test]
    fn escapes_give_the_same_answer_however_the_stream_is_cut() {
        let stream: &[u8] = "a\x1b[1;31m✕ red\x1b[0m\x1b]0;ti\x1btle\x07b\x1b]8;;u\x1b\\é\x1bP1$r\x1b\\\x1b(B\x1b[?25l😀z\x1b7\x1b8"
            .as_bytes();
        let whole = |bytes: &[u8]| {
            let mut e = Escapes::default();
            e.feed(bytes);
            e.at_rest()
        };
        let one_by_one = |bytes: &[u8]| {
            let mut e = Escapes::default();
            for b in bytes {
                e.feed(std::slice::from_ref(b));
            }
            e.at_rest()
        };
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(whole(a), one_by_one(a), "prefix of {cut} bytes");
            let mut e = Escapes::default();
            e.feed(a);
            e.feed(b);
            assert!(e.at_rest(), "split at {cut}");
        }
        // Inside an OSC across chunks, ended by BEL in a chunk without ESC.
        let mut e = Escapes::default();
        e.feed(b"\x1b]0;long title");
        e.feed(b" continues");
        assert!(!e.at_rest());
        e.feed(b" ends\x07");
        assert!(e.at_rest());
    }

    #[test]
    fn notice_is_one_row_and_restores_the_cursor() {
        let n = String::from_utf8(notice_bytes("quota\x1b[2Jgone\nnext", 24, 80, true)).unwrap();
        assert_eq!(
            n,
            "\x1b7\x1b[24;1H\x1b[2K\x1b[0;7mquota [2Jgone next\x1b[0m\x1b8"
        );
        let plain = String::from_utf8(notice_bytes("x", 0, 0, false)).unwrap();
        assert_eq!(plain, "\x1b7\x1b[999;1H\x1b[2K\x1b[0mx\x1b[0m\x1b8");
        let long = "y".repeat(300);
        let cut = String::from_utf8(notice_bytes(&long, 10, 40, false)).unwrap();
        assert!(
            cut.contains(&format!("m{}\x1b[0m", "y".repeat(39))),
            "{cut:?}"
        );
        let wide = String::from_utf8(notice_bytes(&"語".repeat(50), 10, 21, false)).unwrap();
        assert!(
            wide.contains(&format!("m{}\x1b[0m", "語".repeat(10))),
            "{wide:?}"
        );
    }
}
