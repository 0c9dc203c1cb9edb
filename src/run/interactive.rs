//! The run path: find the real qwen, pick the account, run, detect, rotate, run again.
//!
//! Invariant: the shim never stands in the user's way. With no accounts, with
//! `QWEN_ROTATION=off`, or when its own machinery fails (a warning says so, once), the real
//! qwen is exec'd in place of the shim: same argv, env, cwd, stdin and status, nothing between.

use std::ffi::OsString;
use std::io::{self, IsTerminal};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::audit::{self, Event, events};
use crate::cli::Modifiers;
use crate::config::{Config, OnExhausted, Paths, human_duration};
use crate::detect::{Class, Hit, Patterns};
use crate::error::Error;
use crate::pipes::{self, Attempt, StdinSource, StdoutMode};
use crate::relay::{self, Relay};
use crate::signals;
use crate::vault::{Kind, Launch, Rotation, Vault};
use crate::{env_pool, locate, settings, warn};

/// Runs the real qwen with `args`; never returns.
pub fn main(args: Vec<OsString>, modifiers: Modifiers) -> ! {
    let real = match locate::real_qwen() {
        Ok(found) => found.path,
        Err(e) => fail(&e),
    };
    if std::env::var_os("QWEN_ROTATION").is_some_and(|v| v == "off" || v == "0") {
        exec(&real, &args, &[]);
    }
    let paths = match pool_paths(Paths::from_env()) {
        Ok(paths) => paths,
        Err(problem) => {
            warn(format!("{problem}; running qwen without rotation"));
            exec(&real, &args, &[])
        }
    };
    if !Vault::has_accounts(&paths) {
        // Accounts that exist but cannot be read (another user's home, a chmod) would silently
        // turn rotation off: say so once. Missing (no accounts configured) stays silent.
        if let Err(e) = std::fs::read_dir(&paths.accounts)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn(format!(
                "{}; running qwen without rotation",
                Error::io("read", &paths.accounts, e)
            ));
        }
        if modifiers.account.is_some() {
            warn(
                "--rotation-account ignored: no accounts are configured (add one with qwen --rotation-add)",
            );
        }
        exec(&real, &args, &[]);
    }

    let (config, problem) = Config::load(&paths.config);
    if let Some(problem) = problem {
        warn(problem);
    }
    let patterns = Patterns::from_config(&config.patterns).unwrap_or_else(|problem| {
        warn(format!(
            "{}: {problem}; using the built-in patterns",
            paths.config.display()
        ));
        Patterns::defaults()
    });
    let vault = Vault::open(paths, config);
    let launch = match prepare(&vault, modifiers.account.as_deref()) {
        Some(launch) => launch,
        None => exec(&real, &args, &[]),
    };

    if relay::key_withheld(&vault.paths, &launch, &args).is_some() {
        // qwen's settings would send the key elsewhere. Its failure without the key is not the
        // account's: nothing is rotated or marked (attempt_env leaves the key out, and says so).
        let env = attempt_env(&vault, &launch, None, &args);
        exec(&real, &args, &env);
    }
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    if interactive {
        interactive_session(&vault, &real, &args, patterns, launch);
    }
    let relay = start_relay(
        &vault,
        &patterns,
        &launch,
        &args,
        Box::new(|line| notice(&line)),
    );
    headless(
        &vault,
        &real,
        &args,
        &modifiers,
        patterns,
        launch,
        relay.as_ref(),
    )
}

/// The paths for this run: with a pool declared in the environment, its slots and its state
/// place. The key variables leave our environment first, so neither qwen nor anything it
/// starts inherits them (the relay, or the attempt's own variables, carry the key).
fn pool_paths(paths: Paths) -> Result<Paths, String> {
    let declared = env_pool::from_env(&paths.home);
    // SAFETY: the run path has started no thread yet (the relay and the signal thread come
    // later), so nothing reads the environment while it changes.
    unsafe { env_pool::scrub() };
    Ok(match declared? {
        Some(pool) => env_pool::paths_for(paths, pool),
        None => paths,
    })
}

/// Puts the loopback relay in qwen's request path when the run starts on an API-key slot and
/// nothing forbids it; otherwise output scanning alone watches the run (and says why, once).
fn start_relay(
    vault: &Vault,
    patterns: &Arc<Patterns>,
    launch: &Launch,
    args: &[OsString],
    notify: Box<dyn Fn(String) + Send + Sync>,
) -> Option<Relay> {
    if launch.kind != Kind::ApiKey || !vault.config.relay {
        return None;
    }
    let model = launch.api.as_ref().and_then(|a| a.model.as_deref());
    if let Err(why) = relay::relay_possible_for(&vault.paths, model, args) {
        warn(format!(
            "{why}; watching qwen's output instead of relaying its requests"
        ));
        return None;
    }
    let setup = relay::Setup {
        vault: Vault::open(vault.paths.clone(), vault.config.clone()),
        patterns: Arc::clone(patterns),
        launch: launch.clone(),
        notify,
    };
    match Relay::start(setup) {
        Ok(relay) => Some(relay),
        Err(e) => {
            warn(format!(
                "the request relay did not start ({e}); watching qwen's output instead"
            ));
            None
        }
    }
}

/// A person at a terminal: qwen runs on a pseudo-terminal relayed to ours, and a quota error on
/// screen swaps the credentials under the running session (DESIGN.md, "Running the real qwen").
fn interactive_session(
    vault: &Vault,
    real: &Path,
    args: &[OsString],
    patterns: Arc<Patterns>,
    launch: Launch,
) -> ! {
    use crate::detect::{Anchor, Detector};
    use crate::pty;

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
    let one_shot = is_one_shot(args);
    let max_attempts = vault.eligible_count().max(1);
    let mut launch = launch;
    let mut controls = Some(controls);
    let mut controller = controller;
    let mut record = RunRecord::start(relay.as_deref());
    for attempt in 1.. {
        record.attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
        let mut cmd = Command::new(real);
        cmd.args(args);
        for (k, v) in attempt_env(vault, &launch, relay.as_deref(), args) {
            cmd.env(k, v);
        }
        let slot = Arc::new(std::sync::atomic::AtomicUsize::new(launch.slot));
        let mut detector = Detector::new(Arc::clone(&patterns), Anchor::Screen);
        let mut exit_detector = Detector::new(Arc::clone(&patterns), Anchor::Plain);
        let swapped = Arc::new(AtomicBool::new(false));
        let retried = Arc::new(AtomicBool::new(false));
        let auto_retry = vault.config.auto_retry;
        let (paths, config) = (vault.paths.clone(), vault.config.clone());
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
            let vault = Vault::open(paths.clone(), config.clone());
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
                    "cannot set up the terminal relay ({e}); running qwen without live rotation"
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
        let who = what(failed, launch_label(failed, &launch), &hit);
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

/// Does this argv ask qwen for one answer and an exit (`-p`, `--prompt`, or a positional
/// prompt), rather than for a session (`-i`/`--prompt-interactive`, or no prompt)?
fn is_one_shot(args: &[OsString]) -> bool {
    let args: Vec<&str> = args
        .iter()
        .take_while(|a| *a != "--")
        .filter_map(|a| a.to_str())
        .collect();
    if args.iter().any(|a| {
        matches!(*a, "-i" | "--prompt-interactive") || a.starts_with("--prompt-interactive=")
    }) {
        return false;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if matches!(*a, "-p" | "--prompt") || a.starts_with("--prompt=") {
            return true;
        }
        if VALUE_OPTIONS.contains(a) {
            it.next(); // the option's value is not a prompt
        } else if !a.starts_with('-') {
            return true;
        }
    }
    false
}

/// qwen options whose value is the next argument (so it is not taken for a positional prompt).
const VALUE_OPTIONS: &[&str] = &[
    "-m",
    "--model",
    "-o",
    "--output-format",
    "--input-format",
    "--approval-mode",
    "--auth-type",
    "-e",
    "--extensions",
    "--include-directories",
    "--proxy",
    "--openai-api-key",
    "--openaiApiKey",
    "--openai-base-url",
    "--openaiBaseUrl",
    "--allowed-tools",
    "--exclude-tools",
    "--core-tools",
    "--allowed-mcp-server-names",
    "--max-session-turns",
    "--telemetry-target",
    "-r",
    "--resume",
    "--session-id",
    "--channel",
];

/// Rotates away from the slot that failed on screen and tells the person. An OAuth session
/// continues on the swapped file; with `auto_retry` we press Ctrl+Y for the person once qwen
/// will have re-read it. A running qwen never re-reads an API key (QWEN_FACTS_APIKEY.md §3):
/// without the relay, such a session can only continue on the next key after a restart.
fn hot_swap(
    vault: &Vault,
    relay: Option<&Relay>,
    slot: &std::sync::atomic::AtomicUsize,
    hit: &Hit,
    controller: &crate::pty::Controller,
    auto_retry: bool,
) -> bool {
    use crate::pty::Control;
    let say = |line: String| {
        controller.send(Control::Notice(format!("qwen-rotation: {line}")));
        false
    };
    // With the relay in the path, most rotations happen there before qwen sees an error; what
    // reaches the screen is an error inside a stream, on the relay's current key.
    let failed = relay.map_or_else(|| slot.load(Ordering::SeqCst), Relay::current_slot);
    let who = what(failed, None, hit);
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
    // An API-key slot can take over a running session only through the relay; an OAuth slot
    // only through the swapped file, which qwen re-reads at most every 5 s
    // (QWEN_FACTS.md, CACHE_CHECK_INTERVAL_MS) counted from the failed request.
    let pause = match (next.kind, relay) {
        (Kind::ApiKey, Some(relay)) if relay.switch_to(&next) => Duration::ZERO,
        (Kind::ApiKey, _) => {
            return say(format!(
                "{who}; account {to} is an API key: restart qwen to continue on it"
            ));
        }
        (Kind::OAuth, Some(_)) => {
            return say(format!(
                "{who}; account {to} is an OAuth account: restart qwen to continue on it"
            ));
        }
        (Kind::OAuth, None) => Duration::from_millis(5_200),
    };
    let retrying = if auto_retry { "; retrying" } else { "" };
    let _ = say(format!("{who}; switched to account {to}{retrying}"));
    std::thread::sleep(pause);
    if !auto_retry {
        // Only now would a Ctrl+Y go out with the new credentials.
        return say(format!("account {to} is live: press Ctrl+Y to retry"));
    }
    controller.send(Control::Input(vec![0x19]));
    true
}

/// The attempt loop for runs whose stdin or stdout is not a terminal.
fn headless(
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
        StdoutMode::from_args(args)
    };
    // Text output held until qwen ends, when asked: only for an attempt that may be retried
    // (holding one that cannot be only delays the answer).
    let hold = modifiers.hold || config.hold_text_output;
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
                warn(format!(
                    "cannot start qwen under the shim ({e}); running qwen without rotation"
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
        // With the relay in the path, the relay rotates keys itself and knows which one is live.
        let slot = relay.map_or(launch.slot, Relay::current_slot);
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
        let who = what(slot, launch_label(slot, &launch), &hit);
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

/// One watched run, for its `run` line in rotation.log.
struct RunRecord {
    started: Instant,
    attempts: u32,
    /// The relay's count of answered requests per slot, when it is in the path.
    served: Option<relay::Served>,
}

impl RunRecord {
    fn start(relay: Option<&Relay>) -> RunRecord {
        RunRecord {
            started: Instant::now(),
            attempts: 0,
            served: relay.map(Relay::served),
        }
    }

    /// Appends the `run` line: one O_APPEND write, no lock, no fsync (a lost line after a power
    /// cut costs one count in the stats, not a credential).
    fn write(&self, vault: &Vault, slot: usize, code: i32) {
        let event = Event::new(events::RUN, chrono::Utc::now()).slot(slot).run(
            code,
            self.attempts.max(1),
            self.started.elapsed(),
        );
        let event = Event {
            requests: self
                .served
                .as_ref()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            ..event
        };
        // A pool that never rotates writes only run lines: the size cap is checked here too
        // (one stat per run), and the move made under the lock, as every rotation of the log.
        if std::fs::metadata(&vault.paths.log).is_ok_and(|m| m.len() > audit::MAX_LOG_BYTES)
            && let Ok(_lock) =
                crate::vault::RotationLock::acquire(&vault.paths.lock, vault.config.lock_timeout)
            && let Err(e) = audit::rotate_if_large(&vault.paths.log, audit::MAX_LOG_BYTES)
        {
            warn(format!("cannot rotate {}: {e}", vault.paths.log.display()));
        }
        if let Err(e) = audit::append(&vault.paths.log, &[event]) {
            warn(format!(
                "cannot append to {}: {e}",
                vault.paths.log.display()
            ));
        }
    }

    /// Records the run and leaves with qwen's outcome.
    fn finish(&self, vault: &Vault, slot: usize, outcome: signals::Outcome) -> ! {
        let code = match outcome {
            signals::Outcome::Exited(code) => code,
            signals::Outcome::Signaled(sig) => 128 + sig,
        };
        self.write(vault, slot, code);
        signals::exit_with(outcome)
    }

    /// Records the run and leaves with the shim's own error (every account exhausted).
    fn fail(&self, vault: &Vault, slot: usize, e: &Error) -> ! {
        self.write(vault, slot, e.exit_code());
        fail(e)
    }
}

/// "account 1 (work) quota exhausted"
fn what(slot: usize, label: Option<String>, hit: &Hit) -> String {
    let who = match label {
        Some(label) => format!("account {slot} ({label})"),
        None => format!("account {slot}"),
    };
    let why = match hit.class {
        Class::Quota => "quota exhausted",
        Class::Throttle => "rate limited",
        Class::Auth => "was refused (needs login)",
    };
    format!("{who} {why}")
}

/// The label of `slot`: the launch's when it is that slot (no file read), else none.
fn launch_label(slot: usize, launch: &Launch) -> Option<String> {
    (launch.slot == slot)
        .then(|| launch.label.clone())
        .flatten()
}

fn notice(line: &str) {
    crate::error::say(line);
}

/// Time until `t`, when that is within `max`.
fn within(t: chrono::DateTime<chrono::Utc>, max: Duration) -> Option<Duration> {
    let pause = (t - chrono::Utc::now()).to_std().unwrap_or_default();
    (pause <= max).then_some(pause)
}

/// Picks the account for the first attempt. `None` means "run qwen untouched" (after a warning);
/// every account being spent ends the run with exit 75 unless `rotation.yaml` says to wait.
fn prepare(vault: &Vault, pinned: Option<&str>) -> Option<Launch> {
    match vault.prepare(pinned) {
        Ok(launch) => Some(launch),
        Err(Error::Exhausted { earliest }) => {
            let wait = earliest
                .filter(|_| vault.config.on_exhausted == OnExhausted::Wait)
                .and_then(|t| within(t, vault.config.max_wait));
            match wait {
                Some(pause) => {
                    notice(&format!(
                        "all accounts exhausted; waiting {} for the first one to return",
                        human_duration(chrono::TimeDelta::from_std(pause).unwrap_or_default())
                    ));
                    std::thread::sleep(pause);
                    prepare(vault, pinned)
                }
                None => fail(&Error::Exhausted { earliest }),
            }
        }
        Err(e @ Error::NoSuchSlot(_)) => fail(&Error::Usage(e.to_string())),
        Err(e) => {
            warn(format!("{e}; running qwen without rotation"));
            None
        }
    }
}

/// The variables an attempt adds to the inherited environment (API-key slots).
fn child_env(launch: &Launch) -> Vec<(OsString, OsString)> {
    launch
        .env
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v.expose())))
        .collect()
}

/// Everything an attempt on `launch` adds to the environment: the slot's variables (or the
/// relay's), and the auth-type override when the slot's kind is not what qwen's settings select.
fn attempt_env(
    vault: &Vault,
    launch: &Launch,
    relay: Option<&Relay>,
    args: &[OsString],
) -> Vec<(OsString, OsString)> {
    let mut env = slot_env(vault, launch, relay, args);
    let selected = settings::Selected::read(&vault.paths);
    if let Some(why) = settings::blocked(launch, &selected) {
        warn(why);
    }
    match settings::override_env(&vault.paths, launch, &selected) {
        Ok(extra) => env.extend(extra),
        Err(e) => warn(format!(
            "cannot write the auth-type override under {}: {e}",
            vault.paths.home.display()
        )),
    }
    env
}

/// With the relay in the path, qwen gets the relay's address and the run's own token in place
/// of the provider's URL and the real key: the real key never enters qwen's environment.
/// Without it, the real key goes in only when qwen will send it to the slot's own base URL.
fn slot_env(
    vault: &Vault,
    launch: &Launch,
    relay: Option<&Relay>,
    args: &[OsString],
) -> Vec<(OsString, OsString)> {
    if let Some(env) = relay.and_then(|r| r.child_env(launch)) {
        return env;
    }
    let mut env = child_env(launch);
    if let Some(why) = relay::key_withheld(&vault.paths, launch, args) {
        warn(why);
        env.retain(|(k, _)| k == "OPENAI_BASE_URL" || k == "OPENAI_MODEL");
    }
    env
}

/// Replaces this process with the real qwen.
fn exec(real: &Path, args: &[OsString], env: &[(OsString, OsString)]) -> ! {
    let mut cmd = Command::new(real);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let e = cmd.exec();
    fail(&spawn_error(real, e))
}

/// EAGAIN (RLIMIT_NPROC, a full pid table) or ENOMEM from fork(2) or pthread_create(3).
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EAGAIN | nix::libc::ENOMEM)
    )
}

fn spawn_error(real: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::RealNotFound {
            searched: Vec::new(),
            override_path: Some(real.to_path_buf()),
        },
        _ => Error::RealNotExecutable {
            path: real.to_path_buf(),
            source: e,
        },
    }
}

/// Reports a failure of the shim itself and exits with its code.
pub fn fail(e: &Error) -> ! {
    crate::error::say(e);
    std::process::exit(e.exit_code())
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
            "cannot watch signals ({e}); a kill aimed at the shim will not reach qwen"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_shot(args: &[&str]) -> bool {
        is_one_shot(&args.iter().map(OsString::from).collect::<Vec<_>>())
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
}
