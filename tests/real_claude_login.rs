//! The shim as `claude` in front of the REAL Claude Code 2.1.332 with subscription logins,
//! offline, against a mock of Anthropic's Messages API (tests/support/real_claude.rs).
//!
//! Claude keeps using (and refreshing) its own `.credentials.json`; with the relay as its base
//! URL, its login's requests pass through the relay, which sees a usage limit in the answer's
//! headers, swaps the live file to the next login and sends the same request again with that
//! login's token; past the last login, an API key of the same pool answers (the fallback chain).
//! Each test proves what it names by what the mock saw and what claude printed.

#[path = "support/real_claude.rs"]
mod real_claude;

use std::time::{Duration, Instant};

use qwen_rotation::vault::state::{State, Status};
use real_claude::{ClaudeMock, Sandbox, secrets};

fn setup(logins: &[&str]) -> Option<(Sandbox, ClaudeMock)> {
    Sandbox::with_logins(logins)
}

/// Every request a login made reached the mock as a login's request: its own bearer token and
/// the OAuth beta, no `x-api-key`, nothing of the relay's (`x-rotation-token`).
fn assert_login_shape(mock: &ClaudeMock, login: &str) {
    let seen: Vec<_> = mock.seen().into_iter().filter(|s| s.key == login).collect();
    assert!(!seen.is_empty(), "{login} never asked: {:?}", mock.seen());
    for s in seen {
        assert!(s.authorization && !s.api_key, "{s:?}");
        assert!(s.betas.contains("oauth-2025-04-20"), "{s:?}");
        assert!(
            !s.header_names.iter().any(|h| h == "x-rotation-token"),
            "{s:?}"
        );
        assert_eq!(s.path, "/v1/messages", "{s:?}");
    }
}

#[test]
fn a_login_on_its_5_hour_limit_is_answered_by_the_next_login_in_text_mode() {
    let Some((sb, mock)) = setup(&["l1_limit", "l2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-l2_ok"), "{}", out.dump());
    assert!(!out.stdout().contains("limit"), "{}", out.dump());
    assert_eq!(mock.count("l1_limit"), 1, "{:?}", mock.seen());
    assert_login_shape(&mock, "l1_limit");
    assert_login_shape(&mock, "l2_ok");
    assert_eq!(sb.switches(), vec![(1, 2)]);
    // The live login is now login 2's: claude's next request, in this run or the next, uses it.
    assert_eq!(sb.live_access(), "l2_ok");
    // Login 1 rests until the reset the answer announced (an hour), not the default five hours.
    let status = sb.run(&["--rotation-status", "--json"], None);
    let doc: serde_json::Value = serde_json::from_str(status.stdout().trim()).unwrap();
    let accounts = doc["accounts"].as_array().unwrap();
    let one = accounts.iter().find(|a| a["slot"] == 1).unwrap();
    assert_eq!(one["status"], "cooling_down", "{one}");
    let until = chrono::DateTime::parse_from_rfc3339(one["cooldown_until"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::TimeDelta::minutes(55) && left <= chrono::TimeDelta::minutes(61),
        "{left}"
    );
}

#[test]
fn a_login_on_its_limit_is_answered_by_the_next_login_in_json_mode() {
    let Some((sb, mock)) = setup(&["l1_limit", "l2_ok"]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "--output-format", "json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let doc: serde_json::Value = serde_json::from_str(out.stdout().trim())
        .unwrap_or_else(|e| panic!("json stdout ({e}): {}", out.dump()));
    assert_eq!(doc["is_error"], false, "{}", out.dump());
    assert!(
        doc["result"]
            .as_str()
            .unwrap_or_default()
            .contains("REPLY-FROM-l2_ok"),
        "{}",
        out.dump()
    );
    assert_eq!(mock.count("l1_limit"), 1, "{:?}", mock.seen());
}

#[test]
fn every_login_on_its_limit_falls_back_to_the_api_key() {
    let Some((sb, mock)) = setup(&["l1_limit", "l2_limit"]) else {
        return;
    };
    sb.add_key("key3", "k3_ok", &mock.url());
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-k3_ok"), "{}", out.dump());
    assert_eq!(mock.count("l1_limit"), 1, "{:?}", mock.seen());
    assert_eq!(mock.count("l2_limit"), 1, "{:?}", mock.seen());
    // The key's request is a key's: `x-api-key`, no bearer, no OAuth beta.
    for s in mock.seen().iter().filter(|s| s.key == "k3_ok") {
        assert!(s.api_key && !s.authorization, "{s:?}");
        assert!(!s.betas.contains("oauth"), "{s:?}");
    }
    assert_eq!(sb.switches(), vec![(1, 2), (2, 3)]);
    // The status shows the chain and when the first login returns.
    let status = sb.run(&["--rotation-status"], None);
    let text = status.stdout();
    assert!(text.contains("Chain: logins first"), "{text}");
    assert!(text.contains("first login back at "), "{text}");
}

#[test]
fn the_pool_goes_back_to_a_login_once_its_reset_has_passed() {
    let Some((sb, mock)) = setup(&["l1_ok"]) else {
        return;
    };
    sb.add_key("key2", "k2_ok", &mock.url());
    // The pool as an earlier run left it: login 1 cooling down until a minute ago, key 2 live.
    let state = sb.claude_home.join("state.yaml");
    let mut st = State::parse(&std::fs::read_to_string(&state).unwrap()).unwrap();
    st.current_index = 2;
    let one = st.accounts.get_mut(&1).unwrap();
    one.status = Status::CoolingDown;
    one.cooldown_until = Some(chrono::Utc::now() - chrono::TimeDelta::minutes(1));
    std::fs::write(&state, st.to_yaml()).unwrap();
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-l1_ok"), "{}", out.dump());
    assert_eq!(mock.count("k2_ok"), 0, "{:?}", mock.seen());
    assert_eq!(sb.live_access(), "l1_ok");
}

#[test]
fn every_login_and_key_spent_ends_the_run_with_75_at_once() {
    let Some((sb, mock)) = setup(&["l1_limit", "l2_limit"]) else {
        return;
    };
    sb.add_key("key3", "k3_credit", &mock.url());
    let started = Instant::now();
    let out = sb.run(&["-p", "hello"], None);
    let took = started.elapsed();
    assert_eq!(out.code(), 75, "{}", out.dump());
    assert!(!out.stdout().contains("REPLY-FROM"), "{}", out.dump());
    for name in ["l1_limit", "l2_limit", "k3_credit"] {
        assert_eq!(mock.count(name), 1, "{name}: {:?}", mock.seen());
    }
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: {}",
        out.dump()
    );
    assert!(out.stderr().contains("returns at "), "{}", out.dump());
}

#[test]
fn a_login_claude_refreshed_during_the_run_goes_back_to_its_slot() {
    let Some((sb, mock)) = setup(&["l1_hold"]) else {
        return;
    };
    sb.run_held(&["-p", "hello"], &mock, "l1_hold", |_| {
        // What claude does when it refreshes: a new access and refresh token, same account.
        sb.write_login("l1_fresh");
    });
    let slot = std::fs::read_to_string(sb.claude_home.join("accounts/oauth_creds_1.json")).unwrap();
    assert!(
        slot.contains(&secrets::secret("l1_fresh")),
        "slot 1 was not synced back"
    );
    // The next run's request goes out with the refreshed token.
    let out = sb.run(&["-p", "again"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(
        out.stdout().contains("REPLY-FROM-l1_fresh"),
        "{}",
        out.dump()
    );
}

#[test]
fn a_login_run_leaves_claude_its_login_and_carries_the_token_beside_it() {
    let Some((mut sb, mock)) = setup(&["l1_hold"]) else {
        return;
    };
    // The person's own variables: a custom header (kept), a token and a key (which would beat
    // the login: kept out of claude's environment).
    sb.env("ANTHROPIC_CUSTOM_HEADERS", "x-own: yes");
    sb.env("ANTHROPIC_AUTH_TOKEN", secrets::secret("own_token"));
    sb.env("ANTHROPIC_API_KEY", secrets::secret("own_key"));
    let mut environs = Vec::new();
    let out = sb.run_held(&["-p", "hello"], &mock, "l1_hold", |shim| {
        environs = real_claude::environs_under(shim);
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains("REPLY-FROM-l1_hold"));
    let mut claude_seen = false;
    for env in &environs {
        secrets::assert_clean("claude's environment", env);
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        for banned in [
            &b"ANTHROPIC_API_KEY="[..],
            b"ANTHROPIC_AUTH_TOKEN=",
            b"CLAUDE_CODE_OAUTH_TOKEN=",
        ] {
            assert!(
                !vars.iter().any(|v| v.starts_with(banned)),
                "{}",
                String::from_utf8_lossy(banned)
            );
        }
        if let Some(headers) = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"ANTHROPIC_CUSTOM_HEADERS="))
        {
            let headers = String::from_utf8_lossy(headers);
            let mut lines = headers.lines();
            assert_eq!(lines.next(), Some("x-own: yes"), "{headers}");
            let token = lines
                .next()
                .and_then(|l| l.strip_prefix("x-rotation-token: "))
                .unwrap_or_default();
            assert!(
                token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
                "{headers}"
            );
            claude_seen = true;
        }
    }
    assert!(claude_seen, "no claude process with the relay's header");
    // Upstream: the person's header, the login's bearer, nothing of the relay's.
    let seen = mock.seen();
    let asked = seen.iter().find(|s| s.key == "l1_hold").unwrap();
    assert!(asked.header_names.iter().any(|h| h == "x-own"), "{asked:?}");
    assert_login_shape(&mock, "l1_hold");
}

#[test]
fn without_the_relay_a_printed_usage_limit_swaps_the_login_and_runs_again() {
    let Some((sb, mock)) = setup(&["l1_limit", "l2_ok"]) else {
        return;
    };
    std::fs::write(sb.claude_home.join("rotation.yaml"), "relay: false\n").unwrap();
    for (mode, args) in [
        ("text", &["-p", "hello"][..]),
        ("json", &["-p", "hello", "--output-format", "json"][..]),
    ] {
        sb.run(&["--rotation-reset"], None);
        sb.run(&["--rotation-switch", "1"], None);
        let asked = mock.count("l1_limit");
        let out = sb.run(args, None);
        assert_eq!(out.code(), 0, "{mode}: {}", out.dump());
        assert!(
            out.stdout().contains("REPLY-FROM-l2_ok"),
            "{mode}: {}",
            out.dump()
        );
        // claude printed its limit line itself (nothing in its path to stop the request), and
        // the shim held it back: the caller sees only login 2's answer.
        assert!(!out.stdout().contains("hit your"), "{mode}: {}", out.dump());
        assert_eq!(
            mock.count("l1_limit"),
            asked + 1,
            "{mode}: {:?}",
            mock.seen()
        );
        assert_eq!(sb.live_access(), "l2_ok", "{mode}");
    }
    // Straight to the mock: no relay in between.
    assert!(
        mock.seen()
            .iter()
            .all(|s| !s.header_names.iter().any(|h| h == "x-rotation-token"))
    );
}

#[test]
fn a_claude_started_inside_a_login_run_uses_that_runs_relay_not_a_second_one() {
    // What a tool of claude inherits from a login run: the relay's address as the base URL
    // (here the mock stands in for it) and the run's token among the custom headers.
    let Some((mut sb, mock)) = setup(&["l1_ok"]) else {
        return;
    };
    sb.env(
        "ANTHROPIC_CUSTOM_HEADERS",
        "x-rotation-token: outer-run-token",
    );
    let out = sb.run(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-l1_ok"), "{}", out.dump());
    // The request went to the inherited base URL with the inherited header: no relay of its
    // own stood in between (one would have replaced the header with its own token).
    let asked = mock.seen();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0]
            .header_names
            .iter()
            .any(|h| h == "x-rotation-token"),
        "{asked:?}"
    );
}

#[test]
fn doctor_names_an_api_key_helper_that_would_keep_the_logins_unused() {
    let Some((sb, _mock)) = setup(&["l1_ok"]) else {
        return;
    };
    let doctor = |what: &str| {
        let out = sb.run(&["--rotation-doctor"], None);
        let said = out.stdout().contains("sets apiKeyHelper");
        (out.code(), said, format!("{what}: {}", out.dump()))
    };
    let (_, said, dump) = doctor("no helper");
    assert!(!said, "{dump}");
    std::fs::write(
        sb.claude_home.join("settings.json"),
        r#"{"apiKeyHelper": "/usr/local/bin/print-key"}"#,
    )
    .unwrap();
    let (code, said, dump) = doctor("a helper in the user's settings");
    assert!(said, "{dump}");
    assert!(dump.contains("settings.json"), "{dump}");
    assert_eq!(code, 1, "{dump}");
}
