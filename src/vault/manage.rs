//! The management operations (`switch`, `next`, `add`, `remove`, `enable`/`disable`, `reset`,
//! `label`, `repair`): each one transaction, each change logged.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::{digest, ensure_dir, fsync_dir, make_private, unused_name, write_atomic};
use crate::model::Kind;

use super::audit::{Event, events};
use super::handle::{Switch, Vault};
use super::live::{Live, LiveFile};
use super::slots::{ApiKeySlot, check_oauth, inspect_slot, slot_path, valid_api_key};
use super::state::Account;
use super::tx::Tx;

impl Vault {
    /// `--rotation-switch N|LABEL`: make that slot the live one. A cooldown or needs_login
    /// on it is cleared (the person asked for it); a disabled or invalid slot is refused.
    pub fn switch(&self, spec: &str) -> Result<Switch> {
        self.transact("switch", |tx| {
            let to = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            let from = tx.st.current_index;
            let account = tx.st.accounts.get(&to).cloned().unwrap_or_default();
            if !account.enabled {
                return Err(Error::Other(format!(
                    "{} is disabled; enable it first: {} --rotation-enable {to}",
                    account.describe(to),
                    tx.vault.paths.profile.name
                )));
            }
            if let Some(problem) = tx.infos.get(&to).and_then(|i| i.problem.clone()) {
                return Err(Error::Invalid {
                    path: tx.slot_file(to),
                    problem,
                });
            }
            tx.clear_status(to, &command(tx, "switch"));
            if from == to {
                tx.install(to)?;
            } else {
                tx.switch_to(from, to, "manual", &command(tx, "switch"), None)?;
            }
            Ok(Switch { from, to })
        })
    }

    /// `--rotation-next`: move to the next eligible slot in order. `Ok(None)`: none.
    pub fn next(&self) -> Result<Option<Switch>> {
        self.transact("next", |tx| {
            let from = tx.st.current_index;
            let to = tx.switch_auto(
                from,
                from,
                "manual",
                &command(tx, "next"),
                None,
                tx.vault.policy_round_robin(),
            )?;
            Ok(to.map(|to| Switch { from, to }))
        })
    }

    /// `--rotation-add`: store OAuth credentials (`bytes`, read from `source`) as a new slot.
    /// Refuses content that is not valid credentials and a refresh token already stored.
    /// When `source` is the live file, that file now belongs to the new slot.
    pub fn add_oauth(&self, bytes: &[u8], source: &Path, label: Option<&str>) -> Result<usize> {
        self.files_pool("add")?;
        let rt = check_oauth(bytes).map_err(|p| Error::Invalid {
            path: source.to_path_buf(),
            problem: p.to_string(),
        })?;
        make_private(&self.paths.home)?;
        make_private(&self.paths.accounts)?;
        self.transact("add", |tx| {
            if let Some((n, _)) = tx.infos.iter().find(|(_, i)| i.refresh.as_ref() == Some(&rt)) {
                let who = tx.st.describe(*n);
                return Err(Error::Other(format!(
                    "these credentials are already stored as {who}; log in to another account first ({} --rotation-add --login)",
                    self.paths.profile.name
                )));
            }
            tx.check_label_free(label, None)?;
            let n = tx.next_slot_number();
            let path = tx.vault.paths.oauth_slot(n);
            write_atomic(&path, bytes)?;
            tx.point("slot_written");
            let mut account = Account::new(Kind::OAuth);
            account.label = label.map(str::to_string);
            account.installed_digest = Some(digest(bytes));
            tx.st.accounts.insert(n, account);
            tx.infos.insert(n, inspect_slot(&tx.vault.paths, n, &[Kind::OAuth]));
            if let Some(dir) = source.parent() {
                tx.keep_extras(n, dir);
            }
            if source == tx.vault.paths.live_creds {
                tx.st.live_slot = Some(n);
                tx.live = Some(Live::Owned(n));
            }
            tx.added(n, Kind::OAuth, label);
            Ok(n)
        })
    }

    /// `--rotation-add --api-key`: store an API-key slot. Refuses a key already stored.
    pub fn add_api_key(&self, slot: &ApiKeySlot, label: Option<&str>) -> Result<usize> {
        self.files_pool("add")?;
        valid_api_key(slot.key.expose())
            .map_err(|p| Error::Usage(format!("{p}; give the key on stdin or at the prompt")))?;
        make_private(&self.paths.home)?;
        make_private(&self.paths.accounts)?;
        self.transact("add", |tx| {
            if let Some((n, _)) = tx
                .infos
                .iter()
                .find(|(_, i)| i.api.as_ref().is_some_and(|a| a.key == slot.key))
            {
                let who = tx.st.describe(*n);
                return Err(Error::Other(format!(
                    "this key is already stored as {who}; nothing added"
                )));
            }
            tx.check_label_free(label, None)?;
            let n = tx.next_slot_number();
            write_atomic(&tx.vault.paths.api_key_slot(n), slot.to_json().as_bytes())?;
            tx.point("slot_written");
            let mut account = Account::new(Kind::ApiKey);
            account.label = label.map(str::to_string);
            tx.st.accounts.insert(n, account);
            tx.infos
                .insert(n, inspect_slot(&tx.vault.paths, n, &[Kind::ApiKey]));
            tx.added(n, Kind::ApiKey, label);
            Ok(n)
        })
    }

    /// `--rotation-remove N`: moves the slot file to `accounts/removed/` (a mistaken remove
    /// is undone by moving it back). Removing the live slot first syncs its live credentials
    /// back and then switches to the next slot. Returns where the file went.
    pub fn remove(&self, spec: &str) -> Result<PathBuf> {
        self.files_pool("remove")?;
        self.transact("remove", |tx| {
            let n = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            if tx
                .infos
                .get(&n)
                .is_some_and(|i| i.kind == Some(Kind::OAuth))
                && tx.st.live_slot == Some(n)
            {
                tx.sync_live()?;
            }
            let removed_dir = tx.vault.paths.accounts.join("removed");
            ensure_dir(&removed_dir)?;
            let mut moved = None;
            for kind in [Kind::OAuth, Kind::ApiKey] {
                let from = slot_path(&tx.vault.paths, n, kind);
                if fs::symlink_metadata(&from).is_err() {
                    continue;
                }
                let name = from
                    .file_name()
                    .and_then(|f| f.to_str())
                    .unwrap_or("slot.json");
                // rename(2) replaces an existing target: the name must be new, or a slot number
                // reused and removed again would destroy the first removed login.
                let to = unused_name(&removed_dir, name, "");
                fs::rename(&from, &to).map_err(|e| Error::io("move", &from, e))?;
                moved = Some(to);
            }
            // The slot's companions (google_accounts_N.json) go with it; they are a cache.
            for extra in tx.vault.paths.profile.creds.extra {
                let from = tx.vault.paths.extra_slot(n, extra);
                if let Some(name) = from.file_name().and_then(|f| f.to_str())
                    && fs::symlink_metadata(&from).is_ok()
                {
                    let _ = fs::rename(&from, unused_name(&removed_dir, name, ""));
                }
            }
            fsync_dir(&tx.vault.paths.accounts)
                .map_err(|e| Error::io("sync", &tx.vault.paths.accounts, e))?;
            tx.point("slot_moved");
            let label = tx.st.accounts.get(&n).and_then(|a| a.label.clone());
            tx.st.accounts.remove(&n);
            tx.infos.remove(&n);
            tx.st.total_accounts = tx.st.accounts.len();
            if tx.st.live_slot == Some(n) {
                tx.st.live_slot = None;
                // The live file still holds the removed account; it is kept in removed/.
                tx.live = Some(Live::Removed);
            }
            tx.dirty = true;
            tx.log(
                Event::new(events::SLOT_REMOVED, tx.now)
                    .slot(n)
                    .label(label.as_deref())
                    .trigger(command(tx, "remove")),
            );
            if tx.st.current_index == n {
                tx.move_off(n, "removed", &command(tx, "remove"))?;
            }
            moved.ok_or_else(|| Error::NoSuchSlot(spec.to_string()))
        })
    }

    /// `--rotation-enable N` / `--rotation-disable N`. Disabling the live slot moves to the
    /// next one; enabling a slot when none is live makes it live.
    pub fn set_enabled(&self, spec: &str, enabled: bool) -> Result<bool> {
        let op = if enabled { "enable" } else { "disable" };
        self.transact(op, |tx| {
            let n = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            let trigger = command(tx, op);
            let changed = tx.st.accounts.get(&n).is_some_and(|a| a.enabled != enabled);
            if changed {
                if let Some(a) = tx.st.accounts.get_mut(&n) {
                    a.enabled = enabled;
                }
                tx.dirty = true;
                let name = if enabled {
                    events::ENABLED
                } else {
                    events::DISABLED
                };
                tx.log(Event::new(name, tx.now).slot(n).trigger(trigger.clone()));
            }
            let current = tx.st.current_index;
            if !enabled && current == n {
                tx.move_off(n, "disabled", &trigger)?;
            } else if enabled
                && tx.st.accounts.get(&current).is_none_or(|a| !a.enabled)
                && tx.st.eligible(n, tx.now)
            {
                tx.switch_to(current, n, "enabled", &trigger, None)?;
            }
            Ok(changed)
        })
    }

    /// `--rotation-reset [N|all]`: clears cooldowns and needs_login. Returns the slots reset.
    pub fn reset(&self, spec: Option<&str>) -> Result<Vec<usize>> {
        self.alerting(None, || self.reset_slots(spec), |_| false)
    }

    fn reset_slots(&self, spec: Option<&str>) -> Result<Vec<usize>> {
        self.transact("reset", |tx| {
            let targets: Vec<usize> = match spec {
                None => tx.st.slots().collect(),
                Some(s) if s.eq_ignore_ascii_case("all") => tx.st.slots().collect(),
                Some(s) => vec![
                    tx.st
                        .find(s)
                        .ok_or_else(|| Error::NoSuchSlot(s.to_string()))?,
                ],
            };
            let mut done = Vec::new();
            for n in targets {
                if tx.clear_status(n, &command(tx, "reset")) {
                    done.push(n);
                }
            }
            // A live slot that was spent may be usable again; nothing to install here: the
            // next run's prepare installs what the strategy picks.
            Ok(done)
        })
    }

    /// `--rotation-label N LABEL` (an empty label removes it).
    pub fn set_label(&self, spec: &str, label: Option<&str>) -> Result<()> {
        self.transact("label", |tx| {
            let n = tx
                .st
                .find(spec)
                .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
            tx.check_label_free(label, Some(n))?;
            if let Some(a) = tx.st.accounts.get_mut(&n) {
                a.label = label.map(str::to_string);
            }
            tx.dirty = true;
            tx.log(
                Event::new(events::LABEL, tx.now)
                    .slot(n)
                    .label(label)
                    .trigger(command(tx, "label")),
            );
            Ok(())
        })
    }

    /// `doctor --fix`: rebuild a corrupt state, migrate a symlinked live file, reinstall a
    /// missing or invalid live file of the current OAuth slot. Returns what was done.
    pub fn repair(&self) -> Result<Vec<String>> {
        self.transact("doctor", |tx| {
            let mut done = Vec::new();
            let current = tx.st.current_index;
            let oauth_current = tx
                .infos
                .get(&current)
                .is_some_and(|i| i.kind == Some(Kind::OAuth) && i.problem.is_none());
            let live_before = LiveFile::read(&tx.vault.paths.live_creds)
                .map_err(|e| Error::io("read", &tx.vault.paths.live_creds, e))?;
            if tx.any_oauth() || matches!(live_before, LiveFile::Symlink { .. }) {
                tx.sync_live()?;
                if matches!(live_before, LiveFile::Symlink { .. }) {
                    done.push(format!(
                        "replaced the symlinked {} with a regular file",
                        tx.vault.paths.profile.creds.file
                    ));
                }
            }
            if oauth_current
                && tx.st.eligible(current, tx.now)
                && !matches!(tx.live, Some(Live::Owned(n)) if n == current)
            {
                tx.install(current)?;
                done.push(format!(
                    "installed account {current} as the live {}",
                    tx.vault.paths.profile.creds.file
                ));
            }
            Ok(done)
        })
    }
}

impl Tx<'_> {
    pub(super) fn next_slot_number(&self) -> usize {
        self.infos
            .keys()
            .chain(self.st.accounts.keys())
            .max()
            .map_or(1, |m| m + 1)
    }

    pub(super) fn check_label_free(
        &self,
        label: Option<&str>,
        except: Option<usize>,
    ) -> Result<()> {
        let Some(label) = label else { return Ok(()) };
        match self.st.find(label) {
            Some(n) if Some(n) != except => Err(Error::Usage(format!(
                "the label `{label}` is already used by account {n}; choose another label"
            ))),
            _ => Ok(()),
        }
    }

    pub(super) fn added(&mut self, n: usize, kind: Kind, label: Option<&str>) {
        self.st.total_accounts = self.st.accounts.len();
        self.dirty = true;
        self.log(
            Event::new(events::SLOT_ADDED, self.now)
                .slot(n)
                .kind(kind.as_str())
                .label(label)
                .trigger(command(self, "add")),
        );
        // The first slot (or the first enabled one) becomes the live account.
        let current = self.st.current_index;
        if self.st.accounts.get(&current).is_none_or(|a| !a.enabled) || current == n {
            self.st.current_index = n;
            if current != n && self.st.accounts.contains_key(&current) {
                self.st.record_switch(n, self.now);
                self.log(
                    Event::new(events::ACCOUNT_SWITCH, self.now)
                        .from(current)
                        .to(n)
                        .reason("added")
                        .trigger(command(self, "add")),
                );
            }
        }
    }

    /// After `n` stopped being usable (disabled, removed): move `current_index` to the next
    /// eligible slot, else the next enabled one, else nowhere.
    pub(super) fn move_off(&mut self, n: usize, reason: &str, trigger: &str) -> Result<()> {
        if self
            .switch_auto(n, n, reason, trigger, None, self.vault.policy_round_robin())?
            .is_some()
        {
            return Ok(());
        }
        let fallback = {
            let later = self
                .st
                .accounts
                .range(n + 1..)
                .chain(self.st.accounts.range(..n));
            later.filter(|(_, a)| a.enabled).map(|(k, _)| *k).next()
        };
        match fallback {
            // Cooling down: it becomes current without being installed; prepare installs it
            // (or the next one) when it is usable again.
            Some(to) => {
                self.st.record_switch(to, self.now);
                self.dirty = true;
                self.log(
                    Event::new(events::ACCOUNT_SWITCH, self.now)
                        .from(n)
                        .to(to)
                        .reason(reason)
                        .trigger(trigger),
                );
            }
            None if !self.st.accounts.contains_key(&n) => {
                let first = self.st.slots().next().unwrap_or(0);
                self.st.current_index = first;
                self.dirty = true;
            }
            None => {}
        }
        Ok(())
    }
}
/// How the log names a management command: `qwen --rotation-switch` (the profile's name).
fn command(tx: &Tx<'_>, op: &str) -> String {
    format!("{} --rotation-{op}", tx.vault.paths.profile.name)
}
