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
#[path = "support/pty.rs"]
mod tty;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use real_gemini::{GeminiMock, Sandbox};

const TYPING_PAUSE: Duration = Duration::from_millis(600);
const LIMIT: Duration = Duration::from_secs(60);

/// What the terminal showed, escape sequences and control characters removed.
#[derive(Default)]
struct Screen {
    raw: Vec<u8>,
    text: Vec<u8>,
    closed: bool,
}

fn strip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0x1b => {
                i += 1;
                match bytes.get(i) {
                    Some(b'[') => {
                        i += 1;
                        while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                            i += 1;
                        }
                    }
                    Some(b']' | b'P' | b'_' | b'^') => {
                        while i < bytes.len() && bytes[i] != 0x07 && bytes[i] != 0x1b {
                            i += 1;
                        }
                        if bytes.get(i) == Some(&0x1b) {
                            i += 1;
                        }
                    }
                    _ => {}
                }
            }
            b'\n' => out.push(b'\n'),
            b if b < 0x20 || b == 0x7f => {}
            b => out.push(b),
        }
        i += 1;
    }
    out
}

struct Terminal {
    master: std::fs::File,
    shim: Option<Child>,
    screen: Arc<(Mutex<Screen>, Condvar)>,
}

impl Terminal {
    fn start(sb: &Sandbox) -> Terminal {
        let mut cmd = Command::new(sb.shim_dir.join("gemini"));
        cmd.current_dir(&sb.work)
            .env_clear()
            .env("PATH", sb.path_var())
            .env("HOME", &sb.home)
            .env("GEMINI_CLI_HOME", &sb.home)
            .env("GEMINI_CLI_TRUST_WORKSPACE", "true")
            .env("TERM", "xterm-256color");
        let (master, shim) = tty::start(cmd, 40, 120);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*sink;
                let mut s = lock.lock().unwrap();
                if n == 0 {
                    s.closed = true;
                    cv.notify_all();
                    return;
                }
                s.raw.extend_from_slice(&buf[..n]);
                // Escape sequences split across reads leave a few stray letters: harmless for
                // the markers searched here.
                let text = strip(&buf[..n]);
                s.text.extend_from_slice(&text);
                cv.notify_all();
            }
        });
        Terminal {
            master,
            shim: Some(shim),
            screen,
        }
    }

    fn mark(&self) -> usize {
        self.screen.0.lock().unwrap().text.len()
    }

    fn tail(&self) -> String {
        let s = self.screen.0.lock().unwrap();
        let from = s.text.len().saturating_sub(3000);
        String::from_utf8_lossy(&s.text[from..]).into_owned()
    }

    /// Waits until `needle` shows at or after text offset `from`; returns the offset past it.
    fn await_text(&self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + LIMIT;
        let (lock, cv) = &*self.screen;
        let mut s = lock.lock().unwrap();
        loop {
            if let Some(i) = s.text[from.min(s.text.len())..]
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                return from + i + needle.len();
            }
            let now = Instant::now();
            if now >= deadline || s.closed {
                let from = s.text.len().saturating_sub(3000);
                panic!(
                    "{needle:?} never appeared; the screen ended with:\n{}",
                    String::from_utf8_lossy(&s.text[from..])
                );
            }
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    fn submit(&mut self, line: &str) {
        let from = self.mark();
        self.master.write_all(line.as_bytes()).unwrap();
        self.await_text(line, from);
        std::thread::sleep(TYPING_PAUSE);
        self.master.write_all(b"\r").unwrap();
    }

    fn pid(&self) -> u32 {
        self.shim.as_ref().unwrap().id()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(mut shim) = self.shim.take() {
            real_gemini::real_qwen::child::kill_tree(shim.id());
            let _ = shim.wait();
        }
        if !std::thread::panicking() {
            real_gemini::secrets::assert_clean("the terminal", &self.screen.0.lock().unwrap().raw);
        }
    }
}

/// Every process under `root` (pid and start time, so a reused pid is told apart).
fn descendants(root: u32) -> BTreeSet<(u32, String)> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pids[i])) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    pids.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
        }
        i += 1;
    }
    pids.into_iter()
        .skip(1)
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let start = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(19)?
                .to_string();
            Some((p, start))
        })
        .collect()
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

    let mut term = Terminal::start(&sb);
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
