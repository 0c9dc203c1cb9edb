//! Installing a slot: the CLI's lock, syncing the live file back into its slot (validated, backed
//! up first), replacing the live file atomically, and the switch bookkeeping (`switch_to`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::{digest, ensure_dir, replace_file, unused_name, write_atomic};
use crate::model::Hit;
use crate::model::{Kind, Policy};

use super::audit::{Event, events};
use super::live::{CliLock, Live, LiveFile, other_account, owner_of};
use super::slots::{check_oauth, read_bounded, read_slot};
use super::state::Status;
use super::tx::Tx;

/// Backups kept in `accounts/backup/` (oldest pruned first).
pub(super) const MAX_BACKUPS: usize = 20;

impl Tx<'_> {
    /// Takes the CLI's lock on its live file (once per transaction); a CLI that takes no lock
    /// has nothing to wait for.
    pub(super) fn cli_lock(&mut self) -> Result<()> {
        let vault = self.vault;
        let Some(path) = &vault.paths.cli_lock else {
            return Ok(());
        };
        if self.qlock.is_none() {
            self.qlock = Some(CliLock::acquire(
                path,
                vault.paths.profile,
                vault.config.lock_timeout,
            )?);
            self.point("qwen_locked");
        }
        Ok(())
    }

    /// Settles the live file (once per transaction, under the CLI's lock if it takes one): migrates a symlink
    /// to a regular file, and syncs changed, valid content back into the slot it belongs to.
    pub(super) fn sync_live(&mut self) -> Result<Live> {
        if let Some(live) = self.live {
            return Ok(live);
        }
        self.cli_lock()?;
        let paths = &self.vault.paths;
        let file = LiveFile::read(&paths.live_creds)
            .map_err(|e| Error::io("read", &paths.live_creds, e))?;
        let was_symlink = matches!(file, LiveFile::Symlink { .. });
        let Some(bytes) = file.bytes().map(<[u8]>::to_vec) else {
            let live = if matches!(file, LiveFile::Other) {
                Live::Invalid
            } else {
                Live::Missing
            };
            self.live = Some(live);
            return Ok(live);
        };
        let d = digest(&bytes);
        let known = self.st.live_slot.filter(|n| {
            self.st
                .accounts
                .get(n)
                .is_some_and(|a| a.installed_digest.as_deref() == Some(d.as_str()))
                && self.infos.get(n).is_some_and(|i| i.problem.is_none())
        });
        let live = if let Some(n) = known {
            Live::Owned(n)
        } else if check_oauth(&bytes).is_err() {
            Live::Invalid
        } else {
            // Same bytes or same refresh token as a slot; else (the refresh token rotated) the
            // slot we installed last, if it is a valid OAuth slot.
            let by_content = owner_of(&bytes, &self.infos, self.st.live_slot);
            let lineage_unknown = by_content.is_none();
            // The fallback needs the slot file unchanged since we installed it: a file the
            // person replaced meanwhile (a new login) is newer than anything in the live file.
            // Only for a CLI that may change the refresh token: gemini never does, so an
            // unknown refresh token there is another login (`Creds::refresh_rotates`).
            let rotates = paths.profile.creds.refresh_rotates;
            let owner = by_content.or_else(|| {
                self.st.live_slot.filter(|_| rotates).filter(|n| {
                    let installed = self
                        .st
                        .accounts
                        .get(n)
                        .and_then(|a| a.installed_digest.clone());
                    self.infos.get(n).is_some_and(|i| {
                        i.kind == Some(Kind::OAuth) && i.problem.is_none() && i.digest == installed
                    }) && !other_account(&paths.profile.creds, &paths.oauth_slot(*n), &bytes)
                })
            });
            match owner {
                None => Live::Foreign,
                Some(n) => {
                    let same =
                        self.infos.get(&n).and_then(|i| i.digest.as_deref()) == Some(d.as_str());
                    if !same {
                        let slot = paths.oauth_slot(n);
                        if lineage_unknown {
                            // Probably qwen saved a refresh with a new refresh token; keep the
                            // previous slot content in case it was a different login.
                            self.backup(&slot, &format!("oauth_creds_{n}"))?;
                        }
                        write_atomic(&slot, &bytes)?;
                        self.point("synced_back");
                        if let Some(info) = self.infos.get_mut(&n) {
                            info.digest = Some(d.clone());
                            info.refresh = check_oauth(&bytes).ok();
                        }
                        self.log(Event::new(events::SYNC_BACK, self.now).slot(n).reason(
                            if lineage_unknown {
                                "refreshed credentials (new refresh token)"
                            } else {
                                "refreshed credentials"
                            },
                        ));
                    }
                    if let Some(a) = self.st.accounts.get_mut(&n) {
                        a.installed_digest = Some(d.clone());
                    }
                    self.st.live_slot = Some(n);
                    self.dirty = true;
                    Live::Owned(n)
                }
            }
        };
        if was_symlink {
            // Replace the link itself with a regular file of the same content; the slot file
            // it pointed to is untouched.
            replace_file(&paths.live_creds, &bytes)?;
            self.home_unsynced = true;
            self.point("migrated");
            self.log(
                Event::new(events::MIGRATED_SYMLINK, self.now)
                    .reason("oauth_creds.json was a symlink"),
            );
        }
        self.live = Some(live);
        Ok(live)
    }

    /// Keeps a copy of `path` in `accounts/backup/` (pruned to the newest few).
    pub(super) fn backup(&mut self, path: &Path, stem: &str) -> Result<()> {
        let Ok(bytes) = read_bounded(path) else {
            return Ok(());
        };
        let dir = self.vault.paths.accounts.join("backup");
        ensure_dir(&dir)?;
        let path = unused_name(&dir, stem, ".json");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_atomic(&path, &bytes)?;
        self.point("backup_written");
        self.log(Event::new(events::BACKUP, self.now).reason(format!(
            "kept the previous content as accounts/backup/{name}"
        )));
        if let Ok(entries) = fs::read_dir(&dir) {
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            names.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
            let excess = names.len().saturating_sub(MAX_BACKUPS);
            for old in names.into_iter().take(excess) {
                let _ = fs::remove_file(old);
            }
        }
        Ok(())
    }

    /// Makes `n` the slot whose credentials a run gets. OAuth: writes its file as the live
    /// file (after the live content is synced back or kept). API key: nothing on disk.
    pub(super) fn install(&mut self, n: usize) -> Result<()> {
        let info = self
            .infos
            .get(&n)
            .cloned()
            .ok_or_else(|| Error::NoSuchSlot(n.to_string()))?;
        if let Some(problem) = info.problem {
            return Err(Error::Invalid {
                path: info.path,
                problem,
            });
        }
        if info.kind != Some(Kind::OAuth) {
            return Ok(());
        }
        let live = self.sync_live()?;
        let installed = self
            .st
            .accounts
            .get(&n)
            .and_then(|a| a.installed_digest.clone());
        if live == Live::Owned(n) && self.st.live_slot == Some(n) && info.digest == installed {
            return Ok(());
        }
        let bytes = read_slot(&info.path).map_err(|e| Error::io("read", &info.path, e))?;
        if let Err(problem) = check_oauth(&bytes) {
            return Err(Error::Invalid {
                path: info.path,
                problem: problem.into(),
            });
        }
        if matches!(live, Live::Foreign | Live::Invalid) {
            // Not a slot's content: keep it before it is replaced (a login made by hand, or a
            // file we cannot judge), so installing an account never destroys anything.
            let paths = &self.vault.paths;
            let live_path = paths.live_creds.clone();
            let backups = paths.accounts.join("backup");
            if fs::metadata(&live_path).is_ok_and(|m| m.len() > 0) {
                self.backup(&live_path, "oauth_creds.live")?;
                if live == Live::Foreign {
                    crate::error::warn(format!(
                        "{} held a login that is not one of your accounts; kept it in {} (add it with {} --rotation-add)",
                        live_path.display(),
                        backups.display(),
                        paths.profile.name
                    ));
                }
            }
        }
        replace_file(&self.vault.paths.live_creds, &bytes)?;
        self.home_unsynced = true;
        self.point("live_written");
        self.install_extras(n);
        if let Some(a) = self.st.accounts.get_mut(&n) {
            a.installed_digest = Some(digest(&bytes));
        }
        self.st.live_slot = Some(n);
        self.live = Some(Live::Owned(n));
        self.dirty = true;
        Ok(())
    }

    /// Copies the CLI's other login files found in `dir` (the profile's `Creds::extra`, e.g.
    /// `google_accounts.json`) to slot `n`'s companions. They are a display cache: a missing
    /// or unreadable one is skipped, a failed write warns and the slot stays.
    pub(super) fn keep_extras(&mut self, n: usize, dir: &Path) {
        let paths = &self.vault.paths;
        for extra in paths.profile.creds.extra {
            let Ok(bytes) = read_bounded(&dir.join(extra)) else {
                continue;
            };
            let to = paths.extra_slot(n, extra);
            if let Err(e) = write_atomic(&to, &bytes) {
                crate::error::warn(format!("{e}; the account was added without its {extra}"));
            }
        }
    }

    /// Writes slot `n`'s companions (see [`Tx::keep_extras`]) beside the live file. Never
    /// fatal: the login itself is installed already; a slot without a companion leaves the
    /// CLI's file as it is.
    fn install_extras(&mut self, n: usize) {
        let paths = &self.vault.paths;
        for extra in paths.profile.creds.extra {
            let Ok(bytes) = read_bounded(&paths.extra_slot(n, extra)) else {
                continue;
            };
            match replace_file(&paths.home.join(extra), &bytes) {
                Ok(()) => self.home_unsynced = true,
                Err(e) => crate::error::warn(format!(
                    "{e}; {} shows the previous account's name until it logs in again",
                    paths.profile.name
                )),
            }
        }
    }

    /// Installs `to` and records the switch: the only place `switches_total` grows, always
    /// together with one `account_switch` line.
    pub(super) fn switch_to(
        &mut self,
        from: usize,
        to: usize,
        reason: &str,
        trigger: &str,
        hit: Option<&Hit>,
    ) -> Result<()> {
        self.install(to)?;
        self.st.record_switch(to, self.now);
        self.dirty = true;
        let mut e = Event::new(events::ACCOUNT_SWITCH, self.now)
            .from(from)
            .to(to)
            .reason(reason)
            .trigger(trigger);
        if let Some(hit) = hit {
            e = e.hit(hit);
        }
        self.log(e);
        Ok(())
    }

    /// Switches to the next eligible slot after `after` (never `exclude`), skipping slots whose
    /// file turns out unusable at install time (they are marked invalid). `Ok(None)`: none.
    pub(super) fn switch_auto(
        &mut self,
        from: usize,
        after: usize,
        reason: &str,
        trigger: &str,
        hit: Option<&Hit>,
        strategy: Policy,
    ) -> Result<Option<usize>> {
        loop {
            let Some(to) = self.st.select(strategy, after, Some(from), self.now) else {
                return Ok(None);
            };
            match self.switch_to(from, to, reason, trigger, hit) {
                Ok(()) => return Ok(Some(to)),
                Err(Error::Invalid { problem, .. }) => self.mark_invalid(to, &problem),
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn mark_invalid(&mut self, n: usize, problem: &str) {
        if let Some(a) = self.st.accounts.get_mut(&n) {
            a.status = Status::Invalid;
            a.last_reason = Some(problem.to_string());
        }
        if let Some(i) = self.infos.get_mut(&n) {
            i.problem = Some(problem.to_string());
        }
        self.dirty = true;
        self.log(
            Event::new(events::INVALID, self.now)
                .warn()
                .slot(n)
                .reason(problem.to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use crate::config::{Config, Paths};
    use crate::error::Error;
    use crate::vault::Vault;

    fn creds(who: &str) -> String {
        format!(
            r#"{{"access_token":"acc-{who}-0123456789","refresh_token":"ref-{who}-0123456789","token_type":"Bearer","expiry_date":4102444800000}}"#
        )
    }

    /// Two OAuth slots under `paths`, and a file held where qwen's lock goes.
    fn home(paths: &Paths) {
        fs::create_dir_all(&paths.accounts).unwrap();
        for d in [&paths.home, &paths.accounts] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        }
        for (n, who) in [(1, "a"), (2, "b")] {
            fs::write(paths.oauth_slot(n), creds(who)).unwrap();
            fs::set_permissions(paths.oauth_slot(n), fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(paths.home.join("oauth_creds.lock"), "some-uuid").unwrap();
    }

    fn quick(paths: &Paths) -> Vault {
        let config = Config {
            lock_timeout: Duration::from_millis(300),
            ..Config::default()
        };
        Vault::open(paths.clone(), config)
    }

    #[test]
    fn a_cli_without_a_lock_gets_its_live_file_without_waiting_for_one() {
        let dir = tempfile::tempdir().unwrap();
        // qwen takes its lock: held by someone else, the swap gives up.
        let qwen = Paths::at(dir.path().join("qwen"));
        home(&qwen);
        assert!(matches!(
            quick(&qwen).switch("2"),
            Err(Error::LockTimeout { .. })
        ));
        assert!(!qwen.live_creds.exists());
        // The same CLI without a lock: the swap neither waits nor touches that file.
        let mut profile = crate::profile::QWEN.clone();
        profile.creds.lock = None;
        let lockless = Paths::of(Box::leak(Box::new(profile)), dir.path().join("lockless"));
        home(&lockless);
        quick(&lockless).switch("2").unwrap();
        assert_eq!(
            fs::read_to_string(&lockless.live_creds).unwrap(),
            creds("b")
        );
        let left = fs::read_to_string(lockless.home.join("oauth_creds.lock")).unwrap();
        assert_eq!(left, "some-uuid");
    }
}
