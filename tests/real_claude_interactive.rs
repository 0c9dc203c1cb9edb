//! The REAL Claude Code 2.1.332 in interactive mode behind the shim, on a pseudo-terminal the
//! test opens, against the mock Messages API (tests/support/real_claude.rs): a subscription
//! login that hits its 5-hour limit mid-conversation is replaced by the next login inside the
//! relay (the live `.credentials.json` swapped, the same request sent again with that login's
//! token), with no restart of claude, no keystroke and nothing of the limit on screen; and a
//! session on the fallback key goes back to the login once the login's reset has passed.

#[path = "support/real_claude.rs"]
mod real_claude;
#[path = "support/screen.rs"]
mod screen;

use std::process::Command;

use qwen_rotation::vault::state::{State, Status};
use real_claude::{ClaudeMock, Sandbox};
use screen::{Ends, Terminal, descendants};

/// `claude ARGS` through the shim on a terminal, with the sandbox's home and logins' requests
/// going to the mock.
fn start_with(sb: &Sandbox, mock: &ClaudeMock, args: &[&str]) -> Terminal {
    let mut cmd = Command::new(sb.shim_dir.join("claude"));
    cmd.args(args)
        .current_dir(&sb.work)
        .env_clear()
        .env("PATH", sb.path_var())
        .env("HOME", &sb.home)
        .env("ANTHROPIC_BASE_URL", mock.url())
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("TERM", "xterm-256color");
    Terminal::start(
        cmd,
        Ends {
            kill_tree: real_claude::real_qwen::child::kill_tree,
            assert_clean: real_claude::secrets::assert_clean,
        },
    )
}

/// A claude session.
fn start(sb: &Sandbox, mock: &ClaudeMock) -> Terminal {
    start_with(sb, mock, &[])
}

#[test]
fn a_login_on_its_5_hour_limit_mid_conversation_moves_to_login_2_with_no_restart() {
    let Some((sb, mock)) = Sandbox::with_logins(&["l1_ok", "l2_ok"]) else {
        return;
    };
    assert_eq!(sb.live_access(), "l1_ok");

    let mut term = start(&sb, &mock);
    // The prompt's marker: the TUI is up and reads input.
    let ready = term.await_text("❯", 0);
    term.submit("hello");
    let first = term.await_text("REPLY-FROM-l1_ok", ready);
    let before = descendants(term.pid());
    assert!(!before.is_empty(), "no claude process under the shim");

    // Login 1 reaches its 5-hour limit between two turns of the same session.
    mock.spend("l1_ok");
    let asked_before = mock.count("l1_ok");
    term.submit("again");
    term.await_text("REPLY-FROM-l2_ok", first);

    // One request of the second turn reached login 1 and got the usage limit; the relay sent
    // it again on login 2 at once. claude showed nothing of it, and it is the same claude.
    assert_eq!(mock.count("l1_ok"), asked_before + 1, "{:?}", mock.seen());
    let screen = term.tail();
    assert!(
        !screen.contains("hit your"),
        "claude showed the limit:\n{screen}"
    );
    assert!(
        !screen.contains("Usage limit"),
        "claude showed the limit:\n{screen}"
    );
    let after = descendants(term.pid());
    assert!(
        before.iter().all(|p| after.contains(p)),
        "claude was restarted: {before:?} → {after:?}"
    );
    // The live file is login 2's: claude's own next request carries it.
    assert_eq!(sb.live_access(), "l2_ok");
    let third_from = term.mark();
    term.submit("third");
    term.await_text("REPLY-FROM-l2_ok", third_from);
    assert_eq!(mock.count("l1_ok"), asked_before + 1, "{:?}", mock.seen());
    let switches = sb.switches();
    assert_eq!(switches.last(), Some(&(1, 2)), "{switches:?}");
}

#[test]
fn a_session_on_the_fallback_key_goes_back_to_the_login_when_its_reset_passes() {
    let Some((sb, mock)) = Sandbox::with_logins(&["l1_ok"]) else {
        return;
    };
    sb.add_key("key2", "k2_ok", &mock.url());
    // Login 1 on its limit for another hour: the session starts on the fallback key.
    let cool_until = |until: chrono::DateTime<chrono::Utc>| {
        let path = sb.claude_home.join("state.yaml");
        let mut st = State::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        st.current_index = 2;
        let one = st.accounts.get_mut(&1).unwrap();
        one.status = Status::CoolingDown;
        one.cooldown_until = Some(until);
        std::fs::write(&path, st.to_yaml()).unwrap();
    };
    cool_until(chrono::Utc::now() + chrono::TimeDelta::hours(1));

    let mut term = start(&sb, &mock);
    let ready = term.await_text("❯", 0);
    term.submit("hello");
    let first = term.await_text("REPLY-FROM-k2_ok", ready);
    assert_eq!(mock.count("l1_ok"), 0, "{:?}", mock.seen());

    // Time passes: the login's reset is behind us. The next turn goes out on the login.
    cool_until(chrono::Utc::now() - chrono::TimeDelta::minutes(1));
    term.submit("again");
    term.await_text("REPLY-FROM-l1_ok", first);
    let keyed = mock.count("k2_ok");
    let third = term.mark();
    term.submit("third");
    term.await_text("REPLY-FROM-l1_ok", third);
    assert_eq!(mock.count("k2_ok"), keyed, "{:?}", mock.seen());
    let switches = sb.switches();
    assert_eq!(switches.last(), Some(&(2, 1)), "{switches:?}");
    assert_eq!(sb.live_access(), "l1_ok");
}

#[test]
fn adding_a_login_runs_claude_in_a_temporary_home_and_stores_the_login_it_wrote() {
    let Some(mut sb) = Sandbox::new() else {
        return;
    };
    let mock = ClaudeMock::start();
    sb.env("ANTHROPIC_BASE_URL", mock.url());
    sb.add_login("personal", "l1_ok");
    let term = start_with(&sb, &mock, &["--rotation-add", "--login", "work"]);
    let from = term.await_text("temporary home", 0);
    // The temporary home the shim made for the login: claude's CLAUDE_CONFIG_DIR.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let login_home = loop {
        let found = std::fs::read_dir(&sb.claude_home)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".login-"))
            });
        if let Some(dir) = found.filter(|d| d.join(".claude").is_dir()) {
            break dir.join(".claude");
        }
        assert!(std::time::Instant::now() < deadline, "no temporary home");
        std::thread::yield_now();
    };
    // The person logs in there: what claude's login writes. (Offline, claude's first screen
    // cannot reach Anthropic and claude ends by itself, as it would after a login and /quit.)
    let login = serde_json::json!({"claudeAiOauth": {
        "accessToken": real_claude::secrets::secret("l2_ok"),
        "refreshToken": real_claude::secrets::secret("l2_refresh"),
        "expiresAt": 4102444800000u64,
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
        "accountUuid": "uuid-l2",
    }});
    real_claude::write_private(
        &login_home.join(".credentials.json"),
        login.to_string().as_bytes(),
    );
    // claude ends; the shim stores the login and removes the temporary home.
    term.await_text("Welcome", from);
    term.await_text("Added account 2 (work)", from);
    term.await_closed();
    let slot = std::fs::read_to_string(sb.claude_home.join("accounts/oauth_creds_2.json")).unwrap();
    assert!(slot.contains(&real_claude::secrets::secret("l2_ok")));
    // The live login is untouched: still login 1's.
    assert_eq!(sb.live_access(), "l1_ok");
    assert!(!login_home.exists(), "the temporary home was left behind");
    // The new login answers a run once it is the pool's account.
    sb.run(&["--rotation-switch", "work"], None);
    let out = sb.run(&["-p", "hello"], None);
    assert!(out.stdout().contains("REPLY-FROM-l2_ok"), "{}", out.dump());
}

#[test]
fn without_the_relay_a_limit_on_screen_swaps_the_login_for_the_next_message() {
    let Some((sb, mock)) = Sandbox::with_logins(&["l1_ok", "l2_ok"]) else {
        return;
    };
    std::fs::write(sb.claude_home.join("rotation.yaml"), "relay: false\n").unwrap();

    let mut term = start(&sb, &mock);
    let ready = term.await_text("❯", 0);
    term.submit("hello");
    let first = term.await_text("REPLY-FROM-l1_ok", ready);
    let before = descendants(term.pid());

    // Login 1 reaches its limit: claude itself shows it (nothing stands in its path).
    mock.spend("l1_ok");
    term.submit("again");
    let shown = term.await_text("hit your 5-hour limit", first);
    // The shim read it off the screen, swapped the live login and says the next message goes
    // out on login 2; claude re-reads the file by itself.
    let told = term.await_text("account 2 is live", shown);
    assert_eq!(sb.live_access(), "l2_ok");
    term.submit("third");
    term.await_text("REPLY-FROM-l2_ok", told);
    let after = descendants(term.pid());
    assert!(
        before.iter().all(|p| after.contains(p)),
        "claude was restarted: {before:?} → {after:?}"
    );
    let switches = sb.switches();
    assert_eq!(switches.last(), Some(&(1, 2)), "{switches:?}");
}
