//! A sandbox for running the built shim: a tempdir with `bin/qwen` (a symlink to the shim),
//! `real/qwen` (a small fake steered by the test's script), and HOME / QWEN_HOME inside it.
//! Use from a test file with `#[path = "support/sandbox.rs"] mod sandbox;`.
//! Every output captured here and every file the shim writes in the home are scanned for the
//! fixture secrets (support/secrets.rs).
#![allow(dead_code)]

#[path = "child.rs"]
#[allow(clippy::duplicate_mod)] // each support module may be loaded beside the others
pub mod child;
#[path = "secrets.rs"]
pub mod secrets;

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const SHIM: &str = env!("CARGO_BIN_EXE_qwen");

/// The commands the fake qwens and the test shells run.
const TOOLS: &[&str] = &[
    "sh", "bash", "cat", "sleep", "head", "date", "kill", "printf", "echo", "yes", "stty", "env",
    "pwd", "tr", "seq", "rm", "mkdir", "touch", "true", "false", "test", "[", "wc", "tee", "mv",
    "cp", "ln", "chmod", "id", "stat", "setsid", "grep", "sed", "od", "tail", "dd", "ls",
    "readlink", "cut", "sort", "timeout", "nohup", "basename", "dirname", "uname", "tty",
];

/// Counts its runs; the runs listed in $FAIL report a spent quota (status 1); the others
/// answer on stdout, say something on stderr and exit 3.
pub const COUNTING_FAKE: &str = r#"n=$(cat "$SANDBOX/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$SANDBOX/count"
case " $FAIL " in *" $n "*) printf '%s\n' "[API Error: 429 Free allocated quota exceeded.]" >&2; exit 1 ;; esac
echo "answer $n"; echo "diag $n" >&2; exit 3"#;

/// A sandbox with [`COUNTING_FAKE`] as qwen and two OAuth accounts.
pub fn counting_pool() -> Sandbox {
    let sb = Sandbox::new(COUNTING_FAKE);
    sb.add_oauth_slot(1, "tok_one");
    sb.add_oauth_slot(2, "tok_two");
    sb
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Drop for Sandbox {
    /// The last look at the home: nothing the shim wrote beside the credentials holds one.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            secrets::assert_home_clean(&self.qwen_home());
        }
    }
}

impl Sandbox {
    /// A sandbox whose real qwen runs `script` (a POSIX sh body).
    pub fn new(script: &str) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let sb = Sandbox { dir };
        fs::create_dir_all(sb.path("bin")).unwrap();
        fs::create_dir_all(sb.path("real")).unwrap();
        fs::create_dir_all(sb.home()).unwrap();
        fs::create_dir_all(sb.path("work")).unwrap();
        std::os::unix::fs::symlink(SHIM, sb.path("bin/qwen")).unwrap();
        // The fakes' tools, without the rest of /usr/bin: a qwen installed on this machine
        // (npm's /usr/bin/qwen) must not be found by the shim under test.
        fs::create_dir_all(sb.path("tools")).unwrap();
        for tool in TOOLS {
            if let Some(found) = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
            {
                std::os::unix::fs::symlink(found, sb.path("tools").join(tool)).unwrap();
            }
        }
        sb.write_fake(&sb.path("real/qwen"), script);
        sb
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    pub fn qwen_home(&self) -> PathBuf {
        self.path("home/.qwen")
    }

    pub fn write_fake(&self, at: &Path, script: &str) {
        let source = at.with_extension("source");
        fs::write(&source, format!("#!/bin/sh\n{script}\n")).unwrap();
        install_executable(&source, at);
    }

    /// Adds OAuth slot `n` with `token` as its access token (this turns the relay path on).
    pub fn add_oauth_slot(&self, n: usize, token: &str) {
        let accounts = self.qwen_home().join("accounts");
        fs::create_dir_all(&accounts).unwrap();
        fs::set_permissions(self.qwen_home(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&accounts, fs::Permissions::from_mode(0o700)).unwrap();
        let p = accounts.join(format!("oauth_creds_{n}.json"));
        fs::write(&p, creds(token)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The live credentials file, if any.
    pub fn live_creds(&self) -> Option<String> {
        fs::read_to_string(self.qwen_home().join("oauth_creds.json")).ok()
    }

    /// PATH: the shim's dir first, then the fake's, then the tools the fakes use.
    pub fn path_var(&self) -> String {
        format!(
            "{}:{}:{}",
            self.path("bin").display(),
            self.path("real").display(),
            self.path("tools").display()
        )
    }

    /// A command for the shim (via PATH, as a caller would run it) in a clean environment.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(self.path("bin/qwen"));
        c.args(args)
            .env_clear()
            .env("PATH", self.path_var())
            .env("HOME", self.home())
            .env("QWEN_HOME", self.qwen_home())
            .env("SANDBOX", self.dir.path())
            .current_dir(self.path("work"))
            .stdin(Stdio::null());
        child::default_signals(&mut c);
        c
    }

    /// Runs to completion with a deadline (a hung shim fails the test instead of hanging it).
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output_within(self.cmd(args), Duration::from_secs(60))
    }

    /// Starts the shim with piped stdout and stderr (for tests that signal or read it live).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shim")
    }

    /// As root, makes `cmd` run as `nobody` in this sandbox: its directories open to all, the
    /// qwen home (and `also`, relative paths) owned by nobody. Without root, changes nothing (the
    /// tests already run as an ordinary user).
    pub fn run_as_nobody(&self, cmd: &mut Command, also: &[&str]) {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        for rel in ["", "bin", "real", "tools", "home", "work"] {
            fs::set_permissions(self.path(rel), fs::Permissions::from_mode(0o777)).unwrap();
        }
        let st = Command::new("/usr/bin/chown")
            .args(["-R", "65534:65534"])
            .arg(self.qwen_home())
            .args(also.iter().map(|rel| self.path(rel)))
            .status()
            .unwrap();
        assert!(st.success(), "chown to nobody");
        cmd.uid(65534).gid(65534);
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }
}

/// Copies `from` to a new executable file `to` with cp(1). The test process never holds the
/// new file open for writing: a child forked meanwhile by another test thread would inherit that
/// descriptor until its exec, and executing the file then fails with ETXTBSY.
pub fn install_executable(from: impl AsRef<Path>, to: &Path) {
    let status = Command::new("cp")
        .arg(from.as_ref())
        .arg(to)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp to {}", to.display());
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A credentials file in qwen's format; both tokens are fixture secrets named after `token`.
pub fn creds(token: &str) -> String {
    format!(
        r#"{{"access_token":"{}","refresh_token":"{}","token_type":"Bearer","resource_url":"http://127.0.0.1:9","expiry_date":4102444800000}}"#,
        secrets::secret(token),
        secrets::secret(&format!("refresh-{token}"))
    )
}

/// Spawns `cmd` with piped output and waits, failing the test after `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = child::collect_within(cmd.spawn().expect("spawn shim"), limit, "the shim");
    secrets::assert_clean("the shim's stdout", &out.stdout);
    secrets::assert_clean("the shim's stderr", &out.stderr);
    out
}

/// Reads from `r` until `needle` has been seen, or fails after `limit`. Returns what was read.
pub fn read_until(r: impl Read + Send + 'static, needle: &'static str, limit: Duration) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = r;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    match rx.recv_timeout(limit) {
        Ok(s) if s.contains(needle) => {
            secrets::assert_clean("a stream of the shim", s.as_bytes());
            s
        }
        Ok(s) => panic!("stream ended before {needle:?}; got {s:?}"),
        Err(_) => panic!("{needle:?} did not arrive within {limit:?}"),
    }
}

/// Waits until `path` exists (the fake's way of saying "I am ready"), failing after `limit`.
/// Polls the file system: a fake shell script has no other channel back to the test.
pub fn await_file(path: &Path, limit: Duration) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` (a name such as "TERM") to `pid` with kill(1), as a user would.
pub fn kill(sig: &str, pid: u32) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {sig} {pid}");
}

/// Changing owners and users needs root; without it the test says it did not run.
pub fn root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: {test} needs root (chown, setpriv)");
    }
    root
}

/// `cmd` (from `Sandbox::cmd`) run as the unprivileged user `nobody` via setpriv(1).
pub fn as_nobody(cmd: &Command) -> Command {
    let mut c = Command::new("/usr/bin/setpriv");
    c.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ])
    .arg(cmd.get_program())
    .args(cmd.get_args())
    .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}
