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

use std::path::{Path, PathBuf};
use std::time::Duration;

use demo::{
    Person, assert_help_lists_the_demo, assert_install_names_the_failed_demo, assert_interrupted,
    assert_no_real_cli_exits_127, assert_rotation_shown, demo_alone_says, fake_cli, install_sh,
    install_shows_qwen_then, person_common, person_pool_keys, run_leaving_alone,
};
use nix::sys::signal::Signal;
use real_claude::{Output, Sandbox, mkdir_private, run_with_timeout, secrets, write_private};

/// The start of the demo's own (fictional) keys: never printed either.
const DEMO_KEY: &str = "demo-key-account-";

/// A sandbox whose person has a `~/.claude` of their own and keys, a token, a base URL and
/// `CLAUDE_CONFIG_DIR` in the environment, and a TMPDIR of its own for the demo.
fn demo_sandbox() -> Option<(Sandbox, PathBuf)> {
    let mut sb = Sandbox::new()?;
    let (tmp, common) = person_common(&sb.home, &sb.claude_home);
    for (key, value) in common {
        sb.env(key, value);
    }
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
    sb.env("CLAUDE_ROTATION_KEYS", person_pool_keys());
    sb.env("CLAUDE_ROTATION_BASE_URL", "http://127.0.0.1:9");
    // The person's own files: settings sending claude elsewhere with a key helper, a login,
    // accounts.
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
    Some((sb, tmp))
}

/// The demo's steps and lines as a successful run on the real claude prints them.
fn assert_demo_output(out: &Output, real_dir: &Path) {
    let steps = [
        "running claude -p \"Say hello in one line.\" --output-format text (headless, through the shim)",
        "request on account 1 → 400 invalid_request_error \"Your credit balance is too low to access the Anthropic API.\"",
        "switch: the shim marked account 1 out of quota and sent the same request on account 2 → 200 (streamed)",
    ];
    // The status table's pool is in the demo's own `CLAUDE_CONFIG_DIR`.
    let home = ["claude-rotation-demo-", "/home/.claude "];
    let version = format!("{} (Claude Code)", real_claude::VERSION);
    assert_rotation_shown(out, ("claude", real_dir, &version), &steps, &home);
    // The Messages API's base URL has no path: claude adds /v1/messages itself.
    assert!(!out.stdout().contains("/v1 "), "{}", out.dump());
    // No key: neither the person's (checked with the lines) nor the demo's own.
    assert!(
        !out.stdout().contains(DEMO_KEY) && !out.stderr().contains(DEMO_KEY),
        "{}",
        out.dump()
    );
}

#[test]
fn the_demo_rotates_on_real_claude_and_leaves_the_persons_claude_alone() {
    let Some((sb, tmp)) = demo_sandbox() else {
        return;
    };
    let cli = format!("claude {}", real_claude::VERSION);
    let person = Person {
        cli: &cli,
        home: &sb.home,
        cli_home: &sb.claude_home,
        files: &[&sb.home.join(".claude.json")],
        holds: &[".claude", ".claude.json"],
    };
    let cmd = sb.command(&["--rotation-demo"], false);
    run_leaving_alone(cmd, sb.timeout, &person, &tmp, |out| {
        assert_demo_output(out, &sb.real_dir)
    });
}

/// Stopped by `signal` once the demo says claude runs: exit 128 + signal, the home removed, no
/// process of the run left.
fn demo_interrupted(signal: Signal) {
    let Some((sb, tmp)) = demo_sandbox() else {
        return;
    };
    let cmd = sb.command(&["--rotation-demo"], false);
    assert_interrupted("claude", cmd, &tmp, signal, sb.timeout);
}

#[test]
fn ctrl_c_while_claude_runs_removes_the_home_and_exits_130() {
    demo_interrupted(Signal::SIGINT);
}

#[test]
fn sighup_while_claude_runs_removes_the_home_and_exits_129() {
    demo_interrupted(Signal::SIGHUP);
}

#[test]
fn without_a_real_claude_the_demo_says_so_and_exits_127() {
    assert_no_real_cli_exits_127("claude", "@anthropic-ai/claude-code");
}

#[test]
fn a_claude_that_never_asks_the_provider_fails_the_demo_with_exit_1() {
    // A "real claude" that answers without asking any provider: the demo cannot show a rotation,
    // says why in one line, and leaves nothing behind.
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_cli(dir.path(), "claude", "9.9.9");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let err = demo_alone_says("claude", dir.path(), &path, 1);
    assert!(
        err.starts_with(
            "qwen-rotation: demo: the answer never came: account 1 was never asked; claude exited 0"
        ),
        "{err}"
    );
}

/// The real qwen 0.12 for install.sh's first demo.
fn real_qwen() -> Option<PathBuf> {
    real_claude::real_qwen::installed(real_claude::real_qwen::Version::V0_12)
}

#[test]
fn install_sh_demo_shows_the_rotation_on_qwen_then_on_claude() {
    // --profiles qwen,claude with a real claude on PATH: --demo runs both demos, qwen's first.
    let Some(qwen) = real_qwen() else {
        return;
    };
    let Some(claude) = real_claude::installed() else {
        return;
    };
    let args = ["--profiles", "qwen,claude", "--demo"];
    let out = install_shows_qwen_then("claude", &qwen, &claude, &args);
    // Not asked for: no gemini demo, not even a line about one.
    assert!(
        !out.stdout().contains("gemini --rotation-demo"),
        "{}",
        out.dump()
    );
}

#[test]
fn install_sh_demo_fails_when_the_claude_demo_does() {
    // qwen's demo passes, claude's cannot (its "real claude" never asks the provider): install.sh
    // names the claude demo and exits 1.
    let Some(qwen) = real_qwen() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_cli(dir.path(), "claude", "9.9.9");
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        qwen.parent().unwrap().display(),
        bin.display()
    );
    let args = ["--profiles", "qwen,claude", "--demo"];
    let out = install_sh(dir.path(), &path, &args, Duration::from_secs(240));
    assert_install_names_the_failed_demo(&out, "the claude demo", dir.path());
    assert!(
        out.stdout()
            .contains("and qwen answered without seeing the error"),
        "{}",
        out.dump()
    );
}

#[test]
fn claude_help_lists_the_demo_with_an_example() {
    assert_help_lists_the_demo("claude");
}

#[test]
fn a_claude_whose_npm_package_asks_for_a_newer_node_still_runs_the_demo() {
    // claude's npm package declares `engines.node` (for its installer), but what it installs is
    // a native binary: the node on PATH does not matter, and the demo must not refuse it. An npm
    // layout whose package asks for a Node.js no machine has, its entry point no node script.
    let Some(mut sb) = Sandbox::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir
        .path()
        .join("lib/node_modules/@anthropic-ai/claude-code");
    std::fs::create_dir_all(pkg.join("bin")).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        serde_json::json!({"name": "@anthropic-ai/claude-code", "version": real_claude::VERSION,
                           "engines": {"node": ">=99.0.0"}})
        .to_string(),
    )
    .unwrap();
    let exe = pkg.join("bin/claude.exe");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            sb.real_dir.join("claude").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&exe, bin.join("claude")).unwrap();
    let path = std::env::join_paths([
        sb.shim_dir.clone(),
        bin,
        PathBuf::from("/usr/local/bin"),
        PathBuf::from("/usr/bin"),
        PathBuf::from("/bin"),
    ])
    .unwrap();
    sb.env("PATH", path);
    let out = sb.run(&["--rotation-demo"], None);
    assert!(!out.stderr().contains("needs Node.js"), "{}", out.dump());
    assert_eq!(out.code(), 0, "{}", out.dump());
}
