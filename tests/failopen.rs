//! Fail open: whatever breaks in the rotation layer (its config, its state, its lock, its
//! directories), the real qwen still runs, its stdout, stderr and status reach the caller
//! unchanged, and the user sees exactly one `qwen-rotation: warning:` line saying what broke.

#[path = "support/sandbox.rs"]
mod sandbox;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sandbox::{
    COUNTING_FAKE as FAKE, Sandbox, as_nobody, counting_pool as pool, output_within, root,
};

const WARNING: &str = "qwen-rotation: warning:";
const QUOTA: &str = "[API Error: 429 Free allocated quota exceeded.]";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(sb: &Sandbox, fail: &str) -> Output {
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", fail);
    output_within(cmd, Duration::from_secs(60))
}

/// qwen's run `n` answered and its output came through untouched, next to exactly one warning
/// that contains every one of `about`. Returns the warning.
fn assert_one_warning_and_qwen_untouched(case: &str, out: &Output, n: u32, about: &[&str]) {
    let err = text(&out.stderr);
    let (warnings, rest): (Vec<&str>, Vec<&str>) =
        err.lines().partition(|l| l.starts_with(WARNING));
    println!(
        "{case}: exit {:?}, {} warning line(s): {warnings:?}",
        out.status.code(),
        warnings.len()
    );
    assert_eq!(out.status.code(), Some(3), "{case}: qwen's status\n{err}");
    assert_eq!(text(&out.stdout), format!("answer {n}\n"), "{case}: stdout");
    assert_eq!(rest, vec![format!("diag {n}")], "{case}: qwen's stderr");
    assert_eq!(warnings.len(), 1, "{case}: exactly one warning\n{err}");
    for word in about {
        assert!(
            warnings[0].contains(word),
            "{case}: {word:?} in {warnings:?}"
        );
    }
}

#[test]
fn a_corrupt_rotation_yaml_warns_once_and_qwen_runs() {
    let sb = pool();
    fs::write(sb.qwen_home().join("rotation.yaml"), "strategy: [\n").unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "corrupt rotation.yaml",
        &out,
        1,
        &["rotation.yaml", "using the defaults"],
    );
    // Rotation itself still works on the defaults.
    let out = run(&sb, "2");
    let err = text(&out.stderr);
    assert!(err.contains("switched to account 2"), "{err}");
    assert_eq!(text(&out.stdout), "answer 3\n");
}

#[test]
fn an_invalid_user_pattern_warns_once_and_qwen_runs() {
    let sb = pool();
    fs::write(
        sb.qwen_home().join("rotation.yaml"),
        "patterns:\n  quota: ['out (of juice']\n",
    )
    .unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "invalid pattern",
        &out,
        1,
        &[
            "rotation.yaml",
            "patterns.quota entry 1",
            "built-in patterns",
        ],
    );
}

#[test]
fn a_directory_in_place_of_state_yaml_warns_once_and_qwen_runs() {
    let sb = pool();
    fs::create_dir_all(sb.qwen_home().join("state.yaml")).unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched("state.yaml is a directory", &out, 1, &["state.yaml"]);
    // And again on the next run: still one warning, still qwen.
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "state.yaml is a directory, again",
        &out,
        2,
        &["state.yaml"],
    );
}

#[test]
fn a_directory_in_place_of_the_live_file_warns_once_and_qwen_runs() {
    let sb = pool();
    fs::create_dir_all(sb.qwen_home().join("oauth_creds.json")).unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "oauth_creds.json is a directory",
        &out,
        1,
        &["oauth_creds.json"],
    );
}

#[test]
fn a_directory_in_place_of_rotation_lock_warns_once_and_qwen_runs() {
    let sb = pool();
    fs::create_dir_all(sb.qwen_home().join("rotation.lock")).unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "rotation.lock is a directory",
        &out,
        1,
        &["rotation.lock", "running qwen without rotation"],
    );
}

#[test]
fn a_qwen_home_that_is_a_file_warns_once_and_qwen_runs() {
    let sb = Sandbox::new(FAKE);
    fs::write(sb.qwen_home(), "not a directory").unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "QWEN_HOME is a file",
        &out,
        1,
        &[
            "accounts",
            "Not a directory",
            "running qwen without rotation",
        ],
    );
}

#[test]
fn a_corrupt_state_whose_copy_cannot_be_kept_warns_once_and_qwen_runs() {
    let sb = pool();
    fs::write(sb.qwen_home().join("state.yaml"), "{{{{").unwrap();
    fs::create_dir_all(sb.qwen_home().join("state.yaml.corrupt")).unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "corrupt state, .corrupt is a directory",
        &out,
        1,
        &["state.yaml", "could not keep a copy"],
    );
    // The state was rebuilt: the next run is quiet.
    let out = run(&sb, "");
    assert!(
        !text(&out.stderr).contains(WARNING),
        "{}",
        text(&out.stderr)
    );
}

/// A sandbox `nobody` can use: everything reachable, the qwen home nobody's own.
fn pool_for_nobody() -> Sandbox {
    let sb = pool();
    for rel in ["", "bin", "real", "tools", "home"] {
        fs::set_permissions(sb.path(rel), fs::Permissions::from_mode(0o755)).unwrap();
    }
    for rel in ["", "work"] {
        fs::set_permissions(sb.path(rel), fs::Permissions::from_mode(0o777)).unwrap();
    }
    let st = Command::new("/usr/bin/chown")
        .args(["-R", "65534:65534"])
        .arg(sb.qwen_home())
        .status()
        .unwrap();
    assert!(st.success());
    sb
}

fn run_as_nobody(sb: &Sandbox, fail: &str) -> Output {
    let mut cmd = sb.cmd(["-p", "hi"]);
    cmd.env("FAIL", fail);
    output_within(as_nobody(&cmd), Duration::from_secs(60))
}

#[test]
fn an_unreadable_accounts_dir_warns_once_and_qwen_runs() {
    if !root("an_unreadable_accounts_dir_warns_once_and_qwen_runs") {
        return;
    }
    let sb = pool_for_nobody();
    let accounts = sb.qwen_home().join("accounts");
    Command::new("/usr/bin/chown")
        .args(["-R", "0:0"])
        .arg(&accounts)
        .status()
        .unwrap();
    fs::set_permissions(&accounts, fs::Permissions::from_mode(0o700)).unwrap();
    let out = run_as_nobody(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "accounts/ unreadable",
        &out,
        1,
        &[
            "accounts",
            "Permission denied",
            "running qwen without rotation",
        ],
    );
}

#[test]
fn a_home_where_state_cannot_be_written_warns_once_and_qwen_runs() {
    if !root("a_home_where_state_cannot_be_written_warns_once_and_qwen_runs") {
        return;
    }
    let sb = pool_for_nobody();
    // nobody may read its accounts but not write in the home: no state.yaml, no lock, no swap.
    Command::new("/usr/bin/chown")
        .args(["0:0"])
        .arg(sb.qwen_home())
        .status()
        .unwrap();
    fs::set_permissions(sb.qwen_home(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_as_nobody(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "home not writable",
        &out,
        1,
        &["Permission denied", "running qwen without rotation"],
    );
    assert!(!sb.qwen_home().join("state.yaml").exists());
}

#[test]
fn a_state_yaml_it_cannot_read_is_left_alone_with_one_warning() {
    if !root("a_state_yaml_it_cannot_read_is_left_alone_with_one_warning") {
        return;
    }
    let sb = pool_for_nobody();
    // Another user's state.yaml in nobody's home: not readable, so never replaced.
    let state = sb.qwen_home().join("state.yaml");
    fs::write(&state, "current_index: 2\n").unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_as_nobody(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "state.yaml unreadable",
        &out,
        1,
        &[
            "state.yaml",
            "Permission denied",
            "running qwen without rotation",
        ],
    );
    assert_eq!(fs::read_to_string(&state).unwrap(), "current_index: 2\n");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(&state).unwrap()),
        0
    );
    // doctor calls it a question of ownership, not a corrupt file to rebuild.
    let doctor = output_within(
        as_nobody(&sb.cmd(["--rotation-doctor"])),
        Duration::from_secs(60),
    );
    let said = text(&doctor.stdout);
    println!("doctor as nobody:\n{said}");
    assert!(
        said.contains("state.yaml belongs to user 0, the home to user 65534"),
        "{said}"
    );
    assert!(said.contains("not yours to read"), "{said}");
    assert!(!said.contains("rebuild it"), "{said}");
}

#[test]
fn a_rotation_lock_held_past_the_timeout_warns_once_and_qwen_runs() {
    let sb = pool();
    fs::write(sb.qwen_home().join("rotation.yaml"), "lock_timeout: 1s\n").unwrap();
    // Run 1 installs account 1 (takes the lock while nobody holds it).
    let out = run(&sb, "");
    assert!(
        !text(&out.stderr).contains(WARNING),
        "{}",
        text(&out.stderr)
    );

    // Another process holds rotation.lock (flock(2) on its own open file description).
    let holder = File::options()
        .read(true)
        .write(true)
        .open(sb.qwen_home().join("rotation.lock"))
        .unwrap();
    holder.lock().unwrap();

    // The steady state needs no lock: quiet.
    let out = run(&sb, "");
    assert_eq!(text(&out.stdout), "answer 2\n");
    assert!(
        !text(&out.stderr).contains(WARNING),
        "{}",
        text(&out.stderr)
    );

    // A quota hit needs the lock to rotate: after lock_timeout, qwen's own result, one warning.
    let start = Instant::now();
    let out = run(&sb, "3");
    let waited = start.elapsed();
    let err = text(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with(WARNING)).collect();
    println!(
        "quota under a held lock: exit {:?} after {waited:?}, warnings {warnings:?}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        err.lines()
            .filter(|l| !l.starts_with(WARNING))
            .collect::<Vec<_>>(),
        vec![QUOTA],
        "qwen's own report reaches the caller"
    );
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("rotation.lock") && warnings[0].contains("held by another process"),
        "{warnings:?}"
    );
    // The configured timeout (1 s, not the 10 s default) is the one that ran out: the warning
    // names it. A run that never gave up is caught by `run`'s 60 s deadline (a hang detector).
    assert!(
        warnings[0].contains("for more than 1s"),
        "the configured lock_timeout: {warnings:?}"
    );
    // A lower bound the shim keeps by design: it polls the lock until lock_timeout runs out.
    assert!(waited >= Duration::from_secs(1), "waited {waited:?}");

    // A first run that must install an account under the held lock: qwen runs without rotation.
    fs::remove_file(sb.qwen_home().join("state.yaml")).unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "lock held, nothing installed yet",
        &out,
        4,
        &["rotation.lock", "running qwen without rotation"],
    );
    drop(holder);
}

#[test]
fn a_settings_override_that_cannot_be_written_warns_once_and_qwen_runs() {
    let sb = Sandbox::new(FAKE);
    let accounts = sb.qwen_home().join("accounts");
    fs::create_dir_all(&accounts).unwrap();
    fs::set_permissions(&accounts, fs::Permissions::from_mode(0o700)).unwrap();
    for n in 1..=2 {
        let p = accounts.join(format!("api_key_{n}.json"));
        fs::write(
            &p,
            format!(
                r#"{{"api_key":"sk-test-{n}","base_url":"http://127.0.0.1:9/v1","model":"m{n}"}}"#
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    // A file where the private settings directory goes.
    fs::write(sb.qwen_home().join("rotation-settings"), "in the way").unwrap();
    let out = run(&sb, "");
    assert_one_warning_and_qwen_untouched(
        "rotation-settings is a file",
        &out,
        1,
        &["auth-type override", "rotation-settings"],
    );
    assert!(
        !text(&out.stderr).contains("sk-test"),
        "no key in the output"
    );
}

/// Run 2 refreshes the login (a new refresh token, as qwen does) and reports a spent quota.
const REFRESHING_FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
if [ $n = 2 ]; then
  (umask 077; printf '%s' '{"access_token":"acc-new","refresh_token":"ref-new","token_type":"Bearer","resource_url":"http://127.0.0.1:9","expiry_date":4102444800000}' > "$QWEN_HOME/oauth_creds.json")
  printf '%s\n' "[API Error: 429 Free allocated quota exceeded.]" >&2; exit 1
fi
echo "answer $n"; echo "diag $n" >&2; exit 3"#;

#[test]
fn a_backup_that_cannot_be_kept_warns_once_and_keeps_the_refreshed_login() {
    let sb = Sandbox::new(REFRESHING_FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    let out = run(&sb, "");
    assert_eq!(text(&out.stdout), "answer 1\n", "{}", text(&out.stderr));
    // A file where the backups go: the sync-back of the refreshed login cannot keep the old one.
    fs::write(sb.qwen_home().join("accounts/backup"), "in the way").unwrap();
    let out = run(&sb, "");
    let err = text(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with(WARNING)).collect();
    println!(
        "backup in the way: exit {:?}, warnings {warnings:?}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| !l.starts_with(WARNING))
            .collect::<Vec<_>>(),
        vec![QUOTA]
    );
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("backup") && warnings[0].contains("out of the way"),
        "{warnings:?}"
    );
    // Nothing lost: the refreshed login stays live, the slot keeps its last good content.
    assert!(sb.live_creds().unwrap().contains("ref-new"));
    assert_eq!(
        fs::read_to_string(sb.qwen_home().join("accounts/oauth_creds_1.json")).unwrap(),
        sandbox::creds("tok_one")
    );
}

/// A bug (a panic in our code, injected with the `fault-injection` feature) is one more internal
/// error: one warning naming the place, qwen's run untouched, the locks released on the way out.
/// CI runs these with `cargo test --features fault-injection --test failopen a_panic`.
#[cfg(feature = "fault-injection")]
mod panics {
    use super::*;

    fn run_with_fault(sb: &Sandbox, fail: &str, fault: &str) -> Output {
        let mut cmd = sb.cmd(["-p", "hi"]);
        cmd.env("FAIL", fail).env("QWEN_ROTATION_FAULT", fault);
        output_within(cmd, Duration::from_secs(60))
    }

    #[test]
    fn a_panic_while_preparing_the_account_warns_once_and_qwen_runs() {
        // A fresh pool: the first run takes the lock to install account 1, and panics there.
        let sb = pool();
        let out = run_with_fault(&sb, "", "prepare.locked:panic");
        assert_one_warning_and_qwen_untouched(
            "panic in prepare",
            &out,
            1,
            &["internal error at src/", "please report it"],
        );
        assert!(!text(&out.stderr).contains("panicked"), "no panic message");
        // The lock went with the panic: the next run installs account 1 and rotates.
        let out = run(&sb, "2");
        assert!(
            text(&out.stderr).contains("switched to account 2"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "answer 3\n");
    }

    #[test]
    fn a_panic_in_the_rotation_step_warns_once_and_passes_qwens_failure_through() {
        let sb = pool();
        assert_eq!(run(&sb, "").status.code(), Some(3), "account 1 installed");
        let out = run_with_fault(&sb, "2", "rotate.qwen_locked:panic");
        let err = text(&out.stderr);
        let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with(WARNING)).collect();
        println!(
            "panic in rotate: exit {:?}, warnings {warnings:?}",
            out.status.code()
        );
        assert_eq!(out.status.code(), Some(1), "qwen's own failure\n{err}");
        assert!(
            err.contains(QUOTA),
            "qwen's error reaches the caller\n{err}"
        );
        assert_eq!(warnings.len(), 1, "{err}");
        assert!(warnings[0].contains("internal error at src/"), "{err}");
        assert!(!err.contains("panicked"), "no panic message\n{err}");
        // Neither lock is left behind: the next quota hit rotates at once.
        assert!(!sb.qwen_home().join("oauth_creds.lock").exists());
        let out = run(&sb, "3");
        let err = text(&out.stderr);
        assert!(err.contains("switched to account 2"), "{err}");
        assert_eq!(text(&out.stdout), "answer 4\n");
        assert!(sb.live_creds().unwrap().contains("tok_two"));
    }
}
