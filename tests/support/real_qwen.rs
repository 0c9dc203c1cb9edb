//! A sandbox for running the REAL qwen (installed by `.ci/install-qwen`) offline, with or without
//! the shim in front of it.
//!
//! Invariant: nothing of the developer's machine leaks in or out. Each sandbox has its own HOME
//! (and QWEN_HOME) in a tempdir, an empty working directory, and a clean environment (`env -i`
//! plus PATH, HOME, QWEN_HOME and what the test adds). PATH holds a directory whose only entry is a
//! symlink `qwen` → the shim under test, then the directory of the pinned real qwen, then the
//! system directories (node 20 for 0.12.0 is found there by absolute path in the launcher anyway).
//! Every child runs in its own process group, which is killed on timeout and after exit, so no
//! node process outlives a test.
//! Every credential written here is a fixture secret (support/secrets.rs): the runs' output and
//! the files the shim writes beside the credentials are scanned for it.
#![allow(dead_code)]

#[path = "child.rs"]
#[allow(clippy::duplicate_mod)] // each support module may be loaded beside the others
pub mod child;
#[path = "secrets.rs"]
pub mod secrets;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A pinned real qwen release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 0.12.0: the last release that runs headless OAuth; ignores QWEN_HOME.
    V0_12,
    /// 0.24.4: the latest; refuses headless OAuth; API keys only.
    V0_24,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_12 => "0.12.0",
            Version::V0_24 => "0.24.4",
        }
    }
}

/// Where `.ci/install-qwen` put the releases: `$QWEN_E2E_DIR`, else `<crate>/.cache/qwen`.
pub fn e2e_dir() -> PathBuf {
    match std::env::var_os("QWEN_E2E_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/qwen"),
    }
}

/// The launcher of `version` (`<dir>/<version>/bin/qwen`) if it is installed.
///
/// Missing: under CI (`CI` set) this panics — the suite must not pass by skipping; elsewhere it
/// prints one SKIP line and returns None, so `cargo test` works before the install.
pub fn installed(version: Version) -> Option<PathBuf> {
    let path = e2e_dir().join(version.as_str()).join("bin/qwen");
    if is_executable(&path) {
        return Some(path);
    }
    // First use on this machine: install the pinned releases once (idempotent, ~15 s).
    static INSTALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let installed = *INSTALL.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/install-qwen");
        eprintln!(
            "installing the pinned real qwen releases with {}",
            script.display()
        );
        std::process::Command::new("bash")
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if installed && is_executable(&path) {
        return Some(path);
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "real qwen {} not found at {}: run .ci/install-qwen first",
            version.as_str(),
            path.display()
        );
    }
    eprintln!(
        "SKIP: real qwen {} not installed at {} (run .ci/install-qwen)",
        version.as_str(),
        path.display()
    );
    None
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a finished run left behind.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The exit code; panics (with the output) on a signal death or timeout.
    pub fn code(&self) -> i32 {
        assert!(
            !self.timed_out,
            "run timed out after {:?}\n{}",
            self.elapsed,
            self.dump()
        );
        match self.status.code() {
            Some(c) => c,
            None => panic!(
                "killed by signal {:?}\n{}",
                self.status.signal(),
                self.dump()
            ),
        }
    }
    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {:?} (timed out: {}, {:.1?})\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.status,
            self.timed_out,
            self.elapsed,
            self.stdout(),
            self.stderr()
        )
    }
}

/// One test's private world: HOME, qwen home, an empty cwd, PATH with the shim first.
pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub version: Version,
    pub root: PathBuf,
    pub home: PathBuf,
    /// The qwen home: `$HOME/.qwen` (0.12.0 ignores QWEN_HOME; for 0.24.4 QWEN_HOME points here).
    pub qwen_home: PathBuf,
    /// The child's working directory, empty.
    pub work: PathBuf,
    /// Holds only `qwen` → the shim.
    pub shim_dir: PathBuf,
    /// Holds only the real qwen launcher.
    pub real_dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
}

impl Sandbox {
    /// A sandbox for `version`, or None (after a SKIP line) when it is not installed.
    pub fn new(version: Version) -> Option<Sandbox> {
        let real = installed(version)?;
        let tmp = tempfile::Builder::new()
            .prefix("qwen-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let home = root.join("home");
        let qwen_home = home.join(".qwen");
        let work = root.join("work");
        let shim_dir = root.join("shim");
        for d in [&home, &work, &shim_dir] {
            fs::create_dir_all(d).unwrap();
        }
        mkdir_private(&qwen_home);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qwen"), shim_dir.join("qwen")).unwrap();
        let real_dir = real.parent().unwrap().to_path_buf();
        let mut sandbox = Sandbox {
            _tmp: tmp,
            version,
            root,
            home,
            qwen_home,
            work,
            shim_dir,
            real_dir,
            env: Vec::new(),
            // A deadline against a hang, not a speed target: two real qwen starts on a loaded
            // 2-core machine have taken over a minute.
            timeout: Duration::from_secs(180),
        };
        if version == Version::V0_24 {
            let qh = sandbox.qwen_home.clone();
            sandbox.env("QWEN_HOME", qh);
        }
        Some(sandbox)
    }

    /// Adds (or replaces) a variable in every child's environment.
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    pub fn remove_env(&mut self, key: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// `settings.json` in the qwen home: the given auth type, telemetry, usage statistics and
    /// auto-update off (QWEN_FACTS.md §1), plus `extra` merged on top (objects merge by key).
    pub fn write_settings(&self, selected_type: Option<&str>, extra: serde_json::Value) {
        // The settings version each release writes itself: an older one makes qwen migrate (and
        // rewrite) the file on start, and 0.24.4 was seen to empty a file it migrated.
        let settings_version = match self.version {
            Version::V0_12 => 3,
            Version::V0_24 => 4,
        };
        let mut settings = serde_json::json!({
            "$version": settings_version,
            "privacy": {"usageStatisticsEnabled": false},
            "telemetry": {"enabled": false},
            "general": {
                "enableAutoUpdate": false,
                "disableAutoUpdate": true,
                "disableUpdateNag": true
            },
        });
        if let Some(t) = selected_type {
            settings["security"] = serde_json::json!({"auth": {"selectedType": t}});
        }
        merge(&mut settings, extra);
        write_private(
            &self.qwen_home.join("settings.json"),
            serde_json::to_string_pretty(&settings).unwrap().as_bytes(),
        );
    }

    pub fn settings(&self) -> serde_json::Value {
        read_json(&self.qwen_home.join("settings.json")).expect("settings.json")
    }

    /// An OAuth credentials document pointing qwen at `resource_url` (never expires).
    pub fn oauth_creds(token: &str, resource_url: &str) -> serde_json::Value {
        serde_json::json!({
            "access_token": secrets::secret(token),
            "refresh_token": secrets::secret(&format!("refresh-{token}")),
            "token_type": "Bearer",
            "resource_url": resource_url,
            "expiry_date": 4_102_444_800_000u64,
        })
    }

    /// `accounts/oauth_creds_N.json` (0600, directory 0700), the seeds' layout.
    pub fn add_oauth_slot(&self, n: usize, token: &str, resource_url: &str) {
        mkdir_private(&self.accounts());
        write_private(
            &self.oauth_slot(n),
            Self::oauth_creds(token, resource_url)
                .to_string()
                .as_bytes(),
        );
    }

    /// The live `oauth_creds.json` as qwen reads it.
    pub fn set_live_oauth(&self, token: &str, resource_url: &str) {
        write_private(
            &self.live_creds(),
            Self::oauth_creds(token, resource_url)
                .to_string()
                .as_bytes(),
        );
    }

    /// OAuth slots 1..=n with these tokens, the live file = slot 1 (what `--rotation-add` leaves).
    pub fn oauth_pool(&self, tokens: &[&str], resource_url: &str) {
        for (i, t) in tokens.iter().enumerate() {
            self.add_oauth_slot(i + 1, t, resource_url);
        }
        if let Some(first) = tokens.first() {
            self.set_live_oauth(first, resource_url);
        }
    }

    /// `accounts/api_key_N.json`: `{"api_key","base_url","model","env_key"}` (src/vault.rs).
    pub fn add_api_key_slot(&self, n: usize, key: &str, base_url: &str, model: &str) {
        mkdir_private(&self.accounts());
        let doc = serde_json::json!({
            "api_key": secrets::secret(key),
            "base_url": base_url,
            "model": model,
            "env_key": "OPENAI_API_KEY",
        });
        write_private(
            &self.accounts().join(format!("api_key_{n}.json")),
            doc.to_string().as_bytes(),
        );
    }

    /// Adds an API-key slot the way a user does: `printf %s KEY | qwen --rotation-add --api-key
    /// LABEL --base-url URL --model M`, through the shim. Panics if it fails or echoes the key.
    pub fn add_api_key_via_shim(&self, label: &str, key: &str, base_url: &str, model: &str) {
        let key = &secrets::secret(key);
        let out = self.run(
            &[
                "--rotation-add",
                "--api-key",
                label,
                "--base-url",
                base_url,
                "--model",
                model,
            ],
            Some(key.as_bytes()),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "--rotation-add --api-key: {}",
            out.dump()
        );
        assert!(
            !out.stdout().contains(key) && !out.stderr().contains(key),
            "--rotation-add echoed the key: {}",
            out.dump()
        );
    }

    pub fn accounts(&self) -> PathBuf {
        self.qwen_home.join("accounts")
    }
    pub fn oauth_slot(&self, n: usize) -> PathBuf {
        self.accounts().join(format!("oauth_creds_{n}.json"))
    }
    pub fn live_creds(&self) -> PathBuf {
        self.qwen_home.join("oauth_creds.json")
    }
    /// `access_token` of the live file, None if it is missing or invalid.
    pub fn live_token(&self) -> Option<String> {
        token_of(&self.live_creds())
    }
    /// `access_token` of OAuth slot N.
    pub fn slot_token(&self, n: usize) -> Option<String> {
        token_of(&self.oauth_slot(n))
    }
    pub fn state_yaml(&self) -> String {
        fs::read_to_string(self.qwen_home.join("state.yaml")).unwrap_or_default()
    }
    /// rotation.log parsed as JSON Lines (invalid lines are a test failure).
    pub fn rotation_log(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.qwen_home.join("rotation.log")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("rotation.log line {l:?}: {e}"))
            })
            .collect()
    }

    /// PATH for the children: shim first (unless `direct`), then the real qwen, then the system.
    pub fn path_var(&self, direct: bool) -> OsString {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if !direct {
            dirs.push(self.shim_dir.clone());
        }
        dirs.push(self.real_dir.clone());
        for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
            dirs.push(PathBuf::from(d));
        }
        std::env::join_paths(dirs).unwrap()
    }

    /// Runs `qwen ARGS` through the shim (found first on PATH, as a user's shell would), and
    /// scans both streams for the fixture secrets.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let out = self.spawn("qwen", args, stdin, false);
        secrets::assert_clean("the shim's stdout", &out.stdout);
        secrets::assert_clean("the shim's stderr", &out.stderr);
        out
    }

    /// Runs the real qwen alone (the shim is not on PATH).
    pub fn run_direct(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.spawn("qwen", args, stdin, true)
    }

    fn spawn(&self, program: &str, args: &[&str], stdin: Option<&[u8]>, direct: bool) -> Output {
        let cmd = self.command(program, args, stdin.is_some(), direct);
        run_with_timeout(cmd, stdin.map(<[u8]>::to_vec), self.timeout)
    }

    /// The command `run` (or `run_direct`) starts, for a test that watches the run while it is
    /// live: its own process group, piped output, the sandbox's environment.
    pub fn command(&self, program: &str, args: &[&str], stdin: bool, direct: bool) -> Command {
        let path = self.path_var(direct);
        // Resolve via the child's PATH, as execvp would in the caller's shell.
        let exe = std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
            .expect("qwen on the sandbox PATH");
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .current_dir(&self.work)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &self.home)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        child::default_signals(&mut cmd);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

impl Drop for Sandbox {
    /// The last look at the home: nothing the shim wrote beside the credentials holds one.
    fn drop(&mut self) {
        if !thread::panicking() {
            secrets::assert_home_clean(&self.qwen_home);
        }
    }
}

/// Spawns `cmd` (already in its own process group), feeds stdin, collects both streams, and kills
/// the whole group on timeout and after exit (qwen's node parent starts a node child).
pub fn run_with_timeout(mut cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn qwen");
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        thread::spawn(move || {
            // EPIPE when qwen exits before reading everything is fine.
            let _ = w.write_all(&input);
        });
    }
    let reader = |mut r: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        rx
    };
    let out_rx = reader(Box::new(child.stdout.take().unwrap()));
    let err_rx = reader(Box::new(child.stderr.take().unwrap()));
    let (status_tx, status_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let (status, timed_out) = match status_rx.recv_timeout(timeout) {
        Ok(s) => (s.expect("wait"), false),
        Err(_) => {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            (status_rx.recv().unwrap().expect("wait"), true)
        }
    };
    let elapsed = start.elapsed();
    // Reap anything the run left in its group (a node grandchild keeps our pipes open).
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let grace = Duration::from_secs(10);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    Output {
        stdout,
        stderr,
        status,
        elapsed,
        timed_out,
    }
}

/// Deep-merges `extra` into `base` (objects by key; anything else replaces).
pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

pub fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// The file's `access_token`, without the fixture mark.
fn token_of(path: &Path) -> Option<String> {
    let token = read_json(path)?.get("access_token")?.as_str()?.to_string();
    Some(secrets::unmarked(&token).to_string())
}

pub fn mkdir_private(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

/// Writes a 0600 file atomically (temp + rename) with a fresh mtime.
pub fn write_private(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-e2e");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }
    fs::rename(&tmp, path).unwrap();
}

/// Strings in `text` that look like real credentials (long key-ish tokens), for leak checks.
/// Fixture tokens in these tests are short words; a `sk-…` or a long base64/hex run is not.
pub fn real_looking_secrets(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| {
            (w.starts_with("sk-") && w.len() >= 20)
                || (w.len() >= 32
                    && w.chars().any(|c| c.is_ascii_digit())
                    && w.chars().any(|c| c.is_ascii_uppercase())
                    && w.chars().any(|c| c.is_ascii_lowercase()))
        })
        .map(str::to_string)
        .collect()
}

/// An emulated Qwen OAuth host (`https://chat.qwen.ai`) for the token-refresh paths, which are
/// hard-coded in qwen: a small node HTTPS server with a certificate from a throwaway CA (made with
/// the openssl CLI). Put behind the mock's proxy with `mock.route("chat.qwen.ai:443", host.addr)`
/// and give qwen `HTTPS_PROXY=<mock url>` and `NODE_EXTRA_CA_CERTS=<host.ca_pem>`.
///
/// `answers` maps a refresh token to `{"status": N, "body": {...}}`; unknown tokens get 400
/// `invalid_grant`. Every refresh request is appended to `<dir>/refresh.log` as one JSON line.
pub struct OAuthHost {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub ca_pem: PathBuf,
    pub log: PathBuf,
}

const OAUTH_HOST_JS: &str = r#"
const https = require('https'), fs = require('fs'), qs = require('querystring');
const [dir] = process.argv.slice(2);
const answers = JSON.parse(fs.readFileSync(dir + '/answers.json', 'utf8'));
const server = https.createServer({
  key: fs.readFileSync(dir + '/host.key'), cert: fs.readFileSync(dir + '/host.pem'),
}, (req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    const form = qs.parse(body);
    const token = String(form.refresh_token || '').replace(/^SeCrEt-/, '');
    fs.appendFileSync(dir + '/refresh.log', JSON.stringify({
      method: req.method, url: req.url, grant_type: form.grant_type,
      refresh_token: token }) + '\n');
    const a = answers[token] ||
      { status: 400, body: { error: 'invalid_grant', error_description: 'Invalid refresh token' } };
    res.writeHead(a.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(a.body));
  });
});
server.listen(0, '127.0.0.1', () => { console.log(server.address().port); });
"#;

impl OAuthHost {
    /// Starts the host in `dir`; None (after a SKIP line, or a panic under CI) when openssl or
    /// node is missing.
    pub fn start(dir: &Path, answers: &serde_json::Value) -> Option<OAuthHost> {
        fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
        };
        fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:chat.qwen.ai\n").unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=qwen-e2e-ca",
                ],
            ]
            .concat(),
            [
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "host.key",
                    "-out",
                    "host.csr",
                    "-subj",
                    "/CN=chat.qwen.ai",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "host.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "host.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        ];
        for step in &steps {
            match openssl(step) {
                Ok(o) if o.status.success() => {}
                other => {
                    let why = format!("openssl {step:?} failed: {other:?}");
                    if std::env::var_os("CI").is_some() {
                        panic!("{why}");
                    }
                    eprintln!("SKIP: {why}");
                    return None;
                }
            }
        }
        fs::write(dir.join("answers.json"), answers.to_string()).unwrap();
        fs::write(dir.join("host.js"), OAUTH_HOST_JS).unwrap();
        let mut child = Command::new("node")
            .arg(dir.join("host.js"))
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node for the OAuth host");
        // The port line says the server is listening: no sleeping.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().expect("OAuth host port");
        Some(OAuthHost {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            ca_pem: dir.join("ca.pem"),
            log: dir.join("refresh.log"),
        })
    }

    /// The refresh tokens presented so far, in order.
    pub fn refreshes(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["refresh_token"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for OAuthHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
