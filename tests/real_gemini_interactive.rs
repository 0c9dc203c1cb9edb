//! The REAL gemini 0.61.0 in interactive mode behind the shim, on a pseudo-terminal the test
//! opens, against the mock Gemini API (tests/support/real_gemini.rs): a key whose daily quota
//! runs out mid-conversation is replaced by the next one inside the relay, with no restart of
//! gemini and no keystroke.
//!
//! Every wait is for a marker on the screen or in the mock's log, with a deadline; the only
//! fixed pause is the one a TUI needs between typed text and Enter (it reads text followed by
//! Enter within a few hundred ms as a paste).

#[path = "support/real_gemini.rs"]
mod real_gemini;
#[path = "support/screen.rs"]
mod screen;

use std::process::Command;

use real_gemini::{GeminiMock, Sandbox};
use screen::{Ends, Terminal, descendants};

fn start(sb: &Sandbox) -> Terminal {
    let mut cmd = Command::new(sb.shim_dir.join("gemini"));
    cmd.current_dir(&sb.work)
        .env_clear()
        .env("PATH", sb.path_var())
        .env("HOME", &sb.home)
        .env("GEMINI_CLI_HOME", &sb.home)
        .env("GEMINI_CLI_TRUST_WORKSPACE", "true")
        .env("TERM", "xterm-256color");
    Terminal::start(
        cmd,
        Ends {
            kill_tree: real_gemini::real_qwen::child::kill_tree,
            assert_clean: real_gemini::secrets::assert_clean,
        },
    )
}

#[test]
fn a_daily_quota_mid_conversation_moves_to_key_2_with_no_restart() {
    let Some(sb) = Sandbox::new() else {
        return;
    };
    let mock = GeminiMock::start();
    if !nix::unistd::geteuid().is_root() {
        sb.write_settings(
            serde_json::json!({"security": {"auth": {"selectedType": "gemini-api-key"}}}),
        );
    }
    sb.add_key("key1", "k1_flip", &mock.url());
    sb.add_key("key2", "k2_ok", &mock.url());

    let mut term = start(&sb);
    let ready = term.await_text("Type your message", 0);
    term.submit("hello");
    let first = term.await_text("REPLY-FROM-k1_flip", ready);
    let before = descendants(term.pid());
    assert!(!before.is_empty(), "no gemini process under the shim");

    // Key 1's daily quota runs out between two turns of the same session.
    mock.spend("k1_flip");
    let asked_before = mock.count("k1_flip");
    term.submit("again");
    term.await_text("REPLY-FROM-k2_ok", first);

    // One request of the second turn reached key 1 and got the 429; the relay moved it to
    // key 2 at once. gemini showed no error, and it is the same gemini: no restart.
    assert_eq!(mock.count("k1_flip"), asked_before + 1, "{:?}", mock.seen());
    let screen = term.tail();
    assert!(!screen.contains('✕'), "gemini showed an error:\n{screen}");
    let after = descendants(term.pid());
    assert!(
        before.iter().all(|p| after.contains(p)),
        "gemini was restarted: {before:?} → {after:?}"
    );
    let switches: Vec<_> = sb
        .rotation_log()
        .into_iter()
        .filter(|e| e["event"] == "account_switch")
        .map(|e| (e["from"].as_u64(), e["to"].as_u64()))
        .collect();
    assert_eq!(switches, vec![(Some(1), Some(2))]);
}
