//! A session's start: the pty opened like our terminal, ours made raw, qwen spawned as the
//! leader of a session on the pty, then the relay loop until qwen exits.
//!
//! Invariant: `run` returns Err only before the child is started, with our terminal as it was.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::libc;
use nix::sys::signal::{self, SigSet, SigmaskHow};
use nix::sys::termios;
use nix::unistd::{self, Pid};

use super::controls::Controls;
use super::notice::{Escapes, sanitize};
use super::raw::RawMode;
use super::session::{CHUNK, Session, window_size};
use super::signals::{OneRelay, SignalGuard};
use crate::run::signals::Outcome;

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

    let mut relay = Session {
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
