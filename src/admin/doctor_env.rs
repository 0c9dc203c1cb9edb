//! Doctor checks on the environment: which real qwen (and the PATH order), whether PATH finds
//! the shim first, QWEN_HOME against $HOME/.qwen, a pool declared in the environment, a login
//! kept encrypted. The names, variables and versions are the profile's.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::profile::Profile;
use crate::vault::Vault;

use super::findings::{Finding, Findings, Level};
use super::help::{real_qwen_version, version_pair};
use super::status::pool_line;

/// Check 1: which real qwen, and why that one. Returns its version and the summary for
/// `--json`.
pub(super) fn check_real_qwen(p: &Profile, f: &mut Findings) -> (Option<String>, Value) {
    let (name, real) = (p.name, p.pool_vars.real);
    let mut real_version = None;
    let real_json = match crate::locate::real_qwen() {
        Ok(r) => {
            real_version = real_qwen_version(&r.path, p.npm_package);
            let why = match &r.via {
                crate::locate::Via::Override => format!("named by {real}"),
                crate::locate::Via::Path(dir) => format!(
                    "the first {name} on PATH after the shim, in {}",
                    dir.display()
                ),
            };
            f.push(
                Finding::new(
                    "real_qwen",
                    Level::Ok,
                    format!(
                        "real {name}: {} ({why}){}",
                        r.path.display(),
                        real_version
                            .as_ref()
                            .map(|v| format!(", version {v}"))
                            .unwrap_or_default()
                    ),
                ),
                None,
            );
            for (p, reason) in &r.skipped {
                f.push(
                    Finding::new(
                        "real_qwen",
                        Level::Info,
                        format!("skipped {}: {reason}", p.display()),
                    ),
                    None,
                );
            }
            if !r.searched.is_empty() {
                let order: Vec<String> =
                    r.searched.iter().map(|d| d.display().to_string()).collect();
                f.push(
                    Finding::new(
                        "path",
                        Level::Info,
                        format!("PATH searched in order: {}", order.join(":")),
                    ),
                    None,
                );
            }
            json!({
                "path": r.path.display().to_string(),
                "via": match &r.via { crate::locate::Via::Override => real.to_string(), crate::locate::Via::Path(d) => d.display().to_string() },
                "version": real_version,
                "searched": r.searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
                "skipped": r.skipped.iter().map(|(p, why)| json!({"path": p.display().to_string(), "reason": why})).collect::<Vec<_>>(),
            })
        }
        Err(e) => {
            f.push(
                Finding::new("real_qwen", Level::Problem, format!("{e}"))
                    .fix(format!("npm install -g {}, or set {real}", p.npm_package)),
                None,
            );
            Value::Null
        }
    };

    (real_version, real_json)
}

/// Check 2: is the shim the `qwen` that PATH finds first?
pub(super) fn check_path_first(p: &Profile, f: &mut Findings) {
    if let Some(first) = first_qwen_on_path(p.name)
        && let Ok(me) = std::env::current_exe()
        && me.file_name().is_some_and(|n| n == p.name)
    {
        let same = fs::canonicalize(&first).ok() == fs::canonicalize(&me).ok();
        if !same {
            let dir = me
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            f.push(
                Finding::new(
                    "path",
                    Level::Problem,
                    format!(
                        "PATH finds {} before this shim ({})",
                        first.display(),
                        me.display()
                    ),
                )
                .fix(format!(
                    "put {dir} before {} in PATH",
                    first
                        .parent()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                )),
                None,
            );
        }
    }
}

/// Check 3: QWEN_HOME vs $HOME/.qwen (qwen 0.12 ignores QWEN_HOME): the profile's home
/// variable against its directory, for a CLI whose older versions ignore the variable.
pub(super) fn check_qwen_home(p: &Profile, real_version: Option<&str>, f: &mut Findings) {
    let (name, var, dir) = (p.name, p.home.var, p.home.dir);
    if let Some(since) = &p.home.var_since
        && let Some(qh) = std::env::var_os(var).filter(|v| !v.is_empty())
        && let Some(home) = std::env::home_dir()
    {
        let dot = home.join(dir);
        // Before the first run neither exists: the same path is then the same home.
        let resolved = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.components().collect());
        let same = resolved(Path::new(&qh)) == resolved(&dot);
        if !same {
            let old = real_version
                .and_then(version_pair)
                .is_none_or(|v| v < since.version);
            let msg = format!(
                "{var}={} but $HOME/{dir} is {}: {name} {} ignore {var} and read $HOME/{dir}",
                PathBuf::from(&qh).display(),
                dot.display(),
                since.older
            );
            let fix = format!(
                "point both at one directory (ln -s {} {}), or unset {var}",
                PathBuf::from(&qh).display(),
                dot.display()
            );
            f.push(
                Finding::new(
                    "qwen_home",
                    if old { Level::Problem } else { Level::Info },
                    msg,
                )
                .fix(fix),
                None,
            );
        }
    }
}

/// Check 3b: a pool declared in the environment, and where the pool's state is kept (a shared
/// pool: can it be reached, and does it know the same accounts as this host).
pub(super) fn check_pool(v: &Vault, f: &mut Findings) {
    if let Some(line) = pool_line(v) {
        f.push(Finding::new("pool", Level::Info, line), None);
    }
    let shown = v.pool_shown();
    let Some(fleet) = v.fleet() else {
        f.push(
            Finding::new("shared_pool", Level::Info, format!("pool: {shown}")),
            None,
        );
        return;
    };
    let vars = &v.paths.profile.pool_vars;
    if let Some(problem) = fleet.problem {
        f.push(
            Finding::new(
                "shared_pool",
                Level::Problem,
                format!("pool: {shown} cannot be used: {problem}; runs use the local state"),
            )
            .fix(format!(
                "start or reach that Redis, or fix its URL (pool: in rotation.yaml or {}), its password ({}, {}) or name ({})",
                vars.pool, vars.pool_password, vars.pool_password_file, vars.pool_name
            )),
            None,
        );
        return;
    }
    f.push(
        Finding::new("shared_pool", Level::Ok, format!("pool: {shown}")),
        None,
    );
    if !fleet.only_here.is_empty() || !fleet.only_there.is_empty() {
        let mut parts = Vec::new();
        if !fleet.only_here.is_empty() {
            parts.push(format!(
                "this host has {} that the pool does not know yet (the next run adds them)",
                fleet.only_here.join(", ")
            ));
        }
        if !fleet.only_there.is_empty() {
            parts.push(format!(
                "the pool has {} that this host lacks",
                fleet.only_there.join(", ")
            ));
        }
        f.push(
            Finding::new(
                "shared_pool_accounts",
                Level::Problem,
                format!("this host's accounts differ from the pool's: {}", parts.join("; ")),
            )
            .fix(
                "give every host the same accounts (the same keys, or OAuth slots with the same labels:                  --rotation-label N LABEL), or give the hosts with other accounts another pool name"
                    .to_string(),
            ),
            None,
        );
    }
}

/// The `qwen` (`name`) that a plain `qwen` command runs (first on PATH).
fn first_qwen_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Doctor's line for [`vault::encrypted_storage`].
pub(super) fn check_encrypted(v: &Vault, f: &mut Findings) {
    let p = v.paths.profile;
    let Some(why) = crate::vault::encrypted_storage(&v.paths) else {
        return;
    };
    f.push(
        Finding::new(
            "credentials",
            Level::Info,
            format!(
                "{} keeps its login encrypted ({why}): OAuth logins cannot be rotated by swapping {}; API keys rotate as usual",
                p.name, p.creds.file
            ),
        ),
        None,
    );
}

/// Settings that make the CLI use another credential than its stored login (claude's
/// `apiKeyHelper`, in any settings file it merges): while one is set, the pool's logins are not
/// used. Said only when the pool holds logins.
pub(super) fn check_login_precedence(v: &Vault, f: &mut Findings) {
    let p = v.paths.profile;
    let keys = p.settings.beats_login;
    let has_logins = v.scan_slots().is_ok_and(|s| {
        s.values()
            .flatten()
            .any(|k| *k == crate::model::Kind::OAuth)
    });
    if keys.is_empty() || !has_logins {
        return;
    }
    let cwd = std::env::current_dir().ok();
    for (file, doc) in crate::settings::layers(&v.paths, cwd.as_deref()) {
        for key in keys
            .iter()
            .filter(|k| doc.get(**k).is_some_and(|x| !x.is_null()))
        {
            f.push(
                Finding::new(
                    "credentials",
                    Level::Problem,
                    format!(
                        "{} sets {key}, which {name} uses instead of its stored login: the pool's logins are not used while it is there; remove it to rotate them (API-key accounts rotate as usual)",
                        crate::text::printable_path(&file),
                        name = p.name
                    ),
                ),
                None,
            );
        }
    }
}
