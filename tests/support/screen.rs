//! A CLI's interactive session on a pseudo-terminal the test opens: what the screen shows (escape
//! sequences and control characters removed), typing, and the processes under the shim.
//!
//! Every wait is for a marker on the screen, with a deadline; the only fixed pause is the one a
//! TUI needs between typed text and Enter (it reads text followed by Enter within a few hundred
//! ms as a paste). The transcript is scanned for fixture secrets when the terminal closes (by
//! the scan the caller's support module gives, so the secret scan is compiled once per test).
#![allow(dead_code)]

#[path = "pty.rs"]
mod tty;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const TYPING_PAUSE: Duration = Duration::from_millis(600);
pub const LIMIT: Duration = Duration::from_secs(60);

/// What the terminal showed, escape sequences and control characters removed.
#[derive(Default)]
pub struct Screen {
    raw: Vec<u8>,
    text: Vec<u8>,
    closed: bool,
}

pub fn strip(bytes: &[u8]) -> Vec<u8> {
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

pub struct Terminal {
    master: std::fs::File,
    shim: Option<Child>,
    screen: Arc<(Mutex<Screen>, Condvar)>,
    ends: Ends,
}

/// What closing the terminal does: kill every process under the shim, then scan the
/// transcript for secrets (`child::kill_tree`, `secrets::assert_clean` of the support modules).
pub struct Ends {
    pub kill_tree: fn(u32),
    pub assert_clean: fn(&str, &[u8]),
}

impl Terminal {
    /// Starts `cmd` (the shim under the CLI's name, environment set) on a 40×120 terminal.
    pub fn start(cmd: Command, ends: Ends) -> Terminal {
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
            ends,
        }
    }

    pub fn mark(&self) -> usize {
        self.screen.0.lock().unwrap().text.len()
    }

    pub fn tail(&self) -> String {
        let s = self.screen.0.lock().unwrap();
        let from = s.text.len().saturating_sub(3000);
        String::from_utf8_lossy(&s.text[from..]).into_owned()
    }

    /// Waits until `needle` shows at or after text offset `from`; returns the offset past it.
    pub fn await_text(&self, needle: &str, from: usize) -> usize {
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

    /// Waits until the terminal closes: the shim and everything it started have ended.
    pub fn await_closed(&self) {
        let deadline = Instant::now() + LIMIT;
        let (lock, cv) = &*self.screen;
        let mut s = lock.lock().unwrap();
        while !s.closed {
            let now = Instant::now();
            assert!(now < deadline, "the terminal never closed");
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    pub fn submit(&mut self, line: &str) {
        let from = self.mark();
        self.master.write_all(line.as_bytes()).unwrap();
        self.await_text(line, from);
        std::thread::sleep(TYPING_PAUSE);
        self.master.write_all(b"\r").unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.shim.as_ref().unwrap().id()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(mut shim) = self.shim.take() {
            (self.ends.kill_tree)(shim.id());
            let _ = shim.wait();
        }
        if !std::thread::panicking() {
            (self.ends.assert_clean)("the terminal", &self.screen.0.lock().unwrap().raw);
        }
    }
}

/// Every process under `root` (pid and start time, so a reused pid is told apart).
pub fn descendants(root: u32) -> BTreeSet<(u32, String)> {
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
