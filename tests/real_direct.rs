//! The harness checked against the real qwen alone (no shim on PATH): the facts the shim's
//! end-to-end tests rely on (shared/QWEN_FACTS.md, QWEN_FACTS_APIKEY.md), reproduced here so a new
//! qwen release or a broken mock shows up as a failure of the fact, not as a puzzling shim failure.

#[path = "support/mock.rs"]
mod mock;
#[path = "support/real_qwen.rs"]
mod real_qwen;

use mock::Mock;
use real_qwen::{Sandbox, Version};

/// 0.12.0 with OAuth: settings select qwen-oauth, the live file points at the mock.
fn oauth_012(mock: &Mock, token: &str) -> Option<Sandbox> {
    let sb = Sandbox::new(Version::V0_12)?;
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.set_live_oauth(token, &mock.url());
    Some(sb)
}

/// 0.24.4 with an API key in the environment, settings select openai.
fn apikey_024(mock: &Mock, key: &str) -> Option<Sandbox> {
    let mut sb = Sandbox::new(Version::V0_24)?;
    sb.write_settings(Some("openai"), serde_json::json!({}));
    sb.env("OPENAI_API_KEY", key)
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    Some(sb)
}

#[test]
fn v012_oauth_ok_prints_exactly_the_reply() {
    let mock = Mock::start();
    let Some(sb) = oauth_012(&mock, "tokA_ok") else {
        return;
    };
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tokA_ok", "{}", out.dump());
    assert_eq!(out.stderr(), "", "{}", out.dump());
    assert_eq!(mock.tokens(), ["tokA_ok"]);
    let req = &mock.chat_requests()[0];
    assert_eq!(req.model.as_deref(), Some("coder-model"));
    assert!(req.stream);
    assert_eq!(req.prompt.as_deref(), Some("hello"));
    assert_eq!(sb.live_token().as_deref(), Some("tokA_ok"));
    eprintln!("v012 oauth ok: {:.1?}", out.elapsed);
}

#[test]
fn v012_oauth_quota_exits_1_with_the_oauth_quota_text() {
    let mock = Mock::start();
    let Some(sb) = oauth_012(&mock, "tokA_quota") else {
        return;
    };
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert_eq!(out.stdout(), "");
    assert!(
        out.stderr()
            .starts_with("Qwen OAuth quota exceeded: Your free daily quota has been reached."),
        "{}",
        out.dump()
    );
    // The SDK's own 3 retries inside one qwen attempt; no qwen-level retry.
    assert_eq!(mock.tokens(), ["tokA_quota"; 4]);
    assert_eq!(sb.live_token().as_deref(), Some("tokA_quota"));
    eprintln!("v012 oauth quota: {:.1?}", out.elapsed);
}

#[test]
fn v012_oauth_quota_json_exits_0_with_the_error_as_result() {
    let mock = Mock::start();
    let Some(sb) = oauth_012(&mock, "tokA_fast_quota") else {
        return;
    };
    let out = sb.run_direct(&["-p", "hello", "--output-format", "json"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout()).expect("json stdout");
    let result = doc.as_array().unwrap().last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["is_error"], false);
    assert!(
        result["result"]
            .as_str()
            .unwrap()
            .starts_with("Qwen OAuth quota exceeded")
    );
    // `x-should-retry: false` switches the SDK's retries off: one request.
    assert_eq!(mock.tokens(), ["tokA_fast_quota"], "{}", out.dump());
}

#[test]
fn v012_oauth_stdin_prompt_reaches_the_mock() {
    let mock = Mock::start();
    let Some(sb) = oauth_012(&mock, "tokA_ok") else {
        return;
    };
    let out = sb.run_direct(&[], Some(b"hi from stdin"));
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tokA_ok");
    // qwen appends "\n\n" to a prompt read from stdin.
    assert_eq!(
        mock.chat_requests()[0].prompt.as_deref().map(str::trim_end),
        Some("hi from stdin")
    );
}

#[test]
fn v024_apikey_ok_prints_reply_and_newline() {
    let mock = Mock::start();
    let Some(sb) = apikey_024(&mock, "keyA_ok") else {
        return;
    };
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-keyA_ok\n", "{}", out.dump());
    assert_eq!(out.stderr(), "", "{}", out.dump());
    let tokens = mock.tokens();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t == "keyA_ok"),
        "{tokens:?}"
    );
    assert_eq!(mock.chat_requests()[0].model.as_deref(), Some("mock-model"));
    eprintln!(
        "v024 apikey ok: {:.1?}, {} requests",
        out.elapsed,
        tokens.len()
    );
}

#[test]
fn v024_coding_plan_quota_fails_fast() {
    let mock = Mock::start();
    let Some(sb) = apikey_024(&mock, "keyA_quota_cp") else {
        return;
    };
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert_eq!(out.stdout(), "");
    assert!(
        out.stderr()
            .starts_with(&format!("Quota exhausted: {}", mock::coding_plan_message())),
        "{}",
        out.dump()
    );
    // Fail-fast: one qwen attempt (the SDK's 4 requests), not qwen's 7 attempts (28 requests).
    assert_eq!(mock.tokens(), ["keyA_quota_cp"; 4]);
    eprintln!("v024 quota_cp: {:.1?}", out.elapsed);
}

#[test]
fn v024_refuses_headless_oauth_before_any_request() {
    let mock = Mock::start();
    let Some(sb) = Sandbox::new(Version::V0_24) else {
        return;
    };
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.set_live_oauth("tokA_ok", &mock.url());
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert!(
        out.stderr()
            .contains("Qwen OAuth free tier was discontinued on 2026-04-15."),
        "{}",
        out.dump()
    );
    assert!(
        !out.stderr().contains("Ripgrep not available"),
        "{}",
        out.dump()
    );
    assert_eq!(mock.tokens(), Vec::<String>::new());
}

// ---- How a wrapper makes qwen use a given auth type for one run (issue 5, mixed pools) ----
//
// `QWEN_CODE_SYSTEM_SETTINGS_PATH` names the System settings layer (both versions), and the System
// layer is merged LAST (systemDefaults < user < workspace < system), so a one-key override file
// `{"security":{"auth":{"selectedType":…}}}` outranks the user's choice for that run only, argv
// unchanged, user's settings.json untouched. These tests prove it per version.

/// Writes a System settings override selecting `auth_type`; returns its path.
fn system_override(sb: &Sandbox, auth_type: &str) -> std::path::PathBuf {
    let dir = sb.root.join("override");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("settings.json");
    let doc = serde_json::json!({"security": {"auth": {"selectedType": auth_type}}});
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn user_settings_bytes(sb: &Sandbox) -> Vec<u8> {
    std::fs::read(sb.qwen_home.join("settings.json")).unwrap()
}

#[test]
fn system_settings_path_also_moves_the_system_defaults_file() {
    // getSystemDefaultsPath() = QWEN_CODE_SYSTEM_DEFAULTS_PATH, else system-defaults.json NEXT TO
    // the system settings file: an override must also pin QWEN_CODE_SYSTEM_DEFAULTS_PATH to the
    // file qwen would otherwise read, or the operator's defaults silently disappear.
    for version in [Version::V0_12, Version::V0_24] {
        let mock = Mock::start();
        let Some(mut sb) = apikey_user(version, &mock) else {
            return;
        };
        let over = system_override(&sb, "openai");
        let defaults = over.with_file_name("system-defaults.json");
        std::fs::write(&defaults, r#"{"model": {"name": "defaults-model"}}"#).unwrap();
        sb.env("QWEN_CODE_SYSTEM_SETTINGS_PATH", &over);
        let out = sb.run_direct(&["-p", "hello"], None);
        assert_eq!(out.code(), 0, "{version:?}: {}", out.dump());
        let models: Vec<_> = mock.chat_requests().into_iter().map(|r| r.model).collect();
        assert!(
            !models.is_empty()
                && models
                    .iter()
                    .all(|m| m.as_deref() == Some("defaults-model")),
            "{version:?}: {models:?}"
        );
    }
}

/// An API-key user with key and base URL in the environment, no model anywhere but defaults.
fn apikey_user(version: Version, mock: &Mock) -> Option<Sandbox> {
    let mut sb = Sandbox::new(version)?;
    sb.write_settings(Some("openai"), serde_json::json!({}));
    sb.env("OPENAI_API_KEY", "keyA_ok")
        .env("OPENAI_BASE_URL", mock.base_url());
    Some(sb)
}

#[test]
fn v012_env_alone_cannot_leave_oauth_selected_in_user_settings() {
    let mock = Mock::start();
    let Some(mut sb) = oauth_012(&mock, "tokO_ok") else {
        return;
    };
    sb.env("OPENAI_API_KEY", "keyK_ok")
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tokO_ok", "{}", out.dump());
    assert_eq!(mock.tokens(), ["tokO_ok"]);
}

#[test]
fn v012_system_settings_override_switches_oauth_user_to_api_key() {
    let mock = Mock::start();
    let Some(mut sb) = oauth_012(&mock, "tokO_ok") else {
        return;
    };
    let before = user_settings_bytes(&sb);
    let over = system_override(&sb, "openai");
    sb.env("QWEN_CODE_SYSTEM_SETTINGS_PATH", &over)
        .env("OPENAI_API_KEY", "keyK_ok")
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-keyK_ok", "{}", out.dump());
    assert_eq!(mock.tokens(), ["keyK_ok"]);
    assert_eq!(
        user_settings_bytes(&sb),
        before,
        "user settings.json was rewritten"
    );
    assert_eq!(sb.live_token().as_deref(), Some("tokO_ok"));
}

#[test]
fn v012_system_settings_override_switches_api_key_user_to_oauth() {
    let mock = Mock::start();
    let Some(mut sb) = Sandbox::new(Version::V0_12) else {
        return;
    };
    // An API-key user: key in settings (and in the environment, which outranks it).
    sb.write_settings(
        Some("openai"),
        serde_json::json!({"security": {"auth": {"apiKey": "keyS_ok", "baseUrl": mock.base_url()}},
                           "model": {"name": "mock-model"}}),
    );
    sb.set_live_oauth("tokO_ok", &mock.url());
    let before = user_settings_bytes(&sb);
    let over = system_override(&sb, "qwen-oauth");
    sb.env("QWEN_CODE_SYSTEM_SETTINGS_PATH", &over)
        .env("OPENAI_API_KEY", "keyE_ok");
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tokO_ok", "{}", out.dump());
    assert_eq!(mock.tokens(), ["tokO_ok"]);
    assert_eq!(
        user_settings_bytes(&sb),
        before,
        "user settings.json was rewritten"
    );
}

#[test]
fn v024_system_settings_override_switches_oauth_user_to_api_key() {
    let mock = Mock::start();
    let Some(mut sb) = Sandbox::new(Version::V0_24) else {
        return;
    };
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.set_live_oauth("tokO_ok", &mock.url());
    let before = user_settings_bytes(&sb);
    let over = system_override(&sb, "openai");
    sb.env("QWEN_CODE_SYSTEM_SETTINGS_PATH", &over)
        .env("OPENAI_API_KEY", "keyK_ok")
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-keyK_ok\n", "{}", out.dump());
    assert!(
        mock.tokens().iter().all(|t| t == "keyK_ok"),
        "{:?}",
        mock.tokens()
    );
    assert_eq!(
        user_settings_bytes(&sb),
        before,
        "user settings.json was rewritten"
    );
}

#[test]
fn v024_env_alone_cannot_leave_oauth_selected_in_user_settings() {
    // Differs from QWEN_FACTS_APIKEY.md ("openai used, rc 0, selectedType removed"): headless
    // 0.24.4 keeps qwen-oauth from the user's settings, refuses before any request, and leaves
    // the file alone. Either way the environment alone cannot switch a qwen-oauth user.
    let mock = Mock::start();
    let Some(mut sb) = Sandbox::new(Version::V0_24) else {
        return;
    };
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.set_live_oauth("tokO_ok", &mock.url());
    let before = user_settings_bytes(&sb);
    sb.env("OPENAI_API_KEY", "keyK_ok")
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "mock-model");
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert!(
        out.stderr()
            .contains("Qwen OAuth free tier was discontinued"),
        "{}",
        out.dump()
    );
    assert_eq!(mock.tokens(), Vec::<String>::new());
    assert_eq!(user_settings_bytes(&sb), before);
}

// ---- Which key and model an API-key attempt really uses (QWEN_FACTS_APIKEY.md §1) ----

/// A Coding Plan style user: a `modelProviders.openai[]` entry with an `envKey`, selected by
/// `model.name`, its base URL fixed in settings, and a (stale) key in settings `env`.
fn coding_plan_user(sb: &Sandbox, mock: &Mock) {
    sb.write_settings(
        Some("openai"),
        serde_json::json!({
            "modelProviders": {"openai": [{
                "id": "cp-model", "name": "cp", "baseUrl": mock.base_url(),
                "envKey": "BAILIAN_CODING_PLAN_API_KEY"
            }]},
            "model": {"name": "cp-model"},
            "env": {"BAILIAN_CODING_PLAN_API_KEY": "keyS_ok"}
        }),
    );
}

#[test]
fn provider_env_key_outranks_openai_api_key_in_both_versions() {
    for version in [Version::V0_12, Version::V0_24] {
        let mock = Mock::start();
        let Some(mut sb) = Sandbox::new(version) else {
            return;
        };
        coding_plan_user(&sb, &mock);
        sb.env("BAILIAN_CODING_PLAN_API_KEY", "keyP_ok")
            .env("OPENAI_API_KEY", "keyA_ok");
        let out = sb.run_direct(&["-p", "hello"], None);
        assert_eq!(out.code(), 0, "{version:?}: {}", out.dump());
        let reqs = mock.chat_requests();
        assert!(!reqs.is_empty(), "{version:?}: {}", out.dump());
        for r in &reqs {
            assert_eq!(r.token, "keyP_ok", "{version:?}");
            assert_eq!(r.model.as_deref(), Some("cp-model"), "{version:?}");
        }
    }
}

#[test]
fn openai_api_key_alone_loses_to_the_stale_settings_env_key() {
    // So a shim that injects OPENAI_API_KEY for such a user silently keeps using the old key.
    for version in [Version::V0_12, Version::V0_24] {
        let mock = Mock::start();
        let Some(mut sb) = Sandbox::new(version) else {
            return;
        };
        coding_plan_user(&sb, &mock);
        sb.env("OPENAI_API_KEY", "keyA_ok");
        let out = sb.run_direct(&["-p", "hello"], None);
        assert_eq!(out.code(), 0, "{version:?}: {}", out.dump());
        assert!(
            mock.tokens().iter().all(|t| t == "keyS_ok") && !mock.tokens().is_empty(),
            "{version:?}: {:?}",
            mock.tokens()
        );
    }
}

#[test]
fn settings_model_name_vs_openai_model_env() {
    // 0.12.0: OPENAI_MODEL beats model.name. 0.24.4: model.name beats OPENAI_MODEL (its
    // resolveCliGenerationConfig takes settings.model.name first and drops the model variables),
    // so an API-key slot's model reaches 0.24.4 only through a settings layer.
    for (version, expected) in [
        (Version::V0_12, "env-model"),
        (Version::V0_24, "settings-model"),
    ] {
        let mock = Mock::start();
        let Some(mut sb) = Sandbox::new(version) else {
            return;
        };
        sb.write_settings(
            Some("openai"),
            serde_json::json!({"model": {"name": "settings-model"}}),
        );
        sb.env("OPENAI_API_KEY", "keyA_ok")
            .env("OPENAI_BASE_URL", mock.base_url())
            .env("OPENAI_MODEL", "env-model");
        let out = sb.run_direct(&["-p", "hello"], None);
        assert_eq!(out.code(), 0, "{version:?}: {}", out.dump());
        let models: Vec<_> = mock.chat_requests().into_iter().map(|r| r.model).collect();
        assert!(
            !models.is_empty() && models.iter().all(|m| m.as_deref() == Some(expected)),
            "{version:?}: {models:?}"
        );
    }
}

#[test]
fn v024_system_override_can_carry_the_slot_model() {
    let mock = Mock::start();
    let Some(mut sb) = Sandbox::new(Version::V0_24) else {
        return;
    };
    sb.write_settings(
        Some("qwen-oauth"),
        serde_json::json!({"model": {"name": "coder-model"}}),
    );
    let dir = sb.root.join("override");
    std::fs::create_dir_all(&dir).unwrap();
    let over = dir.join("settings.json");
    let doc = serde_json::json!({"security": {"auth": {"selectedType": "openai"}},
                                 "model": {"name": "slot-model"}});
    std::fs::write(&over, doc.to_string()).unwrap();
    let before = user_settings_bytes(&sb);
    sb.env("QWEN_CODE_SYSTEM_SETTINGS_PATH", &over)
        .env("OPENAI_API_KEY", "keyK_ok")
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("OPENAI_MODEL", "slot-model");
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    let reqs = mock.chat_requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.token, "keyK_ok");
        assert_eq!(r.model.as_deref(), Some("slot-model"));
    }
    assert_eq!(user_settings_bytes(&sb), before);
}

// ---- Token refresh against an emulated OAuth host (QWEN_FACTS.md §5) ----

/// 0.12.0 OAuth whose refreshes go through the mock (as a proxy) to a local TLS "chat.qwen.ai".
fn oauth_012_with_host(
    mock: &Mock,
    token: &str,
    answers: serde_json::Value,
) -> Option<(Sandbox, real_qwen::OAuthHost)> {
    let mut sb = oauth_012(mock, token)?;
    let host = real_qwen::OAuthHost::start(&sb.root.join("oauth-host"), &answers)?;
    mock.route("chat.qwen.ai:443", host.addr);
    sb.env("HTTPS_PROXY", mock.url())
        .env("NODE_EXTRA_CA_CERTS", &host.ca_pem);
    Some((sb, host))
}

#[test]
fn v012_refresh_400_deletes_the_live_file() {
    let mock = Mock::start();
    let Some((sb, host)) = oauth_012_with_host(&mock, "tokA_unauthorized", serde_json::json!({}))
    else {
        return;
    };
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert!(
        out.stderr().contains("Refresh token expired or invalid"),
        "{}",
        out.dump()
    );
    assert_eq!(host.refreshes(), ["refresh-tokA_unauthorized"]);
    assert_eq!(mock.tokens(), ["tokA_unauthorized"]);
    assert!(
        !sb.live_creds().exists(),
        "0.12.0 deletes oauth_creds.json on a refresh 400"
    );
}

#[test]
fn v012_refresh_200_rewrites_the_live_file_and_retries() {
    let mock = Mock::start();
    let answers = serde_json::json!({"refresh-tokA_unauthorized": {"status": 200, "body": {
        "access_token": "tokA2_ok", "refresh_token": "refresh-tokA2", "token_type": "Bearer",
        "expires_in": 21600, "resource_url": mock.url()}}});
    let Some((sb, host)) = oauth_012_with_host(&mock, "tokA_unauthorized", answers) else {
        return;
    };
    let out = sb.run_direct(&["-p", "hello"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert_eq!(out.stdout(), "REPLY-FROM-tokA2_ok");
    assert_eq!(host.refreshes(), ["refresh-tokA_unauthorized"]);
    assert_eq!(mock.tokens(), ["tokA_unauthorized", "tokA2_ok"]);
    let live = real_qwen::read_json(&sb.live_creds()).expect("live file");
    assert_eq!(live["access_token"], "tokA2_ok");
    assert_eq!(live["refresh_token"], "refresh-tokA2");
}
