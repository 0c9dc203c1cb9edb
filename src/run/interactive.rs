//! A person at a terminal: qwen on a pseudo-terminal relayed to ours, and a quota error on screen
//! swaps the credentials under the running session.
//!
//! Invariant: the session is never restarted behind the person's back; only a one-shot run
//! (`qwen -p …`) that exits on an error is re-run, like a headless run.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::attempt::{attempt_env, start_relay};
use super::exec::{exec, notice};
use super::record::{RunRecord, launch_label, what_why};
use super::signals;
use crate::detect::Patterns;
use crate::error::Error;
use crate::error::warn;
use crate::model::Hit;
use crate::model::Kind;
use crate::profile::Argv;
use crate::relay::Relay;
use crate::vault::{Launch, Rotation, Vault};

/// A person at a terminal: qwen runs on a pseudo-terminal relayed to ours, and a quota error on
/// screen swaps the credentials under the running session (DESIGN.md, "Running the real qwen").
pub(super) fn interactive_session(
    vault: &Vault,
    real: &Path,
    args: &[OsString],
    patterns: Arc<Patterns>,
    launch: Launch,
) -> ! {
    use super::terminal as pty;
    use crate::detect::{Anchor, Detector};

    signals::become_subreaper();
    let (controller, controls) = pty::controls();
    let relay_notices = controller.clone();
    let notify = Box::new(move |line: String| {
        relay_notices.send(pty::Control::Notice(format!("qwen-rotation: {line}")))
    });
    // Kept alive for the whole session: an API-key session moves to the next key inside the relay.
    let relay = start_relay(vault, &patterns, &launch, args, notify).map(Arc::new);
    // `qwen -p …` in a terminal is a one-shot run: when it exits on an error, it is re-run with
    // the same argv like a headless run (its output is already on the screen; nothing to hide).
    let one_shot = is_one_shot(args, &vault.paths.profile.argv);
    let max_attempts = vault.eligible_count().max(1);
    let mut launch = launch;
    let mut controls = Some(controls);
    let mut controller = controller;
    let mut record = RunRecord::start(relay.as_deref());
    for attempt in 1.. {
        record.attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
        let mut cmd = Command::new(real);
        cmd.args(args);
        let env = attempt_env(vault, &launch, relay.as_deref(), args);
        crate::relay::apply_env(&mut cmd, &env);
        let slot = Arc::new(std::sync::atomic::AtomicUsize::new(launch.slot));
        let mut detector = Detector::new(Arc::clone(&patterns), Anchor::Screen);
        let mut exit_detector = Detector::new(Arc::clone(&patterns), Anchor::Plain);
        let swapped = Arc::new(AtomicBool::new(false));
        let retried = Arc::new(AtomicBool::new(false));
        let auto_retry = vault.config.auto_retry;
        let shared = vault.clone();
        let session_controller = controller.clone();
        let mut on_output = |bytes: &[u8]| {
            if one_shot {
                exit_detector.feed(bytes);
            }
            // Our Ctrl+Y went out: the retry's own failure may repeat the old wording and must count.
            if retried.swap(false, Ordering::SeqCst) {
                detector.request_sent();
            }
            let Some(hit) = detector.feed(bytes) else {
                return;
            };
            // Ink redraws the same block (resize, Ctrl+Y, countdowns): re-armed, the detector
            // fires again only for a new error, or for a live one after our own retry.
            detector.rearm();
            swapped.store(true, Ordering::SeqCst);
            let (controller, slot, retried) = (
                session_controller.clone(),
                Arc::clone(&slot),
                Arc::clone(&retried),
            );
            let relay = relay.clone();
            let vault = shared.clone();
            let swapping = std::thread::Builder::new().spawn(move || {
                if hot_swap(
                    &vault,
                    relay.as_deref(),
                    &slot,
                    &hit,
                    &controller,
                    auto_retry,
                ) {
                    retried.store(true, Ordering::SeqCst);
                }
            });
            if let Err(e) = swapping {
                warn(format!(
                    "cannot start a thread to switch accounts ({e}); the session continues on the same account"
                ));
            }
        };
        let this_controls = match controls.take() {
            Some(c) => c,
            None => {
                let (c, r) = pty::controls();
                controller = c;
                r
            }
        };
        let outcome = match pty::run(cmd, &mut on_output, this_controls) {
            Ok(outcome) => outcome,
            Err(e) => {
                warn(format!(
                    "cannot set up the terminal relay ({e}); running {} without live rotation",
                    vault.paths.profile.name
                ));
                exec(real, args, &attempt_env(vault, &launch, None, args))
            }
        };
        let hit = exit_detector
            .hit()
            .cloned()
            .or_else(|| exit_detector.finish());
        let rerun = one_shot
            && !outcome.success()
            && !swapped.load(Ordering::SeqCst)
            && attempt < max_attempts;
        // The slot the session ended on: the relay's, or the last one swapped in on screen.
        let failed = relay
            .as_deref()
            .map_or_else(|| slot.load(Ordering::SeqCst), Relay::current_slot);
        let Some(hit) = hit.filter(|_| rerun) else {
            record.finish(vault, failed, outcome);
        };
        let who = what_why(
            failed,
            launch_label(failed, &launch),
            &hit,
            vault.paths.profile,
        );
        match vault.report(failed, &hit) {
            Ok(Rotation::Switched { to, .. } | Rotation::AlreadyRotated { to }) => {
                notice(&format!("{who}; switched to account {to}"));
            }
            Ok(Rotation::Exhausted { earliest }) => {
                notice(&who);
                record.fail(vault, failed, &Error::Exhausted { earliest });
            }
            Err(e) => {
                warn(e);
                record.finish(vault, failed, outcome);
            }
        }
        launch = match vault.prepare(None) {
            Ok(next) => next,
            Err(e @ Error::Exhausted { .. }) => record.fail(vault, failed, &e),
            Err(e) => {
                warn(e);
                record.finish(vault, failed, outcome);
            }
        };
        if let Some(relay) = relay.as_deref() {
            relay.switch_to(&launch);
        }
    }
    unreachable!("the attempt loop ends only by exiting")
}

/// Does this argv ask the CLI for one answer and an exit (`-p`, `--prompt`, or a positional
/// prompt), rather than for a session (`-i`/`--prompt-interactive`, or no prompt)? The options
/// are the profile's (`argv`).
fn is_one_shot(args: &[OsString], argv: &Argv) -> bool {
    let args: Vec<&str> = args
        .iter()
        .take_while(|a| *a != "--")
        .filter_map(|a| a.to_str())
        .collect();
    // `--opt` or `--opt=value`.
    let is = |a: &str, options: &[&str]| {
        options.iter().any(|o| {
            a == *o
                || (o.starts_with("--")
                    && a.strip_prefix(o).is_some_and(|rest| rest.starts_with('=')))
        })
    };
    if args.iter().any(|a| is(a, argv.session)) {
        return false;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if is(a, argv.one_shot) {
            return true;
        }
        if argv.value_options.contains(a) {
            it.next(); // the option's value is not a prompt
        } else if !a.starts_with('-') {
            return true;
        }
    }
    false
}

/// Rotates away from the slot that failed on screen and tells the person. An OAuth session
/// continues on the swapped file; with `auto_retry` we press Ctrl+Y for the person once qwen
/// will have re-read it. A running qwen never re-reads an API key (QWEN_FACTS_APIKEY.md §3):
/// without the relay, such a session can only continue on the next key after a restart.
fn hot_swap(
    vault: &Vault,
    relay: Option<&Relay>,
    slot: &std::sync::atomic::AtomicUsize,
    hit: &Hit,
    controller: &super::terminal::Controller,
    auto_retry: bool,
) -> bool {
    use super::terminal::Control;
    let (name, creds) = (vault.paths.profile.name, &vault.paths.profile.creds);
    let say = |line: String| {
        controller.send(Control::Notice(format!("qwen-rotation: {line}")));
        false
    };
    // With the relay in the path, most rotations happen there before qwen sees an error; what
    // reaches the screen is an error inside a stream, on the relay's current key.
    let failed = relay.map_or_else(|| slot.load(Ordering::SeqCst), Relay::failed_slot);
    let who = what_why(failed, None, hit, vault.paths.profile);
    let to = match vault.report(failed, hit) {
        Ok(Rotation::Switched { to, .. } | Rotation::AlreadyRotated { to }) => to,
        Ok(Rotation::Exhausted { earliest }) => {
            return say(format!("{who}; {}", Error::Exhausted { earliest }));
        }
        Err(e) => return say(format!("{who}; {e}")),
    };
    slot.store(to, Ordering::SeqCst);
    let next = match vault.prepare(None) {
        Ok(next) => next,
        Err(e) => return say(format!("{who}; {e}")),
    };
    // An API-key slot can take over a running session only through the relay (so can a login
    // the relay serves: claude's); an OAuth slot otherwise only through the swapped file, which
    // qwen re-reads at most every 5 s (QWEN_FACTS.md, CACHE_CHECK_INTERVAL_MS) counted from the
    // failed request.
    let pause = match (next.kind, relay) {
        (_, Some(relay)) if relay.switch_to(&next) => Duration::ZERO,
        (Kind::ApiKey, _) => {
            return say(format!(
                "{who}; account {to} is an API key: restart {name} to continue on it"
            ));
        }
        (Kind::OAuth, Some(_)) => {
            return say(format!(
                "{who}; account {to} is an OAuth account: restart {name} to continue on it"
            ));
        }
        (Kind::OAuth, None) => match creds.reread_after {
            Some(pause) => pause,
            // The CLI reads its login only when it starts (gemini): the swapped file waits.
            None => {
                return say(format!(
                    "{who}; the next start of {name} uses account {to} ({name} reads its login only when it starts)"
                ));
            }
        },
    };
    let retry_key = creds.retry_key.filter(|_| auto_retry);
    let retrying = if retry_key.is_some() {
        "; retrying"
    } else {
        ""
    };
    let _ = say(format!("{who}; switched to account {to}{retrying}"));
    std::thread::sleep(pause);
    let Some(key) = retry_key else {
        // Only now would a retry go out with the new credentials.
        return say(format!("account {to} is live: {}", creds.retry_hint));
    };
    controller.send(Control::Input(vec![key]));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_shot(args: &[&str]) -> bool {
        is_one_shot(
            &args.iter().map(OsString::from).collect::<Vec<_>>(),
            &crate::profile::QWEN.argv,
        )
    }

    #[test]
    fn one_shot_runs_are_told_from_sessions() {
        assert!(one_shot(&["-p", "hi"]));
        assert!(one_shot(&["--prompt=hi"]));
        assert!(one_shot(&["explain this", "--output-format", "text"]));
        assert!(one_shot(&["-m", "coder", "hello"]));
        assert!(!one_shot(&[]));
        assert!(!one_shot(&["-m", "coder"]));
        assert!(!one_shot(&["--approval-mode", "yolo"]));
        assert!(!one_shot(&["-i", "start here"]));
        assert!(!one_shot(&["--", "-p"]));
    }

    #[test]
    fn the_options_are_the_profiles() {
        let argv = Argv {
            value_options: &["--depth"],
            one_shot: &["--ask"],
            session: &["--chat"],
            ..crate::profile::QWEN.argv
        };
        let os = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_one_shot(&os(&["--ask=hi"]), &argv));
        assert!(!is_one_shot(&os(&["--depth", "3"]), &argv));
        assert!(!is_one_shot(&os(&["--chat", "hi"]), &argv));
        // qwen's own options mean nothing to another profile: `-m` is not known to take a value.
        assert!(is_one_shot(&os(&["-m", "coder"]), &argv));
        assert!(!is_one_shot(&os(&["-i", "x"]), &crate::profile::QWEN.argv));
    }
}
