//! A pinned real CLI release for the end-to-end tests, installed on first use by its
//! `.ci/install-<name>` script into `$<NAME>_E2E_DIR` (default `<crate>/.cache/<name>`), found
//! at `<dir>/<version>/bin/<name>` (the script's launcher). Used by real_gemini.rs and
//! real_claude.rs.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One pinned CLI: its command name (`claude`), the release, and the variable that moves its
/// install directory (`CLAUDE_E2E_DIR`).
pub struct PinnedCli {
    pub name: &'static str,
    pub version: &'static str,
    pub dir_var: &'static str,
}

impl PinnedCli {
    /// Where `.ci/install-<name>` puts the release: `$<dir_var>`, else `<crate>/.cache/<name>`.
    pub fn e2e_dir(&self) -> PathBuf {
        match std::env::var_os(self.dir_var) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".cache")
                .join(self.name),
        }
    }

    /// The launcher of the pinned release, installed on first use (idempotent; one attempt per
    /// CLI and test binary). Missing after that: under CI (`CI` set) this panics (the suite must
    /// not pass by skipping); elsewhere it prints one SKIP line and returns None.
    pub fn installed(&self) -> Option<PathBuf> {
        let (name, version) = (self.name, self.version);
        let path = self.e2e_dir().join(version).join("bin").join(name);
        if is_executable(&path) {
            return Some(path);
        }
        // Held while the script runs: a second test waits for the first one's install.
        static TRIED: Mutex<Vec<(&str, bool)>> = Mutex::new(Vec::new());
        let ok = {
            let mut tried = TRIED.lock().unwrap_or_else(|e| e.into_inner());
            match tried.iter().find(|(n, _)| *n == name) {
                Some(&(_, ok)) => ok,
                None => {
                    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join(".ci")
                        .join(format!("install-{name}"));
                    eprintln!(
                        "installing the pinned real {name} with {}",
                        script.display()
                    );
                    let ok = Command::new("bash")
                        .arg(&script)
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    tried.push((name, ok));
                    ok
                }
            }
        };
        if ok && is_executable(&path) {
            return Some(path);
        }
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!(
                "real {name} {version} not found at {}: run .ci/install-{name} first",
                path.display()
            );
        }
        eprintln!(
            "SKIP: real {name} {version} not installed at {} (run .ci/install-{name})",
            path.display()
        );
        None
    }
}

pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
