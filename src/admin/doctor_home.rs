//! `qwen --rotation-<command>`: the management commands a person (or a script) runs.
//!
//! Invariants:
//! - One command per invocation. Parsing is complete before anything runs: bad usage prints
//!   one line `qwen-rotation: <problem>; <fix>` on stderr and exits 2, having touched nothing.
//! - Every change goes through a `Vault` method (one locked transaction each); this file only
//!   parses, asks, and prints.
//! - No output path formats a secret: keys are read from stdin or a no-echo prompt, never from
//!   argv, and only `Secret` carries them to the vault.
//! - Read commands take `--json` (one JSON document on stdout); human output is an aligned
//!   table with relative times, coloured only on a terminal without NO_COLOR.
//!
//! Exit codes: 0 done · 1 failed (or `next`: no other account, `doctor`: problems remain) ·
//! 2 bad usage, including an account number or label that does not exist.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::audit::{self, Event, events};
use crate::cli;
use crate::config::{Config, Paths, Strategy, human_duration};
use crate::error::{Error, exit};
use crate::files;
use crate::state::{Account, Loaded, State, Status, rfc3339};
use crate::text::{acts_on_terminal, printable, redact_url};
use crate::vault::{self, ApiKeySlot, Kind, LiveFile, Overview, Secret, Vault};

/// Runs one management command; returns the exit code.
pub fn run(args: &[String], paths: &Paths) -> i32 {
    let parsed = match parse(args) {
        Ok(p) => p,
        Err(usage) => {
            crate::error::say(usage);
            return exit::USAGE;
        }
    };
    let (config, problem) = Config::load(&paths.config);
    if let Some(problem) = problem.filter(|_| {
        !matches!(
            parsed.command,
            Command::Doctor { .. } | Command::Help | Command::Version
        )
    }) {
        crate::warn(problem);
    }
    // A pool declared in the environment replaces the slot files; a malformed one is bad usage.
    let paths = if parsed.command == Command::Help {
        paths.clone()
    } else {
        match crate::env_pool::from_env(&paths.home) {
            Ok(Some(pool)) => crate::env_pool::paths_for(paths.clone(), pool),
            Ok(None) => paths.clone(),
            Err(problem) => {
                crate::error::say(problem);
                return exit::USAGE;
            }
        }
    };
    let paths = &paths;
    let ui = Ui::detect(parsed.json);
    let vault = Vault::open(paths.clone(), config);
    match execute(&parsed.command, &vault, &ui) {
        Ok(code) => code,
        Err(e) => fail(&e, paths),
    }
}

/// Prints an error the way every command does, and picks its exit code.
fn fail(e: &Error, paths: &Paths) -> i32 {
    let hint = match e {
        Error::Io { source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            format!(
                "; make {} writable by you, or set QWEN_HOME to a writable directory (qwen --rotation-doctor shows more)",
                paths.home.display()
            )
        }
        _ => String::new(),
    };
    crate::error::say(format_args!("{e}{hint}"));
    match e {
        Error::NoSuchSlot(_) => exit::USAGE,
        other => other.exit_code(),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Help,
    Version,
    Status { watch: bool },
    Stats,
    Switch(String),
    Next,
    Add(AddArgs),
    Setup,
    Remove(String),
    Enable(String),
    Disable(String),
    Reset(Option<String>),
    Label(String, Option<String>),
    Log { tail: Option<usize> },
    Doctor { fix: bool },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AddArgs {
    label: Option<String>,
    login: bool,
    api_key: bool,
    base_url: Option<String>,
    model: Option<String>,
    env_key: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    command: Command,
    json: bool,
}

/// Options each command accepts (besides `--help`).
fn options_of(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "--rotation-status" | "--rotation-list" => &["--json", "--watch"],
        "--rotation-stats" | "--rotation-version" => &["--json"],
        "--rotation-log" => &["--json", "--tail"],
        "--rotation-doctor" => &["--json", "--fix"],
        "--rotation-add" => &["--login", "--api-key", "--base-url", "--model", "--env-key"],
        _ => &[],
    }
}

/// Options that take a value.
const VALUED: &[&str] = &["--tail", "--base-url", "--model", "--env-key"];

fn parse(args: &[String]) -> Result<Parsed, String> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    if end < args.len() && end + 1 < args.len() {
        return Err(format!(
            "unexpected arguments after `--` for a management command; run the command alone (qwen {})",
            args[..end].join(" ")
        ));
    }
    let args = &args[..end];
    let mut command: Option<&str> = None;
    for a in args {
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        if !name.starts_with("--rotation-") {
            continue;
        }
        if cli::MODIFIERS.contains(&name) {
            return Err(format!(
                "{name} applies to a qwen run, not to a management command; remove it"
            ));
        }
        if !cli::COMMANDS.contains(&name) {
            return Err(cli::unknown_flag(name));
        }
        if let Some(first) = command {
            return Err(format!(
                "{first} and {name} are two commands; run them one at a time"
            ));
        }
        command = Some(name);
    }
    let Some(cmd) = command else {
        return Err("no management command given; see qwen --rotation-help".into());
    };

    let allowed = options_of(cmd);
    let mut json = false;
    let mut help = false;
    let mut opts: BTreeMap<&'static str, Option<String>> = BTreeMap::new();
    let mut positional: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a, None),
        };
        if name == cmd {
            // `--rotation-switch=3` carries its argument inline.
            if let Some(v) = inline {
                positional.push(v);
            }
            continue;
        }
        if name == "--help" || name == "-h" {
            help = true;
            continue;
        }
        // `-3` is a (bad) account number, not an option: let slot_spec explain it.
        if !name.starts_with('-') || name == "-" || a.parse::<i64>().is_ok() {
            positional.push(a.to_string());
            continue;
        }
        let Some(opt) = allowed
            .iter()
            .copied()
            .chain(std::iter::once("--json"))
            .find(|o| *o == name)
        else {
            return Err(unknown_option(name, cmd, allowed));
        };
        if opt == "--json" && !allowed.contains(&"--json") {
            return Err(format!("{cmd} has no --json output; remove --json"));
        }
        if opts.contains_key(opt) {
            return Err(format!("{opt} is given twice; give it once"));
        }
        if opt == "--api-key" && inline.is_some() {
            return Err(key_in_argv());
        }
        let value = if VALUED.contains(&opt) {
            match inline {
                Some(v) => Some(v),
                None => match args.get(i) {
                    Some(v) if !v.starts_with("--") => {
                        i += 1;
                        Some(v.clone())
                    }
                    _ => return Err(format!("{opt} needs a value; e.g. {}", example_of(opt))),
                },
            }
        } else if inline.is_some() {
            return Err(format!("{opt} takes no value; write {opt} alone"));
        } else {
            None
        };
        if opt == "--json" {
            json = true;
        }
        opts.insert(opt, value);
    }
    if help {
        return Ok(Parsed {
            command: Command::Help,
            json: false,
        });
    }

    let arity = |min: usize, max: usize, what: &str| -> Result<(), String> {
        if positional.len() < min {
            Err(format!("{cmd} needs {what}; e.g. {}", example_of(cmd)))
        } else if positional.len() > max {
            Err(format!(
                "unexpected argument `{}` for {cmd}; usage: {}",
                shown(&positional[max]),
                example_of(cmd)
            ))
        } else {
            Ok(())
        }
    };
    let command = match cmd {
        "--rotation-help" => {
            arity(0, 0, "")?;
            Command::Help
        }
        "--rotation-version" => {
            arity(0, 0, "")?;
            Command::Version
        }
        "--rotation-status" | "--rotation-list" => {
            arity(0, 0, "")?;
            Command::Status {
                watch: opts.contains_key("--watch"),
            }
        }
        "--rotation-stats" => {
            arity(0, 0, "")?;
            Command::Stats
        }
        "--rotation-switch" => {
            arity(1, 1, "an account number or label")?;
            Command::Switch(slot_spec(&positional[0])?)
        }
        "--rotation-next" => {
            arity(0, 0, "")?;
            Command::Next
        }
        "--rotation-add" => {
            let login = opts.contains_key("--login");
            let api_key = opts.contains_key("--api-key");
            if login && api_key {
                return Err(
                    "--login and --api-key are two ways to add an account; choose one".into(),
                );
            }
            for o in ["--base-url", "--model", "--env-key"] {
                if opts.contains_key(o) && !api_key {
                    return Err(format!("{o} belongs to an API-key account; add --api-key"));
                }
            }
            if api_key && positional.iter().any(|p| looks_like_key(p)) {
                return Err(key_in_argv());
            }
            if opts.values().flatten().any(|v| looks_like_key(v)) {
                return Err(key_in_argv());
            }
            arity(0, 1, "")?;
            let label = positional.first().map(|l| label_arg(l)).transpose()?;
            let value = |o: &str| opts.get(o).cloned().flatten();
            let base_url = value("--base-url");
            if let Some(u) = &base_url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(format!(
                    "--base-url must be an http:// or https:// URL, not `{}`; e.g. --base-url https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
                    shown(&redact_url(u))
                ));
            }
            let env_key = value("--env-key");
            if let Some(k) = &env_key
                && !vault::valid_env_name(k)
            {
                return Err(format!(
                    "--env-key `{}` is not a variable name; e.g. --env-key OPENAI_API_KEY",
                    shown(k)
                ));
            }
            let model = value("--model");
            if model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                return Err("--model is empty; name a model, e.g. --model qwen3-coder-plus".into());
            }
            Command::Add(AddArgs {
                label,
                login,
                api_key,
                base_url,
                model,
                env_key,
            })
        }
        "--rotation-setup" => {
            arity(0, 0, "")?;
            Command::Setup
        }
        "--rotation-remove" | "--rotation-enable" | "--rotation-disable" => {
            arity(1, 1, "an account number or label")?;
            let spec = slot_spec(&positional[0])?;
            match cmd {
                "--rotation-remove" => Command::Remove(spec),
                "--rotation-enable" => Command::Enable(spec),
                _ => Command::Disable(spec),
            }
        }
        "--rotation-reset" => {
            arity(0, 1, "")?;
            match positional.first() {
                None => Command::Reset(None),
                Some(a) if a.eq_ignore_ascii_case("all") => Command::Reset(None),
                Some(a) => Command::Reset(Some(slot_spec(a)?)),
            }
        }
        "--rotation-label" => {
            arity(2, 2, "an account and a label")?;
            let label = if positional[1].is_empty() {
                None
            } else {
                Some(label_arg(&positional[1])?)
            };
            Command::Label(slot_spec(&positional[0])?, label)
        }
        "--rotation-log" => {
            arity(0, 0, "")?;
            let tail = match opts.get("--tail").cloned().flatten() {
                None => None,
                Some(t) => Some(t.parse::<usize>().map_err(|_| {
                    format!(
                        "--tail takes a number of lines, not `{}`; e.g. --tail 20",
                        shown(&t)
                    )
                })?),
            };
            Command::Log { tail }
        }
        "--rotation-doctor" => {
            arity(0, 0, "")?;
            Command::Doctor {
                fix: opts.contains_key("--fix"),
            }
        }
        other => return Err(cli::unknown_flag(other)),
    };
    Ok(Parsed { command, json })
}

fn unknown_option(name: &str, cmd: &str, allowed: &[&str]) -> String {
    let best = allowed
        .iter()
        .chain(["--json", "--help"].iter())
        .map(|o| (cli::edit_distance(name, o), *o))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, o)) if allowed.contains(&o) || o == "--help" => {
            format!(
                "unknown option {} for {cmd}; did you mean {o}?",
                shown(name)
            )
        }
        _ if allowed.is_empty() => format!("{cmd} takes no options; remove {}", shown(name)),
        _ => format!(
            "unknown option {} for {cmd}; it accepts {}",
            shown(name),
            allowed.join(", ")
        ),
    }
}

fn key_in_argv() -> String {
    "an API key never goes on the command line (shell history and the process list would keep it); \
     pipe it: printf %s \"$KEY\" | qwen --rotation-add --api-key LABEL, or leave it out to be asked for it"
        .into()
}

/// An argument shown in an error, cut short (it may be a mistyped secret).
fn shown(text: &str) -> String {
    if looks_like_key(text) {
        return "<hidden: looks like a key>".into();
    }
    let mut s: String = text
        .chars()
        .filter(|c| !acts_on_terminal(*c))
        .take(40)
        .collect();
    if text.chars().count() > 40 {
        s.push('…');
    }
    s
}

/// Does this look like an API key or token (rather than a label or a number)?
fn looks_like_key(text: &str) -> bool {
    let t = text.trim();
    const PREFIXES: &[&str] = &[
        "sk-", "sk_", "sess-", "AIza", "ghp_", "gho_", "xox", "Bearer ", "eyJ",
    ];
    if t.len() >= 12 && PREFIXES.iter().any(|p| t.starts_with(p)) {
        return true;
    }
    t.len() >= 32
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.=+/".contains(c))
        && t.chars().any(|c| c.is_ascii_digit())
        && t.chars().any(|c| c.is_ascii_alphabetic())
}

/// An account argument: a number (1-based) or a label.
fn slot_spec(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(
            "the account is empty; give its number or label (qwen --rotation-status lists them)"
                .into(),
        );
    }
    if let Ok(n) = t.parse::<i64>() {
        if n < 1 {
            return Err(format!(
                "account numbers start at 1, not {n}; qwen --rotation-status lists them"
            ));
        }
        return Ok(n.to_string());
    }
    if looks_like_key(t) {
        return Err(key_in_argv());
    }
    Ok(t.to_string())
}

/// A label: short, printable, no spaces, not a number (numbers are slot numbers).
fn label_arg(text: &str) -> Result<String, String> {
    let t = text.trim();
    if looks_like_key(t) {
        return Err(key_in_argv());
    }
    if t.is_empty() || t.chars().count() > 40 {
        return Err("a label has 1 to 40 characters; e.g. work or personal@example.com".into());
    }
    if t.chars().any(char::is_whitespace) || printable(t) != t {
        return Err(format!(
            "the label `{}` contains spaces or control characters; use e.g. work-2",
            shown(t)
        ));
    }
    if t.starts_with('-') {
        return Err(format!(
            "a label cannot start with `-` (`{}` looks like an option); choose one that starts with a letter",
            shown(t)
        ));
    }
    if t.parse::<u64>().is_ok() || t.eq_ignore_ascii_case("all") {
        return Err(format!(
            "`{t}` would read as an account number or `all`; choose a label with letters"
        ));
    }
    Ok(t.to_string())
}

fn example_of(flag: &str) -> &'static str {
    match flag {
        "--rotation-switch" => "qwen --rotation-switch 2 (or a label: qwen --rotation-switch work)",
        "--rotation-remove" => "qwen --rotation-remove 2",
        "--rotation-enable" => "qwen --rotation-enable 2",
        "--rotation-disable" => "qwen --rotation-disable 2",
        "--rotation-reset" => "qwen --rotation-reset 2 (or all)",
        "--rotation-label" => "qwen --rotation-label 2 work",
        "--rotation-add" => "qwen --rotation-add work",
        "--tail" => "--tail 20",
        "--base-url" => "--base-url https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        "--model" => "--model qwen3-coder-plus",
        "--env-key" => "--env-key OPENAI_API_KEY",
        _ => "qwen --rotation-help",
    }
}

// ---------------------------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------------------------

struct Ui {
    json: bool,
    color: bool,
    tty_in: bool,
    tty_out: bool,
}

impl Ui {
    fn detect(json: bool) -> Ui {
        let tty_out = io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Ui {
            json,
            color: tty_out && !no_color && !json,
            tty_in: io::stdin().is_terminal(),
            tty_out,
        }
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth reporting.
fn out(text: &str) {
    let mut o = io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// `--json` keeps every value exact (a script matches the label it wrote), so labels and
/// reasons are not rewritten: JSON escaping carries them. serde_json escapes only C0 controls;
/// DEL, C1 controls and bidi marks are escaped here too (`\u009b`), so the document piped to a
/// terminal drives nothing either. Outside strings pretty JSON holds only ASCII punctuation,
/// digits, letters, spaces and newlines, so every such character is inside a string, where
/// `\uXXXX` means the same character.
fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    let mut safe = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if c != '\n' && acts_on_terminal(c) {
            safe.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            safe.push(c);
        }
    }
    safe.push('\n');
    out(&safe);
}

/// "2m ago", "in 4h 12m", "never".
fn relative(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "never".into(),
        Some(t) if t > now => format!("in {}", human_duration(t - now)),
        Some(t) if now - t < TimeDelta::seconds(5) => "just now".into(),
        Some(t) => format!("{} ago", human_duration(now - t)),
    }
}

fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// Renders rows as aligned columns (display width = chars; our cells are ASCII or short).
fn table(
    header: &[&str],
    rows: &[Vec<String>],
    painted: &dyn Fn(usize, &str, &str) -> String,
) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>, raw: &[String]| -> String {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(raw[i].chars().count());
            s.push(' ');
            s.push_str(c);
            if i + 1 < cols {
                s.push_str(&" ".repeat(pad + 1));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut text = line(head.clone(), &head);
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| painted(i, &r[0], c))
            .collect();
        text.push_str(&line(cells, r));
    }
    text
}

fn status_color(status: &str) -> &'static str {
    match status {
        "healthy" => "32",
        "cooling down" => "33",
        "disabled" => "2",
        _ => "31",
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

fn execute(cmd: &Command, v: &Vault, ui: &Ui) -> Result<i32, Error> {
    match cmd {
        Command::Help => {
            out(&help_text());
            Ok(0)
        }
        Command::Version => version(ui),
        Command::Status { watch: false } => status(v, ui),
        Command::Status { watch: true } => watch(v, ui),
        Command::Stats => stats(v, ui),
        Command::Switch(spec) => {
            let (before, _) = resolve(v, spec)?;
            let s = v.switch(spec)?;
            let name = describe(&before.state, s.to);
            if s.from == s.to {
                out(&format!("{} is the live account.\n", capital(&name)));
            } else {
                out(&format!(
                    "Switched from {} to {}.\n",
                    describe(&before.state, s.from),
                    name
                ));
            }
            Ok(0)
        }
        Command::Next => {
            let before = v.overview()?;
            match v.next()? {
                Some(s) => {
                    out(&format!(
                        "Switched from {} to {}.\n",
                        describe(&before.state, s.from),
                        describe(&before.state, s.to)
                    ));
                    Ok(0)
                }
                None => {
                    crate::error::say(
                        "no other account is available (all cooling down, disabled or needing login); qwen --rotation-status shows each",
                    );
                    Ok(exit::FAILURE)
                }
            }
        }
        Command::Add(_) | Command::Setup if v.paths.pool.is_some() => {
            v.files_pool("add").map(|()| 0)
        }
        Command::Add(a) if a.api_key => add_api_key(v, a, ui),
        Command::Add(a) if a.login => add_login(v, a.label.as_deref(), ui).map(|_| 0),
        Command::Add(a) => add_live(v, a.label.as_deref()),
        Command::Setup => setup(v, ui),
        Command::Remove(spec) => {
            let (before, n) = resolve(v, spec)?;
            let moved = v.remove(spec)?;
            let after = v.overview()?;
            let mut text = format!(
                "Removed {}; its file is kept as {} (delete it to forget that login).\n",
                describe(&before.state, n),
                moved.display()
            );
            if before.state.current_index == n {
                text.push_str(&live_line(&after.state));
            }
            out(&text);
            Ok(0)
        }
        Command::Enable(spec) | Command::Disable(spec) => {
            let enable = matches!(cmd, Command::Enable(_));
            let (before, n) = resolve(v, spec)?;
            let changed = v.set_enabled(spec, enable)?;
            let after = v.overview()?;
            let word = if enable { "enabled" } else { "disabled" };
            let mut text = if changed {
                format!("{} is {word} now.\n", capital(&describe(&before.state, n)))
            } else {
                format!(
                    "{} was already {word}.\n",
                    capital(&describe(&before.state, n))
                )
            };
            if after.state.current_index != before.state.current_index {
                text.push_str(&live_line(&after.state));
            }
            out(&text);
            Ok(0)
        }
        Command::Reset(spec) => {
            let before = match spec {
                Some(spec) => resolve(v, spec)?.0,
                None => v.overview()?,
            };
            let done = v.reset(spec.as_deref())?;
            let text = match done.as_slice() {
                [] => "Nothing to reset: no account is cooling down or waiting for a login.\n"
                    .to_string(),
                [n] => format!(
                    "Reset {}: it is usable again.\n",
                    describe(&before.state, *n)
                ),
                many => format!(
                    "Reset {} accounts ({}): usable again.\n",
                    many.len(),
                    list(many)
                ),
            };
            out(&text);
            Ok(0)
        }
        Command::Label(spec, label) => {
            let (_, n) = resolve(v, spec)?;
            v.set_label(spec, label.as_deref())?;
            match label {
                Some(l) => out(&format!("Account {n} is labelled {}.\n", printable(l))),
                None => out(&format!("Account {n} has no label now.\n")),
            }
            Ok(0)
        }
        Command::Log { tail } => log(v, *tail, ui),
        Command::Doctor { fix } => doctor(v, *fix, ui),
    }
}

/// Looks an account up before any change, so a mistyped one writes nothing.
fn resolve(v: &Vault, spec: &str) -> Result<(Overview, usize), Error> {
    let o = v.overview()?;
    let n = o
        .state
        .find(spec)
        .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
    Ok((o, n))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn list(slots: &[usize]) -> String {
    slots
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(st: &State, n: usize) -> String {
    st.accounts
        .get(&n)
        .map_or_else(|| format!("account {n}"), |a| a.describe(n))
}

fn live_line(st: &State) -> String {
    if st.accounts.contains_key(&st.current_index) {
        format!(
            "The live account is {} now.\n",
            describe(st, st.current_index)
        )
    } else {
        "No account is live now.\n".into()
    }
}

fn version(ui: &Ui) -> Result<i32, Error> {
    let real = crate::locate::real_qwen().ok();
    let real_version = real.as_ref().and_then(|r| real_qwen_version(&r.path));
    if ui.json {
        print_json(&json!({
            "name": "qwen-rotation",
            "version": env!("CARGO_PKG_VERSION"),
            "build_marker": crate::locate::SHIM_MARKER,
            "real_qwen": real.as_ref().map(|r| r.path.display().to_string()),
            "real_qwen_version": real_version,
        }));
    } else {
        let mut text = format!("qwen-rotation {}\n", env!("CARGO_PKG_VERSION"));
        if let Some(r) = &real {
            text.push_str(&format!(
                "real qwen: {}{}\n",
                r.path.display(),
                real_version.map(|v| format!(" ({v})")).unwrap_or_default()
            ));
        }
        out(&text);
    }
    Ok(0)
}

/// The version in the npm package the real qwen belongs to (its `package.json`), if found.
fn real_qwen_version(path: &Path) -> Option<String> {
    let real = fs::canonicalize(path).ok()?;
    for dir in real.ancestors().skip(1).take(6) {
        let Ok(text) = files::read_text(&dir.join("package.json"), files::MAX_OWN_FILE) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("name").and_then(Value::as_str) == Some("@qwen-code/qwen-code") {
            return v.get("version").and_then(Value::as_str).map(str::to_string);
        }
    }
    None
}

/// (major, minor) of "0.12.0".
fn version_pair(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

// -- status -----------------------------------------------------------------------------------

fn effective_status(a: &Account, now: DateTime<Utc>) -> &'static str {
    if !a.enabled {
        "disabled"
    } else {
        a.status_at(now).human()
    }
}

fn status(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    let o = v.overview()?;
    if ui.json {
        print_json(&status_json(v, &o));
    } else {
        out(&status_text(v, &o, ui));
    }
    Ok(0)
}

/// How runs on slot `n` are watched: "relay" (the loopback relay in qwen's request path),
/// "scan" (qwen's output, with the reason the relay cannot be used), or "file swap" (OAuth).
fn watch_mode(v: &Vault, n: usize, kind: Option<Kind>) -> (&'static str, Option<String>) {
    if kind != Some(Kind::ApiKey) {
        return ("file swap", None);
    }
    if !v.config.relay {
        return ("scan", Some("relay: false in rotation.yaml".into()));
    }
    let slot = match &v.paths.pool {
        Some(pool) => pool.slots.get(&n).map(|s| s.api.clone()),
        None => vault::read_slot(&v.paths.api_key_slot(n))
            .ok()
            .and_then(|b| vault::check_api_key(&b).ok()),
    };
    let Some(slot) = slot else {
        return ("scan", Some("the slot file cannot be read".into()));
    };
    if slot.base_url.is_none() {
        return (
            "scan",
            Some("the slot has no base URL (qwen's default is used)".into()),
        );
    }
    match crate::relay::relay_possible_for(&v.paths, slot.model.as_deref(), &[]) {
        Ok(()) => ("relay", None),
        Err(why) => ("scan", Some(why)),
    }
}

fn status_json(v: &Vault, o: &Overview) -> Value {
    let now = o.now;
    let accounts: Vec<Value> = o
        .state
        .accounts
        .iter()
        .map(|(n, a)| {
            let info = o.slots.get(n);
            let cooling = a.status_at(now) == Status::CoolingDown;
            json!({
                "slot": n,
                "label": a.label,
                "kind": a.kind.map(Kind::as_str),
                "watch": watch_mode(v, *n, a.kind).0,
                "enabled": a.enabled,
                "status": a.status_at(now).as_str(),
                "live": *n == o.state.current_index,
                "eligible": a.eligible(now),
                "cooldown_until": if cooling { ts(a.cooldown_until) } else { Value::Null },
                "cooldown_remaining_secs": if cooling { a.cooldown_until.map(|t| (t - now).num_seconds().max(0)) } else { None },
                "last_used": ts(a.last_used),
                "switches": a.switches_count,
                "hits": { "quota": a.hits.quota, "throttle": a.hits.throttle, "auth": a.hits.auth },
                "last_reason": a.last_reason,
                "last_reset": ts(a.last_reset),
                "file": info.map(|i| i.path.display().to_string()),
                "mode": info.map(|i| format!("{:04o}", i.mode & 0o7777)),
                "problem": info.and_then(|i| i.problem.clone()),
            })
        })
        .collect();
    json!({
        "home": v.paths.home.display().to_string(),
        "pool": pool_source(v),
        "state_file": v.paths.state.display().to_string(),
        "strategy": strategy_name(v.config.strategy),
        "current": (o.state.current_index > 0).then_some(o.state.current_index),
        "live_slot": o.live_owner,
        "eligible": o.state.eligible_count(now),
        "total_accounts": o.state.accounts.len(),
        "switches_total": o.state.switches_total,
        "last_switch": ts(o.state.last_switch),
        "earliest_return": ts(o.state.earliest_return(now)),
        "state_problem": o.state_problem,
        "accounts": accounts,
    })
}

/// "files" (accounts/ in the home) or "environment" (QWEN_ROTATION_KEYS…).
fn pool_source(v: &Vault) -> &'static str {
    if v.paths.pool.is_some() {
        "environment"
    } else {
        "files"
    }
}

/// One line on where an environment pool comes from and where its state is kept.
fn pool_line(v: &Vault) -> Option<String> {
    let pool = v.paths.pool.as_ref()?;
    let sources: Vec<&str> = pool.slots.values().map(|s| s.source.as_str()).collect();
    let state = match &pool.state {
        crate::env_pool::StateHome::Home => format!("in {}", v.paths.home.display()),
        crate::env_pool::StateHome::Dir(d) => {
            format!("in {} ({})", d.display(), crate::env_pool::STATE_DIR)
        }
        crate::env_pool::StateHome::Memory(_) => {
            "for this process only (no writable QWEN_HOME or QWEN_ROTATION_STATE_DIR)".to_string()
        }
    };
    Some(format!(
        "accounts come from the environment ({}); slot files in {} are ignored; state is kept {state}",
        sources.join(", "),
        v.paths.accounts.display()
    ))
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::RoundRobin => "round-robin",
        Strategy::FillFirst => "fill-first",
    }
}

fn status_text(v: &Vault, o: &Overview, ui: &Ui) -> String {
    let now = o.now;
    let st = &o.state;
    if st.accounts.is_empty() {
        return format!(
            "No accounts in {} yet.\n  Capture the current login:      qwen --rotation-add LABEL\n  Log in to another account:      qwen --rotation-add --login LABEL\n  Add an API key (from stdin):    printf %s \"$KEY\" | qwen --rotation-add --api-key LABEL --base-url URL --model M\n",
            v.paths.home.display()
        );
    }
    let rows: Vec<Vec<String>> = st
        .accounts
        .iter()
        .map(|(n, a)| {
            let live = if *n == st.current_index { "*" } else { "" };
            let cooling = a.status_at(now) == Status::CoolingDown;
            vec![
                live.to_string(),
                n.to_string(),
                a.shown_label().unwrap_or_else(|| "-".into()),
                a.kind.map_or("?", Kind::human).to_string(),
                watch_mode(v, *n, a.kind).0.to_string(),
                effective_status(a, now).to_string(),
                if cooling {
                    relative(a.cooldown_until, now)
                        .trim_start_matches("in ")
                        .to_string()
                } else {
                    "-".into()
                },
                relative(a.last_used, now),
                a.switches_count.to_string(),
                format!("{}/{}/{}", a.hits.quota, a.hits.throttle, a.hits.auth),
            ]
        })
        .collect();
    let painted = |col: usize, _first: &str, cell: &str| -> String {
        match col {
            5 => ui.paint(cell, status_color(cell)),
            0 if cell == "*" => ui.paint(cell, "1"),
            _ => cell.to_string(),
        }
    };
    let mut text = match &v.paths.pool {
        Some(_) => format!(
            "Accounts from the environment ({}):\n",
            strategy_name(v.config.strategy)
        ),
        None => format!(
            "Accounts in {} ({}):\n",
            v.paths.home.display(),
            strategy_name(v.config.strategy)
        ),
    };
    text.push_str(&table(
        &[
            "",
            "#",
            "LABEL",
            "KIND",
            "WATCH",
            "STATUS",
            "COOLDOWN",
            "LAST USED",
            "SWITCHES",
            "HITS Q/T/A",
        ],
        &rows,
        &painted,
    ));
    let eligible = st.eligible_count(now);
    text.push_str(&format!(
        "Live (*): {}. {eligible} of {} usable now. {} in total{}.\n",
        if st.accounts.contains_key(&st.current_index) {
            describe(st, st.current_index)
        } else {
            "none".into()
        },
        st.accounts.len(),
        plural(st.switches_total, "switch", "switches"),
        st.last_switch
            .map(|t| format!(", the last {}", relative(Some(t), now)))
            .unwrap_or_default()
    ));
    if eligible == 0 {
        match st.earliest_return(now) {
            Some(t) => text.push_str(&format!(
                "All accounts are spent; the first returns {}.\n",
                relative(Some(t), now)
            )),
            None => text.push_str(
                "No account is usable; see the notes below or run qwen --rotation-doctor.\n",
            ),
        }
    }
    for note in notes(o) {
        // Notes quote reasons and problems from hand-editable files.
        text.push_str(&format!("{} {}\n", ui.paint("!", "33"), printable(&note)));
    }
    if let Some(line) = pool_line(v) {
        text.push_str(&format!("Note: {line}.\n"));
    }
    text
}

/// Problems worth a line under the status table.
fn notes(o: &Overview) -> Vec<String> {
    let mut notes = Vec::new();
    match &o.state_problem {
        // Not corrupt text: what is in its place (a FIFO, another user's file) is left alone.
        Some(p) if p.starts_with("cannot read") => notes.push(format!(
            "state.yaml is unreadable ({p}); runs go without rotation until it is fixed"
        )),
        Some(p) => notes.push(format!(
            "state.yaml is unreadable ({p}); the next run rebuilds it (a copy is kept)"
        )),
        None => {}
    }
    for (n, a) in &o.state.accounts {
        match a.status_at(o.now) {
            Status::NeedsLogin if a.enabled => notes.push(format!(
                "account {n} needs a new login ({}): qwen --rotation-add --login, then qwen --rotation-remove {n}; or qwen --rotation-reset {n} if it works again",
                a.last_reason.as_deref().unwrap_or("refused")
            )),
            Status::Invalid => notes.push(format!(
                "account {n} is unusable: {}",
                o.slots.get(n).and_then(|i| i.problem.clone()).or_else(|| a.last_reason.clone()).unwrap_or_default()
            )),
            _ => {}
        }
        if o.slots.get(n).is_some_and(|i| vault::too_open(i.mode)) {
            notes.push(format!(
                "account {n}'s file can be read by other users: qwen --rotation-doctor --fix"
            ));
        }
    }
    if matches!(o.live, LiveFile::Symlink { .. }) {
        notes.push(
            "oauth_creds.json is a symlink (the old layout); the next run makes it a regular file"
                .into(),
        );
    }
    notes
}

fn watch(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    if !ui.tty_out || ui.json {
        return Err(Error::Usage(
            "--watch redraws a terminal; run it in one, or use qwen --rotation-status --json in scripts".into(),
        ));
    }
    // The first frame clears the screen; later ones redraw in place: cursor home, each line
    // followed by "erase to end of line", then "erase below" (no blank flash between frames).
    let mut first = true;
    loop {
        let o = v.overview()?;
        let mut body = status_text(v, &o, ui);
        body.push_str(&format!(
            "\n(refreshing every 2s, {}; Ctrl+C to stop)\n",
            Utc::now().format("%H:%M:%S")
        ));
        out(&watch_frame(&body, first));
        first = false;
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One `--watch` frame of `body` (see `watch`).
fn watch_frame(body: &str, first: bool) -> String {
    let mut frame = String::from(if first { "\x1b[H\x1b[2J" } else { "\x1b[H" });
    for line in body.lines() {
        frame.push_str(line);
        frame.push_str("\x1b[K\n");
    }
    frame.push_str("\x1b[J");
    frame
}

// -- stats ------------------------------------------------------------------------------------

#[derive(Default)]
struct Day {
    runs: u64,
    switches: u64,
    hits: u64,
    exhausted: u64,
    quota: u64,
    throttle: u64,
    auth: u64,
}

/// Runs per account, from the `run` lines of rotation.log.
#[derive(Default)]
struct Runs {
    total: u64,
    /// Ended with a non-zero code (qwen's, or 75 when every account was spent).
    failed: u64,
    /// Runs that needed more than one attempt.
    retried: u64,
    duration_ms: u64,
    last: Option<DateTime<Utc>>,
    /// Requests the relay sent on this account that were answered (a run may use several).
    requests: u64,
}

impl Runs {
    fn average(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_millis(self.duration_ms / self.total))
    }
}

fn stats(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    let o = v.overview()?;
    let log = audit::read_all(&v.paths.log).map_err(|e| Error::io("read", &v.paths.log, e))?;
    let now = o.now;
    let mut cooldowns: BTreeMap<usize, u64> = BTreeMap::new();
    let mut runs: BTreeMap<usize, Runs> = BTreeMap::new();
    let mut days: BTreeMap<NaiveDate, Day> = BTreeMap::new();
    for e in &log.events {
        let Some(t) = e.time() else { continue };
        let day = days.entry(t.date_naive()).or_default();
        match e.event.as_str() {
            events::RUN => {
                day.runs += 1;
                if let Some(n) = e.slot {
                    let r = runs.entry(n).or_default();
                    r.total += 1;
                    r.failed += u64::from(e.code.is_some_and(|c| c != 0));
                    r.retried += u64::from(e.attempts.is_some_and(|a| a > 1));
                    r.duration_ms = r.duration_ms.saturating_add(e.duration_ms.unwrap_or(0));
                    r.last = r.last.max(Some(t));
                }
                for (n, count) in e.requests.iter().flatten() {
                    let r = runs.entry(*n).or_default();
                    r.requests = r.requests.saturating_add(*count);
                }
            }
            events::ACCOUNT_SWITCH => day.switches += 1,
            events::COOLDOWN | events::NEEDS_LOGIN => {
                day.hits += 1;
                match e.class.as_deref() {
                    Some("quota") => day.quota += 1,
                    Some("throttle") => day.throttle += 1,
                    Some("auth") => day.auth += 1,
                    _ => {}
                }
                if e.event == events::COOLDOWN
                    && let Some(n) = e.slot
                {
                    *cooldowns.entry(n).or_default() += 1;
                }
            }
            events::EXHAUSTED => day.exhausted += 1,
            _ => {}
        }
    }
    // A compact history: the last 14 days that saw any event.
    let recent: Vec<(&NaiveDate, &Day)> = days
        .iter()
        .rev()
        .take(14)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let st = &o.state;
    if ui.json {
        let accounts: Vec<Value> = st
            .accounts
            .iter()
            .map(|(n, a)| {
                let r = runs.get(n);
                json!({
                    "slot": n,
                    "label": a.label,
                    "kind": a.kind.map(Kind::as_str),
                    "status": a.status_at(now).as_str(),
                    "runs": r.map_or(0, |r| r.total),
                    "runs_failed": r.map_or(0, |r| r.failed),
                    "runs_retried": r.map_or(0, |r| r.retried),
                    "relay_requests": r.map_or(0, |r| r.requests),
                    "run_avg_ms": r.and_then(Runs::average).map(|d| d.as_millis() as u64),
                    "last_run": ts(r.and_then(|r| r.last)),
                    "switches": a.switches_count,
                    "hits": { "quota": a.hits.quota, "throttle": a.hits.throttle, "auth": a.hits.auth },
                    "cooldowns": cooldowns.get(n).copied().unwrap_or(0),
                    "cooldown_until": if a.status_at(now) == Status::CoolingDown { ts(a.cooldown_until) } else { Value::Null },
                    "last_used": ts(a.last_used),
                    "last_reset": ts(a.last_reset),
                })
            })
            .collect();
        let history: Vec<Value> = recent
            .iter()
            .map(|(d, day)| {
                json!({ "date": d.to_string(), "runs": day.runs, "switches": day.switches, "hits": day.hits,
                        "quota": day.quota, "throttle": day.throttle, "auth": day.auth, "exhausted": day.exhausted })
            })
            .collect();
        print_json(&json!({
            "runs_total": runs.values().map(|r| r.total).sum::<u64>(),
            "switches_total": st.switches_total,
            "last_switch": ts(st.last_switch),
            "current": (st.current_index > 0).then_some(st.current_index),
            "accounts": accounts,
            "history": history,
            "log_lines_skipped": log.skipped,
        }));
        return Ok(0);
    }
    let mut text = String::from("Account usage:\n");
    if st.accounts.is_empty() {
        text.push_str("  (no accounts yet; see qwen --rotation-help)\n");
    } else {
        let most = st
            .accounts
            .values()
            .map(|a| a.switches_count)
            .max()
            .unwrap_or(0);
        let rows: Vec<Vec<String>> = st
            .accounts
            .iter()
            .map(|(n, a)| {
                let mut switches = a.switches_count.to_string();
                if most > 0 && a.switches_count == most {
                    switches.push_str(" (most used)");
                }
                let r = runs.get(n);
                vec![
                    n.to_string(),
                    a.shown_label().unwrap_or_else(|| "-".into()),
                    match r {
                        Some(r) if r.failed > 0 => format!("{} ({} failed)", r.total, r.failed),
                        Some(r) => r.total.to_string(),
                        None => "0".into(),
                    },
                    r.and_then(Runs::average).map_or_else(
                        || "-".into(),
                        |d| match d.as_millis() {
                            ms @ 0..1000 => format!("{ms}ms"),
                            _ => format!("{:.1}s", d.as_secs_f64()),
                        },
                    ),
                    switches,
                    a.hits.quota.to_string(),
                    a.hits.throttle.to_string(),
                    a.hits.auth.to_string(),
                    cooldowns.get(n).copied().unwrap_or(0).to_string(),
                    if a.status_at(now) == Status::CoolingDown {
                        relative(a.cooldown_until, now)
                    } else {
                        effective_status(a, now).to_string()
                    },
                    relative(a.last_reset, now),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                "#",
                "LABEL",
                "RUNS",
                "AVG RUN",
                "SWITCHES",
                "QUOTA",
                "THROTTLE",
                "AUTH",
                "COOLDOWNS",
                "NOW",
                "LAST RESET",
            ],
            &rows,
            &|_, _, c| c.to_string(),
        ));
    }
    let relayed: Vec<String> = runs
        .iter()
        .filter(|(_, r)| r.requests > 0)
        .map(|(n, r)| format!("account {n}: {}", r.requests))
        .collect();
    if !relayed.is_empty() {
        text.push_str(&format!(
            "Requests answered through the relay: {}.\n",
            relayed.join(", ")
        ));
    }
    let runs_total: u64 = runs.values().map(|r| r.total).sum();
    text.push_str(&format!(
        "Total runs: {runs_total}. Total rotations: {}{}.\nCurrent account: {}.\n",
        st.switches_total,
        st.last_switch
            .map(|t| format!(" (last {})", relative(Some(t), now)))
            .unwrap_or_default(),
        if st.accounts.contains_key(&st.current_index) {
            describe(st, st.current_index)
        } else {
            "none".into()
        }
    ));
    if !recent.is_empty() {
        text.push_str("History (rotation.log, by day):\n");
        let rows: Vec<Vec<String>> = recent
            .iter()
            .map(|(d, day)| {
                vec![
                    d.to_string(),
                    plural(day.runs, "run", "runs"),
                    plural(day.switches, "switch", "switches"),
                    format!(
                        "{} (quota {}, throttle {}, auth {})",
                        plural(day.hits, "hit", "hits"),
                        day.quota,
                        day.throttle,
                        day.auth
                    ),
                    if day.exhausted > 0 {
                        format!("{} times all spent", day.exhausted)
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        let t = table(
            &["DAY", "RUNS", "SWITCHES", "HITS", ""],
            &rows,
            &|_, _, c| c.to_string(),
        );
        // Drop the header line: the columns speak for themselves.
        text.push_str(t.split_once('\n').map_or("", |(_, rest)| rest));
    }
    out(&text);
    Ok(0)
}

// -- log --------------------------------------------------------------------------------------

fn log(v: &Vault, tail: Option<usize>, ui: &Ui) -> Result<i32, Error> {
    let read = audit::read_all(&v.paths.log).map_err(|e| Error::io("read", &v.paths.log, e))?;
    let total = read.events.len();
    let keep = match (tail, ui.json) {
        (Some(0), _) | (None, true) => total,
        (Some(n), _) => n,
        (None, false) => 20,
    };
    let shown: &[Event] = &read.events[total.saturating_sub(keep)..];
    if ui.json {
        print_json(&serde_json::to_value(shown).unwrap_or(Value::Null));
        return Ok(0);
    }
    if total == 0 {
        out(&format!("No events yet in {}.\n", v.paths.log.display()));
        return Ok(0);
    }
    let mut text = String::new();
    for e in shown {
        text.push_str(&log_line(e, ui));
        text.push('\n');
    }
    if shown.len() < total {
        text.push_str(&format!(
            "(the last {} of {total} events; --tail N for more, --tail 0 for all)\n",
            shown.len()
        ));
    }
    if read.skipped > 0 {
        text.push_str(&format!("({} unreadable lines skipped)\n", read.skipped));
    }
    out(&text);
    Ok(0)
}

/// One event as a line. Every text field comes from rotation.log, which anyone with the
/// home's permissions can edit: each is shown through `printable`.
fn log_line(e: &Event, ui: &Ui) -> String {
    let when = e.time().map_or_else(
        || printable(&e.timestamp),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    );
    let mut parts = vec![
        when,
        ui.paint(
            &format!("{:<16}", printable(&e.event)),
            if e.level == "WARN" { "33" } else { "1" },
        ),
    ];
    match (e.from, e.to) {
        (Some(f), Some(t)) => parts.push(format!("{f} -> {t}")),
        (Some(f), None) => parts.push(format!("from {f}")),
        _ => {}
    }
    if let Some(s) = e.slot {
        parts.push(format!("account {s}"));
    }
    if let Some(l) = &e.label {
        parts.push(format!("[{}]", printable(l)));
    }
    if let (Some(code), Some(attempts)) = (e.code, e.attempts) {
        let took = e
            .duration_ms
            .map(|ms| format!(", {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        parts.push(format!(
            "exit {code}, {}{took}",
            plural(u64::from(attempts), "attempt", "attempts")
        ));
    }
    if let Some(r) = &e.reason {
        parts.push(printable(r));
    }
    if let (Some(c), Some(p)) = (&e.class, &e.phrase) {
        parts.push(printable(&format!("({c}: {p})")));
    }
    if let Some(u) = &e.until {
        parts.push(format!("until {}", printable(u)));
    }
    if let Some(t) = &e.trigger {
        parts.push(format!("by {}", printable(t)));
    }
    parts.join("  ")
}

// -- add --------------------------------------------------------------------------------------

fn add_live(v: &Vault, label: Option<&str>) -> Result<i32, Error> {
    let live = &v.paths.live_creds;
    let file = LiveFile::read(live).map_err(|e| Error::io("read", live, e))?;
    let Some(bytes) = file.bytes() else {
        return Err(Error::Other(format!(
            "there is no login to capture: {} does not exist; log in with the real qwen first, or run qwen --rotation-add --login",
            live.display()
        )));
    };
    let n = v.add_oauth(bytes, live, label)?;
    let o = v.overview()?;
    out(&format!(
        "Added {} from {}.\n{}",
        describe(&o.state, n),
        live.display(),
        if o.state.current_index == n {
            "It is the live account.\n".to_string()
        } else {
            String::new()
        }
    ));
    Ok(0)
}

/// Runs the real qwen in a fresh temporary home so the person logs in to another account;
/// then stores the login it wrote. The live login is never touched.
fn add_login(v: &Vault, label: Option<&str>, ui: &Ui) -> Result<usize, Error> {
    if !ui.tty_in || !ui.tty_out {
        return Err(Error::Usage(
            "--rotation-add --login runs qwen's interactive login and needs a terminal; on a server, log in elsewhere and copy the oauth_creds.json, or use --api-key".into(),
        ));
    }
    let real = crate::locate::real_qwen()?;
    vault::ensure_dir(&v.paths.home)?;
    let tmp = tempfile::Builder::new()
        .prefix(".login-")
        .tempdir_in(&v.paths.home)
        .map_err(|e| Error::io("create a temporary home in", &v.paths.home, e))?;
    let qwen_home = tmp.path().join(".qwen");
    vault::ensure_dir(&qwen_home)?;
    fs::write(
        qwen_home.join("settings.json"),
        login_settings(&v.paths.settings),
    )
    .map_err(|e| Error::io("write", qwen_home.join("settings.json"), e))?;
    crate::error::say(
        "starting qwen in a temporary home: log in to the account to add, then quit qwen (/quit).\n\
         Your current login is not touched.",
    );
    let mut cmd = std::process::Command::new(&real.path);
    cmd.env("HOME", tmp.path()).env("QWEN_HOME", &qwen_home);
    // qwen picks API-key auth when these are set; the login needs OAuth.
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_MODEL",
        "QWEN_MODEL",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().map_err(|e| Error::RealNotExecutable {
        path: real.path.clone(),
        source: e,
    })?;
    // The terminal sends Ctrl-C to qwen too; we wait for it instead of dying first.
    let _quiet = IgnoreInterrupts::new();
    let status = child
        .wait()
        .map_err(|e| Error::io("wait for", &real.path, e))?;
    let creds = qwen_home.join("oauth_creds.json");
    let bytes = match files::read_regular(&creds, files::MAX_OWN_FILE, true) {
        Ok(b) => b,
        Err(_) => {
            return Err(Error::Other(format!(
                "qwen exited ({status}) without a login (it wrote no oauth_creds.json); nothing was added"
            )));
        }
    };
    let n = v.add_oauth(&bytes, &creds, label)?;
    let o = v.overview()?;
    out(&format!(
        "Added {} (logged in through a temporary home).\n",
        describe(&o.state, n)
    ));
    Ok(n)
}

/// The settings for the login home: the person's own settings (so proxies and the like keep
/// working) with the OAuth login selected.
fn login_settings(user_settings: &Path) -> String {
    let mut v: Value = files::read_text(user_settings, files::MAX_OWN_FILE)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    if let Some(o) = v.as_object_mut() {
        // The login must not inherit API-key variables from settings.env either.
        o.remove("env");
        let security = o.entry("security").or_insert_with(|| json!({}));
        if !security.is_object() {
            *security = json!({});
        }
        if let Some(s) = security.as_object_mut() {
            let auth = s.entry("auth").or_insert_with(|| json!({}));
            if !auth.is_object() {
                *auth = json!({});
            }
            if let Some(a) = auth.as_object_mut() {
                a.retain(|k, _| k != "apiKey" && k != "baseUrl");
                a.insert("selectedType".into(), json!("qwen-oauth"));
            }
        }
    }
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
}

/// Ignores SIGINT/SIGQUIT while a child owns the terminal; restores on drop.
struct IgnoreInterrupts {
    saved: Vec<(nix::sys::signal::Signal, nix::sys::signal::SigHandler)>,
}

impl IgnoreInterrupts {
    fn new() -> IgnoreInterrupts {
        use nix::sys::signal::{SigHandler, Signal, signal};
        let mut saved = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGQUIT] {
            // SAFETY: SIG_IGN installs no Rust code as a handler; the previous handler is
            // restored in Drop. Called after the child was spawned, so it keeps the default.
            if let Ok(prev) = unsafe { signal(sig, SigHandler::SigIgn) } {
                saved.push((sig, prev));
            }
        }
        IgnoreInterrupts { saved }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, prev) in self.saved.drain(..) {
            // SAFETY: restores the handler that was installed before `new`.
            let _ = unsafe { nix::sys::signal::signal(sig, prev) };
        }
    }
}

fn add_api_key(v: &Vault, a: &AddArgs, ui: &Ui) -> Result<i32, Error> {
    let key = if ui.tty_in {
        match prompt_secret("API key (input hidden): ")
            .map_err(|e| Error::io("read the key from", "the terminal", e))?
        {
            Some(k) => k,
            None => return Err(Error::Usage("cancelled; nothing was added".into())),
        }
    } else {
        read_key_from_stdin().map_err(|e| Error::io("read the key from", "stdin", e))?
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(Error::Usage(
            "no key given; pipe it in (printf %s \"$KEY\" | qwen --rotation-add --api-key LABEL) or type it at the prompt".into(),
        ));
    }
    vault::valid_api_key(&key).map_err(|p| {
        Error::Usage(format!(
            "{p}; give the key exactly as the provider shows it"
        ))
    })?;
    let slot = ApiKeySlot {
        key: Secret::new(key),
        base_url: a.base_url.clone(),
        model: a.model.clone(),
        env_key: a
            .env_key
            .clone()
            .unwrap_or_else(|| vault::DEFAULT_ENV_KEY.into()),
    };
    let n = v.add_api_key(&slot, a.label.as_deref())?;
    let o = v.overview()?;
    let mut text = format!(
        "Added {}: an API key{}{}, given to qwen as {}.\n",
        describe(&o.state, n),
        slot.base_url
            .as_ref()
            .map(|u| format!(" for {}", redact_url(u)))
            .unwrap_or_default(),
        slot.model
            .as_ref()
            .map(|m| format!(" (model {})", printable(m)))
            .unwrap_or_default(),
        slot.env_key
    );
    if slot.base_url.is_none() || slot.model.is_none() {
        text.push_str(
            "Note: without --base-url and --model, qwen takes them from its settings (or OPENAI_BASE_URL/OPENAI_MODEL).\n",
        );
    }
    out(&text);
    Ok(0)
}

/// The first non-empty line of stdin (at most 64 KiB read).
fn read_key_from_stdin() -> io::Result<String> {
    let mut buf = Vec::new();
    io::stdin().lock().take(64 << 10).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string())
}

/// Reads a line from the terminal without echo. `None`: cancelled (Ctrl-C, Ctrl-D, Esc).
/// Non-canonical mode with ISIG off, so Ctrl-C arrives as a byte and the terminal is always
/// restored (by the guard) before we return; a signal can never leave echo off.
fn prompt_secret(prompt: &str) -> io::Result<Option<String>> {
    use nix::sys::termios::{LocalFlags, SetArg, SpecialCharacterIndices, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    let saved = tcgetattr(&stdin).map_err(io::Error::from)?;
    let mut raw = saved.clone();
    raw.local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG | LocalFlags::IEXTEN);
    raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    struct Restore<'a>(&'a io::Stdin, nix::sys::termios::Termios);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = tcsetattr(self.0, SetArg::TCSAFLUSH, &self.1);
        }
    }
    tcsetattr(&stdin, SetArg::TCSAFLUSH, &raw).map_err(io::Error::from)?;
    let _restore = Restore(&stdin, saved);
    eprint!("{prompt}");
    let _ = io::stderr().flush();
    let mut line = String::new();
    let mut lock = stdin.lock();
    let result = loop {
        let mut b = [0u8; 1];
        if lock.read(&mut b)? == 0 {
            break if line.is_empty() { None } else { Some(line) };
        }
        match b[0] {
            b'\r' | b'\n' => break Some(line),
            0x03 | 0x1b => break None,
            0x04 if line.is_empty() => break None,
            0x7f | 0x08 => {
                line.pop();
            }
            0x15 => line.clear(),
            c if c >= 0x20 && line.len() < 8192 => line.push(c as char),
            _ => {}
        }
    };
    crate::error::say_raw("");
    Ok(result)
}

// -- setup ------------------------------------------------------------------------------------

fn setup(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    if !ui.tty_in || !ui.tty_out {
        crate::error::say(format_args!(
            "--rotation-setup is interactive and needs a terminal; from a script, add accounts one at a time:\n\
             \x20 qwen --rotation-add LABEL                       capture the login in {}\n\
             \x20 printf %s \"$KEY\" | qwen --rotation-add --api-key LABEL --base-url URL --model M\n\
             \x20 (on a terminal: qwen --rotation-add --login LABEL logs in to another account)",
            v.paths.live_creds.display()
        ));
        return Ok(exit::USAGE);
    }
    out(&format!(
        "Setting up account rotation in {}.\nEach account is added by logging in to it in a temporary qwen session; your current login stays as it is.\n\n",
        v.paths.home.display()
    ));
    let before = v.overview()?;
    if let Some(bytes) = before.live.bytes()
        && vault::check_oauth(bytes).is_ok()
        && before.live_owner.is_none()
        && ask(&format!(
            "Your current login ({}) is not stored yet. Store it as an account? [Y/n] ",
            v.paths.live_creds.display()
        ))?
        .is_none_or(|a| !a.eq_ignore_ascii_case("n"))
    {
        let label = ask("Label for it (Enter for none): ")?.filter(|l| !l.is_empty());
        let label = label
            .map(|l| label_arg(&l))
            .transpose()
            .map_err(Error::Usage)?;
        add_live(v, label.as_deref())?;
    }
    let mut added = 0;
    loop {
        let count = v.overview()?.state.accounts.len();
        let reply = ask(&format!(
            "\n=== Account {} ===\nPress Enter to start qwen and log in to another account (q + Enter to finish): ",
            count + 1
        ))?;
        match reply.as_deref() {
            None => break,
            Some(r) if r.eq_ignore_ascii_case("q") || r.eq_ignore_ascii_case("quit") => break,
            _ => {}
        }
        let label = ask("Label for it (Enter for none): ")?.filter(|l| !l.is_empty());
        let label = match label.map(|l| label_arg(&l)).transpose() {
            Ok(l) => l,
            Err(p) => {
                crate::error::say(p);
                continue;
            }
        };
        match add_login(v, label.as_deref(), ui) {
            Ok(_) => added += 1,
            Err(e) => crate::error::say(e),
        }
    }
    let o = v.overview()?;
    out(&format!(
        "\nDone: {added} added, {} accounts in total. qwen --rotation-status shows them; plain `qwen` now rotates.\n",
        o.state.accounts.len()
    ));
    Ok(0)
}

/// One line from the terminal; `None` at end of input.
fn ask(question: &str) -> Result<Option<String>, Error> {
    out(question);
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(line.trim().to_string())),
        Err(e) => Err(Error::io("read from", "the terminal", e)),
    }
}

// -- doctor -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Info,
    Problem,
}

#[derive(Debug)]
struct Finding {
    check: &'static str,
    level: Level,
    message: String,
    fix: Option<String>,
    fixed: bool,
}

impl Finding {
    fn new(check: &'static str, level: Level, message: impl Into<String>) -> Finding {
        Finding {
            check,
            level,
            message: message.into(),
            fix: None,
            fixed: false,
        }
    }
    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// A fix `--fix` can apply.
enum Repair {
    Chmod(PathBuf, u32),
    Remove(PathBuf),
    RemoveDir(PathBuf),
    Vault,
}

fn doctor(v: &Vault, fix: bool, ui: &Ui) -> Result<i32, Error> {
    let (mut findings, repairs, real) = diagnose(v);
    if fix && !repairs.is_empty() {
        let mut vault_repair = false;
        for (i, repair) in &repairs {
            let ok = match repair {
                Repair::Chmod(p, mode) => {
                    fs::set_permissions(p, fs::Permissions::from_mode(*mode)).is_ok()
                }
                Repair::Remove(p) => fs::remove_file(p).is_ok(),
                Repair::RemoveDir(p) => fs::remove_dir_all(p).is_ok(),
                Repair::Vault => {
                    vault_repair = true;
                    continue;
                }
            };
            findings[*i].fixed = ok;
        }
        if vault_repair {
            match v.repair() {
                Ok(_) => {
                    for (i, r) in &repairs {
                        if matches!(r, Repair::Vault) {
                            findings[*i].fixed = true;
                        }
                    }
                }
                Err(e) => findings.push(Finding::new(
                    "repair",
                    Level::Problem,
                    format!("could not repair: {e}"),
                )),
            }
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.level == Level::Problem && !f.fixed)
        .count();
    let fixed = findings.iter().filter(|f| f.fixed).count();
    if ui.json {
        let checks: Vec<Value> = findings
            .iter()
            .map(|f| {
                json!({
                    "check": f.check,
                    "level": match f.level { Level::Ok => "ok", Level::Info => "info", Level::Problem => "problem" },
                    "message": f.message,
                    "fix": f.fix,
                    "fixed": f.fixed,
                })
            })
            .collect();
        print_json(&json!({
            "ok": problems == 0,
            "problems": problems,
            "fixed": fixed,
            "home": v.paths.home.display().to_string(),
            "real_qwen": real,
            "checks": checks,
        }));
    } else {
        let mut text = format!("qwen-rotation doctor ({})\n", v.paths.home.display());
        for f in &findings {
            let (tag, color) = match (f.level, f.fixed) {
                (_, true) => ("fixed", "32"),
                (Level::Ok, _) => ("ok", "32"),
                (Level::Info, _) => ("note", "36"),
                (Level::Problem, _) => ("PROBLEM", "31"),
            };
            // Findings quote file names, labels and reasons: shown escaped, one line each.
            text.push_str(&format!(
                "  {}  {}\n",
                ui.paint(&format!("{tag:<7}"), color),
                printable(&f.message)
            ));
            if let Some(fix) = f.fix.as_ref().filter(|_| !f.fixed) {
                text.push_str(&format!("           fix: {}\n", printable(fix)));
            }
        }
        text.push_str(&match (problems, fixed) {
            (0, 0) => "No problems found.\n".to_string(),
            (0, n) => format!("Fixed {n}; no problems left.\n"),
            (p, 0) if repairs.is_empty() || fix => format!("{p} problem(s) found.\n"),
            (p, 0) => {
                format!("{p} problem(s) found; qwen --rotation-doctor --fix repairs what it can.\n")
            }
            (p, n) => format!("Fixed {n}; {p} problem(s) left.\n"),
        });
        out(&text);
    }
    Ok(if problems == 0 { 0 } else { exit::FAILURE })
}

/// Runs every check; returns the findings, the repairs (by finding index) and the real-qwen
/// summary for `--json`.
fn diagnose(v: &Vault) -> (Vec<Finding>, Vec<(usize, Repair)>, Value) {
    let mut f: Vec<Finding> = Vec::new();
    let mut repairs: Vec<(usize, Repair)> = Vec::new();
    let mut push = |f: &mut Vec<Finding>, finding: Finding, repair: Option<Repair>| {
        if let Some(r) = repair {
            repairs.push((f.len(), r));
        }
        f.push(finding);
    };
    let paths = &v.paths;

    // 1. Which real qwen, and why that one.
    let mut real_version = None;
    let real_json = match crate::locate::real_qwen() {
        Ok(r) => {
            real_version = real_qwen_version(&r.path);
            let why = match &r.via {
                crate::locate::Via::Override => "named by QWEN_ROTATION_REAL".to_string(),
                crate::locate::Via::Path(dir) => format!(
                    "the first qwen on PATH after the shim, in {}",
                    dir.display()
                ),
            };
            push(
                &mut f,
                Finding::new(
                    "real_qwen",
                    Level::Ok,
                    format!(
                        "real qwen: {} ({why}){}",
                        r.path.display(),
                        real_version
                            .as_ref()
                            .map(|v| format!(", version {v}"))
                            .unwrap_or_default()
                    ),
                ),
                None,
            );
            for (p, reason) in &r.skipped {
                push(
                    &mut f,
                    Finding::new(
                        "real_qwen",
                        Level::Info,
                        format!("skipped {}: {reason}", p.display()),
                    ),
                    None,
                );
            }
            if !r.searched.is_empty() {
                let order: Vec<String> =
                    r.searched.iter().map(|d| d.display().to_string()).collect();
                push(
                    &mut f,
                    Finding::new(
                        "path",
                        Level::Info,
                        format!("PATH searched in order: {}", order.join(":")),
                    ),
                    None,
                );
            }
            json!({
                "path": r.path.display().to_string(),
                "via": match &r.via { crate::locate::Via::Override => "QWEN_ROTATION_REAL".to_string(), crate::locate::Via::Path(d) => d.display().to_string() },
                "version": real_version,
                "searched": r.searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
                "skipped": r.skipped.iter().map(|(p, why)| json!({"path": p.display().to_string(), "reason": why})).collect::<Vec<_>>(),
            })
        }
        Err(e) => {
            push(
                &mut f,
                Finding::new("real_qwen", Level::Problem, format!("{e}"))
                    .fix("npm install -g @qwen-code/qwen-code, or set QWEN_ROTATION_REAL"),
                None,
            );
            Value::Null
        }
    };

    // 2. Is the shim the `qwen` that PATH finds first?
    if let Some(first) = first_qwen_on_path()
        && let Ok(me) = std::env::current_exe()
        && me.file_name().is_some_and(|n| n == "qwen")
    {
        let same = fs::canonicalize(&first).ok() == fs::canonicalize(&me).ok();
        if !same {
            let dir = me
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            push(
                &mut f,
                Finding::new(
                    "path",
                    Level::Problem,
                    format!(
                        "PATH finds {} before this shim ({})",
                        first.display(),
                        me.display()
                    ),
                )
                .fix(format!(
                    "put {dir} before {} in PATH",
                    first
                        .parent()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                )),
                None,
            );
        }
    }

    // 3. QWEN_HOME vs $HOME/.qwen (qwen 0.12 ignores QWEN_HOME).
    if let Some(qh) = std::env::var_os("QWEN_HOME").filter(|v| !v.is_empty())
        && let Some(home) = std::env::home_dir()
    {
        let dot = home.join(".qwen");
        // Before the first run neither exists: the same path is then the same home.
        let resolved = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.components().collect());
        let same = resolved(Path::new(&qh)) == resolved(&dot);
        if !same {
            let old = real_version
                .as_deref()
                .and_then(version_pair)
                .is_none_or(|v| v < (0, 15));
            let msg = format!(
                "QWEN_HOME={} but $HOME/.qwen is {}: qwen 0.12 and older ignore QWEN_HOME and read $HOME/.qwen",
                PathBuf::from(&qh).display(),
                dot.display()
            );
            let fix = format!(
                "point both at one directory (ln -s {} {}), or unset QWEN_HOME",
                PathBuf::from(&qh).display(),
                dot.display()
            );
            push(
                &mut f,
                Finding::new(
                    "qwen_home",
                    if old { Level::Problem } else { Level::Info },
                    msg,
                )
                .fix(fix),
                None,
            );
        }
    }

    // 3b. A pool declared in the environment.
    if let Some(line) = pool_line(v) {
        push(&mut f, Finding::new("pool", Level::Info, line), None);
    }

    // 4. The home itself.
    if fs::metadata(&paths.home).is_err() {
        push(
            &mut f,
            Finding::new(
                "home",
                Level::Info,
                format!(
                    "{} does not exist yet; it is created (0700) by the first qwen --rotation-add",
                    paths.home.display()
                ),
            ),
            None,
        );
        return (f, repairs, real_json);
    }

    // 5. Permissions and ownership. Every file belongs to the home's owner (what the shim keeps
    // when root works in another user's home, as in a container with a mounted home).
    let uid = nix::unistd::geteuid().as_raw();
    let owner = fs::metadata(&paths.home).map_or(uid, |m| m.uid());
    if owner != uid {
        let (level, line) = if uid == 0 {
            (
                Level::Info,
                format!(
                    "{} belongs to user {owner}; running as root, files written there keep that owner",
                    paths.home.display()
                ),
            )
        } else {
            (
                Level::Problem,
                format!(
                    "{} belongs to user {owner} (you are {uid}): its files may be unreadable or unwritable for you",
                    paths.home.display()
                ),
            )
        };
        let finding = Finding::new("permissions", level, line);
        let finding = if uid == 0 {
            finding
        } else {
            finding.fix(format!(
                "run qwen as user {owner}, or point QWEN_HOME at a home of your own"
            ))
        };
        push(&mut f, finding, None);
    }
    let mut wide = 0;
    let dirs = [
        paths.home.clone(),
        paths.accounts.clone(),
        paths.accounts.join("backup"),
        paths.accounts.join("removed"),
    ];
    let mut files: Vec<PathBuf> = vec![
        paths.live_creds.clone(),
        paths.state.clone(),
        paths.log.clone(),
        paths.lock.clone(),
    ];
    let slots = vault::scan_slots(paths).unwrap_or_default();
    for (n, kinds) in slots.iter().filter(|_| paths.pool.is_none()) {
        files.extend(kinds.iter().map(|k| vault::slot_path(paths, *n, *k)));
    }
    for dir in ["backup", "removed"] {
        if let Ok(entries) = fs::read_dir(paths.accounts.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    for (path, want) in dirs
        .iter()
        .map(|d| (d, 0o700))
        .chain(files.iter().map(|p| (p, 0o600)))
    {
        let Ok(meta) = fs::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        // A hard link shares its inode with a file elsewhere: a chmod here would change that
        // file too (run as root, a planted link to /etc/passwd). Say so; repair nothing.
        if meta.is_file() && meta.nlink() > 1 {
            push(
                &mut f,
                Finding::new(
                    "permissions",
                    Level::Problem,
                    format!(
                        "{} has {} hard links: it is also a file elsewhere",
                        path.display(),
                        meta.nlink()
                    ),
                )
                .fix(format!(
                    "replace it with a copy of its own: cp {0} {0}.copy && mv {0}.copy {0}",
                    path.display()
                )),
                None,
            );
            continue;
        }
        if meta.uid() != owner {
            push(
                &mut f,
                Finding::new(
                    "permissions",
                    Level::Problem,
                    format!(
                        "{} belongs to user {}, the home to user {owner}",
                        path.display(),
                        meta.uid()
                    ),
                )
                .fix(format!("chown {owner} {}", path.display())),
                None,
            );
        }
        let mode = meta.mode() & 0o7777;
        if vault::too_open(mode) && mode & 0o022 == 0 && *path == paths.home {
            // qwen itself creates its home 0755. What protects a credential is the file's own
            // 0600 (checked below, a problem when wider); a home others may only list shows
            // them names. So a note with the fix, not a verdict that flips after a plain
            // `qwen -p`; adding an account makes the home 0700 (vault::make_private). A home
            // others may write to is a problem: they could swap the files in it.
            wide += 1;
            push(
                &mut f,
                Finding::new(
                    "permissions",
                    Level::Info,
                    format!(
                        "{} is {mode:04o}{}: other users can list its names; the files with credentials are what must be 0600",
                        path.display(),
                        if mode == 0o755 { " (qwen's default)" } else { "" }
                    ),
                )
                .fix(format!("chmod 700 {}", path.display())),
                Some(Repair::Chmod(path.clone(), 0o700)),
            );
        } else if vault::too_open(mode) {
            wide += 1;
            push(
                &mut f,
                Finding::new(
                    "permissions",
                    Level::Problem,
                    format!("{} is {mode:04o}: other users can read it", path.display()),
                )
                .fix(format!("chmod {want:o} {}", path.display())),
                Some(Repair::Chmod(path.clone(), want)),
            );
        }
    }
    if wide == 0 {
        push(
            &mut f,
            Finding::new("permissions", Level::Ok, "files 0600, directories 0700"),
            None,
        );
    }

    // 6. Locks.
    match lock_holders(&paths.lock) {
        holders if holders.is_empty() => {}
        holders => push(
            &mut f,
            Finding::new(
                "locks",
                Level::Info,
                format!("rotation.lock is held now by {}", holders.join(", ")),
            )
            .fix("normal during a rotation; if it stays held, that process is stuck: kill it"),
            None,
        ),
    }
    if paths.qwen_lock.exists() {
        if vault::qwen_lock_is_stale(&paths.qwen_lock) {
            push(
                &mut f,
                Finding::new(
                    "locks",
                    Level::Problem,
                    format!(
                        "{} is stale (its holder is gone)",
                        paths.qwen_lock.display()
                    ),
                )
                .fix(format!("rm {}", paths.qwen_lock.display())),
                Some(Repair::Remove(paths.qwen_lock.clone())),
            );
        } else {
            push(
                &mut f,
                Finding::new(
                    "locks",
                    Level::Info,
                    "oauth_creds.lock exists: qwen is saving credentials right now",
                ),
                None,
            );
        }
    }

    // 7. Leftovers of an interrupted write or login (they may hold credentials).
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a > Duration::from_secs(60))
    };
    for dir in [&paths.home, &paths.accounts] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name.starts_with(vault::TEMP_PREFIX) && old(&p) {
                push(
                    &mut f,
                    Finding::new(
                        "leftovers",
                        Level::Problem,
                        format!(
                            "{} is a leftover temporary file of an interrupted write",
                            p.display()
                        ),
                    )
                    .fix(format!("rm {}", p.display())),
                    Some(Repair::Remove(p)),
                );
            } else if name.starts_with(".login-") && p.is_dir() && old(&p) {
                push(
                    &mut f,
                    Finding::new(
                        "leftovers",
                        Level::Problem,
                        format!("{} is a leftover temporary login home", p.display()),
                    )
                    .fix(format!("rm -r {}", p.display())),
                    Some(Repair::RemoveDir(p)),
                );
            }
        }
    }

    // 8. state.yaml, the slots, the live file.
    let state = match State::load(&paths.state) {
        Loaded::Ok(st) => Some(st),
        Loaded::Missing => {
            if !slots.is_empty() {
                push(
                    &mut f,
                    Finding::new(
                        "state",
                        Level::Info,
                        "state.yaml does not exist yet; the next run creates it",
                    ),
                    None,
                );
            }
            None
        }
        Loaded::Corrupt(problem) => {
            let finding = Finding::new(
                "state",
                Level::Problem,
                format!("{} is unreadable: {problem}", paths.state.display()),
            );
            // A file we may not read is not corrupt: rebuilding it would lose its counters.
            let opened = files::open_regular(&paths.state, false);
            let denied = opened.is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
            if denied {
                push(
                    &mut f,
                    finding.fix(format!(
                        "it is not yours to read: give it to the home's owner (as root: chown {owner} {})",
                        paths.state.display()
                    )),
                    None,
                );
            } else if problem.starts_with("cannot read") {
                // Not a file at all (a FIFO, a device): the problem names the `mv`; runs
                // refuse it rather than rebuild over it.
                push(
                    &mut f,
                    finding.fix("move it out of the way; the next run rebuilds it from accounts/"),
                    None,
                );
            } else {
                push(
                    &mut f,
                    finding.fix("rebuild it from accounts/ (a .corrupt copy is kept)"),
                    Some(Repair::Vault),
                );
            }
            None
        }
    };
    match v.overview() {
        Err(e) => push(
            &mut f,
            Finding::new("accounts", Level::Problem, format!("{e}")),
            None,
        ),
        Ok(o) => {
            if o.slots.is_empty() {
                push(
                    &mut f,
                    Finding::new("accounts", Level::Info, "no accounts yet: qwen runs without rotation")
                        .fix("qwen --rotation-add LABEL (current login) or qwen --rotation-add --login LABEL"),
                    None,
                );
            }
            for (n, info) in &o.slots {
                if let Some(problem) = &info.problem {
                    push(
                        &mut f,
                        Finding::new("accounts", Level::Problem, format!("account {n} ({}): {problem}", info.path.display()))
                            .fix(format!("replace it with a valid login (qwen --rotation-add --login), then qwen --rotation-remove {n}")),
                        None,
                    );
                }
            }
            for (n, a) in &o.state.accounts {
                if let (_, Some(why)) = watch_mode(v, *n, a.kind) {
                    push(
                        &mut f,
                        Finding::new(
                            "relay",
                            Level::Info,
                            format!("{} is watched by output scanning, not the request relay: {why}", a.describe(*n)),
                        )
                        .fix("let the shim set the base URL: keep it in the account (--base-url), not in a modelProviders entry of qwen's settings, and set relay: true"),
                        None,
                    );
                }
                if a.enabled && a.status_at(o.now) == Status::NeedsLogin {
                    push(
                        &mut f,
                        Finding::new("accounts", Level::Problem, format!("{} needs a new login ({})", a.describe(*n), a.last_reason.as_deref().unwrap_or("refused")))
                            .fix(format!("qwen --rotation-add --login, then qwen --rotation-remove {n}; or qwen --rotation-reset {n} if it works again")),
                        None,
                    );
                }
            }
            let oauth_current = o
                .slots
                .get(&o.state.current_index)
                .is_some_and(|i| i.kind == Some(Kind::OAuth) && i.problem.is_none());
            match &o.live {
                LiveFile::Symlink { target, .. } => push(
                    &mut f,
                    Finding::new(
                        "live",
                        Level::Problem,
                        format!(
                            "{} is a symlink to {} (qwen replaces it with a file on refresh)",
                            paths.live_creds.display(),
                            target.display()
                        ),
                    )
                    .fix("make it a regular file with the same content"),
                    Some(Repair::Vault),
                ),
                LiveFile::Missing if oauth_current => push(
                    &mut f,
                    Finding::new(
                        "live",
                        Level::Problem,
                        format!(
                            "{} is missing (qwen deletes it when a refresh fails)",
                            paths.live_creds.display()
                        ),
                    )
                    .fix(format!("install account {} again", o.state.current_index)),
                    Some(Repair::Vault),
                ),
                LiveFile::Other => push(
                    &mut f,
                    Finding::new(
                        "live",
                        Level::Problem,
                        format!("{} is not a regular file", paths.live_creds.display()),
                    )
                    .fix(format!(
                        "move it away: mv {0} {0}.bak",
                        paths.live_creds.display()
                    )),
                    None,
                ),
                LiveFile::Regular { bytes, .. } => {
                    if let Err(problem) = vault::check_oauth(bytes) {
                        let repair = oauth_current.then_some(Repair::Vault);
                        push(
                            &mut f,
                            Finding::new("live", Level::Problem, format!("{}: {problem}", paths.live_creds.display()))
                                .fix(if oauth_current { "install the current account again (the file is kept in accounts/backup/)".to_string() } else { "log in again with qwen".to_string() }),
                            repair,
                        );
                    } else if o.live_owner.is_none() && !o.slots.is_empty() {
                        push(
                            &mut f,
                            Finding::new("live", Level::Info, "oauth_creds.json holds a login that is not one of your accounts (kept in accounts/backup/ before it is replaced)")
                                .fix("qwen --rotation-add LABEL stores it as an account"),
                            None,
                        );
                    }
                }
                _ => {}
            }
            if o.state
                .accounts
                .values()
                .any(|a| a.kind == Some(Kind::ApiKey))
            {
                api_key_settings(&mut f, paths);
            }
        }
    }
    if let Some(st) = state {
        match audit::read(&paths.log) {
            Ok(log) => {
                let lines = log
                    .events
                    .iter()
                    .filter(|e| e.event == events::ACCOUNT_SWITCH)
                    .count() as u64;
                if lines != st.switches_total {
                    push(
                        &mut f,
                        Finding::new(
                            "log",
                            Level::Info,
                            format!(
                                "state.yaml counts {} switches, rotation.log has {lines} (an interrupted write, or an edited file)",
                                st.switches_total
                            ),
                        ),
                        None,
                    );
                }
                if log.skipped > 0 {
                    push(
                        &mut f,
                        Finding::new(
                            "log",
                            Level::Info,
                            format!(
                                "rotation.log has {} unreadable lines (skipped)",
                                log.skipped
                            ),
                        ),
                        None,
                    );
                }
            }
            Err(e) => push(
                &mut f,
                Finding::new(
                    "log",
                    Level::Problem,
                    format!("cannot read {}: {e}", paths.log.display()),
                ),
                None,
            ),
        }
    }
    let (_, config_problem) = Config::load(&paths.config);
    if let Some(p) = config_problem {
        push(
            &mut f,
            Finding::new("config", Level::Problem, p.clone()).fix(if p.contains("ermission denied") {
                "give rotation.yaml back to the home's owner (see the permissions lines), or delete it to use the defaults"
            } else {
                "fix what is named, or move rotation.yaml away to use the defaults"
            }),
            None,
        );
    }
    (f, repairs, real_json)
}

/// The `qwen` that a plain `qwen` command runs (first on PATH).
fn first_qwen_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qwen"))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Processes holding a flock on `path` (from /proc/locks), as "pid 123 (qwen)".
fn lock_holders(path: &Path) -> Vec<String> {
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    let Ok(text) = fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let ino = meta.ino().to_string();
    let mut out = Vec::new();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dev_ino) = fields.iter().find(|f| f.matches(':').count() == 2) else {
            continue;
        };
        if line.contains("->") || dev_ino.rsplit(':').next() != Some(ino.as_str()) {
            continue;
        }
        let pid = fields
            .iter()
            .position(|f| f == dev_ino)
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| fields.get(i));
        if let Some(pid) = pid {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            out.push(format!("pid {pid} ({comm})"));
        }
    }
    out
}

/// API-key slots need qwen to pick OpenAI-compatible auth from the environment.
fn api_key_settings(f: &mut Vec<Finding>, paths: &Paths) {
    let Ok(text) = files::read_text(&paths.settings, files::MAX_OWN_FILE) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        f.push(
            Finding::new(
                "settings",
                Level::Problem,
                format!("{} is not valid JSON", paths.settings.display()),
            )
            .fix("fix it; qwen cannot start with it either"),
        );
        return;
    };
    let selected = v
        .pointer("/security/auth/selectedType")
        .and_then(Value::as_str);
    if selected == Some("qwen-oauth") {
        f.push(
            Finding::new(
                "settings",
                Level::Info,
                "settings.json selects qwen-oauth: qwen 0.12 then ignores an API-key account's environment (0.24 uses it)",
            )
            .fix("for API-key accounts with qwen 0.12, set security.auth.selectedType to \"openai\""),
        );
    }
    if let Some(providers) = v
        .pointer("/modelProviders/openai")
        .and_then(Value::as_array)
    {
        let keys: Vec<&str> = providers
            .iter()
            .filter_map(|p| p.get("envKey").and_then(Value::as_str))
            .collect();
        if !keys.is_empty() {
            f.push(Finding::new(
                "settings",
                Level::Info,
                format!(
                    "settings.json modelProviders read keys from {}; an API-key account must use the same name (--env-key when adding it)",
                    keys.join(", ")
                ),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------------------------

fn help_text() -> String {
    format!(
        "qwen-rotation {version}: a drop-in `qwen` that moves to the next account when one runs out of quota.

Usage: qwen [qwen's own arguments]          runs the real qwen, rotating accounts on quota errors
       qwen --rotation-<command> [options]  manages the accounts (the real qwen does not run)

Per-run modifiers (removed before qwen sees argv):
  --rotation-account N|LABEL   use this account for this run         qwen --rotation-account 2 -p hi
  --rotation-no-retry          rotate on a quota hit but do not rerun    qwen --rotation-no-retry -p hi
  --rotation-hold              piped text output: hold it until qwen ends, so a quota hit after
                               the answer started is retried (rotation.yaml: hold_text_output)
                                                                         qwen --rotation-hold -p hi > out.txt

Commands (read commands take --json for machine output):
  --rotation-help              this text                                 qwen --rotation-help
  --rotation-version           versions of the shim and the real qwen   qwen --rotation-version --json
  --rotation-status            accounts, the live one, cooldowns         qwen --rotation-status
  --rotation-list              the same as --rotation-status             qwen --rotation-list --json
  --rotation-status --watch    redraws the status every 2s on a terminal qwen --rotation-status --watch
  --rotation-stats             runs, switches, hits, cooldowns, last reset and per-day history
                                                                         qwen --rotation-stats --json
  --rotation-switch N|LABEL    make an account live (clears its cooldown) qwen --rotation-switch work
  --rotation-next              move to the next usable account           qwen --rotation-next
                               (exit 0 switched, 1 none available)
  --rotation-add [LABEL]       store the current login (~/.qwen/oauth_creds.json) as an account
                                                                         qwen --rotation-add personal
  --rotation-add --login [LABEL]
                               log in to another account in a temporary home, then store it
                                                                         qwen --rotation-add --login work
  --rotation-add --api-key [LABEL] [--base-url URL] [--model M] [--env-key NAME]
                               store an API key, read from stdin or a hidden prompt (never argv)
                               printf %s \"$KEY\" | qwen --rotation-add --api-key cp --base-url https://coding-intl.dashscope.aliyuncs.com/v1 --model qwen3-coder-plus
  --rotation-setup             guided capture of several accounts (terminal)
                                                                         qwen --rotation-setup
  --rotation-remove N|LABEL    remove an account (its file moves to accounts/removed/)
                                                                         qwen --rotation-remove 3
  --rotation-enable N|LABEL    use an account again                      qwen --rotation-enable 3
  --rotation-disable N|LABEL   keep an account out of rotation           qwen --rotation-disable 3
  --rotation-reset [N|all]     clear cooldowns and needs-login marks     qwen --rotation-reset all
  --rotation-label N LABEL     name an account (\"\" removes the label)    qwen --rotation-label 2 work
  --rotation-log [--tail N]    the audit log (default: last 20; --tail 0: all)
                                                                         qwen --rotation-log --tail 50
  --rotation-doctor [--fix]    check the setup: real qwen, PATH, QWEN_HOME, permissions, locks,
                               files; --fix repairs what it can          qwen --rotation-doctor --fix

Files (in QWEN_HOME, default ~/.qwen): accounts/oauth_creds_N.json (OAuth accounts),
accounts/api_key_N.json (API keys), oauth_creds.json (the live login), state.yaml, rotation.log,
rotation.yaml (settings: strategy round-robin|fill-first, cooldowns, patterns), rotation.lock.

Exit codes: qwen's own status when it runs · 75 every account exhausted · 127 real qwen not found ·
126 real qwen not executable · 2 bad usage (including an account that does not exist) ·
1 a management command failed (--rotation-next: no other account; --rotation-doctor: problems).
Environment: QWEN_HOME, QWEN_ROTATION=off (run qwen untouched), QWEN_ROTATION_REAL=/path/to/qwen, NO_COLOR.
Accounts from the environment (CI secrets; slot files are then ignored, docs/CI.md):
  QWEN_ROTATION_KEYS=\"$K1,$K2\" or QWEN_ROTATION_KEY_1, QWEN_ROTATION_KEY_2, … one key each;
  QWEN_ROTATION_BASE_URL[_N], QWEN_ROTATION_MODEL[_N] (default: OPENAI_BASE_URL, OPENAI_MODEL);
  QWEN_ROTATION_STATE_DIR=DIR keeps state.yaml and rotation.log there (else QWEN_HOME if
  writable, else for the run only).            QWEN_ROTATION_KEYS=\"$KEY1 $KEY2\" qwen -p hi
",
        version = env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn cmd(args: &[&str]) -> Command {
        p(args).unwrap().command
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(
            cmd(&["--rotation-status"]),
            Command::Status { watch: false }
        );
        assert_eq!(
            cmd(&["--rotation-list", "--watch"]),
            Command::Status { watch: true }
        );
        assert!(p(&["--rotation-status", "--json"]).unwrap().json);
        assert_eq!(
            cmd(&["--rotation-switch", "2"]),
            Command::Switch("2".into())
        );
        assert_eq!(
            cmd(&["--rotation-switch=work"]),
            Command::Switch("work".into())
        );
        assert_eq!(cmd(&["--rotation-reset"]), Command::Reset(None));
        assert_eq!(cmd(&["--rotation-reset", "all"]), Command::Reset(None));
        assert_eq!(
            cmd(&["--rotation-reset", "3"]),
            Command::Reset(Some("3".into()))
        );
        assert_eq!(
            cmd(&["--rotation-label", "2", "work"]),
            Command::Label("2".into(), Some("work".into()))
        );
        assert_eq!(
            cmd(&["--rotation-label", "2", ""]),
            Command::Label("2".into(), None)
        );
        assert_eq!(
            cmd(&["--rotation-log", "--tail", "5"]),
            Command::Log { tail: Some(5) }
        );
        assert_eq!(
            cmd(&["--rotation-log", "--tail=0"]),
            Command::Log { tail: Some(0) }
        );
        assert_eq!(
            cmd(&["--rotation-doctor", "--fix"]),
            Command::Doctor { fix: true }
        );
        assert_eq!(cmd(&["--rotation-switch", "--help"]), Command::Help);
        let add = cmd(&[
            "--rotation-add",
            "--api-key",
            "cp",
            "--base-url",
            "https://x/v1",
            "--model",
            "m",
            "--env-key",
            "K_1",
        ]);
        assert_eq!(
            add,
            Command::Add(AddArgs {
                label: Some("cp".into()),
                api_key: true,
                base_url: Some("https://x/v1".into()),
                model: Some("m".into()),
                env_key: Some("K_1".into()),
                login: false
            })
        );
        assert_eq!(
            cmd(&["--rotation-add", "--login"]),
            Command::Add(AddArgs {
                login: true,
                ..AddArgs::default()
            })
        );
    }

    #[test]
    fn bad_usage_names_the_problem_and_the_fix() {
        let cases: &[(&[&str], &str)] = &[
            (&["--rotation-switch"], "needs an account number or label"),
            (&["--rotation-switch", "1", "2"], "unexpected argument `2`"),
            (&["--rotation-switch", "0"], "start at 1"),
            (&["--rotation-switch", "-3"], "start at 1"),
            (&["--rotation-status", "--jsn"], "did you mean --json?"),
            (&["--rotation-doctor", "--fxi"], "did you mean --fix?"),
            (&["--rotation-next", "--force"], "takes no options"),
            (&["--rotation-switch", "--json", "2"], "no --json output"),
            (&["--rotation-status", "--rotation-stats"], "two commands"),
            (
                &["--rotation-status", "--rotation-account", "2"],
                "applies to a qwen run",
            ),
            (&["--rotation-statsu"], "did you mean --rotation-stats?"),
            (&["--rotation-log", "--tail"], "needs a value"),
            (&["--rotation-log", "--tail", "many"], "number of lines"),
            (&["--rotation-log", "--json", "--json"], "given twice"),
            (&["--rotation-add", "--login", "--api-key"], "choose one"),
            (&["--rotation-add", "--model", "m"], "add --api-key"),
            (
                &["--rotation-add", "--api-key", "--base-url", "ftp://x"],
                "http:// or https://",
            ),
            (
                &["--rotation-add", "--api-key", "--env-key", "1X"],
                "not a variable name",
            ),
            (&["--rotation-add", "12"], "account number"),
            (&["--rotation-add", "my label"], "spaces"),
            (&["--rotation-label", "2"], "needs an account and a label"),
            (&["--rotation-status", "--", "x"], "after `--`"),
        ];
        for (args, want) in cases {
            let err = p(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn keys_in_argv_are_refused_without_echoing_them() {
        let key = "sk-1234567890abcdefSECRET";
        for args in [
            vec!["--rotation-add", "--api-key", key],
            vec!["--rotation-add", &format!("--api-key={key}")],
            vec!["--rotation-add", "--api-key", "--model", key],
            vec!["--rotation-switch", key],
            vec!["--rotation-add", "--api-key", "lbl", "--base-url", key],
        ] {
            let err = p(&args).unwrap_err();
            assert!(
                err.contains("never goes on the command line") || err.contains("hidden"),
                "{args:?}: {err}"
            );
            assert!(!err.contains("SECRET"), "{err}");
        }
        assert!(!looks_like_key("work"));
        assert!(!looks_like_key("personal@example.com"));
        assert!(looks_like_key("Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z0000"));
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(relative(None, now), "never");
        assert_eq!(relative(Some(now - TimeDelta::seconds(125)), now), "2m ago");
        assert_eq!(
            relative(Some(now + TimeDelta::seconds(3900)), now),
            "in 1h 5m"
        );
        assert_eq!(relative(Some(now), now), "just now");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["1".to_string(), "long-label".to_string()],
            vec!["12".to_string(), "x".to_string()],
        ];
        let t = table(&["#", "LABEL"], &rows, &|_, _, c| c.to_string());
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str| {
            l.find("LABEL")
                .or_else(|| l.find("long"))
                .or_else(|| l.rfind('x'))
        };
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[1]), col(lines[2]));
    }

    #[test]
    fn login_settings_select_oauth_and_drop_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("settings.json");
        fs::write(&p, r#"{"security":{"auth":{"selectedType":"openai","apiKey":"k"}},"env":{"X":"y"},"general":{"a":1}}"#).unwrap();
        let v: Value = serde_json::from_str(&login_settings(&p)).unwrap();
        assert_eq!(
            v.pointer("/security/auth/selectedType"),
            Some(&json!("qwen-oauth"))
        );
        assert_eq!(v.pointer("/security/auth/apiKey"), None);
        assert_eq!(v.get("env"), None);
        assert_eq!(v.pointer("/general/a"), Some(&json!(1)));
        let v: Value = serde_json::from_str(&login_settings(&dir.path().join("absent"))).unwrap();
        assert_eq!(
            v.pointer("/security/auth/selectedType"),
            Some(&json!("qwen-oauth"))
        );
    }

    #[test]
    fn help_mentions_every_command() {
        let h = help_text();
        for c in cli::COMMANDS.iter().chain(cli::MODIFIERS) {
            assert!(h.contains(c), "{c}");
        }
    }
}
