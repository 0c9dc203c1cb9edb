//! End to end with the REAL qwen behind the shim, offline: the pinned releases from
//! `.ci/install-qwen` talk to the mock provider on 127.0.0.1, whose answer depends on the token
//! (tests/support/mock.rs). Each test runs `qwen …` exactly as a caller would (shim first on PATH)
//! and checks what the caller sees (stdout, stderr, exit code), what the provider saw (the order of
//! tokens), and what the shim left on disk (live file, slots, state.yaml, rotation.log).
//!
//! 0.12.0 carries the OAuth tests (later releases refuse headless OAuth); 0.24.4 the API-key ones.
//! Without the installed releases the tests print SKIP (and fail under CI).

#[path = "support/mock.rs"]
mod mock;
#[path = "support/real_qwen.rs"]
mod real_qwen;

use std::time::Duration;

use mock::Mock;
use real_qwen::{Output, Sandbox, Version};

// ---------------------------------------------------------------- helpers

/// A 0.12.0 OAuth pool: settings select qwen-oauth, slots 1..=n hold `tokens`, live = slot 1.
fn oauth_pool(tokens: &[&str]) -> Option<(Mock, Sandbox)> {
    let mock = Mock::start();
    let sb = Sandbox::new(Version::V0_12)?;
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.oauth_pool(tokens, &mock.url());
    Some((mock, sb))
}

/// A 0.24.4 API-key pool: settings select openai (SDK retries off: `maxRetries: 0`), slots
/// 1..=n hold `keys` for the mock's base URL, added with the shim's own `--rotation-add --api-key`.
fn api_pool(keys: &[&str]) -> Option<(Mock, Sandbox)> {
    let mock = Mock::start();
    let sb = Sandbox::new(Version::V0_24)?;
    sb.write_settings(
        Some("openai"),
        serde_json::json!({"model": {"generationConfig": {"maxRetries": 0}}}),
    );
    for (i, k) in keys.iter().enumerate() {
        sb.add_api_key_via_shim(&format!("key{}", i + 1), k, &mock.base_url(), "mock-model");
    }
    Some((mock, sb))
}

/// state.yaml as JSON (it is YAML; the shim's own parser is not used on purpose).
fn state(sb: &Sandbox) -> serde_json::Value {
    let text = sb.state_yaml();
    assert!(!text.is_empty(), "no state.yaml");
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("state.yaml: {e}\n{text}"))
}

/// `accounts.accountN` in state.yaml.
fn account(sb: &Sandbox, n: usize) -> serde_json::Value {
    state(sb)["accounts"][format!("account{n}")].clone()
}

fn switches(sb: &Sandbox) -> Vec<serde_json::Value> {
    sb.rotation_log()
        .into_iter()
        .filter(|e| e["event"] == "account_switch")
        .collect()
}

/// No fixture token in our own files, and nothing that looks like a real key anywhere.
fn assert_no_leaks(sb: &Sandbox, out: &Output, tokens: &[&str]) {
    let ours = format!(
        "{}\n{}",
        sb.state_yaml(),
        std::fs::read_to_string(sb.qwen_home.join("rotation.log")).unwrap_or_default()
    );
    for t in tokens {
        assert!(
            !ours.contains(t),
            "token {t} in state.yaml/rotation.log:\n{ours}"
        );
    }
    for text in [out.stdout(), out.stderr(), ours] {
        let found = real_qwen::real_looking_secrets(&text);
        assert!(
            found.is_empty(),
            "real-looking secrets in output: {found:?}"
        );
    }
}

/// The lines the shim itself printed.
fn notices(out: &Output) -> Vec<String> {
    out.stderr()
        .lines()
        .filter(|l| l.starts_with("qwen-rotation:"))
        .map(str::to_string)
        .collect()
}

/// Asserts the one-notice, clean-stderr shape of a successful retry on 0.12.0.
fn assert_clean_retry(out: &Output, to: usize) {
    let n = notices(out);
    assert_eq!(n.len(), 1, "one notice expected: {}", out.dump());
    assert!(
        n[0].contains(&format!("switched to account {to}")),
        "{}",
        out.dump()
    );
    for noise in [
        "Qwen OAuth quota exceeded",
        "An unexpected critical error",
        "API Error",
        "at file://",
    ] {
        assert!(
            !out.stderr().contains(noise),
            "failed attempt's {noise:?} leaked: {}",
            out.dump()
        );
    }
}

// ---------------------------------------------------------------- passthrough of the real client

#[test]
fn version_and_help_through_the_shim_equal_the_real_output() {
    for version in [Version::V0_12, Version::V0_24] {
        let mock = Mock::start();
        let Some(sb) = Sandbox::new(version) else {
            return;
        };
        // With accounts configured, so the shim takes its relay path, not the exec fast path.
        sb.oauth_pool(&["tok1_ok"], &mock.url());
        for args in [&["--version"][..], &["--help"][..]] {
            let real = sb.run_direct(args, None);
            let shim = sb.run(args, None);
            assert_eq!(real.code(), 0, "{version:?} {args:?}: {}", real.dump());
            assert_eq!(
                shim.code(),
                real.code(),
                "{version:?} {args:?}: {}",
                shim.dump()
            );
            assert_eq!(shim.stdout, real.stdout, "{version:?} {args:?}");
            assert_eq!(shim.stderr, real.stderr, "{version:?} {args:?}");
        }
        assert_eq!(mock.tokens(), Vec::<String>::new());
        assert_eq!(sb.live_token().as_deref(), Some("tok1_ok"));
    }
}

// ---------------------------------------------------------------- 0.12.0 OAuth rotation

#[test]
fn oauth_quota_on_account_1_answers_from_account_2() {
    let Some((mock, sb)) = oauth_pool(&["tok1_quota", "tok2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tok2_ok", "{}", out.dump());
    assert_clean_retry(&out, 2);
    let tokens = mock.tokens();
    assert_eq!(
        tokens.last().map(String::as_str),
        Some("tok2_ok"),
        "{tokens:?}"
    );
    assert!(
        tokens[..tokens.len() - 1].iter().all(|t| t == "tok1_quota") && tokens.len() >= 2,
        "{tokens:?}"
    );
    // The retry carried the same prompt.
    assert!(
        mock.chat_requests()
            .iter()
            .all(|r| r.prompt.as_deref() == Some("hello"))
    );
    // On disk: live file = account 2, slots intact, state and log say so.
    assert_eq!(sb.live_token().as_deref(), Some("tok2_ok"));
    assert_eq!(sb.slot_token(1).as_deref(), Some("tok1_quota"));
    assert_eq!(sb.slot_token(2).as_deref(), Some("tok2_ok"));
    let st = state(&sb);
    assert_eq!(st["current_index"], 2, "{st}");
    let a1 = account(&sb, 1);
    assert_eq!(a1["status"], "cooling_down", "{a1}");
    assert!(a1["cooldown_until"].is_string(), "{a1}");
    let log = switches(&sb);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0]["from"].as_u64(), log[0]["to"].as_u64()),
        (Some(1), Some(2)),
        "{log:?}"
    );
    assert_no_leaks(&sb, &out, &["tok1_quota", "tok2_ok"]);
    eprintln!("oauth quota→ok through the shim: {:.1?}", out.elapsed);
}

/// One caller shape (argv + stdin) against [quota, ok]: the caller sees only account 2's answer.
fn oauth_shape(args: &[&str], stdin: Option<&[u8]>, expect_stdout: &str) {
    // `fast`: the quota answer carries `x-should-retry: false`, so the failing attempt costs one
    // request instead of the SDK's four (the plain path is covered above).
    let Some((mock, sb)) = oauth_pool(&["tok1_fast_quota", "tok2_ok"]) else {
        return;
    };
    let out = sb.run(args, stdin);
    assert_eq!(out.code(), 0, "{args:?}: {}", out.dump());
    assert_eq!(out.stdout(), expect_stdout, "{args:?}: {}", out.dump());
    assert_clean_retry(&out, 2);
    assert_eq!(mock.tokens(), ["tok1_fast_quota", "tok2_ok"], "{args:?}");
    let prompts: Vec<_> = mock
        .chat_requests()
        .into_iter()
        .map(|r| r.prompt.unwrap_or_default().trim_end().to_string())
        .collect();
    assert_eq!(
        prompts[0], prompts[1],
        "the retry must send the same prompt"
    );
    assert_eq!(sb.live_token().as_deref(), Some("tok2_ok"));
    assert_eq!(switches(&sb).len(), 1);
}

#[test]
fn oauth_rotation_with_positional_prompt_and_text_format() {
    // The watcher.py shape: subprocess.run(["qwen", prompt, "--output-format", "text"]).
    oauth_shape(
        &["hello there", "--output-format", "text"],
        None,
        "REPLY-FROM-tok2_ok",
    );
}

#[test]
fn oauth_rotation_with_prompt_on_stdin() {
    oauth_shape(&[], Some(b"hello from stdin\n"), "REPLY-FROM-tok2_ok");
}

#[test]
fn oauth_rotation_with_extra_flags() {
    oauth_shape(
        &[
            "-y",
            "--max-session-turns",
            "3",
            "-m",
            "coder-model",
            "-p",
            "hello",
        ],
        None,
        "REPLY-FROM-tok2_ok",
    );
}

#[test]
fn oauth_rotation_json_output_is_the_successful_attempt_only() {
    // 0.12.0 prints a quota error in json mode with exit 0 and is_error:false: only the
    // structure tells; the caller must get exactly one JSON document, account 2's.
    let Some((mock, sb)) = oauth_pool(&["tok1_fast_quota", "tok2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "--output-format", "json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let doc: serde_json::Value = serde_json::from_str(out.stdout().trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", out.dump()));
    let result = doc.as_array().and_then(|a| a.last()).expect("a JSON array");
    assert_eq!(result["type"], "result");
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], "REPLY-FROM-tok2_ok", "{}", out.dump());
    assert!(!out.stdout().contains("quota"), "{}", out.dump());
    assert_eq!(notices(&out).len(), 1, "{}", out.dump());
    assert_eq!(mock.tokens(), ["tok1_fast_quota", "tok2_ok"]);
}

#[test]
fn oauth_rotation_stream_json_ends_with_the_successful_result() {
    let Some((mock, sb)) = oauth_pool(&["tok1_fast_quota", "tok2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "--output-format", "stream-json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let last = out
        .stdout()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_string);
    let last: serde_json::Value = serde_json::from_str(&last.unwrap_or_default())
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {}", out.dump()));
    assert_eq!(last["type"], "result");
    assert_eq!(last["result"], "REPLY-FROM-tok2_ok", "{}", out.dump());
    assert_eq!(mock.tokens(), ["tok1_fast_quota", "tok2_ok"]);
}

#[test]
fn oauth_quota_on_every_account_exits_75_naming_the_earliest_return() {
    let Some((mock, sb)) = oauth_pool(&["tok1_fast_quota", "tok2_fast_quota"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 75, "{}", out.dump());
    assert_eq!(out.stdout(), "", "{}", out.dump());
    let err = out.stderr();
    assert!(err.contains("all accounts exhausted"), "{}", out.dump());
    // The earliest return is account 1's cooldown (it was marked first), in RFC 3339.
    let until = account(&sb, 1)["cooldown_until"]
        .as_str()
        .map(str::to_string);
    let until = until.expect("account 1 has a cooldown");
    assert!(
        err.contains(&until),
        "message should name {until}: {}",
        out.dump()
    );
    assert_eq!(mock.tokens(), ["tok1_fast_quota", "tok2_fast_quota"]);
    assert_eq!(account(&sb, 2)["status"], "cooling_down");
    // A further run does not even start qwen: nothing is eligible.
    let again = sb.run(&["-p", "hello"], None);
    assert_eq!(again.code(), 75, "{}", again.dump());
    assert_eq!(
        mock.tokens().len(),
        2,
        "no request while every account cools down"
    );
    assert_no_leaks(&sb, &out, &["tok1_fast_quota", "tok2_fast_quota"]);
}

#[test]
fn prompt_mentioning_429_and_quota_does_not_rotate() {
    let Some((mock, sb)) = oauth_pool(&["tok1_ok", "tok2_ok"]) else {
        return;
    };
    let prompt = "why do I get HTTP 429 insufficient_quota and Free allocated quota exceeded?";
    let out = sb.run(&[prompt, "--output-format", "text"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tok1_ok");
    assert_eq!(notices(&out), Vec::<String>::new(), "{}", out.dump());
    assert_eq!(mock.tokens(), ["tok1_ok"]);
    assert_eq!(mock.chat_requests()[0].prompt.as_deref(), Some(prompt));
    assert_eq!(sb.live_token().as_deref(), Some("tok1_ok"));
    assert!(switches(&sb).is_empty());
}

#[test]
fn model_answer_quoting_quota_errors_does_not_rotate_in_text_or_json() {
    let Some((mock, sb)) = oauth_pool(&["tok1_quote", "tok2_ok"]) else {
        return;
    };
    let expected = mock::reply_text("tok1_quote");
    assert!(
        expected.contains("insufficient_quota")
            && expected.contains("Free allocated quota exceeded")
    );
    let text = sb.run(&["-p", "what does insufficient_quota mean?"], None);
    assert_eq!(text.code(), 0, "{}", text.dump());
    assert_eq!(text.stdout(), expected, "{}", text.dump());
    assert_eq!(notices(&text), Vec::<String>::new(), "{}", text.dump());
    let json = sb.run(&["-p", "and in json?", "--output-format", "json"], None);
    assert_eq!(json.code(), 0, "{}", json.dump());
    let doc: serde_json::Value = serde_json::from_str(json.stdout().trim()).expect("json");
    assert_eq!(
        doc.as_array().unwrap().last().unwrap()["result"],
        expected.as_str()
    );
    assert_eq!(notices(&json), Vec::<String>::new(), "{}", json.dump());
    assert_eq!(mock.tokens(), ["tok1_quote", "tok1_quote"]);
    assert!(switches(&sb).is_empty());
    assert_eq!(sb.live_token().as_deref(), Some("tok1_quote"));
}

#[test]
fn oauth_unauthorized_marks_needs_login_and_uses_the_next_account() {
    // 0.12.0 answers a 401 by refreshing at chat.qwen.ai, which fails offline:
    // "[API Error: Network error during token refresh: fetch failed]".
    let Some((mock, sb)) = oauth_pool(&["tok1_unauthorized", "tok2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tok2_ok", "{}", out.dump());
    assert_eq!(mock.tokens(), ["tok1_unauthorized", "tok2_ok"]);
    assert_eq!(
        account(&sb, 1)["status"],
        "needs_login",
        "{}",
        sb.state_yaml()
    );
    assert_eq!(notices(&out).len(), 1, "{}", out.dump());
    // The slot file survives (only a person can fix a login).
    assert_eq!(sb.slot_token(1).as_deref(), Some("tok1_unauthorized"));
}

#[test]
fn oauth_auth_failures_try_the_next_account_only_once() {
    let Some((mock, sb)) = oauth_pool(&["tok1_unauthorized", "tok2_unauthorized", "tok3_ok"])
    else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    // qwen's own failure reaches the caller: exit 1, not a signal the shim sent to stop qwen.
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert_eq!(
        mock.tokens(),
        ["tok1_unauthorized", "tok2_unauthorized"],
        "{}",
        out.dump()
    );
    assert_eq!(account(&sb, 1)["status"], "needs_login");
    assert_eq!(account(&sb, 2)["status"], "needs_login");
}

// Named to sort first: libtest starts tests in name order, so the ~80 s wait overlaps the rest.
#[test]
fn a_slow_oauth_throttle_rotates_with_a_short_cooldown() {
    // The one slow OAuth path: 0.12.0 retries a 429 rate limit 7 times with its own backoff
    // (1.5 s doubling) and ignores Retry-After; `fast` only removes the SDK's retries. ~80 s.
    let Some((mock, mut sb)) = oauth_pool(&["tok1_fast_throttle", "tok2_ok"]) else {
        return;
    };
    sb.timeout = Duration::from_secs(240);
    let started = chrono::Utc::now();
    let out = sb.run(&["-p", "hello"], None);
    let ended = chrono::Utc::now();
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tok2_ok", "{}", out.dump());
    assert_clean_retry(&out, 2);
    let tokens = mock.tokens();
    assert_eq!(tokens.last().map(String::as_str), Some("tok2_ok"));
    let a1 = account(&sb, 1);
    assert_eq!(a1["status"], "cooling_down", "{a1}");
    assert_short_cooldown(&a1, started, ended);
    eprintln!("oauth throttle→ok: {:.1?}", out.elapsed);
}

/// A throttle cooldown: set, and well under the quota default (5 h).
/// Measured against the run that hit it (`started` to `ended`), not against a clock read later,
/// so a slow machine cannot use the cooldown up before it is checked: still running when the
/// run ended (the default 5 min outlasts the run's rest after the hit and its 240 s limit), and
/// under an hour from the end.
fn assert_short_cooldown(
    account: &serde_json::Value,
    started: chrono::DateTime<chrono::Utc>,
    ended: chrono::DateTime<chrono::Utc>,
) {
    let until = account["cooldown_until"].as_str().expect("cooldown_until");
    let until = chrono::DateTime::parse_from_rfc3339(until)
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc);
    assert!(
        until > ended && until < ended + chrono::TimeDelta::hours(1),
        "throttle cooldown should be short: {account} (run {started} to {ended})"
    );
}

// ---------------------------------------------------------------- 0.24.4 API-key rotation

#[test]
fn api_key_coding_plan_quota_answers_from_key_2_and_records_the_reset() {
    let Some((mock, sb)) = api_pool(&["key1_quota_cp", "key2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-key2_ok\n", "{}", out.dump());
    let n = notices(&out);
    assert!(n.iter().any(|l| l.contains("account 2")), "{}", out.dump());
    assert!(!out.stderr().contains("Quota exhausted:"), "{}", out.dump());
    // The provider saw key 1 first, then only key 2 (and never a relay's per-run token).
    let tokens = mock.tokens();
    let first_ok = tokens
        .iter()
        .position(|t| t == "key2_ok")
        .expect("key 2 used");
    assert!(
        first_ok >= 1 && tokens[..first_ok].iter().all(|t| t == "key1_quota_cp"),
        "{tokens:?}"
    );
    assert!(
        tokens[first_ok..].iter().all(|t| t == "key2_ok"),
        "{tokens:?}"
    );
    let a1 = account(&sb, 1);
    assert_eq!(a1["status"], "cooling_down", "{a1}");
    let until = a1["cooldown_until"].as_str().unwrap_or_default();
    assert_eq!(
        until,
        mock::coding_plan_reset_stamp(),
        "reset time from the message: {a1}"
    );
    assert_eq!(state(&sb)["current_index"], 2);
    assert_eq!(switches(&sb).len(), 1, "{:?}", sb.rotation_log());
    assert_no_leaks(&sb, &out, &["key1_quota_cp", "key2_ok"]);
    eprintln!("api quota_cp→ok: {:.1?}", out.elapsed);
}

#[test]
fn api_key_throttle_rotates_with_a_short_cooldown() {
    // `fast` + maxRetries 0: 0.24.4 honours retry-after-ms, so its 7 attempts take ~0.5 s.
    let Some((mock, sb)) = api_pool(&["key1_fast_throttle", "key2_ok"]) else {
        return;
    };
    let started = chrono::Utc::now();
    let out = sb.run(&["-p", "hello"], None);
    let ended = chrono::Utc::now();
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-key2_ok\n", "{}", out.dump());
    assert_eq!(mock.tokens().last().map(String::as_str), Some("key2_ok"));
    let a1 = account(&sb, 1);
    assert_eq!(a1["status"], "cooling_down", "{a1}");
    assert_short_cooldown(&a1, started, ended);
    eprintln!("api throttle→ok: {:.1?}", out.elapsed);
}

#[test]
fn api_key_unauthorized_marks_needs_login_and_uses_the_next_key() {
    let Some((mock, sb)) = api_pool(&["key1_unauthorized", "key2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "--output-format", "json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let doc: serde_json::Value = serde_json::from_str(out.stdout().trim())
        .unwrap_or_else(|e| panic!("one JSON document ({e}): {}", out.dump()));
    assert_eq!(
        doc.as_array().unwrap().last().unwrap()["result"],
        "REPLY-FROM-key2_ok"
    );
    let tokens = mock.tokens();
    assert_eq!(
        tokens.first().map(String::as_str),
        Some("key1_unauthorized"),
        "{tokens:?}"
    );
    assert_eq!(
        tokens.iter().filter(|t| *t == "key1_unauthorized").count(),
        1,
        "{tokens:?}"
    );
    assert_eq!(account(&sb, 1)["status"], "needs_login");
}

#[test]
fn api_key_quota_on_every_key_exits_75() {
    let Some((mock, sb)) = api_pool(&["key1_quota_cp", "key2_quota_cp"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 75, "{}", out.dump());
    assert_eq!(out.stdout(), "");
    assert!(
        out.stderr().contains("all accounts exhausted"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr().contains(&mock::coding_plan_reset_stamp()),
        "{}",
        out.dump()
    );
    let tokens = mock.tokens();
    assert!(
        tokens.contains(&"key1_quota_cp".to_string())
            && tokens.contains(&"key2_quota_cp".to_string())
    );
    assert_no_leaks(&sb, &out, &["key1_quota_cp", "key2_quota_cp"]);
}

// ---------------------------------------------------------------- mixed pool

#[test]
fn mixed_pool_oauth_spent_then_api_key_answers() {
    // 0.12.0 runs both kinds headless. The user's settings select qwen-oauth, which outranks the
    // environment (tests/real_direct.rs), so the shim must switch the auth type for the API-key
    // attempt without touching the user's settings.json.
    let mock = Mock::start();
    let Some(sb) = Sandbox::new(Version::V0_12) else {
        return;
    };
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    let settings_before = std::fs::read(sb.qwen_home.join("settings.json")).unwrap();
    sb.add_oauth_slot(1, "tok1_fast_quota", &mock.url());
    sb.set_live_oauth("tok1_fast_quota", &mock.url());
    sb.add_api_key_via_shim("key2", "key2_ok", &mock.base_url(), "mock-model");
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-key2_ok", "{}", out.dump());
    assert_clean_retry(&out, 2);
    let reqs = mock.chat_requests();
    assert_eq!(reqs[0].token, "tok1_fast_quota");
    assert!(
        reqs[1..].iter().all(|r| r.token == "key2_ok") && reqs.len() >= 2,
        "{reqs:?}"
    );
    assert_eq!(reqs.last().unwrap().model.as_deref(), Some("mock-model"));
    assert_eq!(
        std::fs::read(sb.qwen_home.join("settings.json")).unwrap(),
        settings_before,
        "the user's settings.json must not change"
    );
    // The OAuth slot and live file are kept for when account 1 returns.
    assert_eq!(sb.slot_token(1).as_deref(), Some("tok1_fast_quota"));
    assert_no_leaks(&sb, &out, &["tok1_fast_quota", "key2_ok"]);
}

// ---------------------------------------------------------------- qwen's own writes to the live file

/// An OAuth pool whose refreshes reach an emulated chat.qwen.ai (see real_qwen::OAuthHost).
fn oauth_pool_with_host(
    tokens: &[&str],
    answers: impl FnOnce(&Mock) -> serde_json::Value,
) -> Option<(Mock, Sandbox, real_qwen::OAuthHost)> {
    let (mock, mut sb) = oauth_pool(tokens)?;
    let host = real_qwen::OAuthHost::start(&sb.root.join("oauth-host"), &answers(&mock))?;
    mock.route("chat.qwen.ai:443", host.addr);
    sb.env("HTTPS_PROXY", mock.url())
        .env("NODE_EXTRA_CA_CERTS", &host.ca_pem);
    Some((mock, sb, host))
}

#[test]
fn live_file_deleted_by_qwen_keeps_the_slot_and_marks_needs_login() {
    // 401 → qwen refreshes → the OAuth host answers 400 → qwen 0.12.0 DELETES oauth_creds.json
    // and prints "Refresh token expired or invalid".
    let Some((mock, sb, host)) =
        oauth_pool_with_host(&["tok1_unauthorized", "tok2_ok"], |_| serde_json::json!({}))
    else {
        return;
    };
    let slot1_before = std::fs::read(sb.oauth_slot(1)).unwrap();
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tok2_ok", "{}", out.dump());
    assert_eq!(host.refreshes(), ["refresh-tok1_unauthorized"]);
    assert_eq!(mock.tokens(), ["tok1_unauthorized", "tok2_ok"]);
    assert_eq!(
        std::fs::read(sb.oauth_slot(1)).unwrap(),
        slot1_before,
        "slot 1 must be kept as it was"
    );
    assert_eq!(
        account(&sb, 1)["status"],
        "needs_login",
        "{}",
        sb.state_yaml()
    );
    assert_eq!(sb.live_token().as_deref(), Some("tok2_ok"));
}

#[test]
fn token_refreshed_by_qwen_is_synced_back_to_its_slot_before_switching() {
    // 401 → refresh 200 (new access AND refresh token) → qwen rewrites the live file and retries
    // with the new token → quota → the shim must save the refreshed tokens into slot 1 first.
    let Some((mock, sb, host)) = oauth_pool_with_host(&["tok1_unauthorized", "tok2_ok"], |mock| {
        serde_json::json!({"refresh-tok1_unauthorized": {"status": 200, "body": {
            "access_token": "tok1r_fast_quota", "refresh_token": "refresh-tok1r",
            "token_type": "Bearer", "expires_in": 21600, "resource_url": mock.url()}}})
    }) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tok2_ok", "{}", out.dump());
    assert_eq!(host.refreshes(), ["refresh-tok1_unauthorized"]);
    assert_eq!(
        mock.tokens(),
        ["tok1_unauthorized", "tok1r_fast_quota", "tok2_ok"]
    );
    let slot1 = real_qwen::read_json(&sb.oauth_slot(1)).expect("slot 1");
    assert_eq!(slot1["access_token"], "tok1r_fast_quota", "{slot1}");
    assert_eq!(slot1["refresh_token"], "refresh-tok1r", "{slot1}");
    assert_eq!(account(&sb, 1)["status"], "cooling_down");
    assert_eq!(sb.live_token().as_deref(), Some("tok2_ok"));
}

// ---------------------------------------------------------------- every key spent, on every version

/// Every key spent, default settings (qwen's own retries on): the run ends with exit 75 and the
/// shim's message within seconds of the relay answering "all spent" — the mock's last quota
/// answer is the moment the relay knows. Before, 0.12.0 retried that answer for 63–73 s.
fn all_keys_spent_ends_soon_after_the_relay_knows(version: Version) {
    let mock = Mock::start();
    let Some(sb) = Sandbox::new(version) else {
        return;
    };
    sb.write_settings(Some("openai"), serde_json::json!({}));
    let keys = ["key1_quota", "key2_quota"];
    for (i, k) in keys.iter().enumerate() {
        sb.add_api_key_via_shim(&format!("key{}", i + 1), k, &mock.base_url(), "mock-model");
    }
    let started = std::time::Instant::now();
    let out = sb.run(&["-p", "hello"], None);
    let exited = started + out.elapsed;
    assert_eq!(out.code(), 75, "{}", out.dump());
    assert_eq!(out.stdout(), "");
    assert!(
        out.stderr().contains("all accounts exhausted"),
        "{}",
        out.dump()
    );
    let last_quota = mock
        .chat_requests()
        .into_iter()
        .filter(|r| r.token == "key2_quota")
        .map(|r| r.at)
        .max()
        .expect("key 2 was tried");
    let after = exited.saturating_duration_since(last_quota);
    println!(
        "qwen {}: exit 75 {after:.2?} after the last quota answer ({:.1?} in all, {} requests)",
        version.as_str(),
        out.elapsed,
        mock.chat_requests().len()
    );
    assert!(
        after < Duration::from_secs(5),
        "the run ended {after:.1?} after the relay knew every key was spent\n{}",
        out.dump()
    );
    // The shim's lines only: qwen, stopped, adds nothing (no "Operation cancelled.").
    assert!(
        out.stderr()
            .lines()
            .all(|l| l.starts_with("qwen-rotation:")),
        "{}",
        out.dump()
    );
    assert_no_leaks(&sb, &out, &keys);
}

#[test]
fn api_keys_all_spent_on_qwen_0_12_end_within_seconds() {
    all_keys_spent_ends_soon_after_the_relay_knows(Version::V0_12);
}

#[test]
fn api_keys_all_spent_on_qwen_0_24_end_within_seconds() {
    all_keys_spent_ends_soon_after_the_relay_knows(Version::V0_24);
}
