//! The demo's steps, in order, each printed when it ends with the time it took: the real CLI
//! found and started once, the temporary home, the built-in provider, two accounts added with
//! `--rotation-add --api-key`, one headless run through this same binary (the request on
//! account 1, its quota answer, the switch, the answer from account 2), the log's record of the
//! switch, and the status table.
//!
//! Invariant: every step goes through the product's own commands (this binary, run as a child
//! in the home with a scrubbed environment); the script only watches (the provider's record of
//! which key was asked, the children's outputs) and reports. Its output is plain text.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::profile::Profile;
use crate::text::printable;

use super::child::{
    FAILED, Fail, STEP_DEADLINE, Step, ended, ended_with, interrupted, last_line, run_command,
    run_shim,
};
use super::home::{Finished, Home, Running, Stop, Waited};
use super::provider::{self, Provider, Seen};
use super::real::{Cli, PROMPT, real_version};

/// The headless run's deadline: a run through the relay takes seconds; qwen's own retries of a
/// quota error would take minutes.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const KEY_SPENT: &str = "demo-key-account-1-spent";
const KEY_FRESH: &str = "demo-key-account-2-fresh";

/// Runs the demo for `profile`; returns the exit code.
pub fn run(profile: &'static Profile) -> i32 {
    let stop = Stop::install();
    let mut out = Out::new();
    match demo(profile, &stop, &mut out) {
        Ok(()) => 0,
        Err(Fail(code, why)) => {
            crate::error::say(format_args!("demo: {why}"));
            code
        }
    }
}

fn demo(profile: &'static Profile, stop: &Stop, out: &mut Out) -> Step<()> {
    let name = profile.name;
    let real = crate::locate::real_qwen().map_err(|e| Fail(e.exit_code(), e.to_string()))?;
    let home = Home::create(profile).map_err(|e| {
        Fail(
            FAILED,
            format!(
                "cannot create a temporary home in {} ({}); set TMPDIR to a writable directory",
                std::env::temp_dir().display(),
                crate::text::io_reason(&e)
            ),
        )
    })?;
    let (provider, seen) =
        Provider::start(profile, KEY_SPENT, KEY_FRESH).map_err(|e| {
            Fail(
                FAILED,
                format!(
                    "cannot open a port on 127.0.0.1 for the demo's provider ({}); the demo needs loopback TCP (is the lo interface up?)",
                    crate::text::io_reason(&e)
                ),
            )
        })?;
    out.say(&format!(
        "{name} --rotation-demo: a quota rotation on the real {name}, offline, in a temporary home;\n\
         nothing of yours is read or written. The provider is built into this shim\n\
         ({}): account 1's key is out of quota, account 2's key answers.\n",
        provider.base_url()
    ));

    let version = real_version(&home, &real.path, profile, stop)?;
    home.onboard(&version).map_err(|e| {
        Fail(
            FAILED,
            format!(
                "cannot write {name}'s config in the temporary home {} ({}); set TMPDIR to a writable directory",
                printable(&home.root().to_string_lossy()),
                crate::text::io_reason(&e)
            ),
        )
    })?;
    let cli = Cli::of(profile);
    out.step(&format!(
        "the real {name}: {} (version {})",
        printable(&real.path.to_string_lossy()),
        printable(&version)
    ));
    out.step(&format!(
        "a temporary home {} (0700; HOME, {}, TMPDIR and the working directory in it)",
        printable(&home.root().to_string_lossy()),
        profile.home.var
    ));
    let me = std::env::current_exe().map_err(|e| {
        Fail(
            FAILED,
            format!("cannot find this program's own file ({e}); run it by its path"),
        )
    })?;
    for (n, key, label) in [(1, KEY_SPENT, "spent"), (2, KEY_FRESH, "fresh")] {
        add_account(&home, &me, &provider, key, label, cli.model, stop)?;
        out.step(&format!(
            "account {n} ({label}) added: {name} --rotation-add --api-key {label} --base-url {} --model {}",
            provider.base_url(),
            cli.model
        ));
    }

    let (finished, asked) = headless_run(&home, &me, profile, &cli, &seen, stop, out)?;
    check_run(&finished, name)?;
    let answer = String::from_utf8_lossy(&finished.stdout).trim().to_string();
    out.step(&format!(
        "{name} exited 0 and printed account 2's answer: \"{}\"",
        printable(&answer)
    ));
    // What a person sees on stderr instead of the quota error: the shim's own line.
    for line in String::from_utf8_lossy(&finished.stderr).lines() {
        if line.starts_with("qwen-rotation:") {
            out.say(&format!("              stderr: {}", printable(line)));
        }
    }
    // How often the provider was asked on each key: account 1's quota answer came once.
    out.say(&format!(
        "              provider: account 1 asked {}, account 2 asked {}",
        times(asked[0]),
        times(asked[1])
    ));
    let switch = logged_switch(&home, &me, stop)?;
    out.step(&format!("rotation.log: {switch}"));

    out.say(&format!("\n{name} --rotation-status in the demo home:\n"));
    // On a terminal the table is the command's own, coloured as it colours it.
    let mut cmd = home.shim(&me);
    cmd.arg("--rotation-status");
    if std::io::stdout().is_terminal() {
        cmd.stdout(std::process::Stdio::inherit());
    }
    let status = run_command(cmd, &me, None, STEP_DEADLINE, stop)?;
    out.raw(&status.stdout);
    // A Ctrl-C after the last wait still means the person stopped it.
    if let Some(sig) = stop.signal() {
        return Err(interrupted(sig));
    }
    out.say(&format!(
        "\nRotation works: account 1 ran out of quota, the shim moved the request to account 2,\n\
         and {name} answered without seeing the error ({:.1} s in all). The temporary home is removed.",
        out.started.elapsed().as_secs_f64()
    ));
    drop(provider);
    drop(home);
    Ok(())
}

/// `printf %s KEY | <me> --rotation-add --api-key LABEL --base-url URL --model M` in the home.
fn add_account(
    home: &Home,
    me: &Path,
    provider: &Provider,
    key: &str,
    label: &str,
    model: &str,
    stop: &Stop,
) -> Step<()> {
    let url = provider.base_url();
    let args = [
        "--rotation-add",
        "--api-key",
        label,
        "--base-url",
        url.as_str(),
        "--model",
        model,
    ];
    let done = run_shim(home, me, &args, Some(key.as_bytes()), stop)?;
    match done.waited {
        Waited::Exited(s) if s.success() => Ok(()),
        _ => Err(Fail(
            FAILED,
            format!(
                "adding the demo account {label} failed: --rotation-add --api-key {}{}",
                ended(&done.waited),
                last_line(&done.stderr)
            ),
        )),
    }
}

/// `<me> [-p] "PROMPT" --output-format text` in the home, printing each request the provider
/// answers as it happens.
fn headless_run(
    home: &Home,
    me: &Path,
    profile: &Profile,
    cli: &Cli,
    seen: &Receiver<Seen>,
    stop: &Stop,
    out: &mut Out,
) -> Step<(Finished, [usize; 2])> {
    let name = profile.name;
    let args = cli.run_args();
    let mut cmd = home.shim(me);
    cmd.args(&args);
    let running = Running::spawn(cmd, None).map_err(|e| {
        Fail(
            FAILED,
            format!(
                "cannot start {name} through the shim: {}",
                crate::text::io_reason(&e)
            ),
        )
    })?;
    out.step(&format!(
        "running {name} {} (headless, through the shim)",
        args.iter()
            .map(|a| if *a == PROMPT {
                format!("\"{a}\"")
            } else {
                (*a).to_string()
            })
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let (quota_code, quota_message) = provider::quota_words(profile.api.wire);
    let mut spent_at: Option<Instant> = None;
    let mut answered = false;
    let mut asked = [0usize; 2];
    let finished = running.finish_with(Instant::now() + RUN_DEADLINE, stop, || {
        while let Ok(s) = seen.try_recv() {
            if let Some(n @ 1..=2) = s.account {
                asked[n - 1] += 1;
            }
            match (s.account, s.status) {
                (Some(1), _) if spent_at.is_none() => {
                    spent_at = Some(s.at);
                    out.step_at(
                        s.at,
                        &format!(
                            "request on account 1 → {} {} \"{}\"",
                            s.status,
                            quota_code,
                            quota_message
                        ),
                    );
                }
                (Some(2), 200) if !answered && spent_at.is_some() => {
                    answered = true;
                    out.step_at(
                        s.at,
                        &format!(
                            "switch: the shim marked account 1 out of quota and sent the same request \
                             on account 2 → 200 ({})",
                            if s.stream { "streamed" } else { "one JSON body" }
                        ),
                    );
                }
                _ => {}
            }
        }
    });
    match finished.waited {
        Waited::Interrupted(sig) => Err(interrupted(sig)),
        Waited::TimedOut => Err(Fail(
            FAILED,
            format!(
                "the answer never came: {name} did not finish within {} s{}",
                RUN_DEADLINE.as_secs(),
                if spent_at.is_none() {
                    format!("; the provider was never asked (is {name} too old for this Node.js?)")
                } else {
                    String::new()
                }
            ),
        )),
        Waited::Exited(_) if !answered => Err(Fail(
            FAILED,
            format!(
                "the answer never came: {} {}{}",
                if spent_at.is_some() {
                    "account 1 was asked, account 2 never after it;"
                } else {
                    "account 1 was never asked;"
                },
                name,
                ended_with(&finished)
            ),
        )),
        Waited::Exited(_) => Ok((finished, asked)),
    }
}

/// "once", "twice", "3 times".
fn times(n: usize) -> String {
    match n {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

/// The run ended 0 with account 2's answer on stdout.
fn check_run(done: &Finished, name: &str) -> Step<()> {
    let ok = matches!(done.waited, Waited::Exited(s) if s.success());
    let stdout = String::from_utf8_lossy(&done.stdout);
    if ok && stdout.contains(&provider::answer_text(name)) {
        return Ok(());
    }
    Err(Fail(
        FAILED,
        format!(
            "account 2 answered, but {name}{}",
            if ok {
                format!(" printed something else: \"{}\"", printable(stdout.trim()))
            } else {
                ended_with(done)
            }
        ),
    ))
}

/// The `account_switch` line the run wrote, read with `--rotation-log --json`.
fn logged_switch(home: &Home, me: &Path, stop: &Stop) -> Step<String> {
    let done = run_shim(
        home,
        me,
        &["--rotation-log", "--json", "--tail", "0"],
        None,
        stop,
    )?;
    let entries: Value = serde_json::from_slice(&done.stdout).unwrap_or(Value::Null);
    entries
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["event"] == "account_switch"
                && e["from"].as_u64() == Some(1)
                && e["to"].as_u64() == Some(2)
        })
        .map(|e| {
            format!(
                "account_switch from 1 to 2, reason {}",
                printable(e["reason"].as_str().unwrap_or("?"))
            )
        })
        .ok_or_else(|| {
            Fail(
                FAILED,
                "account 2 answered, but rotation.log has no switch from account 1 to 2".into(),
            )
        })
}

/// The numbered step lines, each with the time since the step before it.
struct Out {
    started: Instant,
    last: Instant,
    n: usize,
}

impl Out {
    fn new() -> Out {
        let now = Instant::now();
        Out {
            started: now,
            last: now,
            n: 0,
        }
    }

    fn step(&mut self, text: &str) {
        self.step_at(Instant::now(), text);
    }

    /// A step that ended at `at` (a request's arrival, reported a little later).
    fn step_at(&mut self, at: Instant, text: &str) {
        self.n += 1;
        let took = at.saturating_duration_since(self.last);
        self.last = at.max(self.last);
        self.say(&format!(
            "{:>2}. [{:>5.2} s] {text}",
            self.n,
            took.as_secs_f64()
        ));
    }

    fn say(&self, text: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{text}");
        let _ = o.flush();
    }

    fn raw(&self, bytes: &[u8]) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(bytes);
        let _ = o.flush();
    }
}
