//! What a run asks the vault: `prepare` (a lock-free fast path, else a transaction), `report`
//! after a hit, `record_success`, and the read-only `overview`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::files::{digest, too_open};
use crate::model::Kind;
use crate::model::{Class, Hit};

use super::handle::{Launch, Overview, Rotation, Vault, api_launch};
use super::live::{LiveFile, owner_of};
use super::reconcile::reconcile;
use super::slots::{Scan, check_api_key, read_slot, scan, slot_path};
use super::state::{Loaded, State, Status};

impl Vault {
    /// Before an attempt: make sure the slot to use is eligible and installed, and say how to
    /// run it. The common case takes no lock and writes nothing: state.yaml is read, the
    /// live file is read and its digest compared with what we installed. Anything else (a
    /// symlinked or changed live file, a spent current slot, new slot files, a pin to another
    /// slot) goes through one locked transaction. `pinned` (`--rotation-account`) picks the
    /// slot for this run without moving `current_index`. Err(Exhausted) when nothing is
    /// eligible (for a pin: when the pinned slot is not).
    pub fn prepare(&self, pinned: Option<&str>) -> Result<Launch> {
        self.alerting(
            Some(0),
            || crate::error::guarded(|| self.prepare_unguarded(pinned)),
            |_| false,
        )
    }

    pub(super) fn prepare_unguarded(&self, pinned: Option<&str>) -> Result<Launch> {
        let now = Utc::now();
        if self.env_pool().is_none()
            && let Ok(scanned) = scan(&self.paths.accounts)
        {
            self.warn_wide_modes(&scanned);
        }
        match self.fast_launch(pinned, now) {
            Ok(Some(launch)) => return Ok(launch),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        self.transact("prepare", |tx| tx.prepare(pinned))
    }

    /// The lock-free path of `prepare`: `Ok(None)` means "something needs changing".
    pub(super) fn fast_launch(
        &self,
        pinned: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<Launch>> {
        let Ok(scanned) = self.scan_slots() else {
            return Ok(None);
        };
        // Credential copies left by a killed write: the locked path removes them.
        if !self.leftover_temporaries().is_empty() {
            return Ok(None);
        }
        let Loaded::Ok(st) = self.peek() else {
            return Ok(None);
        };
        if !self.store.settled() {
            return Ok(None);
        }
        // The slots on disk must be the ones the state knows, with the same kinds.
        let same_slots = scanned.len() == st.accounts.len()
            && scanned.iter().all(|(n, kinds)| {
                st.accounts.get(n).is_some_and(|a| match kinds.as_slice() {
                    [k] => a.kind == Some(*k),
                    _ => a.status == Status::Invalid,
                })
            });
        if !same_slots {
            return Ok(None);
        }
        let target = match pinned {
            Some(spec) => match st.find(spec) {
                Some(n) if st.eligible(n, now) => n,
                Some(_) => return Ok(None),
                None => return Err(Error::NoSuchSlot(spec.to_string())),
            },
            None => match st.desired(self.policy(), now) {
                Some(n) if n == st.current_index => n,
                _ => return Ok(None),
            },
        };
        let Some(account) = st.accounts.get(&target) else {
            return Ok(None);
        };
        let Ok(live) = LiveFile::read(&self.paths.live_creds) else {
            return Ok(None);
        };
        match account.kind {
            Some(Kind::OAuth) => {
                // Steady state: live file == what we installed == the slot file. The slot file
                // is read too, so a file replaced by hand (a new login) gets installed.
                let installed = account.installed_digest.as_deref();
                let live_ok = matches!(&live, LiveFile::Regular { bytes, .. }
                    if st.live_slot == Some(target) && installed == Some(digest(bytes).as_str()));
                let slot_ok = live_ok
                    && read_slot(&self.paths.oauth_slot(target))
                        .is_ok_and(|b| installed == Some(digest(&b).as_str()));
                if !slot_ok {
                    return Ok(None);
                }
                Ok(Some(Launch {
                    slot: target,
                    label: account.shown_label(),
                    kind: Kind::OAuth,
                    env: Vec::new(),
                    api: None,
                }))
            }
            Some(Kind::ApiKey) => {
                if matches!(live, LiveFile::Symlink { .. }) {
                    return Ok(None);
                }
                let api = match self.env_pool() {
                    Some(pool) => match pool.slots.get(&target) {
                        // A changed key (another identity) goes through reconcile first.
                        Some(slot)
                            if account.installed_digest.as_deref()
                                == Some(slot.identity().as_str()) =>
                        {
                            slot.api.clone()
                        }
                        _ => return Ok(None),
                    },
                    None => {
                        let Ok(bytes) = read_slot(&self.paths.api_key_slot(target)) else {
                            return Ok(None);
                        };
                        let Ok(api) = check_api_key(&bytes) else {
                            return Ok(None);
                        };
                        api
                    }
                };
                Ok(Some(api_launch(
                    target,
                    account,
                    api,
                    self.paths.profile.api.default_base_url,
                )))
            }
            None => Ok(None),
        }
    }

    /// One warning line per run when a credential file (or `accounts/`) is readable by others.
    /// The home directory itself is left to `doctor`: qwen creates it 0755, and a warning on
    /// every run for qwen's own default would be noise on every caller's stderr.
    pub(super) fn warn_wide_modes(&self, scanned: &Scan) {
        let mut wide: Vec<PathBuf> = Vec::new();
        if fs::metadata(&self.paths.accounts).is_ok_and(|m| too_open(m.mode())) {
            wide.push(self.paths.accounts.clone());
        }
        let mut files = vec![self.paths.live_creds.clone()];
        for (n, kinds) in scanned {
            files.extend(kinds.iter().map(|k| slot_path(&self.paths, *n, *k)));
        }
        for f in files {
            if fs::symlink_metadata(&f).is_ok_and(|m| m.is_file() && too_open(m.mode())) {
                wide.push(f);
            }
        }
        if let Some(first) = wide.first() {
            let more = match wide.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            crate::error::warn(format!(
                "{}{more} can be read by other users; run `{} --rotation-doctor --fix` (files 0600, directories 0700)",
                first.display(),
                self.paths.profile.name
            ));
        }
    }

    /// The rotation step (DESIGN.md), compare-and-swap on `failed`.
    pub fn report(&self, failed: usize, hit: &Hit) -> Result<Rotation> {
        self.alerting(
            Some(failed),
            || crate::error::guarded(|| self.report_unguarded(failed, hit)),
            super::notify::already_rotated,
        )
    }

    pub(super) fn report_unguarded(&self, failed: usize, hit: &Hit) -> Result<Rotation> {
        // Lock-free answer for the N-1 losers of a compare-and-swap: another process already
        // moved to a usable slot and marked `failed` at least this strongly, so the locked step
        // would change nothing. (A state read is a whole file: every write is a rename.)
        let now = Utc::now();
        if let Loaded::Ok(st) = self.peek()
            && st.current_index != failed
            && st.eligible(st.current_index, now)
        {
            let mut probe = st.clone();
            let c = &self.config;
            // An OAuth auth report that lost the race marks nothing (`Tx::doubtful`).
            let doubtful = hit.class == Class::Auth
                && st.accounts.get(&failed).and_then(|a| a.kind) == Some(Kind::OAuth);
            if doubtful
                || !probe.mark(
                    failed,
                    hit.class,
                    hit.reset_at,
                    "",
                    now,
                    c.quota_cooldown,
                    c.throttle_cooldown,
                )
            {
                return Ok(Rotation::AlreadyRotated {
                    to: st.current_index,
                });
            }
        }
        self.transact("rotate", |tx| tx.rotate(failed, hit))
    }

    /// An attempt on `slot` succeeded: a `needs_login` mark on it is lifted (the credentials
    /// work again). Writes only on that change. Only the current slot is touched: a success
    /// reported for a slot the vault has since moved away from is older news than the mark
    /// that moved it (a run that started before another process saw the quota run out). An
    /// unexpired cooldown is never cleared by a success for the same reason; expired ones
    /// read as healthy without a write.
    pub fn record_success(&self, slot: usize) -> Result<()> {
        let now = Utc::now();
        let needs_change = |st: &State| {
            st.current_index == slot
                && st
                    .accounts
                    .get(&slot)
                    .is_some_and(|a| a.status_at(now) == Status::NeedsLogin)
        };
        if let Loaded::Ok(st) = self.peek()
            && !needs_change(&st)
        {
            return Ok(());
        }
        self.transact("success", |tx| {
            if !needs_change(&tx.st) {
                return Ok(());
            }
            tx.clear_status(slot, "auto: a run succeeded");
            Ok(())
        })
    }

    /// As a run ends: a live login the CLI rewrote during the run (a refresh; the refresh token
    /// may have rotated) is copied back into its slot now, not at the next run, so the slot
    /// never holds a token the provider has already retired. Costs one state read and one
    /// live-file read when nothing changed; a locked transaction when it did.
    pub fn sync_back(&self) -> Result<()> {
        let Loaded::Ok(st) = self.peek() else {
            return Ok(());
        };
        let Some(installed) = st
            .live_slot
            .and_then(|n| st.accounts.get(&n))
            .and_then(|a| a.installed_digest.clone())
        else {
            return Ok(());
        };
        let changed = match LiveFile::read(&self.paths.live_creds) {
            Ok(live) => live.bytes().is_some_and(|b| digest(b) != installed),
            Err(_) => false,
        };
        if !changed {
            return Ok(());
        }
        self.transact("sync", |tx| tx.sync_live().map(|_| ()))
    }

    /// Keeps the last remaining quota the relay saw per slot in state.yaml (one locked write
    /// as a run ends, only when the relay saw any). A slot that is gone is skipped.
    pub fn record_remaining(
        &self,
        seen: &std::collections::BTreeMap<usize, crate::vault::usage::Remaining>,
    ) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        self.transact("remaining", |tx| {
            for (n, r) in seen {
                if let Some(a) = tx.st.accounts.get_mut(n)
                    && a.remaining.as_ref() != Some(r)
                {
                    a.remaining = Some(r.clone());
                    tx.dirty = true;
                }
            }
            Ok(())
        })
    }

    /// Slots that could take a run now.
    pub fn eligible_count(&self) -> usize {
        let now = Utc::now();
        match self.peek() {
            Loaded::Ok(st) => st.eligible_count(now),
            _ => self.scan_slots().map(|s| s.len()).unwrap_or(0),
        }
    }

    /// Everything a status or doctor view needs, without taking the lock or writing.
    pub fn overview(&self) -> Result<Overview> {
        let now = Utc::now();
        let slots = self.inspect_all()?;
        let live = LiveFile::read(&self.paths.live_creds)
            .map_err(|e| Error::io("read", &self.paths.live_creds, e))?;
        let (mut state, state_problem) = match self.peek() {
            Loaded::Ok(st) => (st, None),
            Loaded::Missing => (State::default(), None),
            Loaded::Corrupt(p) => (State::default(), Some(p)),
        };
        let live_owner = live
            .bytes()
            .and_then(|b| owner_of(b, &slots, state.live_slot));
        let mut ignored = Vec::new();
        reconcile(
            &mut state,
            &slots,
            now,
            self.policy(),
            live_owner,
            &mut ignored,
            false,
        );
        Ok(Overview {
            state,
            state_problem,
            slots,
            live,
            live_owner,
            now,
        })
    }
}
