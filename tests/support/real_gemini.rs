//! The REAL gemini (installed by `.ci/install-gemini`) run offline, with the shim in front of it
//! as `gemini`, against a mock of the Gemini API on 127.0.0.1.
//!
//! Invariant: nothing of the developer's machine leaks in or out. Each sandbox has its own HOME
//! and GEMINI_CLI_HOME in a private directory under the target's temporary directory (not /tmp:
//! gemini reads a system settings file only when root owns every directory above it, and /tmp is
//! writable by all), an empty working directory and a clean environment (`env -i` plus PATH,
//! HOME, GEMINI_CLI_HOME, GEMINI_CLI_TRUST_WORKSPACE and what the test adds). PATH holds a
//! directory whose only entry is `gemini` → the shim, then the pinned real gemini's directory,
//! then the system directories. Every child runs in its own process group, killed on timeout and
//! after exit.
//!
//! The mock answers by the key a request carries (`x-goog-api-key` or `key=`), with the fixture
//! secret mark dropped: `prodaily` → a daily-quota 429 for models with `pro` in their name ·
//! `daily` → a daily-quota 429 · `minute` → a per-minute 429 (RetryInfo 7 s) · `invalid` → 400
//! API_KEY_INVALID · a key named in `spend` → a daily-quota 429 from then on · a
//! model named `…badarg…` → 400 INVALID_ARGUMENT · `hold` → the answer waits until
//! `release` · anything else → an answer: `generateContent` (the routing
//! classifier, which wants JSON text) gets `{"reasoning":…,"model_choice":"flash"}`,
//! `streamGenerateContent?alt=sse` one SSE event with the text `REPLY-FROM-<key>-ON-<model>`.
//! Code Assist requests (OAuth, under `/v1internal`, `CODE_ASSIST_ENDPOINT`) are told apart by
//! the bearer access token instead of the key ([`code_assist_answer`]). Every request is
//! recorded in arrival order.
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
use std::time::Duration;

use pinned_cli::PinnedCli;
pub use real_qwen::secrets;
pub use real_qwen::{Output, mkdir_private, run_with_timeout, write_private};

pub const VERSION: &str = "0.61.0";

/// The pinned release, installed by `.ci/install-gemini` into `$GEMINI_E2E_DIR` (default
/// `<crate>/.cache/gemini`).
pub const PINNED: PinnedCli = PinnedCli {
    name: "gemini",
    version: VERSION,
    dir_var: "GEMINI_E2E_DIR",
};

/// Where `.ci/install-gemini` put the release.
pub fn e2e_dir() -> PathBuf {
    PINNED.e2e_dir()
}

/// The launcher of the pinned gemini, installed on first use ([`PinnedCli::installed`]: SKIP
/// outside CI when it cannot be installed, a panic under CI).
pub fn installed() -> Option<PathBuf> {
    PINNED.installed()
}

// ---------------------------------------------------------------------------------------------
// The mock Gemini API
// ---------------------------------------------------------------------------------------------

/// One request the mock saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The key, without the fixture mark (`k2_ok`).
    pub key: String,
    /// The model in the path (`gemini-2.5-pro`).
    pub model: String,
    /// `generateContent` or `streamGenerateContent`.
    pub method: String,
    pub query: String,
}

type Shared = recorder::Recorder<Seen>;

pub struct GeminiMock {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl GeminiMock {
    pub fn start() -> GeminiMock {
        let (shared, addr) = Shared::listen(serve);
        GeminiMock { addr, shared }
    }

    /// `http://127.0.0.1:PORT`: a base URL as gemini's `GOOGLE_GEMINI_BASE_URL` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that carried `key` (unmarked).
    pub fn count(&self, key: &str) -> usize {
        self.seen().iter().filter(|s| s.key == key).count()
    }
}

/// What the mock saw, the names made spent (`spend`) and the held answers (`release`).
impl std::ops::Deref for GeminiMock {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for GeminiMock {
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
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
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
        let key = header("x-goog-api-key")
            .or_else(|| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix("key="))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        // Code Assist (OAuth): the account is the bearer token, the model is in the body.
        let code_assist = path.starts_with("/v1internal");
        let key = if code_assist {
            header("authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
                .unwrap_or_default()
        } else {
            key
        };
        let key = secrets::unmarked(&key).to_string();
        let body_model = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_string))
            .unwrap_or_default();
        let last = path.rsplit('/').next().unwrap_or("");
        let (model, method) = last.split_once(':').unwrap_or((last, ""));
        let model = if code_assist { &body_model } else { model };
        let seen = Seen {
            key: key.clone(),
            model: model.to_string(),
            method: method.to_string(),
            query: query.to_string(),
        };
        shared.record(seen);
        if key.contains("hold") {
            shared.hold();
        }
        let spent = shared.is_spent(&key);
        let (status, content_type, body) = if spent {
            (
                429,
                "application/json",
                quota_body("PerDay", 100, "36s", model),
            )
        } else if code_assist {
            code_assist_answer(&key, model, method)
        } else {
            answer(&key, model, method)
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

/// The mock's answer for `key` asking `model` through `method`.
fn answer(key: &str, model: &str, method: &str) -> (u16, &'static str, String) {
    let json = "application/json";
    if (key.contains("prodaily") && model.contains("pro"))
        || (key.contains("daily") && !key.contains("prodaily"))
    {
        return (429, json, quota_body("PerDay", 100, "36s", model));
    }
    if model.contains("badarg") {
        let body = serde_json::json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Request contains an invalid argument."}});
        return (400, json, body.to_string());
    }
    if key.contains("minute") {
        return (429, json, quota_body("PerMinute", 5, "7s", model));
    }
    if key.contains("invalid") {
        let body = serde_json::json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "API key not valid. Please pass a valid API key.",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
        return (400, json, body.to_string());
    }
    let candidate = |text: &str| {
        serde_json::json!({
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 3, "totalTokenCount": 6},
            "modelVersion": model,
        })
    };
    if method == "generateContent" {
        let text = serde_json::json!({"reasoning": "a simple request", "model_choice": "flash", "next_speaker": "user"});
        return (200, json, candidate(&text.to_string()).to_string());
    }
    let event = candidate(&format!("REPLY-FROM-{key}-ON-{model}"));
    (200, "text/event-stream", format!("data: {event}\r\n\r\n"))
}

/// The Code Assist answer (OAuth mode, `/v1internal:METHOD`) for the account whose access token
/// is `key`: set-up calls get a Standard-tier user with a project; `capacity` → the OAuth
/// capacity 429 (`… Your quota will reset after 2h3m4s.`); `unsupported` → 403 "This client is
/// no longer supported …"; anything else → [`answer`] wrapped as `{"response": …}`.
fn code_assist_answer(key: &str, model: &str, method: &str) -> (u16, &'static str, String) {
    let json = "application/json";
    match method {
        "loadCodeAssist" => {
            let body = serde_json::json!({"currentTier": {"id": "standard-tier", "name": "Gemini Code Assist Standard"}, "cloudaicompanionProject": "mock-project"});
            return (200, json, body.to_string());
        }
        "retrieveUserQuota" => return (200, json, r#"{"buckets":[]}"#.into()),
        "listExperiments" => return (200, json, r#"{"experimentIds":[],"flags":[]}"#.into()),
        "generateContent" | "streamGenerateContent" => {}
        _ => return (200, json, "{}".into()),
    }
    if key.contains("capacity") && method == "streamGenerateContent" {
        return (429, json, capacity_body(model));
    }
    if key.contains("unsupported") {
        let body = serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "message": "This client is no longer supported for Gemini Code Assist for individuals. Please use a Gemini API key or a Gemini Code Assist Standard or Enterprise license."}});
        return (403, json, body.to_string());
    }
    let (status, content_type, body) = answer(key, model, method);
    if status != 200 {
        return (status, content_type, body);
    }
    if method == "generateContent" {
        let inner: serde_json::Value = serde_json::from_str(&body).unwrap();
        return (
            200,
            json,
            serde_json::json!({"response": inner}).to_string(),
        );
    }
    let event = body
        .trim()
        .strip_prefix("data: ")
        .and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .unwrap();
    let wrapped = serde_json::json!({"response": event});
    (200, "text/event-stream", format!("data: {wrapped}\r\n\r\n"))
}

/// Code Assist's 429 when an OAuth account's capacity is spent (GEMINI_FACTS.md): ErrorInfo
/// QUOTA_EXHAUSTED with a RetryInfo of the whole reset delay.
pub fn capacity_body(model: &str) -> String {
    serde_json::json!({"error": {
        "code": 429,
        "status": "RESOURCE_EXHAUSTED",
        "message": "You have exhausted your capacity on this model. Your quota will reset after 2h3m4s.",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXHAUSTED",
             "domain": "cloudcode-pa.googleapis.com", "metadata": {"uiMessage": "true", "model": model}},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7384s"}
        ]
    }})
    .to_string()
}

/// The Gemini API's 429 for a spent quota (GEMINI_FACTS.md), per day or per minute.
pub fn quota_body(per: &str, limit: u32, delay: &str, model: &str) -> String {
    serde_json::json!({"error": {
        "code": 429,
        "status": "RESOURCE_EXHAUSTED",
        "message": format!("You exceeded your current quota, please check your plan and billing details.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: {limit}, model: {model}\nPlease retry in 36.5s."),
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": format!("GenerateRequests{per}PerProjectPerModel-FreeTier")}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
        ]
    }})
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------------------------

/// One test's private world: HOME (= GEMINI_CLI_HOME), an empty cwd, PATH with the shim first.
pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub home: PathBuf,
    /// `$GEMINI_CLI_HOME/.gemini`: gemini's files and the pool.
    pub gemini_home: PathBuf,
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
            .prefix("gemini-e2e-")
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
        let gemini_home = home.join(".gemini");
        mkdir_private(&gemini_home);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qwen"), shim_dir.join("gemini")).unwrap();
        let mut sandbox = Sandbox {
            _tmp: tmp,
            home: home.clone(),
            gemini_home,
            work,
            shim_dir,
            real_dir: real.parent().unwrap().to_path_buf(),
            env: Vec::new(),
            // A deadline against a hang, not a speed target.
            timeout: Duration::from_secs(180),
        };
        sandbox
            .env("GEMINI_CLI_HOME", &home)
            .env("GEMINI_CLI_TRUST_WORKSPACE", "true");
        Some(sandbox)
    }

    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// The user's own `settings.json` (what `/auth` writes).
    pub fn write_settings(&self, doc: serde_json::Value) {
        write_private(
            &self.gemini_home.join("settings.json"),
            doc.to_string().as_bytes(),
        );
    }

    pub fn settings_text(&self) -> Option<String> {
        fs::read_to_string(self.gemini_home.join("settings.json")).ok()
    }

    /// `printf %s KEY | gemini --rotation-add --api-key LABEL --base-url URL`, through the shim.
    pub fn add_key(&self, label: &str, key: &str, base_url: &str) {
        let key = secrets::secret(key);
        let out = self.run(
            &["--rotation-add", "--api-key", label, "--base-url", base_url],
            Some(key.as_bytes()),
        );
        assert_eq!(out.status.code(), Some(0), "--rotation-add: {}", out.dump());
    }

    pub fn rotation_log(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.gemini_home.join("rotation.log"))
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

    /// `gemini ARGS` through the shim; both streams are scanned for the fixture secrets.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let cmd = self.command(args, stdin.is_some());
        let out = run_with_timeout(cmd, stdin.map(<[u8]>::to_vec), self.timeout);
        secrets::assert_clean("the shim's stdout", &out.stdout);
        secrets::assert_clean("the shim's stderr", &out.stderr);
        out
    }

    /// The command [`Sandbox::run`] starts (own process group, piped output, clean env).
    pub fn command(&self, args: &[&str], stdin: bool) -> Command {
        let mut cmd = Command::new(self.shim_dir.join("gemini"));
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
            secrets::assert_home_clean(&self.gemini_home);
        }
    }
}
