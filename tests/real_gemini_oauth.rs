//! The shim as `gemini` in front of the REAL Gemini CLI 0.61.0 with OAuth accounts, offline,
//! against the mock's Code Assist endpoint (`CODE_ASSIST_ENDPOINT`, tests/support/real_gemini.rs).
//!
//! How the login reaches gemini here: gemini validates a cached `oauth_creds.json` against
//! Google's tokeninfo endpoint at start-up, which no variable redirects (read in its bundle:
//! `initOauthClient` → `getTokenInfo`), so offline it would exit 41. The real CLI is therefore
//! started through a two-line wrapper (`GEMINI_ROTATION_REAL`) that reads the access token from
//! the live `oauth_creds.json` the shim installed and hands it to gemini as
//! `GOOGLE_GENAI_USE_GCA=true GOOGLE_CLOUD_ACCESS_TOKEN=…` (gemini's own bare-token route, no
//! tokeninfo call). Everything else is real: the slots, the file swap, gemini's Code Assist
//! requests, its capacity retry and stderr, the stop and the re-run. What this does not prove
//! is gemini's own read of the file — except for an account whose token says `manual`: the
//! wrapper then starts gemini on the file alone, and gemini's start-up validation (which
//! cannot reach Google offline) fails the way an expired or revoked login does.

#[path = "support/real_gemini.rs"]
mod real_gemini;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use real_gemini::{GeminiMock, Sandbox, secrets, write_private};

fn login(access: &str, refresh: &str) -> String {
    serde_json::json!({
        "access_token": secrets::secret(access),
        "refresh_token": secrets::secret(refresh),
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "token_type": "Bearer",
        "expiry_date": 4102444800000u64,
    })
    .to_string()
}

/// The sandbox with the accounts `(access token, email)` added from the live login one after
/// the other (`gemini --rotation-add LABEL`), slot 1 live again, the real gemini behind the
/// wrapper, and Code Assist pointed at the mock.
fn setup(accounts: &[(&str, &str)]) -> Option<(Sandbox, GeminiMock)> {
    let mut sb = Sandbox::new()?;
    let mock = GeminiMock::start();
    sb.write_settings(
        serde_json::json!({"security": {"auth": {"selectedType": "oauth-personal"}}}),
    );
    for (i, (access, email)) in accounts.iter().enumerate() {
        let live = sb.gemini_home.join("oauth_creds.json");
        write_private(&live, login(access, &format!("ref-{access}")).as_bytes());
        write_private(
            &sb.gemini_home.join("google_accounts.json"),
            format!(r#"{{"active":"{email}","old":[]}}"#).as_bytes(),
        );
        let out = sb.run(&["--rotation-add", &format!("acct{}", i + 1)], None);
        assert_eq!(out.code(), 0, "--rotation-add: {}", out.dump());
    }
    let out = sb.run(&["--rotation-switch", "1"], None);
    assert_eq!(out.code(), 0, "--rotation-switch: {}", out.dump());
    let wrapper = sb.home.join("gemini-from-file");
    let real = sb.real_dir.join("gemini");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             token=$(node -e 'process.stdout.write(JSON.parse(require(\"fs\").readFileSync(process.argv[1])).access_token)' \"$GEMINI_CLI_HOME/.gemini/oauth_creds.json\") || exit 99\n\
             case \"$token\" in *manual*) exec {real} \"$@\";; esac\n\
             GOOGLE_GENAI_USE_GCA=true GOOGLE_CLOUD_ACCESS_TOKEN=\"$token\" exec {real} \"$@\"\n",
            real = real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    sb.env("GEMINI_ROTATION_REAL", &wrapper)
        .env("CODE_ASSIST_ENDPOINT", mock.url());
    Some((sb, mock))
}

#[test]
fn a_capacity_quota_on_oauth_account_1_is_stopped_and_rerun_on_account_2() {
    let Some((sb, mock)) = setup(&[
        ("a1_capacity", "one@example.com"),
        ("a2_ok", "two@example.com"),
    ]) else {
        return;
    };
    let slots_before: Vec<String> = [1, 2]
        .iter()
        .map(|n| {
            fs::read_to_string(
                sb.gemini_home
                    .join(format!("accounts/oauth_creds_{n}.json")),
            )
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    let out = sb.run(&["-p", "hello", "-m", "gemini-2.5-pro"], None);
    let took = started.elapsed();
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(
        out.stdout().contains("REPLY-FROM-a2_ok-ON-gemini-2.5-pro"),
        "{}",
        out.dump()
    );
    // gemini would sleep 2h3m4s before its retry: it was stopped on the first failure line.
    let streamed = |key: &str| {
        mock.seen()
            .iter()
            .filter(|s| s.key == key && s.method == "streamGenerateContent")
            .count()
    };
    assert_eq!(
        streamed("a1_capacity"),
        1,
        "account 1 asked once: {:?}",
        mock.seen()
    );
    assert!(streamed("a2_ok") >= 1);
    assert!(took < Duration::from_secs(120), "took {took:?}");
    assert!(
        out.stderr().contains("switched to account 2"),
        "{}",
        out.dump()
    );
    // The swap: account 2's login and its google_accounts.json are live; the slots are intact.
    let live = fs::read_to_string(sb.gemini_home.join("oauth_creds.json")).unwrap();
    assert_eq!(live, slots_before[1]);
    assert_eq!(
        fs::read_to_string(sb.gemini_home.join("google_accounts.json")).unwrap(),
        r#"{"active":"two@example.com","old":[]}"#
    );
    for (i, before) in slots_before.iter().enumerate() {
        let path = sb
            .gemini_home
            .join(format!("accounts/oauth_creds_{}.json", i + 1));
        assert_eq!(&fs::read_to_string(&path).unwrap(), before);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let companion = sb
            .gemini_home
            .join(format!("accounts/google_accounts_{}.json", i + 1));
        assert_eq!(fs::metadata(&companion).unwrap().mode() & 0o777, 0o600);
    }
    // Account 1 cools down until the reset gemini's message named (2h3m4s after the hit).
    let state = fs::read_to_string(sb.gemini_home.join("state.yaml")).unwrap();
    let st = qwen_rotation::vault::state::State::parse(&state).expect("state parses");
    let until = st.accounts[&1]
        .cooldown_until
        .unwrap_or_else(|| panic!("no cooldown on account 1: {state}"));
    let left = until.signed_duration_since(chrono::Utc::now());
    assert!(
        left > chrono::TimeDelta::minutes(115) && left <= chrono::TimeDelta::seconds(7384),
        "cooldown {left:?}: {state}"
    );
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
    // doctor watches the companions' modes like the slots'.
    let companion = sb.gemini_home.join("accounts/google_accounts_1.json");
    fs::set_permissions(&companion, fs::Permissions::from_mode(0o644)).unwrap();
    let doctor = sb.run(&["--rotation-doctor"], None);
    assert!(
        doctor.stdout().contains("google_accounts_1.json"),
        "{}",
        doctor.dump()
    );
}

#[test]
fn an_account_code_assist_no_longer_serves_needs_login_and_the_notice_says_why() {
    let Some((sb, mock)) = setup(&[
        ("a1_unsupported", "one@example.com"),
        ("a2_ok", "two@example.com"),
    ]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "-m", "gemini-2.5-pro"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-a2_ok"), "{}", out.dump());
    assert!(
        out.stderr()
            .contains("account 1 (acct1) was refused (needs login) (Google no longer serves"),
        "{}",
        out.dump()
    );
    assert!(mock.count("a1_unsupported") >= 1);
    let state = fs::read_to_string(sb.gemini_home.join("state.yaml")).unwrap();
    assert!(state.contains("needs_login"), "{state}");
}

#[test]
fn oauth_accounts_are_refused_with_encrypted_credential_storage() {
    let Some(mut sb) = Sandbox::new() else {
        return;
    };
    write_private(
        &sb.gemini_home.join("oauth_creds.json"),
        login("a1", "ref-a1").as_bytes(),
    );
    sb.env("GEMINI_FORCE_ENCRYPTED_FILE_STORAGE", "true");
    let out = sb.run(&["--rotation-add", "one"], None);
    assert_eq!(out.code(), 2, "{}", out.dump());
    assert!(
        out.stderr()
            .contains("encrypted storage (GEMINI_FORCE_ENCRYPTED_FILE_STORAGE=true)"),
        "{}",
        out.dump()
    );
    assert!(!sb.gemini_home.join("accounts/oauth_creds_1.json").exists());
}

#[test]
fn a_login_gemini_cannot_validate_headless_needs_login_and_the_run_moves_on() {
    let Some((sb, mock)) = setup(&[
        ("a1_manual", "one@example.com"),
        ("a2_ok", "two@example.com"),
    ]) else {
        return;
    };
    let out = sb.run(&["-p", "hello", "-m", "gemini-2.5-pro"], None);
    assert_eq!(out.code(), 0, "{}", out.dump());
    assert!(out.stdout().contains("REPLY-FROM-a2_ok"), "{}", out.dump());
    assert!(
        out.stderr().contains(
            "account 1 (acct1) was refused (needs login) (gemini could not use the stored login"
        ),
        "{}",
        out.dump()
    );
    // gemini never got as far as Code Assist on account 1.
    assert_eq!(mock.count("a1_manual"), 0, "{:?}", mock.seen());
    let state = fs::read_to_string(sb.gemini_home.join("state.yaml")).unwrap();
    let st = qwen_rotation::vault::state::State::parse(&state).expect("state parses");
    assert_eq!(
        st.accounts[&1].status,
        qwen_rotation::vault::state::Status::NeedsLogin,
        "{state}"
    );
}
