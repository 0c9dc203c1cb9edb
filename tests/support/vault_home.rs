//! A throwaway qwen home for vault and admin tests: slot fixtures, readers for every file we
//! write, and the secret scan every test runs over every output.
//! Use with `#[path = "support/vault_home.rs"] mod vault_home;`.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use qwen_rotation::config::{Config, Paths};
use qwen_rotation::model::{Class, Hit};
use qwen_rotation::vault::Vault;
use qwen_rotation::vault::audit::{self, Event};
use qwen_rotation::vault::state::State;

pub const SHIM: &str = env!("CARGO_BIN_EXE_qwen");

#[path = "child.rs"]
#[allow(clippy::duplicate_mod)] // each support module may be loaded beside the others
pub mod child;
#[path = "secrets.rs"]
pub mod secrets;

pub use secrets::{SECRET_MARK, secret as token};

/// OAuth credentials in qwen's shape; both tokens are fixture secrets.
pub fn creds(name: &str) -> String {
    format!(
        r#"{{"access_token":"{}","refresh_token":"{}","token_type":"Bearer","resource_url":"http://127.0.0.1:9","expiry_date":4102444800000}}"#,
        token(&format!("acc-{name}")),
        token(&format!("ref-{name}"))
    )
}

/// The same account after qwen refreshed it: new access token, same refresh token.
pub fn refreshed(name: &str, generation: u32) -> String {
    format!(
        r#"{{"access_token":"{}","token_type":"Bearer","refresh_token":"{}","resource_url":"http://127.0.0.1:9","expiry_date":{}}}"#,
        token(&format!("acc-{name}-r{generation}")),
        token(&format!("ref-{name}")),
        4102444800000u64 + u64::from(generation)
    )
}

/// The account a credentials file belongs to, when it is one whole, valid login: it passes
/// the vault's own check and its access token is that account's (`acc-NAME` or a refresh of
/// it, `acc-NAME-rN`). `None` for anything torn, mixed or foreign.
pub fn account_of(text: &str) -> Option<String> {
    qwen_rotation::vault::check_oauth(text.as_bytes()).ok()?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let who = v["refresh_token"]
        .as_str()?
        .strip_prefix(&format!("{SECRET_MARK}-ref-"))?
        .to_string();
    let access = v["access_token"]
        .as_str()?
        .strip_prefix(&format!("{SECRET_MARK}-acc-"))?;
    let own = access == who
        || access
            .strip_prefix(&format!("{who}-r"))
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()));
    own.then_some(who)
}

pub fn api_key_json(name: &str) -> String {
    format!(
        r#"{{"api_key":"{}","base_url":"http://127.0.0.1:9/v1","model":"m-{name}"}}"#,
        token(&format!("key-{name}"))
    )
}

pub fn hit(class: Class) -> Hit {
    let phrase = match class {
        Class::Quota => "insufficient_quota",
        Class::Throttle => "Requests rate limit exceeded",
        Class::Auth => "invalid access token",
    };
    Hit {
        class,
        phrase: phrase.into(),
        reset_at: None,
    }
}

pub struct Home {
    pub dir: tempfile::TempDir,
    pub paths: Paths,
}

impl Home {
    /// `<tmp>/home/.qwen` (0700) with an empty `accounts/`.
    pub fn new() -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::at(dir.path().join("home/.qwen"));
        fs::create_dir_all(&paths.accounts).unwrap();
        for d in [&paths.home, &paths.accounts] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        }
        Home { dir, paths }
    }

    /// A home with OAuth slots 1..=n named a, b, c, …
    pub fn with_oauth(n: usize) -> Home {
        let h = Home::new();
        for i in 1..=n {
            h.put_oauth(i, &name(i));
        }
        h
    }

    pub fn user_home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn put_oauth(&self, n: usize, who: &str) {
        write600(&self.paths.oauth_slot(n), &creds(who));
    }

    pub fn put_api(&self, n: usize, who: &str) {
        write600(&self.paths.api_key_slot(n), &api_key_json(who));
    }

    pub fn put_live(&self, text: &str) {
        write600(&self.paths.live_creds, text);
    }

    pub fn vault(&self) -> Vault {
        Vault::open(self.paths.clone(), Config::default())
    }

    pub fn vault_with(&self, f: impl FnOnce(&mut Config)) -> Vault {
        let mut c = Config::default();
        f(&mut c);
        Vault::open(self.paths.clone(), c)
    }

    pub fn live(&self) -> Option<String> {
        fs::read_to_string(&self.paths.live_creds).ok()
    }

    pub fn slot(&self, n: usize) -> Option<String> {
        fs::read_to_string(self.paths.oauth_slot(n)).ok()
    }

    pub fn state(&self) -> State {
        State::parse(&fs::read_to_string(&self.paths.state).expect("state.yaml"))
            .expect("state parses")
    }

    pub fn state_text(&self) -> String {
        fs::read_to_string(&self.paths.state).unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Event> {
        audit::read(&self.paths.log).expect("log").events
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e.event == event).count()
    }

    /// switches_total in state.yaml equals the account_switch lines in rotation.log.
    pub fn assert_counters_match(&self) {
        let st = self.state();
        assert_eq!(
            st.switches_total as usize,
            self.count("account_switch"),
            "switches_total vs log:\n{}\n{}",
            self.state_text(),
            self.log_text()
        );
    }

    /// Every file we wrote, scanned for fixture tokens (slot files and the live file and
    /// backups excepted: they are where tokens belong).
    pub fn assert_no_secrets_in_our_files(&self) {
        secrets::assert_home_clean(&self.paths.home);
    }

    /// Runs the shim with this home as QWEN_HOME (and HOME), in a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SHIM);
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.user_home())
            .env("QWEN_HOME", &self.paths.home)
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path());
        child::default_signals(&mut c);
        c
    }

    /// Runs the shim and scans both streams for secrets.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.cmd(args);
        cmd.stdin(std::process::Stdio::null());
        let out = run_within(cmd, Duration::from_secs(30));
        assert_clean(
            &format!("stdout of {args:?}"),
            &String::from_utf8_lossy(&out.stdout),
        );
        assert_clean(
            &format!("stderr of {args:?}"),
            &String::from_utf8_lossy(&out.stderr),
        );
        out
    }
}

/// What `assert_log_matches_state` counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub switches: u64,
    pub quota: u64,
    pub throttle: u64,
    pub auth: u64,
}

/// The counters in state.yaml equal the lines in rotation.log, in total and per slot:
/// `switches_total` = `account_switch` lines, each slot's `switches_count` = lines switching
/// to it, its `hits` = its `cooldown` lines per class and its `needs_login` lines. For a home
/// whose slots were never removed (a re-added number starts its counters afresh).
pub fn assert_log_matches_state(paths: &Paths) -> Counts {
    let text = fs::read_to_string(&paths.state).expect("state.yaml");
    let st = State::parse(&text).expect("state.yaml parses");
    let log = audit::read(&paths.log).expect("rotation.log");
    assert_eq!(log.skipped, 0, "every line of rotation.log parses");
    let events = log.events;
    let lines = |name: &str, f: &dyn Fn(&Event) -> bool| {
        events.iter().filter(|e| e.event == name && f(e)).count() as u64
    };
    let mut counts = Counts {
        switches: st.switches_total,
        ..Counts::default()
    };
    assert_eq!(
        st.switches_total,
        lines("account_switch", &|_| true),
        "switches_total vs account_switch lines"
    );
    for (n, a) in &st.accounts {
        let n = *n;
        let class =
            |c: &'static str| move |e: &Event| e.slot == Some(n) && e.class.as_deref() == Some(c);
        assert_eq!(
            a.switches_count,
            lines("account_switch", &|e| e.to == Some(n)),
            "slot {n} switches_count"
        );
        assert_eq!(
            a.hits.quota,
            lines("cooldown", &class("quota")),
            "slot {n} quota hits"
        );
        assert_eq!(
            a.hits.throttle,
            lines("cooldown", &class("throttle")),
            "slot {n} throttle hits"
        );
        assert_eq!(
            a.hits.auth,
            lines("needs_login", &|e| e.slot == Some(n)),
            "slot {n} auth hits"
        );
        counts.quota += a.hits.quota;
        counts.throttle += a.hits.throttle;
        counts.auth += a.hits.auth;
    }
    counts
}

pub fn name(i: usize) -> String {
    ((b'a' + (i as u8 - 1) % 26) as char).to_string() + &"x".repeat((i - 1) / 26)
}

pub fn write600(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// A fake program at `path` running `body` (sh). The file is written by cp(1), never held open
/// for writing by the test process: a child forked meanwhile by another test thread would keep
/// that descriptor until its exec, and running the file would then fail with ETXTBSY.
pub fn write_fake(path: &Path, body: &str) {
    let source = path.with_extension("source");
    fs::write(&source, format!("#!/bin/sh\n{body}\n")).unwrap();
    let _ = fs::remove_file(path);
    let copied = Command::new("cp").arg(&source).arg(path).status().unwrap();
    assert!(copied.success(), "cp to {}", path.display());
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Panics (without echoing the secret) when `text` holds a fixture token.
pub fn assert_clean(what: &str, text: &str) {
    secrets::assert_clean(what, text.as_bytes());
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Spawns and waits with a deadline (a hung child fails the test instead of the suite).
/// Stdin is /dev/null unless the command set it.
pub fn run_within(mut cmd: Command, limit: Duration) -> Output {
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    child::collect_within(cmd.spawn().expect("spawn"), limit, "the shim")
}

/// Like `Home::cmd(..).output()` but feeding `input` on stdin.
pub fn run_with_stdin(mut cmd: Command, input: &[u8], limit: Duration) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        // From a thread: a shim that never reads must not block the test before its deadline.
        let input = input.to_vec();
        std::thread::spawn(move || stdin.write_all(&input));
    }
    child::collect_within(child, limit, "the shim")
}
