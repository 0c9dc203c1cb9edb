//! The shim as `gemini` in front of the REAL Gemini CLI 0.61.0, offline, against a mock of the
//! Gemini API (tests/support/real_gemini.rs): API keys through the loopback relay.
//!
//! Each test names what it proves by what the mock saw (which key was asked, on which model)
//! and by what gemini printed; waits have deadlines, never sleeps. The sandbox runs as the
//! user the tests run as: as root, the shim's private system-settings file selects
//! `gemini-api-key`; otherwise a test that needs it selects it in the user's settings, as
//! `/auth` does.

#[path = "support/real_gemini.rs"]
mod real_gemini;

use std::time::Duration;

use real_gemini::{GeminiMock, Sandbox, secrets};

/// A sandbox and a mock, with the keys `keys` added through `gemini --rotation-add --api-key`.
fn setup(keys: &[&str]) -> Option<(Sandbox, GeminiMock)> {
    let sb = Sandbox::new()?;
    let mock = GeminiMock::start();
    if !nix::unistd::geteuid().is_root() {
        sb.write_settings(
            serde_json::json!({"security": {"auth": {"selectedType": "gemini-api-key"}}}),
        );
    }
    for (i, key) in keys.iter().enumerate() {
        sb.add_key(&format!("key{}", i + 1), key, &mock.url());
    }
    Some((sb, mock))
}

fn streamed(mock: &GeminiMock) -> Vec<real_gemini::Seen> {
    mock.seen()
        .into_iter()
        .filter(|s| s.method == "streamGenerateContent")
        .collect()
}

#[test]
fn a_daily_quota_on_key_1_is_answered_by_key_2_in_text_mode() {
    let Some((sb, mock)) = setup(&["k1_daily", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert_eq!(
        mock.count("k1_daily"),
        1,
        "key 1 asked once: {:?}",
        mock.seen()
    );
    assert!(mock.count("k2_ok") >= 1);
    assert!(
        streamed(&mock)
            .iter()
            .all(|s| s.key == "k2_ok" && s.query == "alt=sse")
    );
    // The user's settings are the user's: the shim never wrote one.
    if nix::unistd::geteuid().is_root() {
        assert_eq!(sb.settings_text(), None);
    }
    let switches: Vec<_> = sb
        .rotation_log()
        .into_iter()
        .filter(|e| e["event"] == "account_switch")
        .collect();
    assert_eq!(switches.len(), 1, "{switches:?}");
    assert_eq!(
        (switches[0]["from"].as_u64(), switches[0]["to"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn a_daily_quota_on_key_1_is_answered_by_key_2_in_json_mode() {
    let Some((sb, mock)) = setup(&["k1_daily", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "--output-format", "json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let doc: serde_json::Value = serde_json::from_str(out.stdout().trim())
        .unwrap_or_else(|e| panic!("json stdout ({e}): {}", out.dump()));
    let response = doc["response"].as_str().unwrap_or_default();
    assert!(response.contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert_eq!(mock.count("k1_daily"), 1, "{:?}", mock.seen());
}

#[test]
fn a_per_minute_quota_on_key_1_moves_to_key_2_at_once() {
    // gemini alone retries a per-minute 429 for about 6 minutes; the relay moves the same
    // request to key 2, so key 1 is asked once and gemini never sees the 429.
    let Some((mut sb, mock)) = setup(&["k1_minute", "k2_ok"]) else {
        return;
    };
    sb.timeout = Duration::from_secs(120);
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert_eq!(mock.count("k1_minute"), 1, "{:?}", mock.seen());
    assert!(!out.stderr().contains("Attempt 1 failed"), "{}", out.dump());
}

#[test]
fn every_key_spent_ends_the_run_with_75_naming_the_reset() {
    let Some((sb, mock)) = setup(&["k1_daily", "k2_daily"]) else {
        return;
    };
    for args in [&["-p", "hello"][..], &["-p", "hello", "-o", "json"][..]] {
        let out = sb.run(args, None);
        assert_eq!(out.code(), 75, "{args:?}: {}", out.dump());
        assert!(!out.stdout().contains("REPLY-FROM"), "{}", out.dump());
        // The earliest reset is a daily quota's: midnight Pacific time, 07:00 or 08:00 UTC.
        let err = out.stderr();
        let at = err
            .split("returns at ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no reset named: {}", out.dump()));
        assert!(
            at.ends_with("T07:00:00Z") || at.ends_with("T08:00:00Z"),
            "{at}: {}",
            out.dump()
        );
    }
    // The first run asked each key once; the second found both cooling down and asked none.
    assert_eq!(mock.count("k1_daily"), 1, "{:?}", mock.seen());
    assert_eq!(mock.count("k2_daily"), 1, "{:?}", mock.seen());
}

#[test]
fn a_spent_pro_quota_is_answered_by_key_2_on_the_pro_model() {
    let Some((sb, mock)) = setup(&["k1_prodaily", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "-m", "gemini-2.5-pro"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(
        out.stdout().contains("REPLY-FROM-k2_ok-ON-gemini-2.5-pro"),
        "{}",
        out.dump()
    );
    let pro: Vec<_> = streamed(&mock)
        .into_iter()
        .filter(|s| s.model == "gemini-2.5-pro")
        .collect();
    assert!(pro.iter().any(|s| s.key == "k2_ok"), "{:?}", mock.seen());
    assert!(streamed(&mock).iter().all(|s| s.model == "gemini-2.5-pro"));
}

#[test]
fn geminis_own_exit_codes_pass_through_and_other_errors_do_not_rotate() {
    // A 400 that is not about the key is nobody's quota: gemini sees it as it came and exits
    // with its own status, the HTTP status & 255 in json mode (144), 1 in text mode; no key is
    // moved away from.
    let Some((sb, mock)) = setup(&["k1_ok", "k2_ok"]) else {
        return;
    };
    let json = sb.run(&["-p", "hello", "-m", "gemini-badarg", "-o", "json"], None);
    assert_eq!(json.code(), 144, "{}", json.dump());
    let text = sb.run(&["-p", "hello", "-m", "gemini-badarg"], None);
    assert_eq!(text.code(), 1, "{}", text.dump());
    assert!(mock.count("k1_ok") >= 2, "{:?}", mock.seen());
    assert_eq!(mock.count("k2_ok"), 0, "{:?}", mock.seen());
    assert!(
        !sb.rotation_log()
            .iter()
            .any(|e| e["event"] == "account_switch"),
        "{:?}",
        sb.rotation_log()
    );
}

#[test]
fn keys_from_the_environment_rotate_the_same_way() {
    let Some(mut sb) = Sandbox::new() else {
        return;
    };
    let mock = GeminiMock::start();
    if !nix::unistd::geteuid().is_root() {
        sb.write_settings(
            serde_json::json!({"security": {"auth": {"selectedType": "gemini-api-key"}}}),
        );
    }
    sb.env(
        "GEMINI_ROTATION_KEYS",
        format!(
            "{},{}",
            secrets::secret("e1_daily"),
            secrets::secret("e2_ok")
        ),
    )
    .env("GEMINI_ROTATION_BASE_URL", mock.url());
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-e2_ok"), "{}", out.dump());
    assert_eq!(mock.count("e1_daily"), 1, "{:?}", mock.seen());
}

#[test]
fn the_keys_are_not_in_geminis_environment() {
    let Some((sb, mock)) = setup(&["k1_hold", "k2_ok"]) else {
        return;
    };
    let child = sb.command(&["-p", "hello"], false).spawn().unwrap();
    let shim = child.id();
    // While key 1's answer is held, gemini is alive: read every process of the run.
    assert!(
        mock.wait_for(Duration::from_secs(120), |s| s.key == "k1_hold"),
        "gemini never asked: {:?}",
        mock.seen()
    );
    let mut environs = Vec::new();
    let mut pids = vec![shim];
    let mut i = 0;
    while i < pids.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pids[i])) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    pids.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
        }
        if pids[i] != shim
            && let Ok(env) = std::fs::read(format!("/proc/{}/environ", pids[i]))
        {
            environs.push(env);
        }
        i += 1;
    }
    mock.release();
    let out = real_gemini::real_qwen::child::collect_within(child, sb.timeout, "the gemini run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !environs.is_empty(),
        "no gemini process found under the shim"
    );
    for env in &environs {
        secrets::assert_clean("gemini's environment", env);
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let key = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"GEMINI_API_KEY="))
            .expect("GEMINI_API_KEY in gemini's environment");
        // The run's token: 64 hex digits, not a key.
        assert!(key.len() == 64 && key.iter().all(u8::is_ascii_hexdigit));
        assert!(
            vars.iter()
                .any(|v| v.starts_with(b"GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:"))
        );
        assert!(!vars.iter().any(|v| v.starts_with(b"GEMINI_ROTATION_KEY")));
    }
}

#[test]
fn rotation_commands_answer_as_gemini() {
    let Some((sb, _mock)) = setup(&["k1_ok", "k2_ok"]) else {
        return;
    };
    let status = sb.run(&["--rotation-status"], None);
    assert_eq!(status.code(), 0, "{}", status.dump());
    assert!(status.stdout().contains("key1") && status.stdout().contains("key2"));
    let next = sb.run(&["--rotation-next"], None);
    assert_eq!(next.code(), 0, "{}", next.dump());
    let log = sb.rotation_log();
    assert!(
        log.iter().any(|e| e["trigger"] == "gemini --rotation-next"),
        "{log:?}"
    );
    // Encrypted credential storage is reported (no OAuth swap could work there).
    let mut sb = sb;
    sb.env("GEMINI_FORCE_ENCRYPTED_FILE_STORAGE", "true");
    let doctor = sb.run(&["--rotation-doctor"], None);
    assert!(
        doctor.stdout().contains(
            "gemini keeps its login encrypted (GEMINI_FORCE_ENCRYPTED_FILE_STORAGE=true)"
        ),
        "{}",
        doctor.dump()
    );
    // There, OAuth accounts are refused, with the fix.
    let add = sb.run(&["--rotation-add", "personal"], None);
    assert_eq!(add.code(), 2, "{}", add.dump());
    assert!(add.stderr().contains("--api-key"), "{}", add.dump());
    assert_eq!(add.stderr().lines().count(), 1, "{}", add.dump());
}

/// Without the relay (`relay: false`), gemini gets the key itself and the shim watches its
/// stderr: the quota line stops gemini at once, and the same command runs again on key 2.
fn scanned(keys: &[&str]) -> Option<(Sandbox, GeminiMock)> {
    let (sb, mock) = setup(keys)?;
    std::fs::write(sb.gemini_home.join("rotation.yaml"), "relay: false\n").unwrap();
    Some((sb, mock))
}

#[test]
fn without_the_relay_the_daily_quota_line_reruns_on_key_2() {
    let Some((sb, mock)) = scanned(&["k1_daily", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert!(
        out.stderr()
            .contains("account 1 (key1) quota exhausted; switched to account 2"),
        "{}",
        out.dump()
    );
    // gemini talked to the mock itself (no relay): key 1 was refused, key 2 answered.
    assert!(mock.count("k1_daily") >= 1 && mock.count("k2_ok") >= 1);
}

#[test]
fn without_the_relay_a_per_minute_retry_line_stops_gemini_and_reruns_on_key_2() {
    // gemini alone retries a per-minute quota for about 6 minutes (the deadline here is well
    // under that); its first `Attempt 1 failed` line is enough for the shim to stop it and run
    // the same command on key 2: key 1 is asked once, gemini's own retries never go out.
    let Some((mut sb, mock)) = scanned(&["k1_minute", "k2_ok"]) else {
        return;
    };
    sb.timeout = Duration::from_secs(150);
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert_eq!(mock.count("k1_minute"), 1, "{:?}", mock.seen());
}

#[test]
fn a_copy_or_hard_link_named_gemini_is_the_gemini_shim_and_never_taken_for_the_real_one() {
    use std::os::unix::process::CommandExt;
    let Some(sb) = Sandbox::new() else {
        return;
    };
    // The shim as a copy in one directory and as a hard link in another, both on PATH before
    // the real gemini; the copy is what a shell finds first.
    let (copy, link) = (sb.home.join("copy"), sb.home.join("link"));
    for d in [&copy, &link] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_qwen"), copy.join("gemini")).unwrap();
    std::fs::hard_link(env!("CARGO_BIN_EXE_qwen"), link.join("gemini")).unwrap();
    let mut dirs = vec![copy.clone(), link.clone(), sb.real_dir.clone()];
    dirs.extend(["/usr/bin", "/bin"].map(std::path::PathBuf::from));
    let mut cmd = std::process::Command::new(copy.join("gemini"));
    cmd.arg("--rotation-doctor")
        .current_dir(&sb.work)
        .env_clear()
        .env("PATH", std::env::join_paths(&dirs).unwrap())
        .env("HOME", &sb.home)
        .env("GEMINI_CLI_HOME", &sb.home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    let out = real_gemini::run_with_timeout(cmd, None, sb.timeout);
    let text = out.stdout();
    let real = sb.real_dir.join("gemini");
    assert!(
        text.contains(&format!("real gemini: {}", real.display())),
        "{}",
        out.dump()
    );
    assert!(
        text.contains(&format!("skipped {}", link.join("gemini").display())),
        "{}",
        out.dump()
    );
    // It answered as gemini (its home), not as qwen.
    assert!(
        text.contains(&sb.gemini_home.display().to_string()),
        "{}",
        out.dump()
    );
    assert!(!text.contains(".qwen"), "{}", out.dump());
}

/// The relay meters the Gemini API's answers too: the run line counts key 1's quota answer and
/// key 2's answers, with the tokens of Google's `usageMetadata` (the mock reports 3 prompt and
/// 3 answer tokens per answer), and never the prompt.
#[test]
fn the_run_line_meters_requests_and_usage_metadata_tokens() {
    let Some((sb, mock)) = setup(&["k1_daily", "k2_ok"]) else {
        return;
    };
    let marker = "GEMINI-PROMPT-MARKER-51c";
    let out = sb.run(&["-p", marker], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let log = sb.rotation_log();
    let run = log
        .iter()
        .find(|e| e["event"] == "run")
        .unwrap_or_else(|| panic!("no run line: {log:?}"));
    let one = &run["usage"]["1"];
    assert_eq!(one["requests"], 1, "{run}");
    assert_eq!(one["quota"], 1, "{run}");
    let two = &run["usage"]["2"];
    let answered = mock.count("k2_ok") as u64;
    assert_eq!(two["requests"].as_u64(), Some(answered), "{run}");
    assert_eq!(two["ok"].as_u64(), Some(answered), "{run}");
    assert_eq!(two["tokens_in"].as_u64(), Some(3 * answered), "{run}");
    assert_eq!(two["tokens_out"].as_u64(), Some(3 * answered), "{run}");
    let text = std::fs::read_to_string(sb.gemini_home.join("rotation.log")).unwrap_or_default();
    assert!(!text.contains(marker), "the prompt was kept");
}
