//! `qwen --rotation-*` through the built binary, with QWEN_HOME and HOME in a tempdir.
//! Every stdout and stderr is scanned for the fixture tokens (`Home::run`).

#[path = "support/mock.rs"]
mod mock;
#[path = "support/real_qwen.rs"]
mod real_qwen;
// Both support modules bring the secret scan along; one copy each is harmless.
#[allow(clippy::duplicate_mod)]
#[path = "support/vault_home.rs"]
mod vault_home;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use qwen_rotation::model::Class;
use qwen_rotation::vault::state::Status;
use serde_json::Value;
use vault_home::*;

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// A bad-usage line: one line, prefixed, with a `;` before the fix.
fn assert_usage_line(out: &std::process::Output, want: &str) {
    assert_eq!(code(out), 2, "{}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("qwen-rotation: ") && err.contains(';'),
        "{err}"
    );
    assert!(err.contains(want), "want {want:?} in {err}");
    assert!(stdout(out).is_empty());
}

fn add_api(h: &Home, label: &str, key: &str) -> std::process::Output {
    let out = run_with_stdin(
        h.cmd(&[
            "--rotation-add",
            "--api-key",
            label,
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m1",
        ]),
        format!("{key}\n").as_bytes(),
        Duration::from_secs(30),
    );
    assert_clean("stdout", &stdout(&out));
    assert_clean("stderr", &stderr(&out));
    out
}

#[test]
fn help_and_version() {
    let h = Home::new();
    let out = h.run(&["--rotation-help"]);
    assert_eq!(code(&out), 0);
    for flag in [
        "--rotation-status",
        "--rotation-add --api-key",
        "--rotation-doctor",
        "Exit codes",
        "--rotation-account",
    ] {
        assert!(stdout(&out).contains(flag), "{flag}");
    }
    let out = h.run(&["--rotation-version"]);
    assert_eq!(
        stdout(&out).lines().next(),
        Some(concat!("qwen-rotation ", env!("CARGO_PKG_VERSION")))
    );
    let v = json(&h.run(&["--rotation-version", "--json"]));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["build_marker"], qwen_rotation::locate::SHIM_MARKER);
    assert_eq!(code(&h.run(&["--rotation-switch", "--help"])), 0);
}

#[test]
fn bad_usage_is_one_line_and_exit_2() {
    let h = Home::with_oauth(2);
    assert_usage_line(&h.run(&["--rotation-stauts"]), "did you mean");
    assert_usage_line(&h.run(&["--rotation-switch"]), "needs an account");
    assert_usage_line(
        &h.run(&["--rotation-switch", "1", "2"]),
        "unexpected argument",
    );
    assert_usage_line(&h.run(&["--rotation-switch", "9"]), "no account 9");
    assert_usage_line(
        &h.run(&["--rotation-remove", "nosuchlabel"]),
        "no account nosuchlabel",
    );
    assert_usage_line(&h.run(&["--rotation-switch", "0"]), "start at 1");
    assert_usage_line(
        &h.run(&["--rotation-status", "--jsonn"]),
        "did you mean --json?",
    );
    assert_usage_line(
        &h.run(&["--rotation-log", "--tail", "x"]),
        "number of lines",
    );
    assert_usage_line(
        &h.run(&["--rotation-status", "--rotation-next"]),
        "one at a time",
    );
    assert_usage_line(&h.run(&["--rotation-setup"]).clone_fix(), "");
    assert_usage_line(&h.run(&["--rotation-status", "--watch"]), "terminal");
    assert_usage_line(&h.run(&["--rotation-add", "--login"]), "needs a terminal");
    // Nothing was written by any of them.
    assert!(!h.paths.state.exists());
}

/// `--rotation-setup` off a terminal prints instructions over several lines; normalise it
/// to its first line for the one-line check.
trait CloneFix {
    fn clone_fix(&self) -> std::process::Output;
}

impl CloneFix for std::process::Output {
    fn clone_fix(&self) -> std::process::Output {
        let first = stderr(self).lines().next().unwrap_or("").to_string() + "\n";
        std::process::Output {
            status: self.status,
            stdout: self.stdout.clone(),
            stderr: first.into_bytes(),
        }
    }
}

#[test]
fn an_empty_home_reads_fine() {
    let h = Home::new();
    let out = h.run(&["--rotation-status"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("No accounts"), "{}", stdout(&out));
    let v = json(&h.run(&["--rotation-status", "--json"]));
    assert_eq!(v["accounts"].as_array().map(Vec::len), Some(0));
    assert_eq!(code(&h.run(&["--rotation-stats"])), 0);
    assert_eq!(code(&h.run(&["--rotation-log"])), 0);
    assert_eq!(
        json(&h.run(&["--rotation-log", "--json"])),
        Value::Array(vec![])
    );
}

#[test]
fn add_captures_the_live_login_and_refuses_duplicates() {
    let h = Home::new();
    let out = h.run(&["--rotation-add", "personal"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("no login to capture"),
        "{}",
        stderr(&out)
    );

    h.put_live(&creds("a"));
    let out = h.run(&["--rotation-add", "personal"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Added account 1 (personal)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(h.slot(1).as_deref(), Some(creds("a").as_str()));
    assert_eq!(mode(&h.paths.oauth_slot(1)), 0o600);

    let out = h.run(&["--rotation-add", "again"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("already stored as account 1 (personal)"),
        "{}",
        stderr(&out)
    );

    // The same refresh token with a new access token is still the same account.
    h.put_live(&refreshed("a", 3));
    assert_eq!(code(&h.run(&["--rotation-add"])), 1);

    h.put_live(&creds("b"));
    assert_eq!(
        code(&h.run(&["--rotation-add", "personal"])),
        2,
        "labels are unique"
    );
    assert_eq!(code(&h.run(&["--rotation-add", "work"])), 0);
    let v = json(&h.run(&["--rotation-status", "--json"]));
    assert_eq!(v["current"], 1);
    assert_eq!(v["live_slot"], 2, "the live file is account 2's login now");
    assert_eq!(v["accounts"][1]["label"], "work");
    h.assert_no_secrets_in_our_files();
}

#[test]
fn api_keys_come_from_stdin_never_argv() {
    let h = Home::new();
    let key = token("key-1");
    let out = add_api(&h, "cp", &key);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("given to qwen as OPENAI_API_KEY"),
        "{}",
        stdout(&out)
    );
    let file = h.paths.api_key_slot(1);
    assert_eq!(mode(&file), 0o600);
    let stored: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stored["api_key"], key.as_str());
    assert_eq!(stored["base_url"], "http://127.0.0.1:9/v1");
    assert_eq!(stored["model"], "m1");
    assert_eq!(stored["env_key"], "OPENAI_API_KEY");

    // The same key again is refused; an empty stdin is refused.
    assert_eq!(code(&add_api(&h, "cp2", &key)), 1);
    let out = add_api(&h, "cp3", "");
    assert_eq!(code(&out), 2, "{}", stderr(&out));

    // A key on the command line is an error, and is not echoed.
    let key_like = "sk-abcdef0123456789SeCrEt";
    for args in [
        vec!["--rotation-add", "--api-key", key_like],
        vec!["--rotation-add", "--api-key=sk-abcdef0123456789SeCrEt"],
    ] {
        let out = h.run(&args);
        assert_eq!(code(&out), 2);
        assert!(
            stderr(&out).contains("never goes on the command line"),
            "{}",
            stderr(&out)
        );
    }
    let v = json(&h.run(&["--rotation-status", "--json"]));
    assert_eq!(v["accounts"][0]["kind"], "api_key");
    for out in [
        h.run(&["--rotation-log", "--json"]),
        h.run(&["--rotation-stats", "--json"]),
        h.run(&["--rotation-doctor", "--json"]),
    ] {
        assert_clean("json", &stdout(&out));
    }
    h.assert_no_secrets_in_our_files();
}

#[test]
fn a_missing_home_is_created_0700_even_under_a_wide_umask() {
    let h = Home::new();
    let home = h.dir.path().join("fresh/qwen-home");
    let script = format!(
        "umask 000; printf %s '{}' | exec {SHIM} --rotation-add --api-key k1",
        token("key-umask")
    );
    let out = run_within(
        {
            let mut c = Command::new("sh");
            c.args(["-c", &script])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("QWEN_HOME", &home)
                .env("HOME", h.user_home());
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_clean("stdout", &stdout(&out));
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("accounts")), 0o700);
    for f in [
        "accounts/api_key_1.json",
        "state.yaml",
        "rotation.log",
        "rotation.lock",
    ] {
        assert_eq!(mode(&home.join(f)), 0o600, "{f}");
    }
}

#[test]
fn switch_next_label_disable_enable_reset() {
    let h = Home::with_oauth(3);
    h.vault().prepare(None).unwrap();
    assert_eq!(code(&h.run(&["--rotation-label", "2", "work"])), 0);
    let out = h.run(&["--rotation-switch", "work"]);
    assert_eq!(code(&out), 0);
    assert_eq!(
        stdout(&out).trim(),
        "Switched from account 1 to account 2 (work)."
    );
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));

    let out = h.run(&["--rotation-next"]);
    assert_eq!(
        (code(&out), stdout(&out).trim()),
        (0, "Switched from account 2 (work) to account 3.")
    );
    assert_eq!(h.live().as_deref(), Some(creds("c").as_str()));

    // Disabling the live account moves to the next one.
    let out = h.run(&["--rotation-disable", "3"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("live account is account 1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(h.state().current_index, 1);
    assert_eq!(
        code(&h.run(&["--rotation-switch", "3"])),
        1,
        "a disabled account is refused"
    );
    assert_eq!(code(&h.run(&["--rotation-enable", "3"])), 0);

    // Spend every other account: next has nowhere to go (exit 1, the seeds' contract).
    let v = h.vault();
    v.report(1, &hit(Class::Quota)).unwrap();
    v.report(2, &hit(Class::Quota)).unwrap();
    assert_eq!(h.state().current_index, 3);
    let out = h.run(&["--rotation-next"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("no other account"),
        "{}",
        stderr(&out)
    );

    let out = h.run(&["--rotation-reset", "1"]);
    assert_eq!(stdout(&out).trim(), "Reset account 1: it is usable again.");
    let out = h.run(&["--rotation-reset", "all"]);
    assert!(
        stdout(&out).contains("Reset account 2 (work)"),
        "{}",
        stdout(&out)
    );
    assert!(
        h.state()
            .accounts
            .values()
            .all(|a| a.status == Status::Healthy)
    );
    let out = h.run(&["--rotation-label", "2", ""]);
    assert_eq!(stdout(&out).trim(), "Account 2 has no label now.");
    h.assert_counters_match();
    h.assert_no_secrets_in_our_files();
}

#[test]
fn switching_to_a_spent_account_clears_it_and_syncs_the_old_one_back() {
    let h = Home::with_oauth(2);
    let v = h.vault();
    v.prepare(None).unwrap();
    v.report(1, &hit(Class::Quota)).unwrap();
    h.put_live(&refreshed("b", 1));
    let out = h.run(&["--rotation-switch", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        h.slot(2).as_deref(),
        Some(refreshed("b", 1).as_str()),
        "account 2's refresh was kept"
    );
    assert_eq!(h.live().as_deref(), Some(creds("a").as_str()));
    assert_eq!(h.state().accounts[&1].status, Status::Healthy);
}

#[test]
fn remove_moves_the_file_aside_and_moves_the_live_account() {
    let h = Home::with_oauth(3);
    h.vault().prepare(None).unwrap();
    let out = h.run(&["--rotation-remove", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Removed account 1")
            && stdout(&out).contains("live account is account 2"),
        "{}",
        stdout(&out)
    );
    assert!(!h.paths.oauth_slot(1).exists());
    let removed: Vec<PathBuf> = fs::read_dir(h.paths.accounts.join("removed"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(fs::read_to_string(&removed[0]).unwrap(), creds("a"));
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    let st = h.state();
    assert_eq!((st.current_index, st.total_accounts), (2, 2));
    assert_eq!(h.count("slot_removed"), 1);
    // Removing the rest leaves no live account and no error.
    assert_eq!(code(&h.run(&["--rotation-remove", "2"])), 0);
    assert_eq!(code(&h.run(&["--rotation-remove", "3"])), 0);
    assert_eq!(h.state().current_index, 0);
    assert!(!qwen_rotation::vault::Vault::has_accounts(&h.paths));
    h.assert_counters_match();
}

#[test]
fn status_stats_and_log_read_well() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    v.set_label("1", Some("first")).unwrap();
    v.report(1, &hit(Class::Quota)).unwrap();
    v.report(2, &hit(Class::Throttle)).unwrap();
    let out = h.run(&["--rotation-status"]);
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "no colour off a terminal");
    let header = text.lines().nth(1).unwrap();
    for col in [
        "#",
        "LABEL",
        "KIND",
        "STATUS",
        "COOLDOWN",
        "LAST USED",
        "SWITCHES",
        "HITS Q/T/A",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row1 = text.lines().find(|l| l.contains(" first ")).unwrap();
    assert!(
        row1.contains("cooling down") && row1.contains("1/0/0"),
        "{row1}"
    );
    assert!(row1.contains("4h 59m") || row1.contains("5h"), "{row1}");
    let live = text
        .lines()
        .find(|l| l.trim_start().starts_with('*'))
        .unwrap();
    assert!(live.contains(" 3 ") && live.contains("just now"), "{live}");

    let v = json(&h.run(&["--rotation-status", "--json"]));
    assert_eq!(v["current"], 3);
    assert_eq!(v["switches_total"], 2);
    assert_eq!(v["accounts"][0]["status"], "cooling_down");
    assert!(
        v["accounts"][0]["cooldown_remaining_secs"]
            .as_i64()
            .unwrap()
            > 17000
    );
    assert_eq!(v["accounts"][1]["hits"]["throttle"], 1);
    assert_eq!(v["accounts"][2]["live"], true);

    let s = json(&h.run(&["--rotation-stats", "--json"]));
    assert_eq!(s["switches_total"], 2);
    assert_eq!(s["accounts"][0]["cooldowns"], 1);
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(s["history"][0]["date"], today.as_str());
    assert_eq!(s["history"][0]["switches"], 2);
    assert_eq!(s["history"][0]["quota"], 1);
    let text = stdout(&h.run(&["--rotation-stats"]));
    assert!(
        text.contains("Total rotations: 2") && text.contains(&today),
        "{text}"
    );

    let log = json(&h.run(&["--rotation-log", "--json"]));
    let switches: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "account_switch")
        .collect();
    assert_eq!(switches.len(), 2);
    assert_eq!(switches[0]["reason"], "quota_exhausted");
    let tail = json(&h.run(&["--rotation-log", "--json", "--tail", "1"]));
    assert_eq!(tail.as_array().map(Vec::len), Some(1));
    let text = stdout(&h.run(&["--rotation-log", "--tail", "2"]));
    assert!(
        text.contains("account_switch") && text.contains("the last 2 of"),
        "{text}"
    );
    h.assert_no_secrets_in_our_files();
}

/// `bin/qwen` (the shim) and `real/qwen` (a fake) in the sandbox, created once.
fn path_dirs(h: &Home) -> (PathBuf, PathBuf) {
    let bin = h.dir.path().join("bin");
    let real = h.dir.path().join("real");
    if !bin.exists() {
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(SHIM, bin.join("qwen")).unwrap();
        write_fake(&real.join("qwen"), "echo fake");
    }
    (bin, real)
}

/// A home with the shim first on PATH and a fake real qwen after it, so doctor is clean.
fn doctor_cmd(h: &Home, args: &[&str]) -> std::process::Output {
    let (bin, real) = path_dirs(h);
    let mut c = h.cmd(args);
    c.env(
        "PATH",
        format!("{}:{}:/usr/bin:/bin", bin.display(), real.display()),
    );
    let out = run_within(c, Duration::from_secs(30));
    assert_clean("doctor stdout", &stdout(&out));
    assert_clean("doctor stderr", &stderr(&out));
    out
}

#[test]
fn doctor_is_clean_on_a_good_home() {
    let h = Home::with_oauth(2);
    h.vault().prepare(None).unwrap();
    let out = doctor_cmd(&h, &["--rotation-doctor"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("real qwen:") && text.contains("/real/qwen"),
        "{text}"
    );
    assert!(text.contains("skipped") && text.contains("shim"), "{text}");
    assert!(text.contains("No problems found."), "{text}");
    let v = json(&doctor_cmd(&h, &["--rotation-doctor", "--json"]));
    assert_eq!(v["ok"], true);
    assert!(
        v["real_qwen"]["path"]
            .as_str()
            .unwrap()
            .ends_with("real/qwen")
    );
}

/// qwen reads its settings with comments stripped (`//`, `/* */`): doctor reads them the same
/// way, and still reports a file qwen cannot read.
#[test]
fn doctor_accepts_a_settings_json_with_comments_and_reports_an_invalid_one() {
    let h = Home::new();
    h.put_api(1, "a");
    h.vault().prepare(None).unwrap();
    fs::write(
        &h.paths.settings,
        "{\n  // qwen accepts comments\n  \"security\": {\"auth\": {\"selectedType\": \"qwen-oauth\"}}, /* and these */\n  \"modelProviders\": {\"openai\": [{\"id\": \"m1\", \"envKey\": \"MY_KEY\"}]}\n}\n",
    )
    .unwrap();
    let text = stdout(&doctor_cmd(&h, &["--rotation-doctor"]));
    assert!(!text.contains("not valid JSON"), "{text}");
    assert!(
        text.contains("settings.json selects qwen-oauth") && text.contains("keys from MY_KEY"),
        "the commented file is read: {text}"
    );
    fs::write(
        &h.paths.settings,
        "{\"security\": {\"auth\": }} // broken\n",
    )
    .unwrap();
    let out = doctor_cmd(&h, &["--rotation-doctor"]);
    assert!(
        stdout(&out).contains(&format!("{} is not valid JSON", h.paths.settings.display())),
        "{}",
        stdout(&out)
    );
    assert_ne!(code(&out), 0);
}

#[test]
fn doctor_finds_and_fixes_permissions_locks_symlinks_and_corrupt_state() {
    let h = Home::with_oauth(2);
    h.vault().prepare(None).unwrap();
    fs::set_permissions(h.paths.oauth_slot(2), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&h.paths.accounts, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(&h.paths.live_creds).unwrap();
    std::os::unix::fs::symlink("accounts/oauth_creds_1.json", &h.paths.live_creds).unwrap();
    fs::write(h.paths.cli_lock.as_deref().unwrap(), "x").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(h.paths.cli_lock.as_deref().unwrap())
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::write(&h.paths.state, "[[[").unwrap();

    // A world-readable slot also warns on a plain run's prepare.
    let launch_warns = {
        let out = h.run(&["--rotation-status"]);
        stdout(&out).contains("read by other users")
    };
    assert!(launch_warns);

    let out = doctor_cmd(&h, &["--rotation-doctor"]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    for want in [
        "0644: other users",
        "0755",
        "stale",
        "symlink",
        "unreadable",
        "--fix repairs",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    let v = json(&doctor_cmd(&h, &["--rotation-doctor", "--json"]));
    assert_eq!(v["ok"], false);
    assert!(v["problems"].as_u64().unwrap() >= 5);

    let out = doctor_cmd(&h, &["--rotation-doctor", "--fix"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).contains("fixed"), "{}", stdout(&out));
    assert_eq!(mode(&h.paths.oauth_slot(2)), 0o600);
    assert_eq!(mode(&h.paths.accounts), 0o700);
    assert!(!h.paths.cli_lock.as_deref().unwrap().exists());
    assert!(
        fs::symlink_metadata(&h.paths.live_creds)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(h.live().as_deref(), Some(creds("a").as_str()));
    assert!(h.paths.home.join("state.yaml.corrupt").exists());
    assert_eq!(h.state().accounts.len(), 2);
    let out = doctor_cmd(&h, &["--rotation-doctor"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    for n in [1, 2] {
        assert_eq!(h.slot(n).as_deref(), Some(creds(&name(n)).as_str()));
    }
}

#[test]
fn doctor_reports_needs_login_and_invalid_slots_with_fixes() {
    let h = Home::with_oauth(3);
    let v = h.vault();
    v.prepare(None).unwrap();
    v.report(1, &hit(Class::Auth)).unwrap();
    write600(&h.paths.oauth_slot(3), "{\"access_token\":\"only\"}");
    let out = doctor_cmd(&h, &["--rotation-doctor"]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(
        text.contains("account 1 needs a new login") && text.contains("--rotation-add --login"),
        "{text}"
    );
    assert!(
        text.contains("account 3") && text.contains("no refresh_token"),
        "{text}"
    );
    let status = stdout(&h.run(&["--rotation-status"]));
    assert!(
        status.contains("needs login") && status.contains("invalid"),
        "{status}"
    );
}

#[test]
fn a_seeds_home_is_readable_and_usable_as_is() {
    let h = Home::with_oauth(2);
    fs::write(
        &h.paths.state,
        "current_index: 1\ntotal_accounts: 2\nlast_switch: \"2026-02-05T10:30:00Z\"\nswitches_total: 43\naccounts:\n  account1:\n    switches_count: 15\n    last_used: \"2026-02-05T10:28:00Z\"\n  account2:\n    switches_count: 8\n    last_used: \"2026-02-05T10:30:00Z\"\n",
    )
    .unwrap();
    fs::write(&h.paths.log, "{\"timestamp\":\"2026-02-05T10:30:00Z\",\"level\":\"INFO\",\"event\":\"account_switch\",\"from\":1,\"to\":2,\"reason\":\"quota_exhausted\",\"trigger\":\"auto\"}\n").unwrap();
    std::os::unix::fs::symlink("accounts/oauth_creds_1.json", &h.paths.live_creds).unwrap();
    let v = json(&h.run(&["--rotation-status", "--json"]));
    assert_eq!(v["current"], 1);
    assert_eq!(v["switches_total"], 43);
    assert_eq!(v["accounts"][0]["switches"], 15);
    let text = stdout(&h.run(&["--rotation-status"]));
    assert!(text.contains("symlink"), "{text}");
    // Reading changed nothing.
    assert!(
        fs::symlink_metadata(&h.paths.live_creds)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let out = h.run(&["--rotation-next"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        fs::symlink_metadata(&h.paths.live_creds)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(h.live().as_deref(), Some(creds("b").as_str()));
    assert_eq!(h.slot(1).as_deref(), Some(creds("a").as_str()));
    assert_eq!(h.state().switches_total, 44);
    assert_eq!(h.count("account_switch"), 2);
}

#[test]
fn a_read_only_home_fails_clearly() {
    let h = Home::with_oauth(2);
    h.vault().prepare(None).unwrap();
    let root = nix::unistd::geteuid().is_root();
    let lock_down = |on: bool| {
        if root {
            // root ignores modes; the immutable flag stops it.
            let ok = Command::new("chattr")
                .arg(if on { "+i" } else { "-i" })
                .arg(&h.paths.home)
                .status()
                .is_ok_and(|s| s.success());
            let ok2 = Command::new("chattr")
                .arg(if on { "+i" } else { "-i" })
                .arg(&h.paths.accounts)
                .status()
                .is_ok_and(|s| s.success());
            ok && ok2
        } else {
            let m = if on { 0o500 } else { 0o700 };
            fs::set_permissions(&h.paths.accounts, fs::Permissions::from_mode(m)).unwrap();
            fs::set_permissions(&h.paths.home, fs::Permissions::from_mode(m)).unwrap();
            true
        }
    };
    if !lock_down(true) {
        eprintln!("skipped: cannot make a directory read-only here");
        return;
    }
    let out = h.run(&["--rotation-next"]);
    let out2 = h.run(&["--rotation-label", "1", "x"]);
    let status = h.run(&["--rotation-status"]);
    lock_down(false);
    for o in [&out, &out2] {
        assert_eq!(code(o), 1, "{}", stderr(o));
        let err = stderr(o);
        assert!(
            err.starts_with("qwen-rotation: cannot ") && err.contains("writable"),
            "{err}"
        );
    }
    assert_eq!(code(&status), 0, "reading still works");
    assert_eq!(h.live().as_deref(), Some(creds("a").as_str()));
}

#[test]
fn management_never_echoes_tokens_from_broken_files() {
    let h = Home::with_oauth(1);
    // Broken files that contain tokens: every message must describe, not quote.
    write600(
        &h.paths.oauth_slot(2),
        &format!("{{\"access_token\":\"{}\"", token("half")),
    );
    write600(
        &h.paths.api_key_slot(3),
        &format!("{{\"api_key\":\"{} with space\"}}", token("spacey")),
    );
    h.put_live(&format!("not json {}", token("live-junk")));
    fs::write(
        &h.paths.state,
        format!("current_index: {}\n", token("in-state")),
    )
    .unwrap();
    for args in [
        vec!["--rotation-status"],
        vec!["--rotation-status", "--json"],
        vec!["--rotation-stats", "--json"],
        vec!["--rotation-doctor"],
        vec!["--rotation-doctor", "--json"],
        vec!["--rotation-next"],
        vec!["--rotation-switch", "2"],
        vec!["--rotation-log"],
        vec!["--rotation-doctor", "--fix"],
    ] {
        h.run(&args);
    }
    h.assert_no_secrets_in_our_files();
}

/// Runs the shim on a pseudo-terminal (util-linux `script`), feeding `input` after `delay`.
/// None when `script` is not installed.
fn on_terminal(
    h: &Home,
    shim_args: &str,
    input: &[u8],
    delay: Duration,
    extra_env: &[(&str, String)],
) -> Option<std::process::Output> {
    if !std::path::Path::new("/usr/bin/script").exists() {
        eprintln!("skipped: util-linux script(1) is not installed");
        return None;
    }
    let (bin, real) = path_dirs(h);
    let mut c = Command::new("/usr/bin/script");
    c.args(["-qec", &format!("qwen {shim_args}"), "/dev/null"])
        .env_clear()
        .env(
            "PATH",
            format!("{}:{}:/usr/bin:/bin", bin.display(), real.display()),
        )
        .env("HOME", h.user_home())
        .env("QWEN_HOME", &h.paths.home)
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .current_dir(h.dir.path());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let input = input.to_vec();
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("script");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(delay);
        let _ = stdin.write_all(&input);
        // Keep the pty open until the command is done with it.
        std::thread::sleep(Duration::from_secs(3));
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => {
            let out = out.unwrap();
            assert_clean("terminal output", &stdout(&out));
            assert_clean("terminal stderr", &stderr(&out));
            Some(out)
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("terminal command timed out");
        }
    }
}

/// A fake real qwen that "logs in": writes a new login (numbered by a counter file) into the
/// qwen home it was given, after checking that home is the temporary one set up for it.
fn fake_login_qwen(h: &Home) {
    path_dirs(h);
    let script = r#"[ -n "$QWEN_HOME" ] && [ "$QWEN_HOME" = "$HOME/.qwen" ] || exit 3
grep -q '"qwen-oauth"' "$QWEN_HOME/settings.json" || exit 4
[ -z "$OPENAI_API_KEY" ] || exit 5
[ -t 0 ] && [ -t 1 ] || exit 6
n=$(cat "$COUNTER" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$COUNTER"
printf '{"access_token":"SeCrEt-acc-login%s","refresh_token":"SeCrEt-ref-login%s","token_type":"Bearer"}' $n $n > "$QWEN_HOME/oauth_creds.json"
echo "fake qwen: logged in""#;
    write_fake(&h.dir.path().join("real/qwen"), script);
}

#[test]
fn add_login_uses_a_temporary_home_and_leaves_the_live_login_alone() {
    let h = Home::new();
    fake_login_qwen(&h);
    h.put_live(&creds("mine"));
    let counter = (
        "COUNTER",
        h.dir.path().join("counter").display().to_string(),
    );
    let Some(out) = on_terminal(
        &h,
        "--rotation-add --login work",
        b"",
        Duration::ZERO,
        &[counter.clone(), ("OPENAI_API_KEY", "x".into())],
    ) else {
        return;
    };
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Added account 1 (work)"),
        "{}",
        stdout(&out)
    );
    let slot: Value = serde_json::from_str(&h.slot(1).unwrap()).unwrap();
    assert_eq!(slot["refresh_token"], "SeCrEt-ref-login1");
    assert_eq!(
        h.live().as_deref(),
        Some(creds("mine").as_str()),
        "the live login is untouched"
    );
    let leftovers: Vec<_> = fs::read_dir(&h.paths.home)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".login-"))
        .collect();
    assert!(leftovers.is_empty(), "the temporary home is removed");
    // qwen exiting without a login adds nothing.
    write_fake(&h.dir.path().join("real/qwen"), "exit 0");
    let Some(out) = on_terminal(
        &h,
        "--rotation-add --login",
        b"",
        Duration::ZERO,
        &[counter],
    ) else {
        return;
    };
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains("without a login"), "{}", stdout(&out));
}

/// The login home starts from the person's own settings, read as qwen reads them (comments
/// allowed): their other settings (a proxy here) stay, only the auth type changes.
#[test]
fn add_login_keeps_the_persons_settings_when_they_have_comments() {
    let h = Home::new();
    path_dirs(&h);
    let seen = h.dir.path().join("seen-settings.json");
    write_fake(
        &h.dir.path().join("real/qwen"),
        r#"cp "$QWEN_HOME/settings.json" "$SEEN" || exit 3
printf '{"access_token":"SeCrEt-acc-login1","refresh_token":"SeCrEt-ref-login1","token_type":"Bearer"}' > "$QWEN_HOME/oauth_creds.json""#,
    );
    fs::write(
        &h.paths.settings,
        "{\n  // behind the office proxy\n  \"proxy\": \"http://proxy.test:3128\", /* keep */\n  \"ui\": {\"theme\": \"GitHub\"},\n  \"security\": {\"auth\": {\"selectedType\": \"openai\"}}\n}\n",
    )
    .unwrap();
    let Some(out) = on_terminal(
        &h,
        "--rotation-add --login",
        b"",
        Duration::ZERO,
        &[("SEEN", seen.display().to_string())],
    ) else {
        return;
    };
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let v: Value = serde_json::from_str(&fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(v["proxy"], "http://proxy.test:3128", "{v}");
    assert_eq!(v["ui"]["theme"], "GitHub", "{v}");
    assert_eq!(v["security"]["auth"]["selectedType"], "qwen-oauth", "{v}");
}

#[test]
fn the_key_prompt_hides_input_supports_editing_and_cancels() {
    let h = Home::new();
    let typed = format!("{}X\x7fy\r", token("typed-ke"));
    let Some(out) = on_terminal(
        &h,
        "--rotation-add --api-key typed",
        typed.as_bytes(),
        Duration::from_millis(800),
        &[],
    ) else {
        return;
    };
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).contains("input hidden"), "{}", stdout(&out));
    let stored: Value =
        serde_json::from_str(&fs::read_to_string(h.paths.api_key_slot(1)).unwrap()).unwrap();
    assert_eq!(stored["api_key"], token("typed-key").as_str());
    let Some(out) = on_terminal(
        &h,
        "--rotation-add --api-key other",
        b"\x03",
        Duration::from_millis(800),
        &[],
    ) else {
        return;
    };
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).contains("cancelled"), "{}", stdout(&out));
    assert!(!h.paths.api_key_slot(2).exists());
}

#[test]
fn setup_guides_through_several_logins_on_a_terminal() {
    let h = Home::new();
    fake_login_qwen(&h);
    h.put_live(&creds("current"));
    let counter = (
        "COUNTER",
        h.dir.path().join("counter").display().to_string(),
    );
    // Store the current login (y, label "main"), log in twice ("two", no label), then quit.
    let Some(out) = on_terminal(
        &h,
        "--rotation-setup",
        b"y\nmain\n\ntwo\n\n\nq\n",
        Duration::from_millis(500),
        &[counter],
    ) else {
        return;
    };
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Done: 2 added, 3 accounts in total"),
        "{text}"
    );
    let st = h.state();
    assert_eq!(st.accounts.len(), 3);
    assert_eq!(st.accounts[&1].label.as_deref(), Some("main"));
    assert_eq!(st.accounts[&2].label.as_deref(), Some("two"));
    assert_eq!(h.slot(1).as_deref(), Some(creds("current").as_str()));
    // Off a terminal it explains what to do instead, and exits 2.
    let out = h.run(&["--rotation-setup"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--rotation-add"), "{}", stderr(&out));
}

/// The real qwen 0.12.0 (from npm, `.ci/install-qwen`) reads the file the vault swapped in:
/// after `--rotation-switch 2` its request carries account 2's token, after `--rotation-next`
/// account 1's. Skipped (with a line) when the release is not installed.
#[test]
fn a_real_qwen_reads_the_credentials_the_vault_installed() {
    let mock = mock::Mock::start();
    let Some(sb) = real_qwen::Sandbox::new(real_qwen::Version::V0_12) else {
        return;
    };
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.oauth_pool(&["tokA", "tokB"], &mock.url());
    let out = sb.run(&["--rotation-switch", "2"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(
        (out.code(), out.stdout()),
        (0, "REPLY-FROM-tokB".to_string()),
        "{}",
        out.dump()
    );
    let out = sb.run(&["--rotation-next"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(
        (out.code(), out.stdout()),
        (0, "REPLY-FROM-tokA".to_string()),
        "{}",
        out.dump()
    );
    assert_eq!(mock.tokens(), ["tokB", "tokA"]);
    // Both slots are as they were: nothing refreshed, nothing copied back.
    assert_eq!(sb.slot_token(1).as_deref(), Some("tokA"));
    assert_eq!(sb.slot_token(2).as_deref(), Some("tokB"));
}

#[test]
fn a_run_warns_once_about_readable_credentials_but_not_about_qwens_own_home_mode() {
    let h = Home::with_oauth(2);
    let (_, real) = path_dirs(&h);
    write_fake(&real.join("qwen"), "echo answer");
    fs::set_permissions(h.paths.home.as_path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run = |h: &Home| {
        let out = doctor_cmd(h, &["-p", "hello"]);
        assert_eq!(
            (code(&out), stdout(&out).as_str()),
            (0, "answer\n"),
            "{}",
            stderr(&out)
        );
        stderr(&out)
    };
    assert_eq!(
        run(&h),
        "",
        "a 0755 home (qwen's default) is not worth a warning per run"
    );
    fs::set_permissions(h.paths.oauth_slot(2), fs::Permissions::from_mode(0o644)).unwrap();
    let err = run(&h);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("oauth_creds_2.json can be read by other users")
            && err.contains("--rotation-doctor --fix"),
        "{err}"
    );
}
