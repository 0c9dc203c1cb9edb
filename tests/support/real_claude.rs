//! The REAL claude (Claude Code, installed by `.ci/install-claude`) run offline, with the shim in
//! front of it as `claude`, against a mock of Anthropic's Messages API on 127.0.0.1.
//!
//! Invariant: nothing of the developer's machine leaks in or out. Each sandbox has its own HOME
//! (claude's files and the pool in `$HOME/.claude`, its config in `$HOME/.claude.json`, seeded
//! with onboarding done and the working directory trusted), an empty working directory and a
//! clean environment (`env -i` plus PATH, HOME, `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` and
//! what the test adds). PATH holds a directory whose only entry is `claude` → the shim, then the
//! pinned real claude's directory, then the system directories. Every child runs in its own
//! process group, killed on timeout and after exit.
//!
//! The mock answers by the key a request carries (`x-api-key`, else a login's
//! `Authorization: Bearer` access token), with the fixture secret mark dropped (a name made spent
//! with `spend` answers as `limit` from then on): `credit` → 400 "Your credit balance is too
//! low" · `throttle` → 429 `rate_limit_error` with `retry-after: 30` · `limit` → 429 with the unified usage-limit headers
//! (claim `five_hour`, reset in an hour) · `invalid` → 401 `authentication_error` · `hold` →
//! the answer waits until `release` · anything else → an answer whose text is
//! `REPLY-FROM-<key>` (SSE when the request asks for a stream, with `usage` in `message_start`
//! and `message_delta`). Every request is recorded in arrival order.
#![allow(dead_code)]

#[path = "pinned_cli.rs"]
pub mod pinned_cli;
#[path = "real_qwen.rs"]
pub mod real_qwen;
#[path = "recorder.rs"]
mod recorder;

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pinned_cli::PinnedCli;
pub use real_qwen::secrets;
pub use real_qwen::{Output, mkdir_private, run_with_timeout, write_private};

pub const VERSION: &str = "2.1.332";

/// The pinned release, installed by `.ci/install-claude` into `$CLAUDE_E2E_DIR` (default
/// `<crate>/.cache/claude`).
pub const PINNED: PinnedCli = PinnedCli {
    name: "claude",
    version: VERSION,
    dir_var: "CLAUDE_E2E_DIR",
};

/// Where `.ci/install-claude` put the release.
pub fn e2e_dir() -> PathBuf {
    PINNED.e2e_dir()
}

/// The launcher of the pinned claude, installed on first use ([`PinnedCli::installed`]: SKIP
/// outside CI when it cannot be installed, a panic under CI).
pub fn installed() -> Option<PathBuf> {
    PINNED.installed()
}

// ---------------------------------------------------------------------------------------------
// The mock Messages API
// ---------------------------------------------------------------------------------------------

/// One request the mock saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The `x-api-key`, else the bearer token, without the fixture mark (`k2_ok`).
    pub key: String,
    /// The request carried an `Authorization` header.
    pub authorization: bool,
    /// The request carried an `x-api-key` header.
    pub api_key: bool,
    /// The `anthropic-beta` list.
    pub betas: String,
    /// Every header name, lowercase.
    pub header_names: Vec<String>,
    /// The request asked for a stream.
    pub stream: bool,
}

type Shared = recorder::Recorder<Seen>;

pub struct ClaudeMock {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ClaudeMock {
    pub fn start() -> ClaudeMock {
        let (shared, addr) = Shared::listen(serve);
        ClaudeMock { addr, shared }
    }

    /// `http://127.0.0.1:PORT`: a base URL as `ANTHROPIC_BASE_URL` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that carried `key` (unmarked).
    pub fn count(&self, key: &str) -> usize {
        self.seen().iter().filter(|s| s.key == key).count()
    }
}

/// What the mock saw, the names made spent (`spend`) and the held answers (`release`).
impl std::ops::Deref for ClaudeMock {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for ClaudeMock {
    fn drop(&mut self) {
        self.release();
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body = vec![0; n];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let bearer = header("authorization")
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
            .unwrap_or_default();
        let key = secrets::unmarked(&header("x-api-key").unwrap_or(bearer)).to_string();
        let doc = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        let stream = doc["stream"].as_bool().unwrap_or(false);
        let model = doc["model"].as_str().unwrap_or("").to_string();
        shared.record(Seen {
            method: method.clone(),
            path: path.to_string(),
            query: query.to_string(),
            key: key.clone(),
            authorization: header("authorization").is_some(),
            api_key: header("x-api-key").is_some(),
            betas: header("anthropic-beta").unwrap_or_default(),
            header_names: headers.iter().map(|(k, _)| k.clone()).collect(),
            stream,
        });
        if key.contains("hold") {
            shared.hold();
        }
        let spent = shared.is_spent(&key);
        let named = if spent { "limit" } else { key.as_str() };
        let (status, extra, content_type, body) = answer(named, &key, &model, stream);
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nrequest-id: req_mock\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
        let _ = out.flush();
        if method.eq_ignore_ascii_case("HEAD") {
            continue;
        }
    }
}

/// Anthropic's error body.
pub fn error_body(kind: &str, message: &str) -> String {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

type Answer = (u16, Vec<(&'static str, String)>, &'static str, String);

/// The answer for a caller whose behaviour is `key` (its name, or `limit` once spent); the text
/// names `who`.
fn answer(key: &str, who: &str, model: &str, stream: bool) -> Answer {
    let json = "application/json";
    if key.contains("credit") {
        return (
            400,
            Vec::new(),
            json,
            error_body(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            ),
        );
    }
    if key.contains("throttle") {
        return (
            429,
            vec![("retry-after", "30".to_string())],
            json,
            error_body(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
        );
    }
    if key.contains("limit") {
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        return (
            429,
            vec![
                ("anthropic-ratelimit-unified-status", "rejected".to_string()),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour".to_string(),
                ),
                ("anthropic-ratelimit-unified-reset", reset.to_string()),
                ("retry-after", "3600".to_string()),
            ],
            json,
            error_body("rate_limit_error", "Rate limited"),
        );
    }
    if key.contains("invalid") {
        return (
            401,
            Vec::new(),
            json,
            error_body("authentication_error", "invalid x-api-key"),
        );
    }
    let text = format!("REPLY-FROM-{who}");
    if !stream {
        let doc = serde_json::json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 7, "output_tokens": 3},
        });
        return (200, Vec::new(), json, doc.to_string());
    }
    let events = [
        (
            "message_start",
            serde_json::json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}}),
        ),
        (
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 3}}),
        ),
        ("message_stop", serde_json::json!({"type": "message_stop"})),
    ];
    let mut sse = String::new();
    for (name, data) in events {
        sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    (200, Vec::new(), "text/event-stream", sse)
}

/// The environment (`/proc/PID/environ`) of every process under `root`, `root` itself excluded.
pub fn environs_under(root: u32) -> Vec<Vec<u8>> {
    let mut environs = Vec::new();
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        if let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", pids[i])) {
            for t in tasks.flatten() {
                if let Ok(c) = fs::read_to_string(t.path().join("children")) {
                    pids.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
        }
        if pids[i] != root
            && let Ok(env) = fs::read(format!("/proc/{}/environ", pids[i]))
        {
            environs.push(env);
        }
        i += 1;
    }
    environs
}

// ---------------------------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------------------------

/// One test's private world: HOME, an empty cwd, PATH with the shim first.
pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub home: PathBuf,
    /// `$HOME/.claude`: claude's files and the pool.
    pub claude_home: PathBuf,
    pub work: PathBuf,
    pub shim_dir: PathBuf,
    pub real_dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
}

impl Sandbox {
    pub fn new() -> Option<Sandbox> {
        let real = installed()?;
        let tmp = tempfile::Builder::new()
            .prefix("claude-e2e-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let home = root.join("home");
        let work = root.join("work");
        let shim_dir = root.join("shim");
        for d in [&home, &work, &shim_dir] {
            fs::create_dir_all(d).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let claude_home = home.join(".claude");
        mkdir_private(&claude_home);
        // Onboarding done and the working directory trusted (CLAUDE_FACTS.md).
        let config = serde_json::json!({
            "hasCompletedOnboarding": true,
            "lastOnboardingVersion": VERSION,
            "projects": {work.to_string_lossy(): {"hasTrustDialogAccepted": true}},
        });
        write_private(&home.join(".claude.json"), config.to_string().as_bytes());
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qwen"), shim_dir.join("claude")).unwrap();
        let mut sandbox = Sandbox {
            _tmp: tmp,
            home,
            claude_home,
            work,
            shim_dir,
            real_dir: real.parent().unwrap().to_path_buf(),
            env: Vec::new(),
            // A deadline against a hang, not a speed target.
            timeout: Duration::from_secs(120),
        };
        sandbox.env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
        Some(sandbox)
    }

    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Writes `$HOME/.claude/.credentials.json` as claude stores a subscription login: the
    /// access token `secret(access)`, a refresh token of its own, valid for ten hours, and the
    /// account's id from the name's first part (`l1_ok` and `l1_fresh` are one account).
    pub fn write_login(&self, access: &str) {
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 10 * 3600 * 1000;
        let doc = serde_json::json!({"claudeAiOauth": {
            "accessToken": secrets::secret(access),
            "refreshToken": secrets::secret(&format!("{access}_refresh")),
            "expiresAt": expires as u64,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_5x",
            "accountUuid": format!("uuid-{}", access.split('_').next().unwrap_or(access)),
        }});
        write_private(
            &self.claude_home.join(".credentials.json"),
            doc.to_string().as_bytes(),
        );
    }

    /// A subscription login whose access token is `secret(access)`, stored as a slot the way a
    /// person does it: log in (here: the file claude would write), then `claude --rotation-add
    /// LABEL`.
    pub fn add_login(&self, label: &str, access: &str) {
        self.write_login(access);
        let out = self.run(&["--rotation-add", label], None);
        assert_eq!(out.status.code(), Some(0), "--rotation-add: {}", out.dump());
    }

    /// The access token in the live `.credentials.json`, without the fixture mark.
    pub fn live_access(&self) -> String {
        let text = fs::read_to_string(self.claude_home.join(".credentials.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        secrets::unmarked(doc["claudeAiOauth"]["accessToken"].as_str().unwrap()).to_string()
    }

    /// `printf %s KEY | claude --rotation-add --api-key LABEL --base-url URL`, through the shim.
    pub fn add_key(&self, label: &str, key: &str, base_url: &str) {
        let key = secrets::secret(key);
        let out = self.run(
            &["--rotation-add", "--api-key", label, "--base-url", base_url],
            Some(key.as_bytes()),
        );
        assert_eq!(out.status.code(), Some(0), "--rotation-add: {}", out.dump());
    }

    /// A sandbox and a mock, the logins' requests going to the mock (the person's
    /// `ANTHROPIC_BASE_URL`, which a login's requests follow), with the logins `logins`
    /// (access-token names) added in order as `login1`, `login2`, … and login 1 live.
    pub fn with_logins(logins: &[&str]) -> Option<(Sandbox, ClaudeMock)> {
        let mut sb = Sandbox::new()?;
        let mock = ClaudeMock::start();
        sb.env("ANTHROPIC_BASE_URL", mock.url());
        for (i, access) in logins.iter().enumerate() {
            sb.add_login(&format!("login{}", i + 1), access);
        }
        if !logins.is_empty() {
            let out = sb.run(&["--rotation-switch", "1"], None);
            assert_eq!(out.status.code(), Some(0), "{}", out.dump());
        }
        Some((sb, mock))
    }

    /// The pool's switches so far, (from, to), in order.
    pub fn switches(&self) -> Vec<(u64, u64)> {
        self.rotation_log()
            .into_iter()
            .filter(|e| e["event"] == "account_switch")
            .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
            .collect()
    }

    pub fn rotation_log(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.claude_home.join("rotation.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn path_var(&self) -> OsString {
        let mut dirs = vec![self.shim_dir.clone(), self.real_dir.clone()];
        for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
            dirs.push(PathBuf::from(d));
        }
        std::env::join_paths(dirs).unwrap()
    }

    /// `claude ARGS` through the shim while the mock holds the answer to `held` (a `…_hold`
    /// name): `during` gets the shim's pid once claude has asked (claude is alive, its request
    /// waiting), then the answer goes and the run is collected. The run must succeed; both
    /// streams are scanned for the fixture secrets.
    pub fn run_held(
        &self,
        args: &[&str],
        mock: &ClaudeMock,
        held: &str,
        during: impl FnOnce(u32),
    ) -> std::process::Output {
        let child = self.command(args, false).spawn().unwrap();
        let shim = child.id();
        assert!(
            mock.wait_for(Duration::from_secs(60), |s| s.key == held),
            "claude never asked: {:?}",
            mock.seen()
        );
        during(shim);
        mock.release();
        let out = real_qwen::child::collect_within(child, self.timeout, "the claude run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        secrets::assert_clean("the shim's stdout", &out.stdout);
        secrets::assert_clean("the shim's stderr", &out.stderr);
        out
    }

    /// `claude ARGS` through the shim; both streams are scanned for the fixture secrets.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let cmd = self.command(args, stdin.is_some());
        let out = run_with_timeout(cmd, stdin.map(<[u8]>::to_vec), self.timeout);
        secrets::assert_clean("the shim's stdout", &out.stdout);
        secrets::assert_clean("the shim's stderr", &out.stderr);
        out
    }

    /// The command [`Sandbox::run`] starts (own process group, piped output, clean env).
    pub fn command(&self, args: &[&str], stdin: bool) -> Command {
        let mut cmd = Command::new(self.shim_dir.join("claude"));
        cmd.args(args)
            .current_dir(&self.work)
            .env_clear()
            .env("PATH", self.path_var())
            .env("HOME", &self.home)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        real_qwen::child::default_signals(&mut cmd);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !thread::panicking() {
            secrets::assert_home_clean(&self.claude_home);
        }
    }
}
