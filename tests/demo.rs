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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use demo::{
    Interrupted, assert_numbered_steps, assert_plain, assert_status_table, entries, events,
    interrupt_when, processes_in, snapshot, watch,
};
use nix::sys::signal::Signal;
use real_qwen::{Output, Sandbox, Version, mkdir_private, run_with_timeout, write_private};

/// What the demo's provider answers on account 2 (src/demo/provider.rs).
const ANSWER: &str = "Hello from account 2: account 1 ran out of quota";

/// A sandbox for `version` whose person has a `~/.qwen` of their own and keys in the
/// environment, and a TMPDIR of its own for the demo.
fn demo_sandbox(version: Version) -> Option<(Sandbox, PathBuf)> {
    let mut sb = Sandbox::new(version)?;
    let tmp = sb.root.join("tmpdir");
    mkdir_private(&tmp);
    sb.env("TMPDIR", &tmp);
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
    sb.env("HTTPS_PROXY", "http://127.0.0.1:9");
    sb.env("HTTP_PROXY", "http://127.0.0.1:9");
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
    write_private(
        &sb.qwen_home.join("rotation.yaml"),
        b"strategy: [not yaml\n",
    );
    Some((sb, tmp))
}

fn demo_works(version: Version) {
    let Some((sb, tmp)) = demo_sandbox(version) else {
        return;
    };
    let before = snapshot(&sb.qwen_home);
    let ino = watch(&[&sb.qwen_home, &sb.accounts()], &sb.home);
    // stdout is a pipe: not a terminal.
    let out = run_with_timeout(
        sb.command("qwen", &["--rotation-demo"], false, false),
        None,
        sb.timeout,
    );
    let touched = events(&ino);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    for step in [
        &format!("the real qwen: {}", sb.real_dir.join("qwen").display()),
        "account 1 (spent) added",
        "account 2 (fresh) added",
        "running qwen \"Say hello in one line.\" --output-format text",
        "request on account 1 → 429 insufficient_quota \"Free allocated quota exceeded.\"",
        "switch: the shim marked account 1 out of quota and sent the same request on account 2 → 200",
        &format!("qwen exited 0 and printed account 2's answer: \"{ANSWER}"),
        "stderr: qwen-rotation: account 1 (spent) quota exhausted; switched to account 2 (fresh)",
        "provider: account 1 asked once, account 2 asked ",
        "rotation.log: account_switch from 1 to 2, reason quota_exhausted",
        "Rotation works",
    ] {
        assert!(stdout.contains(step), "missing {step:?}\n{}", out.dump());
    }
    // The steps come in order, numbered, each with its time.
    assert_numbered_steps(&stdout, 9, &out.dump());
    // The status table of the demo home: account 2 live, account 1 cooling down.
    assert_status_table(&stdout, &[], &out.dump());
    // Piped: plain text, no escape sequence anywhere.
    assert_plain(&out.stdout, &out.stderr, &out.dump());
    // Nothing of the person's was opened, changed or added; the demo home is gone.
    assert!(
        touched.is_empty(),
        "the person's files were touched: {touched:?}"
    );
    assert_eq!(
        snapshot(&sb.qwen_home),
        before,
        "the person's ~/.qwen changed"
    );
    assert_eq!(entries(&sb.home), [".qwen"], "something was added to HOME");
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
    assert!(
        !stdout.contains("sk-person") && !out.stderr().contains("sk-person"),
        "{}",
        out.dump()
    );
    eprintln!("demo on qwen {}: {:.1?}", version.as_str(), out.elapsed);
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
    // The demo's own line says qwen was started: interrupt it then.
    let Interrupted {
        status,
        seen,
        stderr,
        took: stopped_in,
    } = interrupt_when(
        sb.command("qwen", &["--rotation-demo"], false, false),
        "running qwen",
        signal,
        sb.timeout,
    );
    assert_eq!(
        status.code(),
        Some(128 + signal as i32),
        "{status:?}\n{seen:?}\n{stderr}"
    );
    assert!(
        stderr.contains("qwen-rotation: demo: interrupted"),
        "{stderr}"
    );
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
    let left = processes_in(&tmp);
    assert!(left.is_empty(), "processes of the demo left: {left:?}");
    eprintln!(
        "demo on qwen {} stopped by {signal:?} in {stopped_in:.1?}",
        version.as_str()
    );
}

#[test]
fn ctrl_c_while_qwen_0_24_runs_removes_the_home_and_exits_130() {
    demo_interrupted(Version::V0_24, Signal::SIGINT);
}

#[test]
fn sigterm_while_qwen_0_12_runs_removes_the_home_and_exits_143() {
    demo_interrupted(Version::V0_12, Signal::SIGTERM);
}

/// The shim alone, with `path` as PATH and a TMPDIR of its own.
fn shim_alone(path: &Path, tmp: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qwen"));
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", tmp.join("home"))
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    real_qwen::child::default_signals(&mut cmd);
    run_with_timeout(cmd, None, Duration::from_secs(60))
}

#[test]
fn without_a_real_qwen_the_demo_says_so_and_exits_127() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-bin");
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(&empty).unwrap();
    fs::create_dir_all(&tmp).unwrap();
    let out = shim_alone(&empty, &tmp, &["--rotation-demo"]);
    assert_eq!(out.code(), 127, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert!(
        err.starts_with("qwen-rotation: demo: the real qwen was not found on PATH")
            && err.contains("npm install -g @qwen-code/qwen-code"),
        "{}",
        out.dump()
    );
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
}

#[test]
fn a_qwen_too_new_for_the_node_at_hand_is_named_with_the_fix() {
    // An npm layout: bin/qwen → lib/node_modules/@qwen-code/qwen-code/cli.js, whose package asks
    // for a Node.js no machine has; `node` is the machine's.
    let Some(node) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
    else {
        assert!(std::env::var_os("CI").is_none(), "node is not on PATH");
        eprintln!("SKIP: node is not on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("lib/node_modules/@qwen-code/qwen-code");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(
        pkg.join("package.json"),
        r#"{"name":"@qwen-code/qwen-code","version":"9.9.9","engines":{"node":">=999.0.0"}}"#,
    )
    .unwrap();
    let cli = pkg.join("cli.js");
    fs::write(&cli, "#!/bin/sh\necho 9.9.9\n").unwrap();
    fs::set_permissions(&cli, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&cli, bin.join("qwen")).unwrap();
    std::os::unix::fs::symlink(&node, bin.join("node")).unwrap();
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let out = shim_alone(&bin, &tmp, &["--rotation-demo"]);
    assert_eq!(out.code(), 1, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert!(
        err.contains("demo: the real qwen 9.9.9 needs Node.js >=999.0.0 and node on PATH is v")
            && err.contains("@qwen-code/qwen-code@0.12.0"),
        "{}",
        out.dump()
    );
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
}

#[test]
fn help_lists_the_demo_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = shim_alone(dir.path(), dir.path(), &["--rotation-help"]);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let help = out.stdout();
    assert!(
        help.lines().any(|l| l.starts_with("  --rotation-demo ")),
        "{help}"
    );
    assert!(help.contains("  qwen --rotation-demo\n"), "{help}");
    // And it takes nothing else: one line says so.
    let out = shim_alone(dir.path(), dir.path(), &["--rotation-demo", "now"]);
    assert_eq!(out.code(), 2, "{}", out.dump());
    assert_eq!(
        out.stderr(),
        "qwen-rotation: unexpected argument `now` for --rotation-demo; usage: qwen --rotation-demo\n"
    );
}

/// `install.sh --prefix P --binary SHIM --demo` in a clean environment with `path` as PATH.
fn install_with_demo(dir: &Path, path: &str) -> Output {
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::create_dir_all(dir.join("home")).unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_qwen"), "--prefix"])
        .arg(dir.join("prefix"))
        .arg("--demo")
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.join("home"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    real_qwen::child::default_signals(&mut cmd);
    run_with_timeout(cmd, None, Duration::from_secs(180))
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
    let out = install_with_demo(dir.path(), &path);
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
    assert!(entries(&dir.path().join("tmp")).is_empty());
}

#[test]
fn install_sh_demo_fails_when_the_rotation_does_not_show() {
    // A "real qwen" that answers without asking any provider: the demo cannot show a rotation.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("fake-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("qwen"), "#!/bin/sh\necho 1.0.0\n").unwrap();
    fs::set_permissions(
        bin.join("qwen"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = install_with_demo(dir.path(), &format!("{}:/usr/bin:/bin", bin.display()));
    assert_eq!(out.code(), 1, "{}", out.dump());
    let err = out.stderr();
    assert!(
        err.contains(
            "qwen-rotation: demo: the answer never came: account 1 was never asked; qwen exited 0"
        ),
        "{}",
        out.dump()
    );
    assert!(
        err.trim_end().ends_with(&format!(
            "install.sh: the demo failed (exit 1; its line above says why); the shim is installed in {}",
            dir.path().join("prefix/bin").display()
        )),
        "{}",
        out.dump()
    );
    assert!(entries(&dir.path().join("tmp")).is_empty());
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
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
    let left = processes_in(&tmp);
    assert!(left.is_empty(), "processes of the demo left: {left:?}");
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
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
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
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    real_qwen::child::default_signals(&mut cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
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
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
}
