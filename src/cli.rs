//! Splitting argv between the shim and the real qwen.
//!
//! Invariant: every `--rotation-*` argument before a literal `--` is ours and never reaches the
//! real qwen; everything else reaches it byte for byte, in order, including the `--` itself and
//! arguments that are not UTF-8. An argv that names a management command (`--rotation-status`,
//! `--rotation-add`, …) is wholly ours: the real qwen does not run.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// What this invocation is.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// A management command: the whole argv (as text) goes to `admin::run`.
    Admin(Vec<String>),
    /// Run the real qwen with `args`, honouring the per-run modifiers.
    Run {
        args: Vec<OsString>,
        modifiers: Modifiers,
    },
}

/// Per-run modifiers, removed before the child runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Modifiers {
    /// `--rotation-account N|LABEL`: use this slot for this run.
    pub account: Option<String>,
    /// `--rotation-no-retry`: rotate on a hit, but do not run again.
    pub no_retry: bool,
    /// `--rotation-hold`: hold text output until qwen ends, so a late quota hit can be retried
    /// (as `hold_text_output: true` in rotation.yaml).
    pub hold: bool,
}

/// The management commands, for routing and "did you mean".
pub const COMMANDS: &[&str] = &[
    "--rotation-help",
    "--rotation-version",
    "--rotation-status",
    "--rotation-list",
    "--rotation-stats",
    "--rotation-switch",
    "--rotation-next",
    "--rotation-add",
    "--rotation-setup",
    "--rotation-remove",
    "--rotation-enable",
    "--rotation-disable",
    "--rotation-reset",
    "--rotation-label",
    "--rotation-log",
    "--rotation-doctor",
    "--rotation-demo",
    "--rotation-dashboard",
    "--rotation-report",
];

/// The per-run modifiers.
pub const MODIFIERS: &[&str] = &[
    "--rotation-account",
    "--rotation-no-retry",
    "--rotation-hold",
];

const PREFIX: &[u8] = b"--rotation-";

/// Splits argv (without the program name). Err is a usage message (exit 2).
pub fn parse(argv: &[OsString]) -> Result<Invocation, String> {
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let ours = |a: &OsStr| a.as_bytes().starts_with(PREFIX);

    // A management command anywhere before `--` makes the whole invocation ours.
    for a in &argv[..end] {
        if !ours(a) {
            continue;
        }
        let name = flag_name(a);
        if COMMANDS.contains(&name.as_str()) {
            let text: Result<Vec<String>, _> =
                argv.iter().map(|a| a.clone().into_string()).collect();
            return text.map(Invocation::Admin).map_err(|_| {
                "management commands take UTF-8 arguments; remove the non-UTF-8 argument".into()
            });
        }
        if !MODIFIERS.contains(&name.as_str()) {
            return Err(unknown_flag(&name));
        }
    }

    let mut modifiers = Modifiers::default();
    let mut args = Vec::with_capacity(argv.len());
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        if i >= end || !ours(a) {
            args.push(a.clone());
            i += 1;
            continue;
        }
        let name = flag_name(a);
        let inline = a
            .to_str()
            .and_then(|s| s.split_once('='))
            .map(|(_, v)| v.to_string());
        match name.as_str() {
            "--rotation-no-retry" => modifiers.no_retry = switch(&name, inline)?,
            "--rotation-hold" => modifiers.hold = switch(&name, inline)?,
            "--rotation-account" => {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        match argv
                            .get(i)
                            .filter(|v| i < end && !ours(v))
                            .and_then(|v| v.to_str())
                        {
                            Some(v) => v.to_string(),
                            None => {
                                return Err(
                                    "--rotation-account needs an account number or label, \
                                            e.g. --rotation-account 2"
                                        .into(),
                                );
                            }
                        }
                    }
                };
                if value.is_empty() {
                    return Err("--rotation-account needs an account number or label, e.g. \
                                --rotation-account 2"
                        .into());
                }
                modifiers.account = Some(value);
            }
            _ => unreachable!("checked above: only modifiers remain"),
        }
        i += 1;
    }
    Ok(Invocation::Run { args, modifiers })
}

/// A modifier that is on by being written: `--rotation-hold=yes` is a usage error.
fn switch(name: &str, inline: Option<String>) -> Result<bool, String> {
    match inline {
        Some(_) => Err(format!("{name} takes no value; write it alone")),
        None => Ok(true),
    }
}

/// `--rotation-x=value` → `--rotation-x`.
fn flag_name(a: &OsStr) -> String {
    let text = String::from_utf8_lossy(a.as_bytes());
    text.split_once('=')
        .map_or(text.as_ref(), |(n, _)| n)
        .to_string()
}

/// "unknown flag --rotation-stauts; did you mean --rotation-status?" The flag is quoted with
/// its control characters escaped: the message stays one line whatever was typed.
pub fn unknown_flag(name: &str) -> String {
    let shown = crate::text::printable(name);
    let cli = crate::profile::active().name;
    let best = COMMANDS
        .iter()
        .chain(MODIFIERS)
        .map(|c| (edit_distance(name, c), *c))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, c)) => {
            format!("unknown flag {shown}; did you mean {c}? (see {cli} --rotation-help)")
        }
        None => format!("unknown flag {shown}; see {cli} --rotation-help for the flags"),
    }
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn run(v: &[&str]) -> (Vec<OsString>, Modifiers) {
        match parse(&os(v)).unwrap() {
            Invocation::Run { args, modifiers } => (args, modifiers),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn plain_argv_passes_untouched() {
        let (args, m) = run(&["hello", "--output-format", "text", "", "a\nb"]);
        assert_eq!(args, os(&["hello", "--output-format", "text", "", "a\nb"]));
        assert_eq!(m, Modifiers::default());
    }

    #[test]
    fn non_utf8_arguments_pass_untouched() {
        let raw = OsString::from_vec(vec![0xff, b'x', 0xfe]);
        match parse(std::slice::from_ref(&raw)).unwrap() {
            Invocation::Run { args, .. } => assert_eq!(args, vec![raw]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modifiers_are_removed_in_both_spellings() {
        let (args, m) = run(&[
            "-p",
            "hi",
            "--rotation-account",
            "2",
            "--rotation-no-retry",
            "-y",
            "--rotation-hold",
        ]);
        assert_eq!(args, os(&["-p", "hi", "-y"]));
        assert_eq!(m.account.as_deref(), Some("2"));
        assert!(m.no_retry);
        assert!(m.hold);
        let (args, m) = run(&["--rotation-account=work", "x"]);
        assert_eq!(args, os(&["x"]));
        assert_eq!(m.account.as_deref(), Some("work"));
    }

    #[test]
    fn nothing_after_double_dash_is_intercepted() {
        let (args, m) = run(&["a", "--", "--rotation-no-retry", "--rotation-status"]);
        assert_eq!(
            args,
            os(&["a", "--", "--rotation-no-retry", "--rotation-status"])
        );
        assert!(!m.no_retry);
    }

    #[test]
    fn a_management_command_makes_the_invocation_ours() {
        assert_eq!(
            parse(&os(&["--rotation-status", "--json"])).unwrap(),
            Invocation::Admin(vec!["--rotation-status".into(), "--json".into()])
        );
    }

    #[test]
    fn unknown_flags_get_a_suggestion() {
        let err = parse(&os(&["--rotation-doctr"])).unwrap_err();
        assert!(err.contains("did you mean --rotation-doctor?"), "{err}");
        let err = parse(&os(&["--rotation-xyzzy-plugh"])).unwrap_err();
        assert!(err.contains("see qwen --rotation-help"), "{err}");
        let err = parse(&os(&["--rotation-st\natus\x1b[2J"])).unwrap_err();
        assert!(err.contains(r"--rotation-st\natus\u{1b}[2J"), "{err}");
    }

    #[test]
    fn account_needs_a_value() {
        assert!(parse(&os(&["--rotation-account"])).is_err());
        assert!(parse(&os(&["--rotation-account", "--rotation-no-retry"])).is_err());
        assert!(parse(&os(&["--rotation-account="])).is_err());
        assert!(parse(&os(&["--rotation-no-retry=1"])).is_err());
        let err = parse(&os(&["--rotation-hold=yes"])).unwrap_err();
        assert_eq!(err, "--rotation-hold takes no value; write it alone");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
