//! The attempt loop for runs whose stdin or stdout is not a terminal, and the thread that
//! forwards signals aimed at the shim to qwen's tree.
//!
//! Invariant: an attempt is retried only when nothing of it reached the caller, its stdin can be
//! replayed and the user did not ask us to stop.

use std::ffi::OsString;
use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::attempt::attempt_env;
use super::exec::{exec, fail, notice, out_of_resources, spawn_error, within};
use super::pipes::{self, Attempt};
use super::record::{RunRecord, launch_label, what_why};
use super::signals;
use super::stdin::StdinSource;
use super::streams::StdoutMode;
use crate::cli::Modifiers;
use crate::config::OnExhausted;
use crate::detect::Patterns;
use crate::error::Error;
use crate::error::warn;
use crate::model::Class;
use crate::relay::Relay;
use crate::text::human_duration;
use crate::vault::{Launch, Rotation, Vault};

/// The attempt loop for runs whose stdin or stdout is not a terminal.
pub(super) fn headless(
    vault: &Vault,
    real: &Path,
    args: &[OsString],
    modifiers: &Modifiers,
    patterns: Arc<Patterns>,
    mut launch: Launch,
    relay: Option<&Relay>,
) -> ! {
    signals::become_subreaper();
    let interrupted = Arc::new(AtomicBool::new(false));
    forward_signals(Arc::clone(&interrupted));

    let config = &vault.config;
    let stdin = StdinSource::detect(config.stdin_limit);
    let stdout = if io::stdout().is_terminal() {
        StdoutMode::Inherit
    } else {
        StdoutMode::from_args(args, &vault.paths.profile.argv)
    };
    // Text output held until qwen ends, when asked: only for an attempt that may be retried
    // (holding one that cannot be only delays the answer). A CLI that prints its errors on
    // stdout (claude) has its text held always: its error line must not reach the caller before
    // a retry can replace it, and claude prints a headless answer whole at the end anyway.
    let stdout_errors = vault.paths.profile.detect.stdout_errors;
    let hold = modifiers.hold || config.hold_text_output || stdout_errors;
    let max_attempts = match config.max_attempts {
        0 => vault.eligible_count().max(1),
        n => n,
    };
    let mut auth_retried = false;
    let mut waited = false;
    let mut attempt = 1;
    let mut record = RunRecord::start(relay);
    if let Some(relay) = relay {
        // Once the relay has answered "every key is spent", nothing qwen retries can succeed
        // (qwen 0.12 retries that answer for about a minute): the attempt is stopped at once and
        // the loop below ends the run with exit 75. KILL, not TERM: the run's result is decided,
        // and on TERM qwen 0.12.0 prints "Operation cancelled." and takes up to 2 s more
        // (measured) before the shim's own message could follow.
        relay.on_exhausted(Box::new(|| {
            signals::signal_tree(nix::sys::signal::Signal::SIGKILL)
        }));
    }
    loop {
        record.attempts += 1;
        let may_retry = !modifiers.no_retry
            && modifiers.account.is_none()
            && attempt < max_attempts
            && stdin.replayable()
            && !interrupted.load(Ordering::SeqCst);
        // Stop early only for what will be retried: an auth failure is retried once per run.
        let stop_on: &[Class] = match (may_retry, auth_retried) {
            (false, _) => &[],
            (true, false) => &[Class::Quota, Class::Throttle, Class::Auth],
            (true, true) => &[Class::Quota, Class::Throttle],
        };
        let finished = pipes::run(Attempt {
            program: real,
            args,
            env: attempt_env(vault, &launch, relay, args),
            stdin: &stdin,
            stdout: stdout.held(hold && may_retry),
            patterns: Arc::clone(&patterns),
            stop_on,
            stop_grace: config.stop_grace,
            stdout_errors,
            interrupted: &interrupted,
        });
        let finished = match finished {
            Ok(f) => f,
            // Out of processes or memory before anything ran: qwen itself still can (exec needs
            // no new process); stdin is untouched unless a copy of it was being pumped.
            Err(e)
                if record.attempts == 1
                    && out_of_resources(&e)
                    && !matches!(stdin, StdinSource::Pumped(_)) =>
            {
                let name = vault.paths.profile.name;
                warn(format!(
                    "cannot start {name} under the shim ({e}); running {name} without rotation"
                ));
                exec(real, args, &attempt_env(vault, &launch, None, args))
            }
            Err(e) => fail(&spawn_error(real, e)),
        };
        if let Some(earliest) = relay.and_then(Relay::exhausted) {
            // The relay already rotated through every key and told qwen so.
            let slot = relay.map_or(launch.slot, Relay::current_slot);
            record.fail(vault, slot, &Error::Exhausted { earliest });
        }
        // An attempt we stopped did not end on its own: qwen reports these errors with status 1.
        let outcome = if finished.stopped {
            signals::Outcome::Exited(1)
        } else {
            finished.outcome
        };
        // With the relay in the path, the relay rotates keys itself and knows which one is live
        // (or which one carried the error event qwen shows).
        let slot = relay.map_or(launch.slot, Relay::failed_slot);
        let Some(hit) = finished.hit.clone() else {
            pipes::release(&finished);
            if relay.is_none()
                && outcome.success()
                && let Err(e) = vault.record_success(slot)
            {
                warn(e);
            }
            record.finish(vault, slot, outcome);
        };

        let rotation = match vault.report(slot, &hit) {
            Ok(r) => r,
            Err(e) => {
                warn(e);
                pipes::release(&finished);
                record.finish(vault, slot, outcome);
            }
        };
        // Could this run go again at all (attempts aside)?
        let rerunnable = !modifiers.no_retry
            && modifiers.account.is_none()
            && (hit.class != Class::Auth || !auth_retried)
            && !finished.committed
            && !interrupted.load(Ordering::SeqCst)
            && stdin.replayable();
        let retry = rerunnable && attempt < max_attempts;
        let who = what_why(slot, launch_label(slot, &launch), &hit, vault.paths.profile);
        match rotation {
            Rotation::Exhausted { earliest } => {
                let wait = rerunnable && !waited && config.on_exhausted == OnExhausted::Wait;
                match earliest
                    .filter(|_| wait)
                    .and_then(|t| within(t, config.max_wait))
                {
                    Some(pause) => {
                        let pause_text =
                            human_duration(chrono::TimeDelta::from_std(pause).unwrap_or_default());
                        notice(&format!(
                            "{who}; waiting {pause_text} for the first account to return"
                        ));
                        std::thread::sleep(pause);
                        waited = true;
                        // A new round: every account that returned may be tried again.
                        attempt = 0;
                    }
                    None => {
                        notice(&who);
                        record.fail(vault, slot, &Error::Exhausted { earliest });
                    }
                }
            }
            Rotation::Switched { to, .. } | Rotation::AlreadyRotated { to } if retry => {
                notice(&format!("{who}; switched to account {to}"));
            }
            Rotation::Switched { to, .. } | Rotation::AlreadyRotated { to } => {
                pipes::release(&finished);
                let why = if matches!(stdin, StdinSource::Pumped(_)) && !stdin.replayable() {
                    format!(
                        " (not retried: stdin was larger than stdin_limit, {} bytes, so it cannot be replayed)",
                        config.stdin_limit
                    )
                } else {
                    String::new()
                };
                notice(&format!("{who}; the next run uses account {to}{why}"));
                record.finish(vault, slot, outcome);
            }
        }
        auth_retried |= hit.class == Class::Auth;
        launch = match vault.prepare(None) {
            Ok(l) => l,
            Err(e @ Error::Exhausted { .. }) => record.fail(vault, slot, &e),
            Err(e) => {
                warn(e);
                pipes::release(&finished);
                record.finish(vault, slot, finished.outcome);
            }
        };
        if let Some(relay) = relay {
            relay.switch_to(&launch);
        }
        attempt += 1;
    }
}

/// Forwards signals aimed at the shim to the whole child tree.
///
/// A signal the terminal generated (SIGINT from Ctrl-C, SIGQUIT, SIGHUP on hang-up) already
/// reached every process in the foreground group, qwen included: forwarding it again would
/// deliver it twice, and qwen exits on a second Ctrl-C. So only signals *sent* to us (kill(2))
/// are forwarded. Either way the run is marked interrupted: no retry follows a user's stop.
fn forward_signals(interrupted: Arc<AtomicBool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    use signal_hook::iterator::SignalsInfo;
    use signal_hook::iterator::exfiltrator::WithOrigin;
    use signal_hook::low_level::siginfo::Cause;
    // The thread starts first and the handlers go in only once it runs: a handler without its
    // thread would swallow every kill (signal-hook keeps SIG_DFL from acting after unregister).
    let (hand_over, handed) = std::sync::mpsc::channel::<SignalsInfo<WithOrigin>>();
    let watching = std::thread::Builder::new().spawn(move || {
        let Ok(mut signals) = handed.recv() else {
            return;
        };
        for origin in signals.forever() {
            if matches!(origin.signal, SIGTERM | SIGHUP | SIGINT | SIGQUIT) {
                interrupted.store(true, Ordering::SeqCst);
            }
            if origin.cause == Cause::Kernel {
                continue;
            }
            if let Ok(sig) = nix::sys::signal::Signal::try_from(origin.signal) {
                signals::signal_tree(sig);
            }
        }
    });
    let signals = watching.and_then(|_| {
        SignalsInfo::<WithOrigin>::new([SIGTERM, SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2])
    });
    match signals {
        Ok(signals) => {
            let _ = hand_over.send(signals);
        }
        Err(e) => warn(format!(
            "cannot watch signals ({e}); a kill aimed at the shim will not reach {}",
            crate::profile::active().name
        )),
    }
}
