//! Doctor checks on the home: that it exists, permissions and owners, locks, leftovers of an
//! interrupted write, state.yaml, the slots and the live file, rotation.log, rotation.yaml and
//! the settings API-key accounts need. Checks only look; repairs are returned, never applied.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::config::{Config, Paths};
use crate::files;
use crate::model::Kind;
use crate::vault::audit::events;
use crate::vault::state::{Loaded, State, Status};
use crate::vault::{self, LiveFile, Scan, Scope, Vault};

use super::findings::{Finding, Findings, Level, Repair};
use super::status::watch_mode;

/// Check 4: the home itself; false when it does not exist yet (nothing else to check).
pub(super) fn check_home(paths: &Paths, f: &mut Findings) -> bool {
    let name = paths.profile.name;
    if fs::metadata(&paths.home).is_err() {
        f.push(
            Finding::new(
                "home",
                Level::Info,
                format!(
                    "{} does not exist yet; it is created (0700) by the first {name} --rotation-add",
                    paths.home.display()
                ),
            ),
            None,
        );
        return false;
    }
    true
}

/// Check 5: permissions and ownership. Every file belongs to the home's owner (what the shim
/// keeps when root works in another user's home, as in a container with a mounted home).
/// Returns that owner and the slots found.
pub(super) fn check_permissions(v: &Vault, f: &mut Findings) -> (u32, Scan) {
    let paths = &v.paths;
    let (name, home_var) = (paths.profile.name, paths.profile.home.var);
    let uid = nix::unistd::geteuid().as_raw();
    let owner = fs::metadata(&paths.home).map_or(uid, |m| m.uid());
    if owner != uid {
        let (level, line) = if uid == 0 {
            (
                Level::Info,
                format!(
                    "{} belongs to user {owner}; running as root, files written there keep that owner",
                    paths.home.display()
                ),
            )
        } else {
            (
                Level::Problem,
                format!(
                    "{} belongs to user {owner} (you are {uid}): its files may be unreadable or unwritable for you",
                    paths.home.display()
                ),
            )
        };
        let finding = Finding::new("permissions", level, line);
        let finding = if uid == 0 {
            finding
        } else {
            finding.fix(format!(
                "run {name} as user {owner}, or point {home_var} at a home of your own"
            ))
        };
        f.push(finding, None);
    }
    let mut wide = 0;
    let dirs = [
        paths.home.clone(),
        paths.accounts.clone(),
        paths.accounts.join("backup"),
        paths.accounts.join("removed"),
    ];
    let store = v.store_files();
    let mut files: Vec<PathBuf> =
        vec![paths.live_creds.clone(), store.state, store.log, store.lock];
    let slots = v.scan_slots().unwrap_or_default();
    for (n, kinds) in slots.iter().filter(|_| v.env_pool().is_none()) {
        files.extend(kinds.iter().map(|k| vault::slot_path(paths, *n, *k)));
        // An OAuth slot's companions (google_accounts_N.json) are kept private too.
        files.extend(
            paths
                .profile
                .creds
                .extra
                .iter()
                .map(|extra| paths.extra_slot(*n, extra)),
        );
    }
    for dir in ["backup", "removed"] {
        if let Ok(entries) = fs::read_dir(paths.accounts.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    for (path, want) in dirs
        .iter()
        .map(|d| (d, 0o700))
        .chain(files.iter().map(|p| (p, 0o600)))
    {
        let Ok(meta) = fs::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        // A hard link shares its inode with a file elsewhere: a chmod here would change that
        // file too (run as root, a planted link to /etc/passwd). Say so; repair nothing.
        if meta.is_file() && meta.nlink() > 1 {
            f.push(
                Finding::new(
                    "permissions",
                    Level::Problem,
                    format!(
                        "{} has {} hard links: it is also a file elsewhere",
                        path.display(),
                        meta.nlink()
                    ),
                )
                .fix(format!(
                    "replace it with a copy of its own: cp {0} {0}.copy && mv {0}.copy {0}",
                    path.display()
                )),
                None,
            );
            continue;
        }
        if meta.uid() != owner {
            f.push(
                Finding::new(
                    "permissions",
                    Level::Problem,
                    format!(
                        "{} belongs to user {}, the home to user {owner}",
                        path.display(),
                        meta.uid()
                    ),
                )
                .fix(format!("chown {owner} {}", path.display())),
                None,
            );
        }
        let mode = meta.mode() & 0o7777;
        if files::too_open(mode) && mode & 0o022 == 0 && *path == paths.home {
            // qwen itself creates its home 0755. What protects a credential is the file's own
            // 0600 (checked below, a problem when wider); a home others may only list shows
            // them names. So a note with the fix, not a verdict that flips after a plain
            // `qwen -p`; adding an account makes the home 0700 (vault::make_private). A home
            // others may write to is a problem: they could swap the files in it.
            wide += 1;
            f.push(Finding::new(
                    "permissions",
                    Level::Info,
                    format!(
                        "{} is {mode:04o}{}: other users can list its names; the files with credentials are what must be 0600",
                        path.display(),
                        if mode == 0o755 { format!(" ({name}'s default)") } else { String::new() }
                    ),
                )
                .fix(format!("chmod 700 {}", path.display())),
                Some(Repair::Chmod(path.clone(), 0o700)),
            );
        } else if files::too_open(mode) {
            wide += 1;
            f.push(
                Finding::new(
                    "permissions",
                    Level::Problem,
                    format!("{} is {mode:04o}: other users can read it", path.display()),
                )
                .fix(format!("chmod {want:o} {}", path.display())),
                Some(Repair::Chmod(path.clone(), want)),
            );
        }
    }
    if wide == 0 {
        f.push(
            Finding::new("permissions", Level::Ok, "files 0600, directories 0700"),
            None,
        );
    }

    (owner, slots)
}

/// Check 6: locks.
pub(super) fn check_locks(v: &Vault, f: &mut Findings) {
    let paths = &v.paths;
    match v.lock_holders() {
        holders if holders.is_empty() => {}
        holders => f.push(
            Finding::new(
                "locks",
                Level::Info,
                format!("rotation.lock is held now by {}", holders.join(", ")),
            )
            .fix("normal during a rotation; if it stays held, that process is stuck: kill it"),
            None,
        ),
    }
    // A CLI that takes no lock has none to be left over.
    let Some(lock) = paths.cli_lock.as_ref().filter(|l| l.exists()) else {
        return;
    };
    if vault::cli_lock_is_stale(lock, paths.profile) {
        f.push(
            Finding::new(
                "locks",
                Level::Problem,
                format!("{} is stale (its holder is gone)", lock.display()),
            )
            .fix(format!("rm {}", lock.display())),
            Some(Repair::Remove(lock.clone())),
        );
    } else {
        f.push(
            Finding::new(
                "locks",
                Level::Info,
                format!(
                    "{} exists: {} is saving credentials right now",
                    lock.file_name().unwrap_or_default().to_string_lossy(),
                    paths.profile.name
                ),
            ),
            None,
        );
    }
}

/// Check 7: leftovers of an interrupted write or login (they may hold credentials).
pub(super) fn check_leftovers(paths: &Paths, f: &mut Findings) {
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a > Duration::from_secs(60))
    };
    for dir in [&paths.home, &paths.accounts] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name.starts_with(files::TEMP_PREFIX) && old(&p) {
                f.push(
                    Finding::new(
                        "leftovers",
                        Level::Problem,
                        format!(
                            "{} is a leftover temporary file of an interrupted write",
                            p.display()
                        ),
                    )
                    .fix(format!("rm {}", p.display())),
                    Some(Repair::Remove(p)),
                );
            } else if name.starts_with(".login-") && p.is_dir() && old(&p) {
                f.push(
                    Finding::new(
                        "leftovers",
                        Level::Problem,
                        format!("{} is a leftover temporary login home", p.display()),
                    )
                    .fix(format!("rm -r {}", p.display())),
                    Some(Repair::RemoveDir(p)),
                );
            }
        }
    }
}

/// Check 8: state.yaml; returns it when it loads.
pub(super) fn check_state(v: &Vault, owner: u32, slots: &Scan, f: &mut Findings) -> Option<State> {
    let state = v.store_files().state;
    match v.peek() {
        Loaded::Ok(st) => Some(st),
        Loaded::Missing => {
            if !slots.is_empty() {
                f.push(
                    Finding::new(
                        "state",
                        Level::Info,
                        "state.yaml does not exist yet; the next run creates it",
                    ),
                    None,
                );
            }
            None
        }
        Loaded::Corrupt(problem) => {
            let finding = Finding::new(
                "state",
                Level::Problem,
                format!("{} is unreadable: {problem}", state.display()),
            );
            // A file we may not read is not corrupt: rebuilding it would lose its counters.
            let opened = v.state_readable();
            let denied = opened.is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
            if denied {
                f.push(finding.fix(format!(
                        "it is not yours to read: give it to the home's owner (as root: chown {owner} {})",
                        state.display()
                    )),
                    None,
                );
            } else if problem.starts_with("cannot read") {
                // Not a file at all (a FIFO, a device): the problem names the `mv`; runs
                // refuse it rather than rebuild over it.
                f.push(
                    finding.fix("move it out of the way; the next run rebuilds it from accounts/"),
                    None,
                );
            } else {
                f.push(
                    finding.fix("rebuild it from accounts/ (a .corrupt copy is kept)"),
                    Some(Repair::Vault),
                );
            }
            None
        }
    }
}

/// Check 8: the slots and the live file.
pub(super) fn check_accounts(v: &Vault, f: &mut Findings) {
    let paths = &v.paths;
    let name = paths.profile.name;
    match v.overview() {
        Err(e) => f.push(
            Finding::new("accounts", Level::Problem, format!("{e}")),
            None,
        ),
        Ok(o) => {
            if o.slots.is_empty() {
                f.push(Finding::new("accounts", Level::Info, format!("no accounts yet: {name} runs without rotation"))
                        .fix(format!("{name} --rotation-add LABEL (current login) or {name} --rotation-add --login LABEL")),
                    None,
                );
            }
            for (n, info) in &o.slots {
                if let Some(problem) = &info.problem {
                    f.push(Finding::new("accounts", Level::Problem, format!("account {n} ({}): {problem}", info.path.display()))
                            .fix(format!("replace it with a valid login ({name} --rotation-add --login), then {name} --rotation-remove {n}")),
                        None,
                    );
                }
            }
            for (n, a) in &o.state.accounts {
                if let (_, Some(why)) = watch_mode(v, *n, a.kind) {
                    f.push(Finding::new(
                            "relay",
                            Level::Info,
                            format!("{} is watched by output scanning, not the request relay: {why}", a.describe(*n)),
                        )
                        .fix(match paths.profile.settings.providers {
                            Some(table) => format!("let the shim set the base URL: keep it in the account (--base-url), not in a {table} entry of {name}'s settings, and set relay: true"),
                            None => "do what the reason above says, and keep relay: true in rotation.yaml".to_string(),
                        }),
                        None,
                    );
                }
                if a.enabled && a.status_at(o.now) == Status::NeedsLogin {
                    f.push(Finding::new("accounts", Level::Problem, format!("{} needs a new login ({})", a.describe(*n), a.last_reason.as_deref().unwrap_or("refused")))
                            .fix(format!("{name} --rotation-add --login, then {name} --rotation-remove {n}; or {name} --rotation-reset {n} if it works again")),
                        None,
                    );
                }
            }
            let oauth_current = o
                .slots
                .get(&o.state.current_index)
                .is_some_and(|i| i.kind == Some(Kind::OAuth) && i.problem.is_none());
            match &o.live {
                LiveFile::Symlink { target, .. } => f.push(
                    Finding::new(
                        "live",
                        Level::Problem,
                        format!(
                            "{} is a symlink to {} ({name} replaces it with a file on refresh)",
                            paths.live_creds.display(),
                            target.display()
                        ),
                    )
                    .fix("make it a regular file with the same content"),
                    Some(Repair::Vault),
                ),
                LiveFile::Missing if oauth_current => f.push(
                    Finding::new(
                        "live",
                        Level::Problem,
                        format!(
                            "{} is missing ({name} deletes it when a refresh fails)",
                            paths.live_creds.display()
                        ),
                    )
                    .fix(format!("install account {} again", o.state.current_index)),
                    Some(Repair::Vault),
                ),
                LiveFile::Other => f.push(
                    Finding::new(
                        "live",
                        Level::Problem,
                        format!("{} is not a regular file", paths.live_creds.display()),
                    )
                    .fix(format!(
                        "move it away: mv {0} {0}.bak",
                        paths.live_creds.display()
                    )),
                    None,
                ),
                LiveFile::Regular { bytes, .. } => {
                    if let Err(problem) = vault::check_oauth(bytes) {
                        let repair = oauth_current.then_some(Repair::Vault);
                        f.push(Finding::new("live", Level::Problem, format!("{}: {problem}", paths.live_creds.display()))
                                .fix(if oauth_current { "install the current account again (the file is kept in accounts/backup/)".to_string() } else { format!("log in again with {name}") }),
                            repair,
                        );
                    } else if o.live_owner.is_none() && !o.slots.is_empty() {
                        f.push(Finding::new("live", Level::Info, format!("{} holds a login that is not one of your accounts (kept in accounts/backup/ before it is replaced)", paths.profile.creds.file))
                                .fix(format!("{name} --rotation-add LABEL stores it as an account")),
                            None,
                        );
                    }
                }
                _ => {}
            }
            if o.state
                .accounts
                .values()
                .any(|a| a.kind == Some(Kind::ApiKey))
            {
                api_key_settings(&mut f.list, paths);
            }
        }
    }
}

/// Check 8: rotation.log against the switches state.yaml counts.
pub(super) fn check_log(v: &Vault, state: Option<State>, f: &mut Findings) {
    if let Some(st) = state {
        match v.history(Scope::Current) {
            Ok(log) => {
                let lines = log
                    .events
                    .iter()
                    .filter(|e| e.event == events::ACCOUNT_SWITCH)
                    .count() as u64;
                if lines != st.switches_total {
                    f.push(Finding::new(
                            "log",
                            Level::Info,
                            format!(
                                "state.yaml counts {} switches, rotation.log has {lines} (an interrupted write, or an edited file)",
                                st.switches_total
                            ),
                        ),
                        None,
                    );
                }
                if log.skipped > 0 {
                    f.push(
                        Finding::new(
                            "log",
                            Level::Info,
                            format!(
                                "rotation.log has {} unreadable lines (skipped)",
                                log.skipped
                            ),
                        ),
                        None,
                    );
                }
            }
            Err(e) => f.push(
                Finding::new(
                    "log",
                    Level::Problem,
                    format!("cannot read {}: {e}", v.store_files().log.display()),
                ),
                None,
            ),
        }
    }
}

/// Check 8: rotation.yaml.
pub(super) fn check_config(paths: &Paths, f: &mut Findings) {
    let (_, config_problem) = Config::load(&paths.config);
    if let Some(p) = config_problem {
        f.push(Finding::new("config", Level::Problem, p.clone()).fix(if p.contains("ermission denied") {
                "give rotation.yaml back to the home's owner (see the permissions lines), or delete it to use the defaults"
            } else {
                "fix what is named, or move rotation.yaml away to use the defaults"
            }),
            None,
        );
    }
}

/// API-key slots need qwen to pick OpenAI-compatible auth from the environment.
fn api_key_settings(f: &mut Vec<Finding>, paths: &Paths) {
    use crate::settings::{Doc, read};
    let (name, spec) = (paths.profile.name, &paths.profile.settings);
    // The same reader as the run's: a file with comments (which qwen accepts) is valid.
    let v = match read(&paths.settings) {
        Doc::Json(v) => v,
        Doc::Missing | Doc::Unreadable(_) => return,
        Doc::Invalid(_) => {
            f.push(
                Finding::new(
                    "settings",
                    Level::Problem,
                    format!("{} is not valid JSON", paths.settings.display()),
                )
                .fix(format!("fix it; {name} cannot start with it either")),
            );
            return;
        }
    };
    let selected = spec
        .selected
        .iter()
        .try_fold(&v, |cur, key| cur.get(key))
        .and_then(Value::as_str);
    if let Some(since) = &spec.oauth_hides_env
        && selected == Some(spec.auth_oauth)
    {
        let (old, (major, minor)) = (since.older, since.version);
        f.push(
            Finding::new(
                "settings",
                Level::Info,
                format!(
                    "{} selects {}: {name} {old} then ignores an API-key account's environment ({major}.{minor} uses it)",
                    spec.file, spec.auth_oauth
                ),
            )
            .fix(format!(
                "for API-key accounts with {name} {old}, set {} to \"{}\"",
                spec.selected.join("."),
                spec.auth_api_key
            )),
        );
    }
    if let Some((table, providers)) = spec.providers.and_then(|table| {
        let entries = v.get(table)?.get(spec.auth_api_key)?.as_array()?;
        Some((table, entries))
    }) {
        let keys: Vec<&str> = providers
            .iter()
            .filter_map(|p| p.get("envKey").and_then(Value::as_str))
            .collect();
        if !keys.is_empty() {
            f.push(Finding::new(
                "settings",
                Level::Info,
                format!(
                    "{} {table} read keys from {}; an API-key account must use the same name (--env-key when adding it)",
                    spec.file,
                    keys.join(", ")
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cli_without_a_lock_has_no_lock_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir_all(&home).unwrap();
        fs::write(home.join("oauth_creds.lock"), "some-uuid").unwrap();
        let locks = |paths: Paths| {
            let mut f = Findings::default();
            check_locks(&Vault::open(paths, Config::default()), &mut f);
            f.list.into_iter().map(|x| x.message).collect::<Vec<_>>()
        };
        assert_eq!(
            locks(Paths::at(&home)),
            ["oauth_creds.lock exists: qwen is saving credentials right now"]
        );
        // Neither that file nor the home itself is the lock of a CLI that takes none.
        let mut profile = crate::profile::QWEN.clone();
        profile.creds.lock = None;
        let lockless = Paths::of(Box::leak(Box::new(profile)), &home);
        assert_eq!(locks(lockless), Vec::<String>::new());
    }

    #[test]
    fn the_selected_oauth_note_is_for_a_cli_whose_versions_need_it() {
        let dir = tempfile::tempdir().unwrap();
        let settings = r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#;
        fs::write(dir.path().join("settings.json"), settings).unwrap();
        let notes = |paths: &Paths| {
            let mut f = Vec::new();
            api_key_settings(&mut f, paths);
            f.into_iter().map(|x| x.message).collect::<Vec<_>>()
        };
        assert_eq!(
            notes(&Paths::at(dir.path())),
            [
                "settings.json selects qwen-oauth: qwen 0.12 then ignores an API-key account's \
              environment (0.24 uses it)"
            ]
        );
        let mut profile = crate::profile::QWEN.clone();
        profile.settings.oauth_hides_env = None;
        let paths = Paths::of(Box::leak(Box::new(profile)), dir.path());
        assert_eq!(notes(&paths), Vec::<String>::new());
    }
}
