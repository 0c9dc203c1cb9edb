//! `claude --rotation-demo` end to end: the shim, linked as `claude` in a directory first on PATH,
//! runs the demo with the REAL claude 2.1.332 (from `.ci/install-claude`,
//! tests/support/real_claude.rs) after it on PATH. Without the installed release these print
//! SKIP (and fail under CI).
//!
//! Each run gets a TMPDIR of its own, so "the temporary home is removed" is "that directory is
//! empty afterwards", and a HOME whose `~/.claude` and `~/.claude.json` hold a person's files
//! (settings that would break the demo if read, a login, accounts) and whose environment holds a
//! person's keys, token, base URL and `CLAUDE_CONFIG_DIR`: the files must come out
//! byte-identical and never opened (inotify watches them during the run), and no key of theirs
//! may show up.

#[path = "support/demo.rs"]
mod demo;
#[path = "support/real_claude.rs"]
mod real_claude;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use demo::{
    Interrupted, assert_numbered_steps, assert_plain, assert_status_table, entries, events,
    interrupt_when, processes_in, snapshot, watch,
};
use nix::sys::signal::Signal;
use real_claude::real_qwen::child;
use real_claude::{Output, Sandbox, mkdir_private, run_with_timeout, secrets, write_private};

/// What the demo's provider answers on account 2 (src/demo/provider.rs).
const ANSWER: &str = "Hello from account 2: account 1 ran out of quota, and the shim moved this \
                      request here before claude noticed.";

/// The start of the demo's own (fictional) keys: never printed either.
const DEMO_KEY: &str = "demo-key-account-";

/// A sandbox whose person has a `~/.claude` of their own and keys, a token, a base URL and
/// `CLAUDE_CONFIG_DIR` in the environment, and a TMPDIR of its own for the demo.
fn demo_sandbox() -> Option<(Sandbox, PathBuf)> {
    let mut sb = Sandbox::new()?;
    let tmp = sb.home.parent().unwrap().join("tmpdir");
    mkdir_private(&tmp);
    sb.env("TMPDIR", &tmp);
    // Were any of these used, the demo's provider would refuse the key, claude would send a
    // login or go elsewhere, or the pool would not be the demo's: the run would fail.
    sb.env("ANTHROPIC_API_KEY", secrets::secret("person-anthropic-key"));
    sb.env("ANTHROPIC_AUTH_TOKEN", secrets::secret("person-auth-token"));
    sb.env(
        "CLAUDE_CODE_OAUTH_TOKEN",
        secrets::secret("person-oauth-token"),
    );
    sb.env("ANTHROPIC_BASE_URL", "http://127.0.0.1:9");
    sb.env("ANTHROPIC_MODEL", "person-model");
    let config_dir = sb.claude_home.clone();
    sb.env("CLAUDE_CONFIG_DIR", config_dir);
    sb.env(
        "CLAUDE_ROTATION_KEYS",
        format!(
            "{},{}",
            secrets::secret("person-pool-1"),
            secrets::secret("person-pool-2")
        ),
    );
    sb.env("CLAUDE_ROTATION_BASE_URL", "http://127.0.0.1:9");
    sb.env("HTTPS_PROXY", "http://127.0.0.1:9");
    sb.env("HTTP_PROXY", "http://127.0.0.1:9");
    // The person's own files: settings sending claude elsewhere with a key helper, a login,
    // accounts, a broken rotation.yaml.
    write_private(
        &sb.claude_home.join("settings.json"),
        serde_json::json!({
            "apiKeyHelper": "echo person-helper-key",
            "env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"},
            "model": "person-model",
        })
        .to_string()
        .as_bytes(),
    );
    write_private(
        &sb.claude_home.join(".credentials.json"),
        serde_json::json!({"claudeAiOauth": {
            "accessToken": secrets::secret("person-access"),
            "refreshToken": secrets::secret("person-refresh"),
            "expiresAt": 1,
        }})
        .to_string()
        .as_bytes(),
    );
    mkdir_private(&sb.claude_home.join("accounts"));
    write_private(
        &sb.claude_home.join("accounts/api_key_1.json"),
        format!(
            r#"{{"api_key":"{}","env_key":"ANTHROPIC_API_KEY"}}"#,
            secrets::secret("person-slot-key")
        )
        .as_bytes(),
    );
    write_private(
        &sb.claude_home.join("rotation.yaml"),
        b"strategy: [not yaml\n",
    );
    Some((sb, tmp))
}

/// The demo's steps and lines as a successful run on the real claude prints them.
fn assert_demo_output(out: &Output, real_dir: &Path) {
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    for step in [
        "claude --rotation-demo: a quota rotation on the real claude, offline",
        &format!(
            "the real claude: {} (version {} (Claude Code))",
            real_dir.join("claude").display(),
            real_claude::VERSION
        ),
        "account 1 (spent) added: claude --rotation-add --api-key spent --base-url http://127.0.0.1:",
        "account 2 (fresh) added",
        "running claude -p \"Say hello in one line.\" --output-format text (headless, through the shim)",
        "request on account 1 → 400 invalid_request_error \"Your credit balance is too low to access the Anthropic API.\"",
        "switch: the shim marked account 1 out of quota and sent the same request on account 2 → 200 (streamed)",
        &format!("claude exited 0 and printed account 2's answer: \"{ANSWER}\""),
        "stderr: qwen-rotation: account 1 (spent) quota exhausted; switched to account 2 (fresh)",
        // Key 1 was asked once: the relay moved that very request on, claude never saw the 400.
        "provider: account 1 asked once, account 2 asked ",
        "rotation.log: account_switch from 1 to 2, reason quota_exhausted",
        "claude --rotation-status in the demo home:",
        "and claude answered without seeing the error",
    ] {
        assert!(stdout.contains(step), "missing {step:?}\n{}", out.dump());
    }
    // The Messages API's base URL has no path: claude adds /v1/messages itself.
    assert!(!stdout.contains("/v1 "), "{}", out.dump());
    assert_numbered_steps(&stdout, 9, &out.dump());
    // The status table of the demo home: account 2 live, account 1 cooling down, the pool in
    // the demo's own `CLAUDE_CONFIG_DIR`.
    assert_status_table(
        &stdout,
        &["claude-rotation-demo-", "/home/.claude "],
        &out.dump(),
    );
    // Piped: plain text, no escape sequence anywhere.
    assert_plain(&out.stdout, &out.stderr, &out.dump());
    // No key: neither the person's nor the demo's own.
    secrets::assert_clean("the demo's stdout", &out.stdout);
    secrets::assert_clean("the demo's stderr", &out.stderr);
    assert!(
        !stdout.contains(DEMO_KEY) && !out.stderr().contains(DEMO_KEY),
        "{}",
        out.dump()
    );
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[test]
fn the_demo_rotates_on_real_claude_and_leaves_the_persons_claude_alone() {
    let Some((sb, tmp)) = demo_sandbox() else {
        return;
    };
    let config = sb.home.join(".claude.json");
    let before = (snapshot(&sb.claude_home), fs::read(&config).unwrap());
    let ino = watch(
        &[&sb.claude_home, &sb.claude_home.join("accounts"), &config],
        &sb.home,
    );
    // stdout is a pipe: not a terminal.
    let out = run_with_timeout(sb.command(&["--rotation-demo"], false), None, sb.timeout);
    let touched = events(&ino);
    assert_demo_output(&out, &sb.real_dir);
    // Nothing of the person's was opened, changed or added; the demo home is gone.
    assert!(
        touched.is_empty(),
        "the person's files were touched: {touched:?}"
    );
    assert_eq!(
        (snapshot(&sb.claude_home), fs::read(&config).unwrap()),
        before,
        "the person's ~/.claude or ~/.claude.json changed"
    );
    assert_eq!(
        sorted(entries(&sb.home)),
        [".claude", ".claude.json"],
        "something was added to HOME"
    );
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
    let left = processes_in(&tmp);
    assert!(left.is_empty(), "processes of the demo left: {left:?}");
    eprintln!(
        "demo on claude {}: {:.1?}",
        real_claude::VERSION,
        out.elapsed
    );
}

/// Stopped by `signal` once the demo says claude runs: exit 128 + signal, the home removed, no
/// process of the run left.
fn demo_interrupted(signal: Signal) {
    let Some((sb, tmp)) = demo_sandbox() else {
        return;
    };
    // The demo's own line says claude was started: interrupt it then.
    let Interrupted {
        status,
        seen,
        stderr,
        took,
    } = interrupt_when(
        sb.command(&["--rotation-demo"], false),
        "running claude",
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
    eprintln!("demo on claude stopped by {signal:?} in {took:.1?}");
}

#[test]
fn ctrl_c_while_claude_runs_removes_the_home_and_exits_130() {
    demo_interrupted(Signal::SIGINT);
}

#[test]
fn sighup_while_claude_runs_removes_the_home_and_exits_129() {
    demo_interrupted(Signal::SIGHUP);
}

/// The shim as `claude` (a symlink in `dir/shim`), with `path` after it on PATH and a TMPDIR
/// of its own.
fn claude_alone(dir: &Path, path: &str, args: &[&str]) -> Output {
    let shim = dir.join("shim");
    fs::create_dir_all(&shim).unwrap();
    let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qwen"), shim.join("claude"));
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(shim.join("claude"));
    cmd.args(args)
        .env_clear()
        .env("PATH", format!("{}:{path}", shim.display()))
        .env("HOME", dir.join("home"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    child::default_signals(&mut cmd);
    run_with_timeout(cmd, None, Duration::from_secs(60))
}

#[test]
fn without_a_real_claude_the_demo_says_so_and_exits_127() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let out = claude_alone(dir.path(), &empty.to_string_lossy(), &["--rotation-demo"]);
    assert_eq!(out.code(), 127, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert!(
        err.starts_with("qwen-rotation: demo: the real claude was not found on PATH")
            && err.contains("npm install -g @anthropic-ai/claude-code"),
        "{}",
        out.dump()
    );
    assert!(
        entries(&dir.path().join("tmp")).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&dir.path().join("tmp"))
    );
}

#[test]
fn a_claude_that_never_asks_the_provider_fails_the_demo_with_exit_1() {
    // A "real claude" that answers without asking any provider: the demo cannot show a rotation,
    // says why in one line, and leaves nothing behind.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("fake-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("claude"), "#!/bin/sh\necho 9.9.9\n").unwrap();
    fs::set_permissions(
        bin.join("claude"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = claude_alone(
        dir.path(),
        &format!("{}:/usr/bin:/bin", bin.display()),
        &["--rotation-demo"],
    );
    assert_eq!(out.code(), 1, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert!(
        err.starts_with(
            "qwen-rotation: demo: the answer never came: account 1 was never asked; claude exited 0"
        ),
        "{}",
        out.dump()
    );
    assert!(
        entries(&dir.path().join("tmp")).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&dir.path().join("tmp"))
    );
}

#[test]
fn install_sh_demo_shows_the_rotation_on_qwen_then_on_claude() {
    // --profiles qwen,claude with a real claude on PATH: --demo runs both demos, qwen's first.
    let Some(qwen) = real_claude::real_qwen::installed(real_claude::real_qwen::Version::V0_12)
    else {
        return;
    };
    let Some(claude) = real_claude::installed() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::create_dir_all(dir.path().join("home")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_qwen"), "--prefix"])
        .arg(dir.path().join("prefix"))
        .args(["--profiles", "qwen,claude", "--demo"])
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}:/usr/local/bin:/usr/bin:/bin",
                qwen.parent().unwrap().display(),
                claude.parent().unwrap().display()
            ),
        )
        .env("HOME", dir.path().join("home"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    child::default_signals(&mut cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(240));
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    let bindir = dir.path().join("prefix/bin");
    let qwen_demo = stdout
        .find("install.sh: running: qwen --rotation-demo")
        .unwrap_or_else(|| panic!("no qwen demo: {}", out.dump()));
    let claude_demo = stdout
        .find(&format!(
            "install.sh: running: claude --rotation-demo (with {} first on PATH)",
            bindir.display()
        ))
        .unwrap_or_else(|| panic!("no claude demo: {}", out.dump()));
    assert!(qwen_demo < claude_demo, "{}", out.dump());
    assert!(
        stdout[qwen_demo..claude_demo].contains("and qwen answered without seeing the error"),
        "{}",
        out.dump()
    );
    assert!(
        stdout[claude_demo..].contains("and claude answered without seeing the error"),
        "{}",
        out.dump()
    );
    // Not asked for: no gemini demo, not even a line about one.
    assert!(!stdout.contains("gemini --rotation-demo"), "{}", out.dump());
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
}

#[test]
fn install_sh_demo_fails_when_the_claude_demo_does() {
    // qwen's demo passes, claude's cannot (its "real claude" never asks the provider): install.sh
    // names the claude demo and exits 1.
    let Some(qwen) = real_claude::real_qwen::installed(real_claude::real_qwen::Version::V0_12)
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("fake-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("claude"), "#!/bin/sh\necho 9.9.9\n").unwrap();
    fs::set_permissions(
        bin.join("claude"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::create_dir_all(dir.path().join("home")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_qwen"), "--prefix"])
        .arg(dir.path().join("prefix"))
        .args(["--profiles", "qwen,claude", "--demo"])
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}:/usr/local/bin:/usr/bin:/bin",
                qwen.parent().unwrap().display(),
                bin.display()
            ),
        )
        .env("HOME", dir.path().join("home"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    child::default_signals(&mut cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(240));
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert!(
        out.stdout()
            .contains("and qwen answered without seeing the error"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr().trim_end().ends_with(&format!(
            "install.sh: the claude demo failed (exit 1; its line above says why); the shim is installed in {}",
            dir.path().join("prefix/bin").display()
        )),
        "{}",
        out.dump()
    );
    assert!(entries(&tmp).is_empty());
}

#[test]
fn claude_help_lists_the_demo_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = claude_alone(dir.path(), "/nonexistent", &["--rotation-help"]);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let help = out.stdout();
    assert!(
        help.lines().any(|l| l.starts_with("  --rotation-demo ")
            && l.contains("a quota rotation on the real claude")),
        "{help}"
    );
    assert!(help.contains(" claude --rotation-demo\n"), "{help}");
    let out = claude_alone(dir.path(), "/nonexistent", &["--rotation-demo", "now"]);
    assert_eq!(out.code(), 2, "{}", out.dump());
    assert_eq!(
        out.stderr(),
        "qwen-rotation: unexpected argument `now` for --rotation-demo; usage: claude --rotation-demo\n"
    );
}
