//! Parsing a management argv into one `Command`. Parsing is complete before anything runs: bad
//! usage is one line naming the problem and its fix, and a key found in argv is refused without
//! being echoed.

use std::collections::BTreeMap;

use crate::cli;
use crate::text::{acts_on_terminal, printable, redact_url};
use crate::vault;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
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
    Demo,
    Dashboard { port: Option<u16> },
    Report(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct AddArgs {
    pub(super) label: Option<String>,
    pub(super) login: bool,
    pub(super) api_key: bool,
    pub(super) base_url: Option<String>,
    pub(super) model: Option<String>,
    pub(super) env_key: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parsed {
    pub(super) command: Command,
    pub(super) json: bool,
}

/// Options each command accepts (besides `--help`).
fn options_of(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "--rotation-status" | "--rotation-list" => &["--json", "--watch"],
        "--rotation-stats" | "--rotation-version" => &["--json"],
        "--rotation-log" => &["--json", "--tail"],
        "--rotation-doctor" => &["--json", "--fix"],
        "--rotation-dashboard" => &["--port"],
        "--rotation-add" => &["--login", "--api-key", "--base-url", "--model", "--env-key"],
        _ => &[],
    }
}

/// Options that take a value.
const VALUED: &[&str] = &["--port", "--tail", "--base-url", "--model", "--env-key"];

pub(super) fn parse(args: &[String]) -> Result<Parsed, String> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    if end < args.len() && end + 1 < args.len() {
        return Err(format!(
            "unexpected arguments after `--` for a management command; run the command alone ({} {})",
            crate::profile::active().name,
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
                "{name} applies to a {} run, not to a management command; remove it",
                crate::profile::active().name
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
        return Err(format!(
            "no management command given; see {} --rotation-help",
            crate::profile::active().name
        ));
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
                    "--base-url must be an http:// or https:// URL, not `{}`; e.g. {}",
                    shown(&redact_url(u)),
                    example_of("--base-url")
                ));
            }
            let env_key = value("--env-key");
            if let Some(k) = &env_key
                && !vault::valid_env_name(k)
            {
                return Err(format!(
                    "--env-key `{}` is not a variable name; e.g. {}",
                    shown(k),
                    example_of("--env-key")
                ));
            }
            let model = value("--model");
            if model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                return Err(format!(
                    "--model is empty; name a model, e.g. {}",
                    example_of("--model")
                ));
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
        "--rotation-demo" => {
            arity(0, 0, "")?;
            Command::Demo
        }
        "--rotation-dashboard" => {
            arity(0, 0, "")?;
            let port = match opts.get("--port").cloned().flatten() {
                None => None,
                Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!(
                        "--port takes a port number from 1 to 65535, not `{}`; e.g. {}",
                        shown(&p),
                        example_of("--port")
                    )
                })?),
            };
            Command::Dashboard { port }
        }
        "--rotation-report" => {
            arity(1, 1, "the file to write")?;
            if !positional[0].ends_with(".html") && !positional[0].ends_with(".htm") {
                return Err(format!(
                    "--rotation-report writes an HTML page; name a file ending in .html, e.g. {}",
                    example_of(cmd)
                ));
            }
            Command::Report(positional[0].clone())
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
    format!(
        "an API key never goes on the command line (shell history and the process list would keep it); \
         pipe it: printf %s \"$KEY\" | {} --rotation-add --api-key LABEL, or leave it out to be asked for it",
        crate::profile::active().name
    )
}

/// An argument shown in an error, cut short (it may be a mistyped secret).
pub(super) fn shown(text: &str) -> String {
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
        return Err(format!(
            "the account is empty; give its number or label ({} --rotation-status lists them)",
            crate::profile::active().name
        ));
    }
    if let Ok(n) = t.parse::<i64>() {
        if n < 1 {
            return Err(format!(
                "account numbers start at 1, not {n}; {} --rotation-status lists them",
                crate::profile::active().name
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
pub(super) fn label_arg(text: &str) -> Result<String, String> {
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

/// A use of `flag`, worded for the active profile (its name, example URL, model and key).
fn example_of(flag: &str) -> String {
    let p = crate::profile::active();
    let name = p.name;
    match flag {
        "--rotation-switch" => {
            format!("{name} --rotation-switch 2 (or a label: {name} --rotation-switch work)")
        }
        "--rotation-remove" => format!("{name} --rotation-remove 2"),
        "--rotation-enable" => format!("{name} --rotation-enable 2"),
        "--rotation-disable" => format!("{name} --rotation-disable 2"),
        "--rotation-reset" => format!("{name} --rotation-reset 2 (or all)"),
        "--rotation-label" => format!("{name} --rotation-label 2 work"),
        "--rotation-add" => format!("{name} --rotation-add work"),
        "--rotation-demo" => format!("{name} --rotation-demo"),
        "--rotation-report" => format!("{name} --rotation-report pool.html"),
        "--port" => format!("{name} --rotation-dashboard --port 8377"),
        "--tail" => "--tail 20".to_string(),
        "--base-url" => format!("--base-url {}", p.api.example_base_url),
        "--model" => format!("--model {}", p.api.example_model),
        "--env-key" => format!("--env-key {}", p.api.key_var),
        _ => format!("{name} --rotation-help"),
    }
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
}
