//! The shim as `claude` in front of the REAL Claude Code 2.1.332 WITHOUT the relay
//! (`relay: false` in rotation.yaml): claude gets the slot's key itself as `ANTHROPIC_API_KEY`,
//! talks to the mock of Anthropic's Messages API (tests/support/real_claude.rs) directly, and the
//! shim watches what it prints: the error line on stdout in text mode (exit 1), the result
//! object in json mode (`is_error`, whatever `subtype` says), the event lines in stream-json.
//!
//! Each test names what it proves by what the mock saw (which key was asked, how often), by what
//! claude printed through the shim and by rotation.log; waits have deadlines, never sleeps.

#[path = "support/real_claude.rs"]
mod real_claude;

use std::time::{Duration, Instant};

use real_claude::{ClaudeMock, Sandbox};

/// A sandbox and a mock, the keys added through `claude --rotation-add --api-key`, and the relay
/// switched off.
fn scanned(keys: &[&str]) -> Option<(Sandbox, ClaudeMock)> {
    let sb = Sandbox::new()?;
    let mock = ClaudeMock::start();
    for (i, key) in keys.iter().enumerate() {
        sb.add_key(&format!("key{}", i + 1), key, &mock.url());
    }
    std::fs::write(sb.claude_home.join("rotation.yaml"), "relay: false\n").unwrap();
    Some((sb, mock))
}

/// claude talked to the mock itself: the key as `x-api-key`, no relay's token.
fn assert_direct(mock: &ClaudeMock) {
    for s in mock.seen() {
        assert!(!s.authorization, "a bearer token went upstream: {s:?}");
        assert_eq!(s.path, "/v1/messages", "{s:?}");
    }
}

/// The one `account_switch` line of the run: from account 1 to account 2.
fn assert_switched_1_to_2(sb: &Sandbox) {
    let switches: Vec<_> = sb
        .rotation_log()
        .into_iter()
        .filter(|e| e["event"] == "account_switch")
        .collect();
    assert_eq!(switches.len(), 1, "{switches:?}");
    assert_eq!(
        (switches[0]["from"].as_u64(), switches[0]["to"].as_u64()),
        (Some(1), Some(2)),
        "{switches:?}"
    );
}

#[test]
fn text_mode_credit_error_on_stdout_reruns_the_same_command_on_key_2() {
    let Some((sb, mock)) = scanned(&["k1_credit", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    // Key 2's answer is the output; key 1's error line never reached the caller.
    assert_eq!(out.stdout().trim(), "REPLY-FROM-k2_ok", "{}", out.dump());
    assert!(!out.stdout().contains("Credit balance"), "{}", out.dump());
    assert!(
        out.stderr()
            .contains("account 1 (key1) quota exhausted; switched to account 2"),
        "{}",
        out.dump()
    );
    assert_eq!(mock.count("k1_credit"), 1, "{:?}", mock.seen());
    assert_eq!(mock.count("k2_ok"), 1, "{:?}", mock.seen());
    assert_direct(&mock);
    assert_switched_1_to_2(&sb);
}

#[test]
fn json_mode_error_result_reruns_the_same_command_on_key_2() {
    let Some((sb, mock)) = scanned(&["k1_credit", "k2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "--output-format", "json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    // One document, key 2's: key 1's error result (`"subtype":"success"`, `"is_error":true`)
    // was held back and replaced.
    let doc: serde_json::Value = serde_json::from_str(out.stdout().trim())
        .unwrap_or_else(|e| panic!("one json document on stdout ({e}): {}", out.dump()));
    assert_eq!(doc["is_error"], false, "{}", out.dump());
    assert_eq!(doc["result"], "REPLY-FROM-k2_ok", "{}", out.dump());
    assert_eq!(mock.count("k1_credit"), 1, "{:?}", mock.seen());
    assert_eq!(mock.count("k2_ok"), 1, "{:?}", mock.seen());
    assert_direct(&mock);
    assert_switched_1_to_2(&sb);
}

#[test]
fn stream_json_error_is_replaced_by_key_2s_stream() {
    let Some((sb, mock)) = scanned(&["k1_credit", "k2_ok"]) else {
        return;
    };
    let out = sb.run(
        &["-p", "hello", "--output-format", "stream-json", "--verbose"],
        None,
    );
    assert_eq!(out.code(), 0, "{}", out.dump());
    let lines: Vec<serde_json::Value> = out
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // One init line and one result, key 2's: nothing of key 1's attempt reached the caller.
    let of_type = |t: &str| lines.iter().filter(|v| v["type"] == t).count();
    assert_eq!(of_type("result"), 1, "{}", out.dump());
    let inits = lines
        .iter()
        .filter(|v| v["type"] == "system" && v["subtype"] == "init")
        .count();
    assert_eq!(inits, 1, "{}", out.dump());
    let result = lines.iter().find(|v| v["type"] == "result").unwrap();
    assert_eq!(result["is_error"], false, "{}", out.dump());
    assert_eq!(result["result"], "REPLY-FROM-k2_ok", "{}", out.dump());
    assert_eq!(mock.count("k1_credit"), 1, "{:?}", mock.seen());
    assert_switched_1_to_2(&sb);
}

#[test]
fn stream_json_api_retry_line_stops_claude_and_reruns_on_key_2() {
    // claude alone retries a 429 with `retry-after: 30` ten times (over five minutes). Its first
    // `api_retry` line in stream-json is enough for the shim to stop it and run the same command
    // on key 2: key 1 is asked once, claude's own retries never go out.
    let Some((sb, mock)) = scanned(&["k1_throttle", "k2_ok"]) else {
        return;
    };
    let started = Instant::now();
    let out = sb.run(
        &["-p", "hello", "--output-format", "stream-json", "--verbose"],
        None,
    );
    let took = started.elapsed();
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k2_ok"), "{}", out.dump());
    assert!(!out.stdout().contains("api_retry"), "{}", out.dump());
    assert_eq!(mock.count("k1_throttle"), 1, "{:?}", mock.seen());
    assert!(
        took < Duration::from_secs(25),
        "took {took:?}: {}",
        out.dump()
    );
    assert!(
        out.stderr().contains("account 1 (key1)") && out.stderr().contains("switched to account 2"),
        "{}",
        out.dump()
    );
    assert_switched_1_to_2(&sb);
}

#[test]
fn every_key_out_of_credit_ends_the_run_with_75_in_text_and_json_mode() {
    for args in [
        &["-p", "hello"][..],
        &["-p", "hello", "--output-format", "json"],
    ] {
        let Some((sb, mock)) = scanned(&["k1_credit", "k2_credit"]) else {
            return;
        };
        let out = sb.run(args, None);
        assert_eq!(out.code(), 75, "{args:?}: {}", out.dump());
        assert!(!out.stdout().contains("REPLY-FROM"), "{}", out.dump());
        // Each key asked once: key 1's error moved the run to key 2, key 2's ended it.
        assert_eq!(mock.count("k1_credit"), 1, "{args:?}: {:?}", mock.seen());
        assert_eq!(mock.count("k2_credit"), 1, "{args:?}: {:?}", mock.seen());
        assert_switched_1_to_2(&sb);
    }
}
