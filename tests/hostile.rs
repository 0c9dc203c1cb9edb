//! Hostile input: random argv, random and mutated state.yaml / rotation.yaml / credential files,
//! and random, huge, binary or escape-laden output fed to the detector and through the shim.
//! Nothing may panic, every refusal is one clear line, no secret reaches an error text, memory
//! stays bounded and a quota phrase is found wherever the reads cut it.
//!
//! Case counts follow `PROPTEST_CASES` (default 256 here); each test prints what it ran.

#[path = "support/sandbox.rs"]
mod sandbox;
// Both support modules bring the secret scan along; one copy each is harmless.
#[allow(clippy::duplicate_mod)]
#[path = "support/vault_home.rs"]
mod vault_home;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};

use qwen_rotation::cli::{self, Invocation};
use qwen_rotation::config::Config;
use qwen_rotation::detect::{Anchor, Detector, Patterns};
use qwen_rotation::model::Class;
use qwen_rotation::vault::state::{Loaded, State};
use qwen_rotation::vault::{check_api_key, check_oauth};

/// Cases per property: `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(PtConfig {
        cases: cases(default),
        failure_persistence: None,
        ..PtConfig::default()
    })
}

/// A one-line message: no line break, no other control character, not empty.
fn assert_one_clear_line(what: &str, text: &str) {
    assert!(!text.trim().is_empty(), "{what}: empty message");
    assert!(
        !text.chars().any(|c| c.is_control()),
        "{what}: control characters in {text:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The --rotation-* argument parser
// ---------------------------------------------------------------------------------------------

/// One argv element: mostly our flags (right, misspelt, with values), qwen's own options,
/// `--`, and arbitrary bytes (not UTF-8, control characters, `=`).
fn arg() -> impl Strategy<Value = OsString> {
    let known: Vec<&'static str> = cli::COMMANDS
        .iter()
        .chain(cli::MODIFIERS)
        .copied()
        .collect();
    let known = proptest::sample::select(known);
    prop_oneof![
        3 => known.clone().prop_map(OsString::from),
        2 => (known.clone(), proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(k, tail)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend(tail);
            OsString::from_vec(b)
        }),
        2 => (known, 0..20usize, any::<u8>()).prop_map(|(k, at, byte)| {
            // A misspelling: one byte replaced (maybe by a newline, an escape or 0xff).
            let mut b = k.as_bytes().to_vec();
            let at = (at % (b.len() - 11)) + 11;
            b[at] = byte;
            OsString::from_vec(b)
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|mut tail| {
            let mut b = b"--rotation-".to_vec();
            b.append(&mut tail);
            OsString::from_vec(b)
        }),
        1 => Just(OsString::from("--")),
        2 => proptest::sample::select(vec!["-p", "hi", "-y", "--output-format", "json", "2", "work", ""])
            .prop_map(OsString::from),
        2 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(OsString::from_vec),
    ]
}

fn argv() -> impl Strategy<Value = Vec<OsString>> {
    proptest::collection::vec(arg(), 0..8)
}

/// What the parser must hand to qwen: argv without our modifiers (and their values) before `--`.
fn check_parse(argv: &[OsString]) -> Result<Option<String>, TestCaseError> {
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    match cli::parse(argv) {
        Ok(Invocation::Run { args, .. }) => {
            // Nothing of ours before `--` survives; everything after it is untouched.
            let ours = |a: &OsString| a.as_encoded_bytes().starts_with(b"--rotation-");
            let kept_end = args.iter().position(|a| a == "--").unwrap_or(args.len());
            prop_assert!(!args[..kept_end].iter().any(ours), "{argv:?} -> {args:?}");
            prop_assert_eq!(&args[kept_end..], &argv[end..]);
            Ok(None)
        }
        Ok(Invocation::Admin(text)) => {
            prop_assert_eq!(text.len(), argv.len());
            Ok(None)
        }
        Err(usage) => {
            prop_assert!(
                !usage.chars().any(|c| c.is_control()),
                "usage error is not one clean line: {usage:?} for {argv:?}"
            );
            prop_assert!(
                usage.contains("--rotation-") || usage.contains("remove"),
                "{usage}"
            );
            Ok(Some(usage))
        }
    }
}

#[test]
fn argument_parser_never_panics_and_refuses_in_one_clean_line() {
    let mut runner = runner(2048);
    let (runs, errors) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner
        .run(&argv(), |argv| {
            runs.fetch_add(1, Ordering::Relaxed);
            if check_parse(&argv)?.is_some() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    println!(
        "argv cases: {}, refused as bad usage: {}",
        runs.into_inner(),
        errors.into_inner()
    );
}

#[test]
fn bad_usage_through_the_binary_exits_2_with_one_line_and_qwen_does_not_run() {
    let sb = sandbox::Sandbox::new(r#"echo ran > "$SANDBOX/ran"; exit 0"#);
    let mut runner = runner(48);
    let checked = AtomicUsize::new(0);
    runner
        .run(&argv(), |argv| {
            // exec(2) cannot carry a NUL byte: no caller can pass such an argv.
            let has_nul = argv.iter().any(|a| a.as_encoded_bytes().contains(&0));
            if has_nul || cli::parse(&argv).is_ok() {
                return Ok(());
            }
            checked.fetch_add(1, Ordering::Relaxed);
            let out = sandbox::output_within(sb.cmd(&argv), Duration::from_secs(30));
            let err = String::from_utf8_lossy(&out.stderr);
            prop_assert_eq!(out.status.code(), Some(2), "{:?}: {}", argv, err);
            prop_assert_eq!(err.lines().count(), 1, "{:?}: {:?}", argv, err);
            prop_assert!(err.starts_with("qwen-rotation: "), "{}", err);
            prop_assert!(out.stdout.is_empty());
            prop_assert!(!sb.path("ran").exists(), "qwen ran for {:?}", argv);
            Ok(())
        })
        .unwrap();
    let checked = checked.into_inner();
    println!("bad argv run through the binary: {checked}");
    assert!(checked > 0, "the generator produced no bad usage");
}

/// A management command with hostile arguments: values, flags, control characters, non-ASCII.
fn admin_argv() -> impl Strategy<Value = Vec<String>> {
    // The dashboard serves until it is stopped (tests/dashboard.rs gives it bad arguments).
    let commands: Vec<&str> = cli::COMMANDS
        .iter()
        .copied()
        .filter(|c| *c != "--rotation-dashboard")
        .collect();
    let command = proptest::sample::select(commands);
    let extra = prop_oneof![
        3 => proptest::sample::select(vec![
            "1", "2", "9", "0", "-1", "all", "work", "--json", "--tail", "x", "--fix", "--api-key",
            "--login", "--base-url", "ftp://x", "--model", "--env-key", "1BAD", "", " ",
        ])
        .prop_map(str::to_string),
        1 => "[a-z\n\t\x1b\\[;0-9é✕]{0,12}",
    ];
    (command, proptest::collection::vec(extra, 0..4)).prop_map(|(c, rest)| {
        let mut v = vec![c.to_string()];
        v.extend(rest);
        v
    })
}

#[test]
fn management_commands_with_hostile_arguments_never_panic_or_echo_control_characters() {
    let sb = sandbox::Sandbox::new(r#"echo ran > "$SANDBOX/ran"; exit 0"#);
    let mut runner = runner(64);
    let codes = std::sync::Mutex::new(std::collections::BTreeMap::<i32, usize>::new());
    runner
        .run(&admin_argv(), |argv| {
            // Fresh slots each time: `remove` and `disable` must not starve later cases.
            let _ = fs::remove_dir_all(sb.qwen_home());
            sb.add_oauth_slot(1, "tok_one");
            sb.add_oauth_slot(2, "tok_two");
            let out = sandbox::output_within(sb.cmd(&argv), Duration::from_secs(30));
            let err = String::from_utf8_lossy(&out.stderr);
            let code = out.status.code().unwrap_or(-1);
            *codes.lock().unwrap().entry(code).or_default() += 1;
            prop_assert!(
                [0, 1, 2, 75].contains(&code),
                "{:?}: exit {} (documented: 0, 1, 2, 75)\n{}",
                argv,
                code,
                err
            );
            prop_assert!(!err.contains("panicked"), "{:?}: {}", argv, err);
            prop_assert!(
                !err.contains('\x1b') && !String::from_utf8_lossy(&out.stdout).contains('\x1b'),
                "{:?} echoes an escape sequence: {:?}",
                argv,
                err
            );
            if code == 2 {
                // One line says what is wrong; only indented example lines may follow it
                // (`--rotation-setup` without a terminal lists the commands to use instead).
                prop_assert!(err.starts_with("qwen-rotation: "), "{}", err);
                prop_assert!(
                    err.lines().skip(1).all(|l| l.starts_with("  ")),
                    "{:?}: {:?}",
                    argv,
                    err
                );
            }
            prop_assert!(!sb.path("ran").exists(), "qwen ran for {:?}", argv);
            Ok(())
        })
        .unwrap();
    println!(
        "management argv through the binary, by exit code: {:?}",
        codes.into_inner().unwrap()
    );
}

#[test]
fn an_account_name_with_control_characters_is_refused_in_one_escaped_line() {
    let sb = sandbox::Sandbox::new(r#"echo ran > "$SANDBOX/ran"; exit 0"#);
    sb.add_oauth_slot(1, "tok_one");
    let out = sb.run(["--rotation-account", "work\n\x1b[2Jx", "-p", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{:?}: {err:?}", out.status.code());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains(r"work\n\u{1b}[2Jx"), "{err:?}");
    assert!(!sb.path("ran").exists());
}

// ---------------------------------------------------------------------------------------------
// state.yaml
// ---------------------------------------------------------------------------------------------

const VALID_STATE: &str = "current_index: 2\ntotal_accounts: 3\nlast_switch: 2026-02-05T10:30:00Z\nswitches_total: 4\nlive_slot: 2\naccounts:\n  account1:\n    switches_count: 1\n    last_used: 2026-02-05T10:28:00Z\n    enabled: true\n    status: cooling_down\n    cooldown_until: 2026-02-05T15:30:00Z\n    hits:\n      quota: 1\n  account2:\n    label: work\n    kind: oauth\n    status: healthy\n  account3:\n    kind: api_key\n    enabled: false\n";

/// A valid file with a few bytes replaced, inserted or cut.
fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    proptest::collection::vec((0..len, any::<u8>(), 0..3u8), 1..6).prop_map(move |edits| {
        let mut b = base.as_bytes().to_vec();
        for (at, byte, how) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match how {
                0 => b[at] = byte,
                1 => b.insert(at, byte),
                _ => b.truncate(at.max(1)),
            }
        }
        b
    })
}

fn yaml_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => mutated(VALID_STATE),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => "[a-z_:\\-\\[\\]{}'\"#&*!|>%@` \n0-9]{0,200}".prop_map(String::into_bytes),
        // A token pasted into the wrong file: whatever the problem says, it never quotes it.
        1 => "(accounts|current_index|account1|-|)[:\\[{ '\"`]{0,3}SeCrEt[a-z\\\\\"']{0,6}[\\]}'\"` \n]{0,4}"
            .prop_map(String::into_bytes),
    ]
}

#[test]
fn state_parsing_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    let mut runner = runner(512);
    let (ok, corrupt) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner
        .run(&yaml_like(), |bytes| {
            fs::write(&path, &bytes).unwrap();
            match State::load(&path) {
                Loaded::Ok(st) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    // Whatever loaded writes back as a file that loads to the same state.
                    prop_assert_eq!(State::parse(&st.to_yaml()).unwrap(), st);
                }
                Loaded::Corrupt(problem) => {
                    corrupt.fetch_add(1, Ordering::Relaxed);
                    prop_assert!(!problem.chars().any(|c| c.is_control()), "{problem:?}");
                    prop_assert!(
                        !problem.contains(MARK),
                        "the problem quotes the file: {problem}"
                    );
                }
                Loaded::Missing => prop_assert!(false, "the file exists"),
            }
            Ok(())
        })
        .unwrap();
    println!(
        "state.yaml cases: loaded {}, corrupt {}",
        ok.into_inner(),
        corrupt.into_inner()
    );
}

#[test]
fn an_unreadable_state_is_kept_as_corrupt_and_rebuilt_without_losing_a_slot() {
    let h = vault_home::Home::with_oauth(2);
    h.put_api(3, "c");
    let mut runner = runner(64);
    let (rebuilt, kept) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let copy = h.paths.state.with_extension("yaml.corrupt");
    runner
        .run(&yaml_like(), |bytes| {
            let _ = fs::remove_file(&copy);
            vault_home::write600(&h.paths.state, "");
            fs::write(&h.paths.state, &bytes).unwrap();
            let was_corrupt = matches!(State::load(&h.paths.state), Loaded::Corrupt(_));
            // Any locked operation reads the state; `reset` changes nothing else.
            h.vault().reset(None).unwrap();
            let st = State::parse(&fs::read_to_string(&h.paths.state).unwrap()).unwrap();
            prop_assert_eq!(
                st.accounts.keys().copied().collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
            for n in 1..=2 {
                prop_assert_eq!(h.slot(n), Some(vault_home::creds(&vault_home::name(n))));
            }
            if was_corrupt {
                rebuilt.fetch_add(1, Ordering::Relaxed);
                prop_assert_eq!(fs::read(&copy).ok(), Some(bytes), "the .corrupt copy");
                prop_assert_eq!(vault_home::mode(&copy), 0o600);
                kept.fetch_add(1, Ordering::Relaxed);
            } else {
                prop_assert!(!copy.exists());
            }
            Ok(())
        })
        .unwrap();
    println!(
        "vault over random state.yaml: rebuilt {} times, .corrupt copies kept {}",
        rebuilt.into_inner(),
        kept.into_inner()
    );
}

// ---------------------------------------------------------------------------------------------
// rotation.yaml
// ---------------------------------------------------------------------------------------------

const VALID_CONFIG: &str = "strategy: fill-first\nmax_attempts: 3\nquota_cooldown: 5h\nthrottle_cooldown: 2m\non_exhausted: wait\nmax_wait: 30m\nstdin_limit: 1000\nlock_timeout: 10s\nauto_retry: false\npatterns:\n  mode: extend\n  quota: ['out of juice']\n";

#[test]
fn config_parsing_never_panics_and_names_the_problem_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotation.yaml");
    let strategy = prop_oneof![
        3 => mutated(VALID_CONFIG),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => "[a-z_:\\-\\[\\]{}'\"#&*!|>%@` \n0-9]{0,200}".prop_map(String::into_bytes),
    ];
    let mut runner = runner(512);
    let (ok, bad) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner
        .run(&strategy, |bytes| {
            fs::write(&path, &bytes).unwrap();
            let (config, warning) = Config::load(&path);
            match warning {
                None => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    // What loaded is usable: its patterns compile or say why in one line.
                    if let Err(why) = Patterns::from_config(&config.patterns) {
                        prop_assert!(!why.chars().any(|c| c.is_control()), "{why:?}");
                    }
                }
                Some(w) => {
                    bad.fetch_add(1, Ordering::Relaxed);
                    prop_assert!(
                        !w.chars().any(|c| c.is_control()),
                        "not one clean line: {w:?}"
                    );
                    prop_assert!(w.contains("rotation.yaml"), "{w}");
                    prop_assert!(w.contains("using the defaults"), "{w}");
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "rotation.yaml cases: loaded {}, refused with a warning {}",
        ok.into_inner(),
        bad.into_inner()
    );
}

// ---------------------------------------------------------------------------------------------
// Credential files
// ---------------------------------------------------------------------------------------------

const MARK: &str = "SeCrEt";

/// JSON-ish credential files whose secrets (tokens, keys) carry the mark.
fn creds_like() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        3 => "[a-zA-Z0-9 _:/.\\-\\\\\"\n]{0,24}".prop_map(serde_json::Value::String),
        1 => any::<i64>().prop_map(serde_json::Value::from),
        1 => Just(serde_json::Value::Null),
        1 => Just(serde_json::Value::Bool(true)),
    ];
    let key = proptest::sample::select(vec![
        "access_token",
        "refresh_token",
        "api_key",
        "base_url",
        "model",
        "env_key",
        "expiry_date",
        "other",
    ]);
    let object = proptest::collection::btree_map(key, value, 0..6).prop_map(|m| {
        let secret = |k: &str| matches!(k, "access_token" | "refresh_token" | "api_key");
        let map: serde_json::Map<String, serde_json::Value> = m
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) if secret(k) => (
                    k.to_string(),
                    serde_json::Value::String(format!("{MARK}{s}")),
                ),
                v => (k.to_string(), v),
            })
            .collect();
        serde_json::to_vec(&map).unwrap()
    });
    prop_oneof![
        3 => object.clone(),
        2 => (object, 0..64usize, any::<u8>()).prop_map(|(mut b, at, byte)| {
            let at = at % b.len().max(1);
            if b.is_empty() { b.push(byte) } else { b[at] = byte }
            b
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|mut b| {
            b.extend_from_slice(MARK.as_bytes());
            b
        }),
    ]
}

#[test]
fn credential_checks_never_panic_and_never_quote_a_secret() {
    let mut runner = runner(1024);
    let (good, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner
        .run(&creds_like(), |bytes| {
            for result in [
                check_oauth(&bytes).map(|s| format!("{s:?}")),
                check_api_key(&bytes).map(|s| format!("{s:?}")),
            ] {
                match result {
                    Ok(debug) => {
                        good.fetch_add(1, Ordering::Relaxed);
                        // The Debug form of what was read redacts the secret.
                        prop_assert!(!debug.contains(MARK), "Debug leaks: {debug}");
                    }
                    Err(problem) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        prop_assert!(!problem.contains(MARK), "error leaks: {problem}");
                        assert_one_clear_line("credential problem", problem);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "credential checks: accepted {}, refused {}",
        good.into_inner(),
        refused.into_inner()
    );
}

// ---------------------------------------------------------------------------------------------
// The detector
// ---------------------------------------------------------------------------------------------

/// qwen's real quota reports (stderr of 0.12 and 0.24; see tests/fixtures).
fn quota_reports() -> Vec<Vec<u8>> {
    [
        "oauth_quota_0.12_stderr.txt",
        "apikey_quota_0.12_stderr.txt",
        "apikey_quota_cp_0.24_stderr.txt",
        "apikey_retry_quota_0.24_stderr.txt",
    ]
    .iter()
    .map(|f| fs::read(format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap())
    .collect()
}

/// Output noise: binary bytes, escape sequences, unfinished escapes, long runs, line breaks.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64),
        2 => "[a-z ]{0,40}".prop_map(String::into_bytes),
        2 => (0u8..108, proptest::collection::vec(0u8..100, 0..6)).prop_map(|(f, ps)| {
            let ps: Vec<String> = ps.iter().map(u8::to_string).collect();
            format!("\x1b[{}{}", ps.join(";"), (b'@' + f % 63) as char).into_bytes()
        }),
        1 => "\x1b\\][0-9];[a-z]{0,30}(\x07|\x1b\\\\)?".prop_map(String::into_bytes),
        1 => Just(b"\x1bP".to_vec()),
        1 => Just("─│╭╮✕ ⠋\u{200b}".as_bytes().to_vec()),
        1 => Just(vec![b'\n']),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

/// Splits `bytes` at the given cut points (any order, duplicates allowed).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in at.into_iter().chain([bytes.len()]) {
        out.push(bytes[prev..c].to_vec());
        prev = c;
    }
    out
}

#[test]
fn detector_survives_any_bytes_with_a_bounded_window() {
    let patterns = Patterns::defaults();
    let input = (
        noise(),
        proptest::collection::vec(any::<usize>(), 0..40),
        any::<bool>(),
    );
    let mut runner = runner(512);
    let (fed, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner
        .run(&input, |(bytes, cuts, screen)| {
            let anchor = if screen {
                Anchor::Screen
            } else {
                Anchor::Plain
            };
            let mut d = Detector::new(Arc::clone(&patterns), anchor);
            for c in chunks(&bytes, &cuts) {
                let _ = d.feed(&c);
                prop_assert!(d.buffered() <= Detector::MAX_BUFFERED);
                most.fetch_max(d.buffered(), Ordering::Relaxed);
            }
            let _ = d.finish();
            fed.fetch_add(bytes.len(), Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    println!(
        "detector fuzz: {} bytes fed, largest window {} (bound {})",
        fed.into_inner(),
        most.into_inner(),
        Detector::MAX_BUFFERED
    );
}

#[test]
fn a_quota_report_is_found_wherever_the_reads_cut_it() {
    let patterns = Patterns::defaults();
    let reports = quota_reports();
    let input = (
        0..reports.len(),
        noise(),
        noise(),
        proptest::collection::vec(any::<usize>(), 0..24),
        any::<bool>(),
    );
    let mut runner = runner(512);
    let found = AtomicUsize::new(0);
    runner
        .run(&input, |(which, before, after, cuts, colour)| {
            let mut report = reports[which].clone();
            if colour {
                // An escape sequence between every byte of the report (a colour storm).
                report = report
                    .iter()
                    .flat_map(|&b| {
                        let mut v = b"\x1b[1;31m".to_vec();
                        v.push(b);
                        v
                    })
                    .collect();
            }
            // Noise stands on lines of its own; an escape it leaves open ends at the line break.
            let mut bytes = before.clone();
            bytes.extend_from_slice(b"\x1b\\\x07\n");
            bytes.extend_from_slice(&report);
            bytes.extend_from_slice(b"\n");
            bytes.extend_from_slice(&after);
            let mut d = Detector::new(Arc::clone(&patterns), Anchor::Plain);
            let mut hit = None;
            for c in chunks(&bytes, &cuts) {
                hit = hit.or(d.feed(&c));
            }
            let hit = hit.or_else(|| d.hit().cloned()).or_else(|| d.finish());
            prop_assert_eq!(
                hit.as_ref().map(|h| h.class),
                Some(Class::Quota),
                "report {} (colour {}) cut at {:?}",
                which,
                colour,
                cuts
            );
            found.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    println!(
        "quota reports found across random cuts: {}",
        found.into_inner()
    );
}

#[test]
fn an_error_block_on_screen_is_found_wherever_the_reads_cut_it() {
    // A raw terminal transcript of qwen 0.12 drawing its quota error (escape sequences, box
    // drawing, redraws), cut into up to 40 reads at random places.
    let raw = fs::read(format!(
        "{}/tests/fixtures/screen_raw_oauth_quota_0.12.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let patterns = Patterns::defaults();
    let mut runner = runner(256);
    let found = AtomicUsize::new(0);
    runner
        .run(&proptest::collection::vec(any::<usize>(), 1..40), |cuts| {
            let mut d = Detector::new(Arc::clone(&patterns), Anchor::Screen);
            let mut hits = 0;
            let mut class = None;
            for c in chunks(&raw, &cuts) {
                if let Some(h) = d.feed(&c) {
                    hits += 1;
                    class = Some(h.class);
                }
                prop_assert!(d.buffered() <= Detector::MAX_BUFFERED);
            }
            prop_assert_eq!(hits, 1, "one hit for one error block, cut at {:?}", cuts);
            prop_assert_eq!(class, Some(Class::Quota));
            found.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    println!(
        "screen transcripts found across random cuts: {}",
        found.into_inner()
    );
}

#[test]
fn a_huge_line_without_newline_keeps_the_window_bounded() {
    let patterns = Patterns::defaults();
    // MiB per case: invalid UTF-8 is the slow path of the normaliser in a debug build, so it
    // gets a quarter of the others to keep this file well under a minute.
    for (name, unit, mib) in [
        ("letters", b"abcdefghijklmnop".to_vec(), 64),
        (
            "invalid utf-8",
            vec![0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82],
            16,
        ),
        (
            "escape storm",
            b"\x1b[1;31m\x1b[0m\x1b]0;t\x07".to_vec(),
            64,
        ),
        ("unfinished escape", b"\x1b[".to_vec(), 64),
    ] {
        let block: Vec<u8> = unit.iter().copied().cycle().take(64 * 1024).collect();
        let mut d = Detector::new(Arc::clone(&patterns), Anchor::Plain);
        let start = Instant::now();
        let mut most = 0;
        for _ in 0..mib * 16 {
            assert!(d.feed(&block).is_none(), "{name}: no phrase, no hit");
            most = most.max(d.buffered());
        }
        assert!(most <= Detector::MAX_BUFFERED, "{name}: {most}");
        // After 64 MiB of garbage, a real report on its own line is still found.
        let report = &quota_reports()[0];
        let mut tail = b"\n".to_vec();
        tail.extend_from_slice(report);
        let hit = d.feed(&tail).or_else(|| d.finish());
        assert_eq!(hit.map(|h| h.class), Some(Class::Quota), "{name}");
        println!(
            "{mib} MiB line ({name}): {:?}, largest window {most} bytes (bound {})",
            start.elapsed(),
            Detector::MAX_BUFFERED
        );
    }
}

#[test]
fn an_error_block_that_never_ends_keeps_the_screen_detector_bounded() {
    // An interactive screen: a `✕` block opens and 32 MiB follow without a line break.
    let patterns = Patterns::defaults();
    let mut d = Detector::new(Arc::clone(&patterns), Anchor::Screen);
    let _ = d.feed("\r\n✕ ".as_bytes());
    let block: Vec<u8> = "quota ✕ exceeded ─│ "
        .bytes()
        .cycle()
        .take(64 * 1024)
        .collect();
    let start = Instant::now();
    let mut most = 0;
    for _ in 0..512 {
        let _ = d.feed(&block);
        most = most.max(d.buffered());
        assert!(most <= Detector::MAX_BUFFERED, "{most}");
    }
    // The screen goes on: a real error block is still found after it.
    let raw = fs::read(format!(
        "{}/tests/fixtures/screen_raw_oauth_quota_0.12.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    d.rearm();
    let hit = d.feed(b"\r\n").or_else(|| d.feed(&raw));
    assert_eq!(hit.map(|h| h.class), Some(Class::Quota));
    println!(
        "32 MiB in one open block: {:?}, largest buffer {most} bytes (bound {})",
        start.elapsed(),
        Detector::MAX_BUFFERED
    );
}

// ---------------------------------------------------------------------------------------------
// The shim under a flood
// ---------------------------------------------------------------------------------------------

/// Peak resident memory of `pid` in KiB (VmHWM), read while it is alive.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

struct Reap {
    child: std::process::Child,
    go: std::path::PathBuf,
}

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = fs::write(&self.go, "");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the shim with `args` over a fake that prints `stdout_mib` MiB of `x` and `stderr_mib` MiB
/// of `y`, no line break anywhere, then waits for the test to read the shim's peak memory.
/// Returns (seconds of flood, peak RSS in KiB).
fn flood(args: &[&str], stdout_mib: u64, stderr_mib: u64) -> (f64, u64) {
    const MIB: u64 = 1 << 20;
    let sb = sandbox::Sandbox::new(&format!(
        r#"head -c {out} /dev/zero | tr '\0' 'x'
head -c {err} /dev/zero | tr '\0' 'y' >&2
echo flooded > "$SANDBOX/flooded"
while [ ! -e "$SANDBOX/go" ]; do sleep 0.01; done
exit 7"#,
        out = stdout_mib * MIB,
        err = stderr_mib * MIB
    ));
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    let start = Instant::now();
    let child = sb
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Should the test fail half-way, the fake is told to end and the shim is killed: nothing
    // keeps spinning after the test.
    let mut child = Reap {
        child,
        go: sb.path("go"),
    };
    let child = &mut child.child;
    let count = |mut r: Box<dyn Read + Send>, byte: u8| {
        std::thread::spawn(move || {
            let (mut n, mut other) = (0u64, 0u64);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return (n, other),
                    Ok(k) => {
                        let same = buf[..k].iter().filter(|&&b| b == byte).count() as u64;
                        n += same;
                        other += k as u64 - same;
                    }
                }
            }
        })
    };
    let out = count(Box::new(child.stdout.take().unwrap()), b'x');
    let err = count(Box::new(child.stderr.take().unwrap()), b'y');
    sandbox::await_file(&sb.path("flooded"), Duration::from_secs(240));
    let seconds = start.elapsed().as_secs_f64();
    let hwm = vm_hwm_kib(child.id());
    fs::write(sb.path("go"), "").unwrap();
    let status = sandbox::child::wait_within(child, Duration::from_secs(60), "the shim");
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(status.code(), Some(7), "{args:?}");
    assert_eq!(
        out,
        (stdout_mib * MIB, 0),
        "{args:?}: stdout bytes (x, other)"
    );
    assert_eq!(
        err,
        (stderr_mib * MIB, 0),
        "{args:?}: stderr bytes (y, other)"
    );
    (seconds, hwm)
}

#[test]
fn the_shim_relays_256_mib_without_newlines_in_bounded_memory() {
    let (secs, hwm) = flood(&["-p", "hi"], 256, 256);
    println!("text: 256 MiB stdout + 256 MiB stderr, no newline: {secs:.1}s, peak RSS {hwm} KiB");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB for a 512 MiB flood");
}

#[test]
fn held_json_output_stays_bounded_by_the_hold_limit() {
    // json and stream-json output is held back until its fate is known, up to 64 MiB
    // (pipes.rs HOLD_LIMIT); beyond that it is released and memory stops growing.
    for format in ["json", "stream-json"] {
        let (secs, hwm) = flood(&["-p", "hi", "--output-format", format], 256, 0);
        println!("{format}: 256 MiB stdout, no newline: {secs:.1}s, peak RSS {hwm} KiB");
        assert!(hwm < 200 * 1024, "{format}: peak RSS {hwm} KiB");
    }
}
