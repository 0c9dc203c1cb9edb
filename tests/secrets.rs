//! No secret in any output: every management command (human and `--json`), `doctor`, the log,
//! runs that rotate on quota, throttle and auth errors, and the files the shim writes, over a
//! pool that holds OAuth and API-key accounts whose every token is a fixture secret
//! (support/secrets.rs). The scan itself is proven able to fail.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use sandbox::secrets::{SECRET_MARK, assert_clean, assert_home_clean, home_leaks, leak, secret};
use sandbox::{Sandbox, output_within};

/// Fails the runs whose live account matches `$FAIL_ON` with `$MESSAGE` on stderr; otherwise
/// answers with a word that depends on the account (never the token itself).
const FAKE: &str = r#"live=$(cat "$QWEN_HOME/oauth_creds.json" 2>/dev/null)
case "$live" in *"$FAIL_ON"*) printf '%s\n' "$MESSAGE" >&2; exit 1 ;; esac
case "$live" in *tok_one*) echo "answer from one" ;; *tok_two*) echo "answer from two" ;; *) echo "answer" ;; esac"#;

const LIMIT: Duration = Duration::from_secs(60);

fn pool() -> Sandbox {
    let sb = Sandbox::new(FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    fs::copy(
        sb.qwen_home().join("accounts/oauth_creds_1.json"),
        sb.qwen_home().join("oauth_creds.json"),
    )
    .unwrap();
    add_api_key(&sb, "key-three");
    sb
}

/// `printf %s KEY | qwen --rotation-add --api-key LABEL …`, as a user adds a key.
fn add_api_key(sb: &Sandbox, label: &str) {
    let mut cmd = sb.cmd([
        "--rotation-add",
        "--api-key",
        label,
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
    ]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret(label).as_bytes())
        .unwrap();
    let out = sandbox::child::collect_within(child, Duration::from_secs(60), "the shim");
    assert_clean("--rotation-add --api-key stdout", &out.stdout);
    assert_clean("--rotation-add --api-key stderr", &out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_failing(sb: &Sandbox, fail_on: &str, message: &str) -> Output {
    let mut cmd = sb.cmd(["-p", "hello", "--output-format", "text"]);
    cmd.env("FAIL_ON", fail_on).env("MESSAGE", message);
    output_within(cmd, LIMIT)
}

#[test]
fn the_scan_finds_a_planted_secret_in_output_and_files() {
    let planted = format!("note: {}", secret("tok_one"));
    let finding = leak("stdout", planted.as_bytes()).expect("the scan finds it");
    assert!(finding.contains("stdout leaks a secret"), "{finding}");
    assert!(
        !finding.contains(SECRET_MARK),
        "the report repeats the secret: {finding}"
    );
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("rotation.log"), &planted).unwrap();
    assert_eq!(home_leaks(dir.path()).len(), 1, "rotation.log");
    fs::remove_file(dir.path().join("rotation.log")).unwrap();
    fs::create_dir(dir.path().join("rotation-settings")).unwrap();
    fs::write(dir.path().join("rotation-settings/settings.json"), &planted).unwrap();
    assert_eq!(home_leaks(dir.path()).len(), 1, "the settings overlay");
    // Credentials are where secrets belong: not a finding.
    fs::remove_dir_all(dir.path().join("rotation-settings")).unwrap();
    fs::write(dir.path().join("oauth_creds.json"), &planted).unwrap();
    assert!(home_leaks(dir.path()).is_empty());
    assert!(leak("stdout", b"REPLY-FROM-tok_one").is_none());
}

#[test]
fn every_management_command_and_doctor_is_free_of_secrets_in_both_formats() {
    let sb = pool();
    // Some history first: a quota hit on account 1 (rotation), an auth failure on 2.
    let out = run_failing(
        &sb,
        "tok_one",
        "[API Error: 429 Free allocated quota exceeded.]",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let commands: &[&[&str]] = &[
        &["--rotation-help"],
        &["--rotation-version"],
        &["--rotation-status"],
        &["--rotation-list"],
        &["--rotation-stats"],
        &["--rotation-log", "--tail", "0"],
        &["--rotation-doctor"],
        &["--rotation-switch", "2"],
        &["--rotation-next"],
        &["--rotation-disable", "1"],
        &["--rotation-enable", "1"],
        &["--rotation-label", "2", "work"],
        &["--rotation-reset", "all"],
        &["--rotation-remove", "3"],
        &["--rotation-switch", "nope"],
        &["--rotation-bogus"],
    ];
    let mut scanned = 0;
    for args in commands {
        for json in [false, true] {
            let mut argv: Vec<&str> = args.to_vec();
            if json {
                argv.push("--json");
            }
            let out = sb.run(&argv);
            // output_within already scanned both streams; check they were not empty.
            assert!(
                !out.stdout.is_empty() || !out.stderr.is_empty(),
                "{argv:?} printed nothing"
            );
            scanned += 2;
        }
    }
    assert_home_clean(&sb.qwen_home());
    println!(
        "secret scan: {} commands × 2 formats, {scanned} streams, 0 hits",
        commands.len()
    );
}

#[test]
fn runs_that_rotate_on_quota_throttle_and_auth_print_no_secret() {
    let sb = pool();
    let cases = [
        ("tok_one", "[API Error: 429 Free allocated quota exceeded.]"),
        (
            "tok_two",
            "Requests rate limit exceeded, please try again later.",
        ),
        (
            "tok_",
            "[API Error: 401 invalid access token or token expired]",
        ),
    ];
    for (fail_on, message) in cases {
        let out = run_failing(&sb, fail_on, message);
        // Scanned by output_within; the runs rotated (or ran out of accounts).
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 75)),
            "{}",
            text(&out)
        );
    }
    let log = sb.read("home/.qwen/rotation.log");
    assert!(log.contains("account_switch"), "{log}");
    assert_home_clean(&sb.qwen_home());
}
