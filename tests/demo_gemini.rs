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
    Person, assert_help_lists_the_demo, assert_interrupted, assert_no_real_cli_exits_127,
    assert_rotation_shown, assert_tmp_empty, entries, install_shows_qwen_then, person_common,
    person_pool_keys, run_leaving_alone, run_piped, too_new_for_node,
};
use nix::sys::signal::Signal;
use real_gemini::{Output, Sandbox, mkdir_private, run_with_timeout, secrets, write_private};

/// A sandbox whose person has a `~/.gemini` of their own and keys and Google variables in the
/// environment, and a TMPDIR of its own for the demo.
fn demo_sandbox() -> Option<(Sandbox, PathBuf)> {
    let mut sb = Sandbox::new()?;
    let (tmp, common) = person_common(&sb.home, &sb.gemini_home);
    for (key, value) in common {
        sb.env(key, value);
    }
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
    sb.env("GEMINI_ROTATION_KEYS", person_pool_keys());
    // The person's own files: an OAuth selection, a login, accounts.
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
    Some((sb, tmp))
}

/// The demo's steps and lines as a successful run on the real gemini prints them.
fn assert_demo_output(out: &Output, real_dir: &Path) {
    let steps = [
        "running gemini -p \"Say hello in one line.\" --output-format text (headless, through the shim)",
        "request on account 1 → 429 RESOURCE_EXHAUSTED \"You exceeded your current quota, please check your plan and billing details.\"",
    ];
    // The status table's pool is in the demo's own `.gemini`.
    let home = ["gemini-rotation-demo-", "/home/.gemini"];
    assert_rotation_shown(out, ("gemini", real_dir, "0.61.0"), &steps, &home);
    // The base URL of the Gemini API has no path: gemini adds /v1beta/models/… itself.
    assert!(!out.stdout().contains("/v1 "), "{}", out.dump());
}

#[test]
fn the_demo_rotates_on_real_gemini_and_leaves_the_persons_gemini_alone() {
    let Some((sb, tmp)) = demo_sandbox() else {
        return;
    };
    let cli = format!("gemini {}", real_gemini::VERSION);
    let person = Person {
        cli: &cli,
        home: &sb.home,
        cli_home: &sb.gemini_home,
        files: &[],
        holds: &[".gemini"],
    };
    let cmd = sb.command(&["--rotation-demo"], false);
    run_leaving_alone(cmd, sb.timeout, &person, &tmp, |out| {
        assert_demo_output(out, &sb.real_dir)
    });
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
        .gid(nobody.gid.as_raw());
    let out = run_piped(cmd, Duration::from_secs(180));
    assert_demo_output(&out, real_dir);
    assert_tmp_empty(&tmp);
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
    let cmd = sb.command(&["--rotation-demo"], false);
    assert_interrupted("gemini", cmd, &tmp, Signal::SIGINT, sb.timeout);
}

#[test]
fn without_a_real_gemini_the_demo_says_so_and_exits_127() {
    assert_no_real_cli_exits_127("gemini", "@google/gemini-cli");
}

#[test]
fn a_gemini_too_new_for_the_node_at_hand_is_named_with_the_fix() {
    let Some(err) = too_new_for_node("gemini", "@google/gemini-cli", "bundle/gemini.js", ">=999")
    else {
        return;
    };
    assert!(
        err.trim_end().ends_with("; install Node.js 999 or later"),
        "{err}"
    );
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
    install_shows_qwen_then("gemini", &qwen, &gemini, &["--demo"]);
}

#[test]
fn gemini_help_lists_the_demo_with_an_example() {
    assert_help_lists_the_demo("gemini");
}
