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

use crate::error::exit;
use crate::profile::{Profile, Wire};
use crate::text::printable;

use super::home::{Finished, Home, Running, Stop, Waited};
use super::provider::{self, Provider, Seen};

/// The demo's exit codes besides 0 (rotation shown), 126 and 127 (the real CLI is not
/// executable, not found): 1 the rotation did not happen (the reason is on stderr), and
/// 128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
pub const FAILED: i32 = exit::FAILURE;

/// The headless run's deadline: a run through the relay takes seconds; qwen's own retries of a
/// quota error would take minutes.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// Any other child (`--version`, `--rotation-add`, `--rotation-status`, `node --version`).
const STEP_DEADLINE: Duration = Duration::from_secs(30);

const KEY_SPENT: &str = "demo-key-account-1-spent";
const KEY_FRESH: &str = "demo-key-account-2-fresh";
const PROMPT: &str = "Say hello in one line.";

/// What the demo does differently per CLI, beyond what its profile says.
struct Cli {
    /// The model the accounts are added with.
    model: &'static str,
    /// The option that runs one prompt headless; None: the prompt alone does (qwen).
    one_shot: Option<&'static str>,
    /// An older release for a Node.js older than the latest release needs: (the release, the
    /// Node.js it runs on, the Node.js the latest needs).
    older: Option<(&'static str, u64, u64)>,
}

impl Cli {
    fn of(profile: &Profile) -> Cli {
        match profile.api.wire {
            Wire::OpenAi => Cli {
                model: "demo-model",
                one_shot: None,
                older: Some(("0.12.0", 20, 22)),
            },
            // A prompt alone starts gemini's interactive session; `-p` runs it headless.
            Wire::Gemini => Cli {
                model: "gemini-2.5-flash",
                one_shot: profile.argv.one_shot.first().copied(),
                older: None,
            },
            // `-p` runs one prompt headless; a prompt alone starts the terminal UI.
            Wire::Anthropic => Cli {
                model: profile.api.example_model,
                one_shot: profile.argv.one_shot.first().copied(),
                older: None,
            },
        }
    }

    /// The headless run's arguments: `[-p] PROMPT --output-format text`.
    /// The older release as a fix for a Node.js too old (`, or P@0.12.0 (it runs on Node.js
    /// 20)`), or nothing.
    fn older_fix(&self, profile: &Profile) -> String {
        self.older
            .map(|(v, node, _)| {
                format!(
                    ", or {}@{v} (it runs on Node.js {node})",
                    profile.npm_package
                )
            })
            .unwrap_or_default()
    }

    /// The same for a CLI that does not start (`, or on Node.js older than 22 install P@0.12.0`).
    fn older_install(&self, profile: &Profile) -> String {
        self.older
            .map(|(v, _, latest)| {
                format!(
                    ", or on Node.js older than {latest} install {}@{v}",
                    profile.npm_package
                )
            })
            .unwrap_or_default()
    }

    fn run_args(&self) -> Vec<&'static str> {
        self.one_shot
            .into_iter()
            .chain([PROMPT, "--output-format", "text"])
            .collect()
    }
}

/// Why the demo stopped early: the exit code and one line.
struct Fail(i32, String);

type Step<T> = Result<T, Fail>;

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

/// `--version` of the real CLI, run directly in the home: does it start here at all (a release
/// too new for this Node.js does not)? Its output, trimmed.
fn real_version(home: &Home, real: &Path, profile: &Profile, stop: &Stop) -> Step<String> {
    let name = profile.name;
    if let Some(why) = node_too_old(home, real, profile, stop) {
        return Err(Fail(FAILED, why));
    }
    let done = run_child(home, real, &["--version"], None, STEP_DEADLINE, stop)?;
    match done.waited {
        Waited::Exited(s) if s.success() => {
            Ok(String::from_utf8_lossy(&done.stdout).trim().to_string())
        }
        _ => Err(Fail(
            FAILED,
            format!(
                "the real {name} ({}) does not start here: `{name} --version` {}{}; reinstall it (npm install -g {}){}",
                printable(&real.to_string_lossy()),
                ended(&done.waited),
                last_line(&done.stderr),
                profile.npm_package,
                Cli::of(profile).older_install(profile)
            ),
        )),
    }
}

/// The real CLI is a Node.js script whose package declares the Node.js it needs
/// (`engines.node: ">=22.0.0"`), and the `node` on PATH is older: the reason, in one line. None
/// when either is unknown, or when the CLI is no Node.js script (claude's npm package installs a
/// native binary and declares an `engines.node` it does not need to run).
fn node_too_old(home: &Home, real: &Path, profile: &Profile, stop: &Stop) -> Option<String> {
    let real_file = std::fs::canonicalize(real).ok()?;
    if !runs_on_node(&real_file) {
        return None;
    }
    let package = real_file.ancestors().skip(1).take(6).find_map(|dir| {
        let text = crate::files::read_text(&dir.join("package.json"), 1 << 20).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v.get("name")?.as_str()? == profile.npm_package).then_some(v)
    })?;
    let needs = package.pointer("/engines/node")?.as_str()?.to_string();
    let needed: u64 = needs
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split('.')
        .next()?
        .parse()
        .ok()?;
    let node = run_child(
        home,
        Path::new("node"),
        &["--version"],
        None,
        STEP_DEADLINE,
        stop,
    )
    .ok()?;
    let have = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let major: u64 = have
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()?;
    let version = package.get("version")?.as_str()?;
    (major < needed).then(|| {
        format!(
            "the real {} {version} needs Node.js {needs} and node on PATH is {}; install Node.js {needed} or later{}",
            profile.name,
            printable(&have),
            Cli::of(profile).older_fix(profile)
        )
    })
}

/// `path` starts with a `#!` line naming node (an npm CLI's JavaScript entry point).
fn runs_on_node(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 128];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let first = head[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    first.starts_with(b"#!") && first.windows(4).any(|w| w == b"node")
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

/// Runs `program args` in the home until it ends, the deadline passes or a signal arrives.
fn run_child(
    home: &Home,
    program: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    deadline: Duration,
    stop: &Stop,
) -> Step<Finished> {
    let mut cmd = home.command(program);
    cmd.args(args);
    run_command(cmd, program, input, deadline, stop)
}

/// Runs this binary, as the profile's CLI, with `args` in the home until it ends, the deadline
/// passes or a signal arrives.
fn run_shim(
    home: &Home,
    me: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    stop: &Stop,
) -> Step<Finished> {
    let mut cmd = home.shim(me);
    cmd.args(args);
    run_command(cmd, me, input, STEP_DEADLINE, stop)
}

/// Runs `cmd` (from [`Home::command`]) until it ends, the deadline passes or a signal arrives.
fn run_command(
    cmd: std::process::Command,
    program: &Path,
    input: Option<&[u8]>,
    deadline: Duration,
    stop: &Stop,
) -> Step<Finished> {
    let shown = printable(&program.to_string_lossy());
    let running = Running::spawn(cmd, input).map_err(|e| {
        Fail(
            FAILED,
            format!("cannot start {shown}: {}", crate::text::io_reason(&e)),
        )
    })?;
    let done = running.finish_with(Instant::now() + deadline, stop, || {});
    match done.waited {
        Waited::Interrupted(sig) => Err(interrupted(sig)),
        _ => Ok(done),
    }
}

fn interrupted(sig: i32) -> Fail {
    Fail(
        128 + sig,
        "interrupted; the demo's child was stopped and its temporary home removed".into(),
    )
}

/// "exited 1", "was killed by signal 9", "did not finish within the deadline".
fn ended(w: &Waited) -> String {
    use std::os::unix::process::ExitStatusExt;
    match w {
        Waited::Exited(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".into(),
        },
        Waited::TimedOut => "did not finish within the deadline".into(),
        Waited::Interrupted(_) => "was interrupted".into(),
    }
}

fn ended_with(done: &Finished) -> String {
    format!(" {}{}", ended(&done.waited), last_line(&done.stderr))
}

/// `: <the last non-empty line>` of a child's stderr, printable, or nothing.
fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| format!(": {}", printable(l)))
        .unwrap_or_default()
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
