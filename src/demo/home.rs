//! The demo's private world: a temporary home (0700) with its own HOME, CLI home, TMPDIR,
//! working directory and settings paths, children started in it with a scrubbed environment,
//! waits with deadlines, and Ctrl-C.
//!
//! Invariants:
//! - A child sees only the variables in [`KEPT`] from the caller's environment (so none of the
//!   user's keys, base URLs, proxies or pool variables), plus the home's own paths. Nothing a
//!   child reads or writes lies outside the home, except the real CLI's installation.
//! - Every wait has a deadline and ends early on SIGINT, SIGTERM or SIGHUP: the child's process
//!   group is stopped (TERM, then KILL after a grace) before the wait returns.
//! - The home is removed when [`Home`] is dropped, which every way out of the demo does.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::profile::Profile;

/// The caller's variables a child keeps: how to find programs and how to show text. Keys, base
/// URLs, proxies, `NODE_OPTIONS` and our pool variables are not among them.
pub const KEPT: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TERM",
    "NO_COLOR",
    "TZ",
    "USER",
    "LOGNAME",
];

/// Variables a CLI needs to run headless and offline in the demo's empty working directory, by
/// profile name: gemini refuses an untrusted folder (exit 55); claude otherwise reaches for
/// api.anthropic.com (telemetry) beside the demo's provider.
const CLI_ENV: &[(&str, &str, &str)] = &[
    ("gemini", "GEMINI_CLI_TRUST_WORKSPACE", "true"),
    ("claude", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
];

/// The CLI whose own config file must say onboarding is done and the working directory is
/// trusted before it runs offline without a dialog, and that file's name in its home: claude's
/// `.claude.json` (in `CLAUDE_CONFIG_DIR`).
const ONBOARDED: (&str, &str) = ("claude", ".claude.json");

/// How long a stopped child's group has between TERM and KILL.
const GRACE: Duration = Duration::from_secs(5);
/// How often a wait looks at the child and the signal flag.
const TICK: Duration = Duration::from_millis(20);

/// SIGINT, SIGTERM and SIGHUP, caught: the demo stops its child and cleans up instead of dying.
#[derive(Clone)]
pub struct Stop(Arc<AtomicUsize>);

impl Stop {
    pub fn install() -> Stop {
        let flag = Arc::new(AtomicUsize::new(0));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            // A signal that cannot be caught keeps its default action: the demo then dies as
            // any program would, and only the temporary home (in TMPDIR) is left.
            let _ = signal_hook::flag::register_usize(sig, Arc::clone(&flag), sig as usize);
        }
        // A reader that goes away (`| head`) must not end the demo before it cleans up: with a
        // handler (not SIG_IGN, which children would inherit) a write fails with EPIPE instead,
        // and the output helpers ignore that.
        let _ = signal_hook::flag::register(
            signal_hook::consts::SIGPIPE,
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
        Stop(flag)
    }

    /// The signal received, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            sig => i32::try_from(sig).ok(),
        }
    }
}

/// The temporary home and the paths inside it.
pub struct Home {
    dir: tempfile::TempDir,
    /// `$HOME` of the children.
    pub home: PathBuf,
    /// The CLI's home (`$HOME/.qwen`).
    pub cli_home: PathBuf,
    /// The children's working directory (empty: no workspace settings, no `.env`).
    pub work: PathBuf,
    profile: &'static Profile,
}

impl Home {
    /// Creates the home under TMPDIR, mode 0700 (tempfile's default), with its directories.
    pub fn create(profile: &'static Profile) -> io::Result<Home> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-rotation-demo-", profile.name))
            .tempdir()?;
        let home = dir.path().join("home");
        let cli_home = home.join(profile.home.dir);
        let work = dir.path().join("work");
        for d in [&home, &cli_home, &work, &dir.path().join("tmp")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        // A CLI that uses an API key only while its settings select it (gemini) gets the
        // selection in the home's own user settings, as its `/auth` writes it: a private system
        // settings file would be read only as root.
        if profile.api.relay_needs_selected {
            let spec = &profile.settings;
            let mut doc = serde_json::Value::String(spec.auth_api_key.to_string());
            for key in spec.selected.iter().rev() {
                doc = serde_json::json!({ *key: doc });
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(cli_home.join(spec.file))?;
            io::Write::write_all(&mut file, doc.to_string().as_bytes())?;
        }
        Ok(Home {
            dir,
            home,
            cli_home,
            work,
            profile,
        })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Seeds the CLI's own config as a person's first run leaves it, for the CLI that needs it
    /// ([`ONBOARDED`]): onboarding done at `version` (the real CLI's `--version`, first word), the
    /// working directory trusted. Other CLIs: nothing.
    pub fn onboard(&self, version: &str) -> io::Result<()> {
        let (name, file) = ONBOARDED;
        if self.profile.name != name {
            return Ok(());
        }
        // The directory as the CLI's getcwd() reports it (TMPDIR may be a link).
        let work = std::fs::canonicalize(&self.work)?;
        let version = version.split_whitespace().next().unwrap_or_default();
        let config = serde_json::json!({
            "hasCompletedOnboarding": true,
            "lastOnboardingVersion": version,
            "projects": { work.to_string_lossy(): { "hasTrustDialogAccepted": true } },
        });
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.cli_home.join(file))?;
        io::Write::write_all(&mut out, config.to_string().as_bytes())
    }

    /// `program` with the scrubbed environment, in the home, in its own process group, stdin
    /// null, both outputs piped.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        for (k, v) in std::env::vars_os() {
            if KEPT.iter().any(|kept| OsStr::new(kept) == k) {
                cmd.env(k, v);
            }
        }
        // The real CLI's path when the person named it: not a secret, and where it lives.
        if let Some(real) = std::env::var_os(self.profile.pool_vars.real) {
            cmd.env(self.profile.pool_vars.real, real);
        }
        let settings = &self.profile.settings;
        let home_var = if self.profile.home.var_is_parent {
            &self.home
        } else {
            &self.cli_home
        };
        cmd.env("HOME", &self.home)
            .env(self.profile.home.var, home_var)
            .env("TMPDIR", self.root().join("tmp"));
        // No system settings of the machine: the names a CLI has point at files that do not
        // exist (claude has none: no variable moves its managed settings).
        for (var, file) in [
            (settings.system_var, "system-settings.json"),
            (settings.defaults_var, "system-defaults.json"),
        ] {
            if !var.is_empty() {
                cmd.env(var, self.root().join(file));
            }
        }
        cmd.envs(
            CLI_ENV
                .iter()
                .filter(|(name, _, _)| *name == self.profile.name)
                .map(|(_, k, v)| (k, v)),
        )
        .current_dir(&self.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        cmd
    }
}

impl Home {
    /// This binary (`me`) run as the profile's CLI: argv[0] is the CLI's name, which is how the
    /// binary picks its profile whatever its file is called.
    pub fn shim(&self, me: &Path) -> Command {
        let mut cmd = self.command(me);
        cmd.arg0(self.profile.name);
        cmd
    }
}

/// How a wait ended.
pub enum Waited {
    Exited(ExitStatus),
    /// The deadline passed; the child was stopped.
    TimedOut,
    /// A signal arrived; the child was stopped.
    Interrupted(i32),
}

/// A started child whose outputs are read in the background.
pub struct Running {
    child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
}

/// What a finished child printed.
pub struct Finished {
    pub waited: Waited,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Running {
    /// Spawns `cmd` (from [`Home::command`]) and writes `input` to its stdin, if any.
    pub fn spawn(mut cmd: Command, input: Option<&[u8]>) -> io::Result<Running> {
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn()?;
        if let (Some(bytes), Some(mut w)) = (input, child.stdin.take()) {
            // A few bytes: the pipe holds them, and EPIPE (the child left early) is its answer.
            let _ = io::Write::write_all(&mut w, bytes);
        }
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Ok(Running {
            child,
            stdout,
            stderr,
        })
    }

    /// Waits for the exit until `deadline` or a signal, calling `tick` every few milliseconds
    /// meanwhile; then collects the outputs.
    pub fn finish_with(
        mut self,
        deadline: Instant,
        stop: &Stop,
        mut tick: impl FnMut(),
    ) -> Finished {
        let waited = loop {
            tick();
            if let Ok(Some(status)) = self.child.try_wait() {
                break Waited::Exited(status);
            }
            if let Some(sig) = stop.signal() {
                self.stop_group();
                break Waited::Interrupted(sig);
            }
            if Instant::now() >= deadline {
                self.stop_group();
                break Waited::TimedOut;
            }
            thread::sleep(TICK);
        };
        tick();
        // Whatever the child left in its group (a node grandchild) goes with it.
        self.kill_group(Signal::SIGKILL);
        let grace = Instant::now() + GRACE;
        let collect = |rx: &mpsc::Receiver<Vec<u8>>| {
            rx.recv_timeout(grace.saturating_duration_since(Instant::now()))
                .unwrap_or_default()
        };
        Finished {
            stdout: collect(&self.stdout),
            stderr: collect(&self.stderr),
            waited,
        }
    }

    /// TERM to the group, KILL after the grace, and the child reaped.
    fn stop_group(&mut self) {
        self.kill_group(Signal::SIGTERM);
        let until = Instant::now() + GRACE;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(TICK);
        }
        self.kill_group(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    fn kill_group(&self, sig: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), sig);
        }
    }
}

/// Reads a pipe to its end in a thread (bounded: a child that floods it is cut at 1 MiB).
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let mut pipe = pipe;
            let _ = pipe.by_ref().take(1 << 20).read_to_end(&mut buf);
            // Past the cap, keep reading so the child never blocks on a full pipe.
            let _ = io::copy(&mut pipe, &mut io::sink());
            let _ = tx.send(buf);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{CLAUDE, GEMINI, QWEN};
    use std::os::unix::fs::PermissionsExt;

    /// The variables `cmd` sets, by name (None: removed).
    fn envs(cmd: &Command) -> Vec<(String, Option<String>)> {
        cmd.get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn claude_runs_offline_in_the_demos_config_dir() {
        let home = Home::create(&CLAUDE).unwrap();
        let vars = envs(&home.command(Path::new("claude")));
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(
            get("CLAUDE_CONFIG_DIR").as_deref(),
            Some(home.cli_home.to_str().unwrap())
        );
        assert_eq!(
            get("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC").as_deref(),
            Some("1")
        );
        // claude has no system-settings variable: none is set under an empty name.
        assert!(vars.iter().all(|(k, _)| !k.is_empty()), "{vars:?}");
        // The other CLIs do not get claude's variable.
        for other in [&QWEN, &GEMINI] {
            let h = Home::create(other).unwrap();
            let vars = envs(&h.command(Path::new(other.name)));
            assert!(
                vars.iter()
                    .all(|(k, _)| k != "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn claudes_config_says_onboarding_done_and_the_working_directory_trusted() {
        let home = Home::create(&CLAUDE).unwrap();
        home.onboard("2.1.332 (Claude Code)").unwrap();
        let file = home.cli_home.join(".claude.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(doc["hasCompletedOnboarding"], true);
        assert_eq!(doc["lastOnboardingVersion"], "2.1.332");
        let work = std::fs::canonicalize(&home.work).unwrap();
        assert_eq!(
            doc["projects"][work.to_str().unwrap()]["hasTrustDialogAccepted"],
            true,
            "{doc}"
        );
        // Another CLI's home gets no such file.
        let other = Home::create(&GEMINI).unwrap();
        other.onboard("0.61.0").unwrap();
        assert!(!other.cli_home.join(".claude.json").exists());
    }
}
