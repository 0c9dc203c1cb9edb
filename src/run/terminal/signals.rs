//! The relay's own signal handling: handlers that record and wake the loop, the block outside
//! ppoll, stopping ourselves for job control, and the claim that one relay runs per process.
//!
//! Invariant: the handler only touches atomics and write(2); `Drop` puts back every disposition.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd;

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

pub(super) fn bit(s: Signal) -> u64 {
    1 << (s as i32)
}

pub(super) fn last_seen(s: Signal) -> u64 {
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
pub(super) struct SignalGuard {
    pub(super) pipe_r: OwnedFd,
    _pipe_w: OwnedFd,
    /// The relay thread's mask before we blocked: ppoll waits with it.
    pub(super) old_mask: SigSet,
    old_actions: Vec<(Signal, SigAction)>,
}

impl SignalGuard {
    pub(super) fn install() -> io::Result<SignalGuard> {
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
    pub(super) fn take(&self) -> u64 {
        PENDING.swap(0, Ordering::SeqCst)
    }

    /// ppoll lets our signals in only when it is interrupted: a relay that always finds a
    /// descriptor ready (a flood of output) would never see them. A moment with the old mask
    /// delivers whatever is pending (pthread_sigmask(3): pending unblocked signals are delivered
    /// before the call returns).
    pub(super) fn let_pending_in(&self) {
        if let Ok(blocked) = self.old_mask.thread_swap_mask(SigmaskHow::SIG_SETMASK) {
            let _ = blocked.thread_set_mask();
        }
    }

    pub(super) fn drain_pipe(&self) {
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
pub(super) fn with_default_action<R>(sig: Signal, f: impl FnOnce() -> R) -> R {
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
pub(super) fn stop_group(sig: Signal) {
    with_default_action(sig, || {
        let _ = signal::killpg(unistd::getpgrp(), sig);
    });
}

pub(super) fn stop_self(sig: Signal) {
    with_default_action(sig, || {
        let _ = signal::raise(sig);
    });
}

/// Guards the process-wide state (handlers, self-pipe, panic hook slot): one relay at a time.
pub(super) struct OneRelay;

static RELAY_RUNNING: AtomicBool = AtomicBool::new(false);

impl OneRelay {
    pub(super) fn claim() -> io::Result<OneRelay> {
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
