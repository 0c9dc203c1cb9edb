//! `qwen --rotation-demo` end to end: the shim under test runs the demo with the REAL qwen 0.12.0
//! and 0.24.4 (from `.ci/install-qwen`, tests/support/real_qwen.rs) behind it, as a person's
//! shell would (the shim first on PATH). Without the installed releases these print SKIP (and
//! fail under CI).
//!
//! Each run gets a TMPDIR of its own, so "the temporary home is removed" is "that directory is
//! empty afterwards", and a HOME whose `~/.qwen` holds a person's files (settings that would
//! break the demo if read, a login, accounts, keys in the environment): they must come out
//! byte-identical and never opened (inotify watches them during the run).

#[path = "support/demo.rs"]
mod demo;
#[path = "support/pty.rs"]
mod pty;
#[path = "support/real_qwen.rs"]
mod real_qwen;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use demo::{
    Person, assert_all_gone, assert_help_lists_the_demo, assert_install_names_the_failed_demo,
    assert_interrupted, assert_no_real_cli_exits_127, assert_rotation_shown, assert_tmp_empty,
    fake_cli, install_sh, person_common, run_leaving_alone, run_piped, too_new_for_node,
};
use nix::sys::signal::Signal;
use real_qwen::{
    Output, Sandbox, Version, mkdir_private, run_with_timeout, secrets, write_private,
};

/// A sandbox for `version` whose person has a `~/.qwen` of their own and keys in the
/// environment, and a TMPDIR of its own for the demo.
fn demo_sandbox(version: Version) -> Option<(Sandbox, PathBuf)> {
    let mut sb = Sandbox::new(version)?;
    let (tmp, common) = person_common(&sb.home, &sb.qwen_home);
    for (key, value) in common {
        sb.env(key, value);
    }
    let qh = sb.qwen_home.clone();
    sb.env("QWEN_HOME", qh);
    // Were any of these used, the demo's provider would refuse the key or the pool would not be
    // the demo's: the run would fail.
    sb.env("OPENAI_API_KEY", "sk-person-own-key-A1b2C3d4E5f6G7h8I9j0");
    sb.env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1");
    sb.env("OPENAI_MODEL", "person-model");
    sb.env(
        "QWEN_ROTATION_KEYS",
        "sk-person-pool-key-1,sk-person-pool-key-2",
    );
    // The person's own files: an OAuth selection and a provider table pointing elsewhere.
    write_private(
        &sb.qwen_home.join("settings.json"),
        br#"{"security":{"auth":{"selectedType":"qwen-oauth"}},"modelProviders":{"openai":[{"id":"demo-model","baseUrl":"http://127.0.0.1:9/v1","envKey":"PERSON_KEY"}]}}"#,
    );
    write_private(
        &sb.qwen_home.join("oauth_creds.json"),
        br#"{"access_token":"person-access","refresh_token":"person-refresh","expiry_date":1}"#,
    );
    mkdir_private(&sb.accounts());
    write_private(
        &sb.accounts().join("oauth_creds_1.json"),
        br#"{"access_token":"person-slot","refresh_token":"person-slot-refresh","expiry_date":1}"#,
    );
    write_private(
        &sb.accounts().join("api_key_2.json"),
        br#"{"api_key":"person-slot-key","env_key":"OPENAI_API_KEY"}"#,
    );
    Some((sb, tmp))
}

fn demo_works(version: Version) {
    let Some((sb, tmp)) = demo_sandbox(version) else {
        return;
    };
    let cli = format!("qwen {}", version.as_str());
    let person = Person {
        cli: &cli,
        home: &sb.home,
        cli_home: &sb.qwen_home,
        files: &[],
        holds: &[".qwen"],
    };
    let out = run_leaving_alone(
        sb.command("qwen", &["--rotation-demo"], false, false),
        sb.timeout,
        &person,
        &tmp,
        |out| {
            let steps = [
                "running qwen \"Say hello in one line.\" --output-format text",
                "request on account 1 → 429 insufficient_quota \"Free allocated quota exceeded.\"",
            ];
            let real = ("qwen", sb.real_dir.as_path(), version.as_str());
            assert_rotation_shown(out, real, &steps, &[]);
        },
    );
    assert!(
        !out.stdout().contains("sk-person") && !out.stderr().contains("sk-person"),
        "{}",
        out.dump()
    );
}

#[test]
fn the_demo_rotates_on_real_qwen_0_12() {
    demo_works(Version::V0_12);
}

#[test]
fn the_demo_rotates_on_real_qwen_0_24() {
    demo_works(Version::V0_24);
}

/// Stopped by `signal` once the demo says qwen runs: exit 128 + signal, the home removed, no
/// process of the run left.
fn demo_interrupted(version: Version, signal: Signal) {
    let Some((sb, tmp)) = demo_sandbox(version) else {
        return;
    };
    let cmd = sb.command("qwen", &["--rotation-demo"], false, false);
    assert_interrupted("qwen", cmd, &tmp, signal, sb.timeout);
}

#[test]
fn ctrl_c_while_qwen_0_24_runs_removes_the_home_and_exits_130() {
    demo_interrupted(Version::V0_24, Signal::SIGINT);
}

#[test]
fn sigterm_while_qwen_0_12_runs_removes_the_home_and_exits_143() {
    demo_interrupted(Version::V0_12, Signal::SIGTERM);
}

#[test]
fn without_a_real_qwen_the_demo_says_so_and_exits_127() {
    assert_no_real_cli_exits_127("qwen", "@qwen-code/qwen-code");
}

#[test]
fn a_qwen_too_new_for_the_node_at_hand_is_named_with_the_fix() {
    let Some(err) = too_new_for_node("qwen", "@qwen-code/qwen-code", "cli.js", ">=999.0.0") else {
        return;
    };
    assert!(err.contains("@qwen-code/qwen-code@0.12.0"), "{err}");
}

#[test]
fn help_lists_the_demo_with_an_example() {
    assert_help_lists_the_demo("qwen");
}

#[test]
fn install_sh_demo_installs_then_shows_the_rotation() {
    let Some(real) = real_qwen::installed(Version::V0_12) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        real.parent().unwrap().display()
    );
    let out = install_sh(dir.path(), &path, &["--demo"], Duration::from_secs(180));
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    let bindir = dir.path().join("prefix/bin");
    for line in [
        format!("install.sh: installed {}/qwen", bindir.display()),
        format!(
            "install.sh: running: qwen --rotation-demo (with {} first on PATH)",
            bindir.display()
        ),
        "Rotation works".to_string(),
    ] {
        assert!(stdout.contains(&line), "missing {line:?}\n{}", out.dump());
    }
    assert_tmp_empty(&dir.path().join("tmp"));
}

#[test]
fn install_sh_demo_fails_when_the_rotation_does_not_show() {
    // A "real qwen" that answers without asking any provider: the demo cannot show a rotation.
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_cli(dir.path(), "qwen", "1.0.0");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let out = install_sh(dir.path(), &path, &["--demo"], Duration::from_secs(180));
    assert_install_names_the_failed_demo(&out, "the demo", dir.path());
    assert!(
        out.stderr().contains(
            "qwen-rotation: demo: the answer never came: account 1 was never asked; qwen exited 0"
        ),
        "{}",
        out.dump()
    );
}

#[test]
fn a_reader_that_goes_away_does_not_stop_the_clean_up() {
    // `qwen --rotation-demo | head -1`: the demo's writes fail from then on; it still finishes,
    // stops its children and removes its home.
    let Some((sb, tmp)) = demo_sandbox(Version::V0_24) else {
        return;
    };
    let mut cmd = sb.command("qwen", &["--rotation-demo"], false, false);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("--rotation-demo"), "{first}");
    drop(reader);
    let status = real_qwen::child::wait_within(&mut child, sb.timeout, "the demo");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_all_gone(&tmp);
}

#[test]
fn on_a_terminal_the_status_table_is_the_commands_own() {
    // The demo on a terminal: the same steps, and the status table as `--rotation-status` draws
    // it on a terminal (coloured), which a pipe never gets.
    let Some((sb, tmp)) = demo_sandbox(Version::V0_24) else {
        return;
    };
    let mut cmd = std::process::Command::new(sb.shim_dir.join("qwen"));
    cmd.arg("--rotation-demo")
        .current_dir(&sb.work)
        .env_clear()
        .env("PATH", sb.path_var(false))
        .env("HOME", &sb.home)
        .env("QWEN_HOME", &sb.qwen_home)
        .env("TMPDIR", &tmp)
        .env("TERM", "xterm-256color");
    let (mut master, mut child) = pty::start(cmd, 40, 200);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut screen = Vec::new();
        // EIO once the demo and everything on the terminal are gone.
        let _ = std::io::Read::read_to_end(&mut master, &mut screen);
        let _ = tx.send(screen);
    });
    let status = real_qwen::child::wait_within(&mut child, sb.timeout, "the demo on a terminal");
    let screen = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let text = String::from_utf8_lossy(&screen);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("Rotation works"), "{text}");
    let table_at = text
        .find("--rotation-status in the demo home")
        .unwrap_or_else(|| panic!("no status table: {text}"));
    assert!(
        text[table_at..].contains("\x1b["),
        "the table is not the terminal's: {text}"
    );
    // The steps themselves are plain text.
    assert!(!text[..table_at].contains('\x1b'), "{text}");
    assert_tmp_empty(&tmp);
}

#[test]
fn without_loopback_the_demo_names_the_port_it_cannot_open() {
    // A network namespace of its own has a loopback interface that is down: binding works,
    // connecting does not. Needs the privilege to make one (root, as CI and containers run).
    let Some(real) = real_qwen::installed(Version::V0_24) else {
        return;
    };
    let can_unshare = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can_unshare {
        eprintln!("SKIP: `unshare -n` is not allowed here (needs CAP_SYS_ADMIN)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.arg("-n")
        .arg(env!("CARGO_BIN_EXE_qwen"))
        .arg("--rotation-demo")
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", real.parent().unwrap().display()),
        )
        .env("HOME", dir.path())
        .env("TMPDIR", &tmp);
    let out = run_piped(cmd, Duration::from_secs(60));
    assert_eq!(out.code(), 1, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert!(
        err.starts_with(
            "qwen-rotation: demo: cannot open a port on 127.0.0.1 for the demo's provider ("
        ) && err.contains("the demo needs loopback TCP"),
        "{}",
        out.dump()
    );
    assert_tmp_empty(&tmp);
}
