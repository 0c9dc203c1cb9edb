//! The REAL qwen in interactive mode behind the shim, on a pseudo-terminal the test opens (as a
//! terminal emulator would), against the mock provider (tests/support/mock.rs). The test types
//! into the terminal, reads the screen, and checks what the person sees, what the provider saw,
//! which qwen processes were running, and what the shim left on disk.
//!
//! Every wait is for a marker on the screen (or in the mock's log) with a deadline; the only fixed
//! pause is the one the real TUI needs between typed text and Enter (see `submit`).
//!
//! 0.12.0 carries the OAuth hot swap (the live credentials file is swapped under the running
//! session and the shim presses Ctrl+Y once qwen re-reads it); 0.24.4 the API-key relay (the
//! shim's loopback relay re-sends the request on the next key; qwen never sees an error).
//! Without the installed releases the tests print SKIP (and fail under CI).
//!
//! Each test prints one `timing (…)` line (run with `--nocapture`). The OAuth test's numbers
//! check auto_retry's 5.2 s pause: qwen 0.12.0 re-reads `oauth_creds.json` only when its last
//! check is ≥ 5 s old, and that check runs just before a request goes out. Measured by hand
//! (`auto_retry: false`, a one-request quota error, Ctrl+Y typed at a chosen time, the prompt
//! sent after ≥ 5 s idle): Ctrl+Y 4.54 s after the failed request still sent the old token,
//! 4.96 s the new one.
//! The error block always follows the failed request, so 5.2 s after the block is ≥ 5.2 s after
//! the check: right, with ~0.25 s to spare, and no shorter pause is safe in general.

#[path = "support/mock.rs"]
mod mock;
#[path = "support/real_qwen.rs"]
mod real_qwen;
#[path = "support/pty.rs"]
mod tty;

use std::fs;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use mock::Mock;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use real_qwen::{Sandbox, Version};

const ROWS: u16 = 40;
const COLS: u16 = 120;
/// Ink treats text followed by Enter within a few hundred ms as one paste (QWEN_FACTS.md §4 saw
/// merging below 0.3 s): the pause a person's hands make anyway.
const TYPING_PAUSE: Duration = Duration::from_millis(600);
/// Start-up of the real client (node, settings, auth) on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(40);
/// One turn: request(s), an error block, a hot swap (5.2 s) and the retry.
const TURN_LIMIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------- the terminal

/// What the terminal received: the raw bytes, the visible text (escape sequences and control
/// characters removed, so a marker is found however Ink styled it), and when each chunk arrived.
#[derive(Default)]
struct Screen {
    raw: Vec<u8>,
    text: Vec<u8>,
    /// (arrival, length of `text` after the chunk): the arrival time of any text offset.
    chunks: Vec<(Instant, usize)>,
    strip: Strip,
    closed: bool,
}

impl Screen {
    /// When the byte at text offset `end - 1` arrived.
    fn arrival(&self, end: usize) -> Instant {
        self.chunks
            .iter()
            .find(|(_, len)| *len >= end)
            .map(|(t, _)| *t)
            .expect("offset on screen")
    }

    fn tail(&self) -> String {
        let from = self.text.len().saturating_sub(3000);
        String::from_utf8_lossy(&self.text[from..]).into_owned()
    }
}

/// ECMA-48 escape sequences (CSI, OSC/DCS strings, two- and three-byte escapes) and C0 controls
/// other than newline, removed incrementally (a sequence may span chunks).
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Strip {
    #[default]
    Ground,
    Escape,
    Intermediate,
    Csi,
    String,
    StringEscape,
}

impl Strip {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            *self = match (*self, b) {
                (Strip::Ground, 0x1b) => Strip::Escape,
                (Strip::Ground, b'\n') => {
                    out.push(b'\n');
                    Strip::Ground
                }
                (Strip::Ground, b) if b < 0x20 || b == 0x7f => Strip::Ground,
                (Strip::Ground, b) => {
                    out.push(b);
                    Strip::Ground
                }
                (Strip::Escape, b'[') => Strip::Csi,
                (Strip::Escape, b']' | b'P' | b'X' | b'^' | b'_') => Strip::String,
                (Strip::Escape, 0x20..=0x2f) => Strip::Intermediate,
                (Strip::Escape, _) => Strip::Ground,
                (Strip::Intermediate, 0x20..=0x2f) => Strip::Intermediate,
                (Strip::Intermediate, _) => Strip::Ground,
                (Strip::Csi, 0x40..=0x7e) => Strip::Ground,
                (Strip::Csi, _) => Strip::Csi,
                (Strip::String, 0x07) => Strip::Ground,
                (Strip::String, 0x1b) => Strip::StringEscape,
                (Strip::String, _) => Strip::String,
                (Strip::StringEscape, b'\\') => Strip::Ground,
                (Strip::StringEscape, _) => Strip::String,
            };
        }
    }
}

/// The test's side of a 120x40 terminal with the shim (`qwen`, no arguments) running on it as
/// session leader with that terminal as its controlling terminal.
struct Terminal {
    master: fs::File,
    shim: Option<Child>,
    screen: Arc<(Mutex<Screen>, Condvar)>,
}

impl Terminal {
    /// Starts `qwen` from the sandbox's PATH (the shim first) in a clean environment: PATH, HOME,
    /// QWEN_HOME for 0.24.4, and TERM=xterm-256color, nothing else.
    fn start(sb: &Sandbox) -> Terminal {
        let mut cmd = Command::new(sb.shim_dir.join("qwen"));
        cmd.current_dir(&sb.work)
            .env_clear()
            .env("PATH", sb.path_var(false))
            .env("HOME", &sb.home)
            .env("TERM", "xterm-256color");
        if sb.version == Version::V0_24 {
            cmd.env("QWEN_HOME", &sb.qwen_home);
        }
        let (master, shim) = tty::start(cmd, ROWS, COLS);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                let now = Instant::now();
                let (lock, cv) = &*sink;
                let mut s = lock.lock().unwrap();
                if n == 0 {
                    s.closed = true;
                    cv.notify_all();
                    return;
                }
                let s = &mut *s;
                s.raw.extend_from_slice(&buf[..n]);
                s.strip.feed(&buf[..n], &mut s.text);
                let len = s.text.len();
                s.chunks.push((now, len));
                cv.notify_all();
            }
        });
        Terminal {
            master,
            shim: Some(shim),
            screen,
        }
    }

    fn pid(&self) -> i32 {
        self.shim.as_ref().unwrap().id() as i32
    }

    fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Length of the visible text so far: an offset to search from.
    fn mark(&self) -> usize {
        self.screen.0.lock().unwrap().text.len()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen.0.lock().unwrap().text).into_owned()
    }

    fn raw(&self) -> Vec<u8> {
        self.screen.0.lock().unwrap().raw.clone()
    }

    /// Waits until `needle` is visible at or after text offset `from`; returns the offset just
    /// past it and when that text arrived (not when this wait noticed it).
    fn await_text(&self, needle: &str, from: usize, limit: Duration) -> (usize, Instant) {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.screen;
        let mut s = lock.lock().unwrap();
        let mut searched = from;
        loop {
            let start = searched.saturating_sub(needle.len()).max(from);
            if let Some(i) = find(&s.text[start..], needle.as_bytes()) {
                let end = start + i + needle.len();
                return (end, s.arrival(end));
            }
            searched = s.text.len();
            let now = Instant::now();
            assert!(
                now < deadline && !s.closed,
                "{needle:?} never appeared on the screen ({}); the screen ended with:\n{}",
                if s.closed {
                    "the terminal closed"
                } else {
                    "deadline"
                },
                s.tail()
            );
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Types `line`, waits until its echo is on screen, pauses like a person, presses Enter.
    fn submit(&mut self, line: &str) -> usize {
        let from = self.mark();
        self.type_bytes(line.as_bytes());
        let (end, _) = self.await_text(line, from, TURN_LIMIT);
        // Ink reads text followed by Enter within a short window as a paste and does not submit
        // it; the real client needs this pause (QWEN_FACTS.md §4). The one fixed sleep here.
        std::thread::sleep(TYPING_PAUSE);
        self.type_bytes(b"\r");
        end
    }

    /// Leaves qwen with `/quit` and waits for the shim's exit and for every holder of the
    /// terminal to let go (EIO on the master).
    fn quit(mut self) -> ExitStatus {
        self.submit("/quit");
        let mut shim = self.shim.take().unwrap();
        let pid = Pid::from_raw(shim.id() as i32);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(shim.wait());
        });
        let status = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let tail = self.screen.0.lock().unwrap().tail();
                kill_tree(pid.as_raw());
                panic!("the shim did not exit after /quit; the screen ended with:\n{tail}");
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (lock, cv) = &*self.screen;
        let mut s = lock.lock().unwrap();
        while !s.closed {
            let now = Instant::now();
            assert!(
                now < deadline,
                "the terminal was never closed (a qwen process still holds it)"
            );
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
        status
    }
}

impl Drop for Terminal {
    /// A failed test must not leave node processes behind: the shim's whole tree goes.
    /// Also the secret scan of everything the terminal showed.
    fn drop(&mut self) {
        if let Some(mut shim) = self.shim.take() {
            kill_tree(shim.id() as i32);
            let _ = shim.wait();
        }
        if !std::thread::panicking() {
            real_qwen::secrets::assert_clean("the terminal", &self.raw());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

// ---------------------------------------------------------------- processes

/// A process as /proc shows it; `start` (clock ticks since boot) tells a reused pid apart.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    start: u64,
    cmdline: String,
}

fn proc_info(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        start,
        cmdline,
    })
}

/// Every live descendant of `root`.
fn descendants(root: i32) -> Vec<Proc> {
    let all: Vec<Proc> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(proc_info)
        .collect();
    let mut found: Vec<Proc> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            parents.push(p.pid);
            found.push(p.clone());
        }
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// The real client's session processes under the shim: the node parent (the shim's child) and
/// the child it relaunches itself as. Deeper node processes come and go (qwen's own helpers)
/// and say nothing about a restart.
fn qwen_processes(shim: i32) -> Vec<Proc> {
    let all: Vec<Proc> = descendants(shim)
        .into_iter()
        .filter(|p| p.cmdline.contains("qwen-code"))
        .collect();
    let parents: Vec<i32> = all
        .iter()
        .filter(|p| p.ppid == shim)
        .map(|p| p.pid)
        .collect();
    all.into_iter()
        .filter(|p| p.ppid == shim || parents.contains(&p.ppid))
        .collect()
}

/// Waits until the real client's process tree has settled (the same set twice, 300 ms apart).
fn await_qwen_processes(shim: i32) -> Vec<Proc> {
    let deadline = Instant::now() + START_LIMIT;
    let mut last = Vec::new();
    loop {
        let now = qwen_processes(shim);
        if !now.is_empty() && now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "no settled qwen process: {now:?}"
        );
        last = now;
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn alive(p: &Proc) -> bool {
    proc_info(p.pid).is_some_and(|now| now.start == p.start)
}

fn kill_tree(root: i32) {
    for p in descendants(root) {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
}

/// `VAR=value` entries of a process's environment.
fn environ(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- sandboxes and checks

/// A 0.12.0 OAuth pool: settings select qwen-oauth, slots 1..=n hold `tokens`, live = slot 1.
fn oauth_pool(tokens: &[&str]) -> Option<(Mock, Sandbox)> {
    let mock = Mock::start();
    let sb = Sandbox::new(Version::V0_12)?;
    sb.write_settings(Some("qwen-oauth"), serde_json::json!({}));
    sb.oauth_pool(tokens, &mock.url());
    Some((mock, sb))
}

/// A 0.24.4 API-key pool added the way a user does (`qwen --rotation-add --api-key …`, the key
/// on stdin); settings select openai.
fn api_pool(keys: &[&str]) -> Option<(Mock, Sandbox)> {
    let mock = Mock::start();
    let sb = Sandbox::new(Version::V0_24)?;
    sb.write_settings(Some("openai"), serde_json::json!({}));
    for (i, k) in keys.iter().enumerate() {
        sb.add_api_key_via_shim(&format!("key{}", i + 1), k, &mock.base_url(), "m");
    }
    Some((mock, sb))
}

/// `(from, to)` of every account_switch line in rotation.log.
fn switches(sb: &Sandbox) -> Vec<(Option<u64>, Option<u64>)> {
    sb.rotation_log()
        .into_iter()
        .filter(|e| e["event"] == "account_switch")
        .map(|e| (e["from"].as_u64(), e["to"].as_u64()))
        .collect()
}

/// `first+` then `second+`, nothing else.
fn assert_sequence(tokens: &[String], first: &str, second: &str) {
    let split = tokens.iter().position(|t| t != first).unwrap_or(0);
    assert!(
        split >= 1 && split < tokens.len() && tokens[split..].iter().all(|t| t == second),
        "expected {first} (one or more) then only {second}: {tokens:?}"
    );
}

/// The qwen prompt of both releases, once the session is ready for input.
const PROMPT: &str = "Type your message";
/// Our notice line, drawn on the last row by the relay (src/pty.rs).
const NOTICE: &str = "qwen-rotation:";

// ---------------------------------------------------------------- tests

#[test]
fn interactive_oauth_quota_hot_swaps_under_the_running_session() {
    let begin = Instant::now();
    let Some((mock, sb)) = oauth_pool(&["tok1_quota", "tok2_ok"]) else {
        return;
    };
    let mut term = Terminal::start(&sb);
    let (ready, _) = term.await_text(PROMPT, 0, START_LIMIT);
    let before = await_qwen_processes(term.pid());

    term.submit("hello");
    let typed = Instant::now();
    let (block, block_at) = term.await_text("✕ Qwen OAuth quota exceeded", ready, TURN_LIMIT);
    let (notice, notice_at) = term.await_text("switched to account 2", block, TURN_LIMIT);
    let (reply, reply_at) = term.await_text("REPLY-FROM-tok2_ok", notice, TURN_LIMIT);

    // The provider saw account 1 (the SDK retries a 429 a few times), then only account 2, and
    // account 2's first request came after the error block: the retry, not a new prompt.
    let requests = mock.chat_requests();
    let tokens: Vec<String> = requests.iter().map(|r| r.token.clone()).collect();
    assert_sequence(&tokens, "tok1_quota", "tok2_ok");
    let last_tok1 = requests.iter().rfind(|r| r.token == "tok1_quota").unwrap();
    let first_tok2 = requests.iter().find(|r| r.token == "tok2_ok").unwrap();
    assert!(first_tok2.at > block_at, "tok2 before the error block");
    assert!(
        requests
            .iter()
            .all(|r| r.prompt.as_deref() == Some("hello")),
        "the retry carried the same prompt: {:?}",
        requests.iter().map(|r| &r.prompt).collect::<Vec<_>>()
    );

    // The conversation goes on, on account 2.
    let asked = term.submit("again");
    term.await_text("REPLY-FROM-tok2_ok", asked.max(reply), TURN_LIMIT);
    let later = &mock.chat_requests()[requests.len()..];
    assert!(
        later.iter().any(|r| r.prompt.as_deref() == Some("again"))
            && later.iter().all(|r| r.token == "tok2_ok"),
        "second turn: {:?}",
        later
            .iter()
            .map(|r| (&r.token, &r.prompt))
            .collect::<Vec<_>>()
    );

    // The same qwen processes answered: no restart.
    let after = qwen_processes(term.pid());
    assert_eq!(after, before, "qwen was restarted");
    assert!(before.iter().all(alive));

    // One rotation, recorded; the live file is account 2's.
    assert_eq!(
        switches(&sb),
        vec![(Some(1), Some(2))],
        "{:?}",
        sb.rotation_log()
    );
    assert_eq!(sb.live_token().as_deref(), Some("tok2_ok"));
    assert_eq!(sb.slot_token(1).as_deref(), Some("tok1_quota"));
    assert_eq!(sb.slot_token(2).as_deref(), Some("tok2_ok"));
    let state = sb.state_yaml();
    assert!(state.contains("current_index: 2"), "{state}");
    // One notice: the detector fired once for the block.
    let raw = term.raw();
    assert_eq!(
        count(&raw, NOTICE.as_bytes()),
        1,
        "notices: {:?}",
        term.text()
    );

    let status = term.quit();
    assert!(status.success(), "shim exit after /quit: {status:?}");
    assert!(
        !before.iter().any(alive),
        "a qwen process outlived the shim"
    );

    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_millis();
    eprintln!(
        "timing (oauth hot swap): Enter→✕ block {} ms, ✕ block→notice {} ms, ✕ block→retry \
         request (tok2) {} ms, last tok1 request→tok2 request {} ms, ✕ block→reply on screen {} \
         ms; {} tok1 request(s); qwen pids {:?}; wall {:.1?}",
        ms(typed, block_at),
        ms(block_at, notice_at),
        ms(block_at, first_tok2.at),
        ms(last_tok1.at, first_tok2.at),
        ms(block_at, reply_at),
        tokens.iter().filter(|t| *t == "tok1_quota").count(),
        before.iter().map(|p| p.pid).collect::<Vec<_>>(),
        begin.elapsed()
    );
}

#[test]
fn interactive_second_quota_in_the_same_session_rotates_again() {
    let begin = Instant::now();
    // `fast`: a quota answer carries `x-should-retry: false`, so it costs one request instead of
    // the SDK's four (the plain path is the test above).
    let Some((mock, sb)) = oauth_pool(&["tok1_fast_quota", "tok2_fast", "tok3_ok"]) else {
        return;
    };
    let mut term = Terminal::start(&sb);
    let (ready, _) = term.await_text(PROMPT, 0, START_LIMIT);
    let before = await_qwen_processes(term.pid());

    term.submit("hello");
    let (block, _) = term.await_text("✕ Qwen OAuth quota exceeded", ready, TURN_LIMIT);
    let (notice, _) = term.await_text("switched to account 2", block, TURN_LIMIT);
    let (reply, _) = term.await_text("REPLY-FROM-tok2_fast", notice, TURN_LIMIT);

    // Account 2 runs out during the conversation: the next prompt fails on it.
    mock.set_behaviour("tok2_fast", mock::Behaviour::Quota);
    let asked = term.submit("again");
    let (block, _) = term.await_text("✕ Qwen OAuth quota exceeded", asked.max(reply), TURN_LIMIT);
    let (notice, _) = term.await_text("switched to account 3", block, TURN_LIMIT);
    term.await_text("REPLY-FROM-tok3_ok", notice, TURN_LIMIT);

    let requests = mock.chat_requests();
    let mut order: Vec<&str> = requests.iter().map(|r| r.token.as_str()).collect();
    order.dedup();
    assert_eq!(
        order,
        ["tok1_fast_quota", "tok2_fast", "tok3_ok"],
        "{:?}",
        mock.tokens()
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.token == "tok3_ok")
            .all(|r| r.prompt.as_deref() == Some("again")),
        "account 3 answered the retried prompt"
    );
    assert_eq!(
        switches(&sb),
        vec![(Some(1), Some(2)), (Some(2), Some(3))],
        "{:?}",
        sb.rotation_log()
    );
    assert_eq!(sb.live_token().as_deref(), Some("tok3_ok"));
    assert_eq!(count(&term.raw(), NOTICE.as_bytes()), 2, "{}", term.text());
    assert_eq!(qwen_processes(term.pid()), before, "qwen was restarted");

    let status = term.quit();
    assert!(status.success(), "shim exit after /quit: {status:?}");
    eprintln!(
        "timing (two rotations in one session): wall {:.1?}",
        begin.elapsed()
    );
}

#[test]
fn interactive_api_key_quota_moves_to_key_2_with_no_restart_and_no_keystroke() {
    let begin = Instant::now();
    let Some((mock, sb)) = api_pool(&["key1_quota", "key2_ok"]) else {
        return;
    };
    let mut term = Terminal::start(&sb);
    let (ready, _) = term.await_text(PROMPT, 0, START_LIMIT);
    let before = await_qwen_processes(term.pid());

    // qwen talks to the relay with a per-run token; the real keys are not in its environment.
    let env: Vec<String> = before.iter().flat_map(|p| environ(p.pid)).collect();
    let run_token = env
        .iter()
        .find_map(|v| v.strip_prefix("OPENAI_API_KEY="))
        .expect("OPENAI_API_KEY in qwen's environment")
        .to_string();
    let base = env
        .iter()
        .find_map(|v| v.strip_prefix("OPENAI_BASE_URL="))
        .unwrap_or_default()
        .to_string();
    assert!(
        base.starts_with("http://127.0.0.1:") && !base.contains(&mock.port().to_string()),
        "qwen's base URL is the relay's: {base}"
    );
    for key in ["key1_quota", "key2_ok"] {
        assert!(
            !env.iter().any(|v| v.contains(key)),
            "{key} in qwen's environment"
        );
    }

    term.submit("hello");
    let typed = Instant::now();
    // No keystroke from the test after Enter: the relay retries on key 2 by itself.
    let (_, reply_at) = term.await_text("REPLY-FROM-key2_ok", ready, TURN_LIMIT);

    let requests = mock.chat_requests();
    let tokens: Vec<String> = requests.iter().map(|r| r.token.clone()).collect();
    assert_sequence(&tokens, "key1_quota", "key2_ok");
    assert!(
        !mock.requests().iter().any(|r| r.token == run_token),
        "the mock saw the per-run token"
    );
    let text = term.text();
    assert!(
        !text.contains('✕'),
        "qwen showed an error although the relay rotated:\n{text}"
    );
    // (Key 2 is on screen only inside the mock's answer text.)
    assert!(!text.contains("key1_quota"), "key 1 on screen:\n{text}");
    // The relay re-sent qwen's request as it was: the same prompt reached key 2.
    let last_key1 = requests.iter().rfind(|r| r.token == "key1_quota").unwrap();
    let first_key2 = requests.iter().find(|r| r.token == "key2_ok").unwrap();
    assert_eq!(first_key2.prompt, last_key1.prompt);
    assert!(
        first_key2
            .prompt
            .as_deref()
            .is_some_and(|p| p.ends_with("hello")),
        "{:?}",
        first_key2.prompt
    );
    // The next turn goes straight to key 2: the relay stays on it. 0.24.4 repaints the whole
    // screen (old answers included) and may queue the prompt behind its own background requests
    // (its memory manager), so the provider's log is the marker here.
    term.submit("again");
    let again = |r: &mock::Request| r.prompt.as_deref().is_some_and(|p| p.ends_with("again"));
    assert!(
        mock.wait_for(1, TURN_LIMIT, again),
        "the second prompt never reached the provider; the screen ended with:\n{}",
        term.screen.0.lock().unwrap().tail()
    );
    let later = &mock.chat_requests()[requests.len()..];
    assert!(
        later.iter().all(|r| r.token == "key2_ok"),
        "after the rotation: {:?}",
        later.iter().map(|r| &r.token).collect::<Vec<_>>()
    );
    let after = qwen_processes(term.pid());
    assert_eq!(after, before, "qwen was restarted");
    assert!(before.iter().all(alive));
    assert_eq!(
        switches(&sb),
        vec![(Some(1), Some(2))],
        "{:?}",
        sb.rotation_log()
    );

    let status = term.quit();
    assert!(status.success(), "shim exit after /quit: {status:?}");
    assert!(
        !before.iter().any(alive),
        "a qwen process outlived the shim"
    );

    eprintln!(
        "timing (api-key relay): Enter→reply on screen {} ms, last key1 request→key2 request \
         {} µs, {} key1 request(s), notice shown: {}; wall {:.1?}",
        reply_at.saturating_duration_since(typed).as_millis(),
        first_key2
            .at
            .saturating_duration_since(last_key1.at)
            .as_micros(),
        tokens.iter().filter(|t| *t == "key1_quota").count(),
        text.contains(NOTICE),
        begin.elapsed()
    );
}

#[test]
fn interactive_model_answer_quoting_quota_errors_does_not_rotate() {
    let begin = Instant::now();
    let Some((mock, sb)) = oauth_pool(&["tok1_quote", "tok2_ok"]) else {
        return;
    };
    let mut term = Terminal::start(&sb);
    let (ready, _) = term.await_text(PROMPT, 0, START_LIMIT);
    let before = await_qwen_processes(term.pid());

    term.submit("hello");
    let (first, _) = term.await_text("REPLY-FROM-tok1_quote", ready, TURN_LIMIT);
    // A second turn: a rotation the first answer had wrongly set off would show by now (its
    // notice at once, and this request would carry account 2's token).
    let asked = term.submit("again");
    term.await_text("REPLY-FROM-tok1_quote", asked.max(first), TURN_LIMIT);

    let tokens = mock.tokens();
    assert!(
        tokens.len() >= 2 && tokens.iter().all(|t| t == "tok1_quote"),
        "{tokens:?}"
    );
    let text = term.text();
    assert!(text.contains("Free allocated quota exceeded"), "{text}");
    assert!(!text.contains(NOTICE), "a notice appeared:\n{text}");
    assert!(switches(&sb).is_empty(), "{:?}", sb.rotation_log());
    assert_eq!(sb.live_token().as_deref(), Some("tok1_quote"));
    assert_eq!(qwen_processes(term.pid()), before, "qwen was restarted");

    let status = term.quit();
    assert!(status.success(), "shim exit after /quit: {status:?}");
    eprintln!("timing (quoted quota text): wall {:.1?}", begin.elapsed());
}
