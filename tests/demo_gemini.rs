//! `gemini --rotation-demo` end to end: the shim, linked as `gemini` in a directory first on PATH,
//! runs the demo with the REAL gemini 0.61.0 (from `.ci/install-gemini`,
//! tests/support/real_gemini.rs) after it on PATH. Without the installed release these print
//! SKIP (and fail under CI).
//!
//! Each run gets a TMPDIR of its own, so "the temporary home is removed" is "that directory is
//! empty afterwards", and a HOME whose `~/.gemini` holds a person's files (settings that would
//! break the demo if read, a login, accounts) and whose environment holds a person's keys and
//! Google variables: the files must come out byte-identical and never opened (inotify watches
//! them during the run), and no key of theirs may show up.

#[path = "support/demo.rs"]
mod demo;
#[path = "support/real_gemini.rs"]
mod real_gemini;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use demo::{
    Interrupted, assert_numbered_steps, assert_plain, assert_status_table, entries, events,
    interrupt_when, processes_in, snapshot, watch,
};
use nix::sys::signal::Signal;
use real_gemini::real_qwen::child;
use real_gemini::{Output, Sandbox, mkdir_private, run_with_timeout, secrets, write_private};

/// What the demo's provider answers on account 2 (src/demo/provider.rs).
const ANSWER: &str = "Hello from account 2: account 1 ran out of quota, and the shim moved this \
                      request here before gemini noticed.";

/// A sandbox whose person has a `~/.gemini` of their own and keys and Google variables in the
/// environment, and a TMPDIR of its own for the demo.
fn demo_sandbox() -> Option<(Sandbox, PathBuf)> {
    let mut sb = Sandbox::new()?;
    let tmp = sb.home.parent().unwrap().join("tmpdir");
    mkdir_private(&tmp);
    sb.env("TMPDIR", &tmp);
    // Were any of these used, the demo's provider would refuse the key, gemini would pick
    // another auth type or endpoint, or the pool would not be the demo's: the run would fail.
    sb.env("GEMINI_API_KEY", secrets::secret("person-gemini-key"));
    sb.env("GOOGLE_API_KEY", secrets::secret("person-google-key"));
    sb.env("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9");
    sb.env("GOOGLE_GENAI_USE_GCA", "true");
    sb.env(
        "GOOGLE_CLOUD_ACCESS_TOKEN",
        secrets::secret("person-access-token"),
    );
    sb.env("GOOGLE_CLOUD_PROJECT", "person-project");
    sb.env("GEMINI_MODEL", "person-model");
    sb.env(
        "GEMINI_ROTATION_KEYS",
        format!(
            "{},{}",
            secrets::secret("person-pool-1"),
            secrets::secret("person-pool-2")
        ),
    );
    sb.env("HTTPS_PROXY", "http://127.0.0.1:9");
    sb.env("HTTP_PROXY", "http://127.0.0.1:9");
    // The person's own files: an OAuth selection, a login, accounts, a broken rotation.yaml.
    sb.write_settings(serde_json::json!({
        "security": {"auth": {"selectedType": "oauth-personal"}},
        "model": {"name": "person-model"}
    }));
    write_private(
        &sb.gemini_home.join("oauth_creds.json"),
        br#"{"access_token":"person-access","refresh_token":"person-refresh","expiry_date":1}"#,
    );
    write_private(
        &sb.gemini_home.join("google_accounts.json"),
        br#"{"active":"person@example.com","old":[]}"#,
    );
    mkdir_private(&sb.gemini_home.join("accounts"));
    write_private(
        &sb.gemini_home.join("accounts/api_key_1.json"),
        br#"{"api_key":"person-slot-key","env_key":"GEMINI_API_KEY"}"#,
    );
    write_private(
        &sb.gemini_home.join("rotation.yaml"),
        b"strategy: [not yaml\n",
    );
    Some((sb, tmp))
}

/// The demo's steps and lines as a successful run on the real gemini prints them.
fn assert_demo_output(out: &Output, real_dir: &Path) {
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    for step in [
        "gemini --rotation-demo: a quota rotation on the real gemini, offline",
        &format!(
            "the real gemini: {} (version 0.61.0)",
            real_dir.join("gemini").display()
        ),
        "account 1 (spent) added: gemini --rotation-add --api-key spent --base-url http://127.0.0.1:",
        "account 2 (fresh) added",
        "running gemini -p \"Say hello in one line.\" --output-format text (headless, through the shim)",
        "request on account 1 → 429 RESOURCE_EXHAUSTED \"You exceeded your current quota, please check your plan and billing details.\"",
        "switch: the shim marked account 1 out of quota and sent the same request on account 2 → 200",
        &format!("gemini exited 0 and printed account 2's answer: \"{ANSWER}\""),
        "stderr: qwen-rotation: account 1 (spent) quota exhausted; switched to account 2 (fresh)",
        // Key 1 was asked once: the relay moved that very request on, gemini never retried.
        "provider: account 1 asked once, account 2 asked ",
        "rotation.log: account_switch from 1 to 2, reason quota_exhausted",
        "gemini --rotation-status in the demo home:",
        "and gemini answered without seeing the error",
    ] {
        assert!(stdout.contains(step), "missing {step:?}\n{}", out.dump());
    }
    // The base URL of the Gemini API has no path: gemini adds /v1beta/models/… itself.
    assert!(!stdout.contains("/v1 "), "{}", out.dump());
    assert_numbered_steps(&stdout, 9, &out.dump());
    // The status table of the demo home: account 2 live, account 1 cooling down, the pool in
    // the demo's own `.gemini`.
    assert_status_table(
        &stdout,
        &["gemini-rotation-demo-", "/home/.gemini"],
        &out.dump(),
    );
    // Piped: plain text, no escape sequence anywhere.
    assert_plain(&out.stdout, &out.stderr, &out.dump());
    secrets::assert_clean("the demo's stdout", &out.stdout);
    secrets::assert_clean("the demo's stderr", &out.stderr);
}

#[test]
fn the_demo_rotates_on_real_gemini_and_leaves_the_persons_gemini_alone() {
    let Some((sb, tmp)) = demo_sandbox() else {
        return;
    };
    let before = snapshot(&sb.gemini_home);
    let ino = watch(
        &[&sb.gemini_home, &sb.gemini_home.join("accounts")],
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
        snapshot(&sb.gemini_home),
        before,
        "the person's ~/.gemini changed"
    );
    assert_eq!(
        entries(&sb.home),
        [".gemini"],
        "something was added to HOME"
    );
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
    eprintln!(
        "demo on gemini {}: {:.1?}",
        real_gemini::VERSION,
        out.elapsed
    );
}

#[test]
fn the_demo_rotates_on_real_gemini_as_a_plain_user() {
    // gemini reads a system settings file only when root owns it: the demo home's own
    // settings.json selects the API key, so a plain user gets the same run. Run as root here
    // (CI too): the demo runs as `nobody`, with the shim copied where that user can read it.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: not root; the other demo tests already run as a plain user");
        return;
    }
    let Some(real) = real_gemini::installed() else {
        return;
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // Under /tmp (every user may enter it), a directory of nobody's: bin/gemini (a copy of the
    // shim), HOME and TMPDIR.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let home = dir.path().join("home");
    let tmp = dir.path().join("tmp");
    let probe_home = dir.path().join("probe");
    for d in [&bin, &home, &tmp, &probe_home] {
        fs::create_dir_all(d).unwrap();
    }
    fs::copy(env!("CARGO_BIN_EXE_qwen"), bin.join("gemini")).unwrap();
    for p in [
        dir.path(),
        &bin,
        &home,
        &tmp,
        &probe_home,
        &bin.join("gemini"),
    ] {
        nix::unistd::chown(p, Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let real_dir = real.parent().unwrap();
    // The real gemini must be reachable by that user too.
    let probe = Command::new(&real)
        .arg("--version")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &probe_home)
        .env("GEMINI_CLI_HOME", &probe_home)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .stdin(Stdio::null())
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "nobody cannot run {}: {probe:?}",
            real.display()
        );
        eprintln!("SKIP: nobody cannot run {}", real.display());
        return;
    }
    let mut cmd = Command::new(bin.join("gemini"));
    cmd.arg("--rotation-demo")
        .current_dir(&home)
        .env_clear()
        .env(
            "PATH",
            format!("{}:{}:/usr/bin:/bin", bin.display(), real_dir.display()),
        )
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    child::default_signals(&mut cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(180));
    assert_demo_output(&out, real_dir);
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
    assert!(
        entries(&home).is_empty(),
        "left in HOME: {:?}",
        entries(&home)
    );
}

#[test]
fn ctrl_c_while_gemini_runs_removes_the_home_and_exits_130() {
    let Some((sb, tmp)) = demo_sandbox() else {
        return;
    };
    // The demo's own line says gemini was started: interrupt it then.
    let Interrupted {
        status,
        seen,
        stderr,
        took: stopped_in,
    } = interrupt_when(
        sb.command(&["--rotation-demo"], false),
        "running gemini",
        Signal::SIGINT,
        sb.timeout,
    );
    assert_eq!(status.code(), Some(130), "{status:?}\n{seen:?}\n{stderr}");
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
    eprintln!("demo on gemini stopped by SIGINT in {stopped_in:.1?}");
}

/// The shim as `gemini` (a symlink in `dir/shim`), with `path` after it on PATH and a TMPDIR
/// of its own.
fn gemini_alone(dir: &Path, path: &str, args: &[&str]) -> Output {
    let shim = dir.join("shim");
    fs::create_dir_all(&shim).unwrap();
    let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qwen"), shim.join("gemini"));
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(shim.join("gemini"));
    cmd.args(args)
        .env_clear()
        .env("PATH", format!("{}:{path}", shim.display()))
        .env("HOME", dir.join("home"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    child::default_signals(&mut cmd);
    run_with_timeout(cmd, None, Duration::from_secs(60))
}

#[test]
fn without_a_real_gemini_the_demo_says_so_and_exits_127() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let out = gemini_alone(dir.path(), &empty.to_string_lossy(), &["--rotation-demo"]);
    assert_eq!(out.code(), 127, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert!(
        err.starts_with("qwen-rotation: demo: the real gemini was not found on PATH")
            && err.contains("npm install -g @google/gemini-cli"),
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
fn a_gemini_too_new_for_the_node_at_hand_is_named_with_the_fix() {
    // An npm layout: bin/gemini → lib/node_modules/@google/gemini-cli/bundle/gemini.js, whose
    // package asks for a Node.js no machine has; `node` is the machine's.
    let Some(node) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
    else {
        assert!(std::env::var_os("CI").is_none(), "node is not on PATH");
        eprintln!("SKIP: node is not on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("lib/node_modules/@google/gemini-cli");
    fs::create_dir_all(pkg.join("bundle")).unwrap();
    fs::write(
        pkg.join("package.json"),
        r#"{"name":"@google/gemini-cli","version":"9.9.9","engines":{"node":">=999"}}"#,
    )
    .unwrap();
    let cli = pkg.join("bundle/gemini.js");
    fs::write(&cli, "#!/bin/sh\necho 9.9.9\n").unwrap();
    fs::set_permissions(&cli, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&cli, bin.join("gemini")).unwrap();
    std::os::unix::fs::symlink(&node, bin.join("node")).unwrap();
    let out = gemini_alone(dir.path(), &bin.to_string_lossy(), &["--rotation-demo"]);
    assert_eq!(out.code(), 1, "{}", out.dump());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.dump());
    assert!(
        err.contains("demo: the real gemini 9.9.9 needs Node.js >=999 and node on PATH is v")
            && err.trim_end().ends_with("; install Node.js 999 or later"),
        "{}",
        out.dump()
    );
    assert!(entries(&dir.path().join("tmp")).is_empty());
}

#[test]
fn install_sh_demo_shows_the_rotation_on_qwen_then_on_gemini() {
    // The default profiles take gemini when a real gemini is on PATH: --demo runs both demos.
    let Some(qwen) = real_gemini::real_qwen::installed(real_gemini::real_qwen::Version::V0_12)
    else {
        return;
    };
    let Some(gemini) = real_gemini::installed() else {
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
        .arg("--demo")
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}:/usr/local/bin:/usr/bin:/bin",
                qwen.parent().unwrap().display(),
                gemini.parent().unwrap().display()
            ),
        )
        .env("HOME", dir.path().join("home"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    child::default_signals(&mut cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(240));
    assert_eq!(out.code(), 0, "{}", out.dump());
    let stdout = out.stdout();
    let bindir = dir.path().join("prefix/bin");
    let qwen_demo = stdout
        .find("install.sh: running: qwen --rotation-demo")
        .unwrap_or_else(|| panic!("no qwen demo: {}", out.dump()));
    let gemini_demo = stdout
        .find(&format!(
            "install.sh: running: gemini --rotation-demo (with {} first on PATH)",
            bindir.display()
        ))
        .unwrap_or_else(|| panic!("no gemini demo: {}", out.dump()));
    assert!(qwen_demo < gemini_demo, "{}", out.dump());
    assert!(
        stdout[qwen_demo..gemini_demo].contains("and qwen answered without seeing the error"),
        "{}",
        out.dump()
    );
    assert!(
        stdout[gemini_demo..].contains("and gemini answered without seeing the error"),
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
fn gemini_help_lists_the_demo_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = gemini_alone(dir.path(), "/nonexistent", &["--rotation-help"]);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let help = out.stdout();
    assert!(
        help.lines().any(|l| l.starts_with("  --rotation-demo ")
            && l.contains("a quota rotation on the real gemini")),
        "{help}"
    );
    assert!(help.contains(" gemini --rotation-demo\n"), "{help}");
    let out = gemini_alone(dir.path(), "/nonexistent", &["--rotation-demo", "now"]);
    assert_eq!(out.code(), 2, "{}", out.dump());
    assert_eq!(
        out.stderr(),
        "qwen-rotation: unexpected argument `now` for --rotation-demo; usage: gemini --rotation-demo\n"
    );
}
