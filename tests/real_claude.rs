//! The shim as `claude` in front of the REAL Claude Code 2.1.332, offline, against a mock of
//! Anthropic's Messages API (tests/support/real_claude.rs): API keys through the loopback relay.
//!
//! Each test names what it proves by what the mock saw (which key was asked, how often) and by
//! what claude printed; waits have deadlines, never sleeps.

#[path = "support/real_claude.rs"]
mod real_claude;

use std::time::{Duration, Instant};

use real_claude::{ClaudeMock, Sandbox, secrets};

/// A sandbox and a mock, with the keys `keys` added through `claude --rotation-add --api-key`.
fn setup(keys: &[&str]) -> Option<(Sandbox, ClaudeMock)> {
    let sb = Sandbox::new()?;
    let mock = ClaudeMock::start();
    for (i, key) in keys.iter().enumerate() {
        sb.add_key(&format!("key{}", i + 1), key, &mock.url());
    }
    Some((sb, mock))
}

/// Every request reached the mock as Anthropic's API wants it: `x-api-key`, no Authorization
/// (the run's token stays with the relay), on `/v1/messages`.
fn assert_upstream_shape(mock: &ClaudeMock) {
    for s in mock.seen() {
        assert!(
            !s.authorization,
            "an Authorization header went upstream: {s:?}"
        );
        assert!(!s.key.is_empty(), "no x-api-key upstream: {s:?}");
        assert_eq!(s.path, "/v1/messages", "{s:?}");
    }
}

#[test]
fn a_spent_key_1_is_answered_by_key_2_in_text_mode() {
    let Some((sb, mock)) = setup(&["k1_credit", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert!(!out.stdout().contains("Credit balance"), "{}", out.dump());
    assert_eq!(
        mock.count("k1_credit"),
        1,
        "key 1 asked once: {:?}",
        mock.seen()
    );
    assert!(mock.count("k2_ok") >= 1, "{:?}", mock.seen());
    assert_upstream_shape(&mock);
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
fn a_spent_key_1_is_answered_by_key_2_in_json_mode() {
    let Some((sb, mock)) = setup(&["k1_credit", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "--output-format", "json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let doc: serde_json::Value = serde_json::from_str(out.stdout().trim())
        .unwrap_or_else(|e| panic!("json stdout ({e}): {}", out.dump()));
    assert_eq!(doc["is_error"], false, "{}", out.dump());
    let result = doc["result"].as_str().unwrap_or_default();
    assert!(result.contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert_eq!(mock.count("k1_credit"), 1, "{:?}", mock.seen());
}

#[test]
fn a_throttled_key_1_moves_to_key_2_at_once() {
    // claude alone retries a 429 with `retry-after: 30` ten times (over five minutes); the relay
    // moves the same request to key 2, so key 1 is asked once and claude never sees the 429.
    let Some((sb, mock)) = setup(&["k1_throttle", "k2_ok"]) else {
        return;
    };
    let started = Instant::now();
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert_eq!(mock.count("k1_throttle"), 1, "{:?}", mock.seen());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}: {}",
        started.elapsed(),
        out.dump()
    );
}

#[test]
fn a_usage_limit_on_key_1_moves_to_key_2() {
    let Some((sb, mock)) = setup(&["k1_limit", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert_eq!(mock.count("k1_limit"), 1, "{:?}", mock.seen());
}

#[test]
fn every_key_spent_ends_the_run_with_75_at_once() {
    let Some((sb, mock)) = setup(&["k1_credit", "k2_limit"]) else {
        return;
    };
    let started = Instant::now();
    let out = sb.run(&["-p", "hello"], None);
    let took = started.elapsed();
    assert_eq!(out.code(), 75, "{}", out.dump());
    assert!(!out.stdout().contains("REPLY-FROM"), "{}", out.dump());
    // claude does not retry the relay's answer: one request per key, within seconds.
    assert_eq!(mock.count("k1_credit"), 1, "{:?}", mock.seen());
    assert_eq!(mock.count("k2_limit"), 1, "{:?}", mock.seen());
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: {}",
        out.dump()
    );
    // The earliest reset is key 2's usage-limit reset, an hour from now.
    assert!(out.stderr().contains("returns at "), "{}", out.dump());
}

#[test]
fn the_keys_are_not_in_claudes_environment() {
    let Some((mut sb, mock)) = setup(&["k1_hold", "k2_ok"]) else {
        return;
    };
    // A key of the person's own in the environment: kept out of claude's.
    sb.env("ANTHROPIC_API_KEY", secrets::secret("own_key"));
    let mut environs = Vec::new();
    sb.run_held(&["-p", "hello"], &mock, "k1_hold", |shim| {
        // While key 1's answer is held, claude is alive: read every process of the run.
        environs = real_claude::environs_under(shim);
        // claude's reachability probe is answered by the relay itself, token or not.
        let base = environs
            .iter()
            .flat_map(|env| env.split(|b| *b == 0))
            .find_map(|v| v.strip_prefix(b"ANTHROPIC_BASE_URL=http://"))
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .expect("ANTHROPIC_BASE_URL in claude's environment");
        let hello = head_hello(&base);
        assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    });
    assert!(
        !environs.is_empty(),
        "no claude process found under the shim"
    );
    // Every process under the shim: no key, no ANTHROPIC_API_KEY. Processes claude starts
    // with an environment of its own choosing may lack its variables; claude itself has the
    // run's token (64 hex digits, not a key) and the relay's address.
    let mut claude_seen = false;
    for env in &environs {
        secrets::assert_clean("claude's environment", env);
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        assert!(!vars.iter().any(|v| v.starts_with(b"ANTHROPIC_API_KEY=")));
        if let Some(token) = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"ANTHROPIC_AUTH_TOKEN="))
        {
            assert!(token.len() == 64 && token.iter().all(u8::is_ascii_hexdigit));
            assert!(
                vars.iter()
                    .any(|v| v.starts_with(b"ANTHROPIC_BASE_URL=http://127.0.0.1:"))
            );
            claude_seen = true;
        }
    }
    assert!(claude_seen, "ANTHROPIC_AUTH_TOKEN in claude's environment");
    assert_upstream_shape(&mock);
}

/// `HEAD /api/hello` to `addr` (`127.0.0.1:PORT`), without a token: the answer's head.
fn head_hello(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"HEAD /api/hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    let _ = conn.read_to_string(&mut head);
    assert!(!head.contains("/v1/messages"));
    head
}

#[test]
fn adding_a_login_without_one_says_how_to_log_in_and_help_speaks_only_of_claude() {
    let Some(sb) = Sandbox::new() else {
        return;
    };
    let out = sb.run(&["--rotation-add", "work"], None);
    assert_ne!(out.code(), 0, "{}", out.dump());
    let err = out.stderr();
    assert!(
        err.contains(".credentials.json") && err.contains("claude --rotation-add --login"),
        "{}",
        out.dump()
    );
    assert_eq!(err.trim().lines().count(), 1, "{}", out.dump());
    let help = sb.run(&["--rotation-help"], None);
    assert_eq!(help.code(), 0, "{}", help.dump());
    // The product's own name aside, nothing of the other CLIs.
    let text = help.stdout().to_lowercase().replace("qwen-rotation", "");
    assert!(text.contains("claude --rotation-add"), "{}", help.dump());
    assert!(!text.contains("not rotated for claude"), "{}", help.dump());
    for other in ["qwen", "gemini"] {
        assert!(!text.contains(other), "{other} in: {}", help.dump());
    }
}

#[test]
fn the_run_line_meters_requests_and_anthropic_usage_tokens() {
    let Some((sb, mock)) = setup(&["k1_credit", "k2_ok"]) else {
        return;
    };
    let marker = "CLAUDE-PROMPT-MARKER-7d2";
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
    // The mock's `message_start` says 7 in, 1 out; its `message_delta` 3 out in all.
    assert_eq!(two["tokens_in"].as_u64(), Some(7 * answered), "{run}");
    assert_eq!(two["tokens_out"].as_u64(), Some(3 * answered), "{run}");
    let text = std::fs::read_to_string(sb.claude_home.join("rotation.log")).unwrap_or_default();
    assert!(!text.contains(marker), "the prompt was kept");
}

#[test]
fn keys_from_the_environment_rotate_the_same_way() {
    let Some(mut sb) = Sandbox::new() else {
        return;
    };
    let mock = ClaudeMock::start();
    let keys = format!(
        "{},{}",
        secrets::secret("e1_credit"),
        secrets::secret("e2_ok")
    );
    sb.env("CLAUDE_ROTATION_KEYS", keys)
        .env("CLAUDE_ROTATION_BASE_URL", mock.url());
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-e2_ok"), "{}", out.dump());
    assert_eq!(mock.count("e1_credit"), 1, "{:?}", mock.seen());
    assert_upstream_shape(&mock);
}

#[test]
fn a_base_url_in_claudes_settings_env_keeps_the_relay_and_the_keys_out_of_its_way() {
    // claude applies `env` of its settings over the environment it is started with (observed):
    // with a base URL there, the relay cannot be in its path, and a key of the pool must not go
    // to that other endpoint: claude runs as it would alone (here: not logged in), with one
    // warning naming the file.
    let Some((sb, mock)) = setup(&["k1_ok"]) else {
        return;
    };
    let elsewhere = ClaudeMock::start();
    std::fs::write(
        sb.claude_home.join("settings.json"),
        serde_json::json!({"env": {"ANTHROPIC_BASE_URL": elsewhere.url()}}).to_string(),
    )
    .unwrap();
    let out = sb.run(&["-p", "hello"], None);
    let err = out.stderr();
    assert!(
        err.contains("settings.json sends claude's requests to http://127.0.0.1:")
            && err.contains("(env.ANTHROPIC_BASE_URL), not to the base URL of account 1"),
        "{}",
        out.dump()
    );
    assert_eq!(err.trim().lines().count(), 1, "{}", out.dump());
    assert!(
        elsewhere.seen().iter().all(|s| s.key.is_empty()),
        "a key went to the other endpoint: {:?}",
        elsewhere.seen()
    );
    assert_eq!(mock.count("k1_ok"), 0, "{:?}", mock.seen());
}
