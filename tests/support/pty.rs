//! A terminal for a test: a new pseudo-terminal whose slave becomes the controlling terminal of
//! a program started as a session leader, as a terminal emulator starts a shell.
//! Use with `#[path = "support/pty.rs"] mod pty;` (benches: `"../tests/support/pty.rs"`).
#![allow(dead_code)]

#[path = "child.rs"]
#[allow(clippy::duplicate_mod)] // each support module may be loaded beside the others
mod child;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::libc;
use nix::sys::termios::{self, Termios};

/// Starts `cmd` on a new `rows`×`cols` pty after `prepare` adjusted the terminal's settings.
/// Returns the master (the only one: dropping it hangs the terminal up), the child, and the
/// settings the program started with.
pub fn spawn_on_pty(
    mut cmd: Command,
    rows: u16,
    cols: u16,
    prepare: impl FnOnce(&mut Termios),
) -> (OwnedFd, Child, Termios) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&ws, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        // Tests run in parallel: a copy leaked into another test's program would keep this
        // terminal open after its own program is gone.
        fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    }
    let mut t = termios::tcgetattr(pty.slave.as_fd()).unwrap();
    prepare(&mut t);
    termios::tcsetattr(pty.slave.as_fd(), termios::SetArg::TCSANOW, &t).unwrap();
    let initial = termios::tcgetattr(pty.master.as_fd()).unwrap();
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave));
    // A terminal emulator starts its shell with default dispositions, whatever ours are.
    child::default_signals(&mut cmd);
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            // TIOCSCTTY: this terminal controls the program, as a terminal emulator's would.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn on the test's terminal");
    // The Command's copies of the slave must go, or the master never reads EIO.
    drop(cmd);
    (pty.master, child, initial)
}

/// [`spawn_on_pty`] with the terminal's settings as the kernel made them.
pub fn start(cmd: Command, rows: u16, cols: u16) -> (std::fs::File, Child) {
    let (master, child, _) = spawn_on_pty(cmd, rows, cols, |_| {});
    (std::fs::File::from(master), child)
}
