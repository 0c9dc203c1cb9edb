//! Our terminal in raw mode, and its restoration: by `Drop`, around every stop, and by a panic
//! hook before a panic message on the relay's thread is printed.
//!
//! Invariant: whatever way the session ends, the saved settings go back.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Mutex, Once};
use std::thread::{self, ThreadId};

use nix::libc;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::termios::{self, SetArg, Termios};

use super::signals::with_default_action;

/// The saved terminal settings for the panic hook, with the relay's thread: a panic there
/// restores the terminal before the message is printed.
static PANIC_RESTORE: Mutex<Option<(libc::termios, ThreadId)>> = Mutex::new(None);

/// Our terminal in raw mode; `Drop` puts the saved settings back.
pub(super) struct RawMode {
    saved: Termios,
    raw: Termios,
}

impl RawMode {
    pub(super) fn enter(saved: Termios) -> io::Result<RawMode> {
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
    pub(super) fn apply(&self) -> io::Result<()> {
        with_default_action(Signal::SIGTTOU, || {
            termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.raw)
        })?;
        Ok(())
    }

    /// The saved settings, from any process group (SIGTTOU blocked, so even a background shim
    /// restores instead of being stopped or interrupted). TCSANOW, not TCSADRAIN: a terminal
    /// nobody reads must not hang the shim's exit.
    pub(super) fn restore(&self) {
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
