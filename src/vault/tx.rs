//! One locked transaction (`Vault::transact`) and its bookkeeping.
//!
//! Invariants (each one is what makes "never lose a credential" true):
//! - Every change happens inside one `transact` call: under `rotation.lock` (flock, bounded
//!   wait), state read and reconciled with `accounts/`, then live file, then state.yaml, then
//!   the log. Readers (the `prepare` fast path, `--rotation-status`) take no lock: every file
//!   is replaced by rename, so they always see a whole old or a whole new version.
//! - A slot file is written only by `add` (a new number) and by the validated sync-back, and
//!   a sync-back writes only content that parses and holds a refresh and an access token, into
//!   the slot that content belongs to (same bytes or same refresh token as a slot; else the
//!   slot last installed, whose previous content is first kept in `accounts/backup/`). An
//!   `invalid` slot file is never written. `remove` moves the file to `accounts/removed/`.
//! - The live file is replaced only while holding the CLI's own lock (qwen's
//!   `oauth_creds.lock`; none for a CLI that takes none), only after its current content was
//!   synced back (or, when it belongs to no slot, kept in `accounts/backup/`), and always atomically (temp + fsync + rename + fsync dir), so after a
//!   crash at any point it is a complete credential file of one account.
//! - `switches_total` and the `account_switch` log lines change together (`Tx::switch_to`).
//! - Nothing here formats a token or a key: `Secret` redacts itself, error messages name
//!   paths and problems, never contents.

use std::collections::BTreeMap;
use std::fs;

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::files::is_temp_name;
use crate::model::Kind;

use super::audit::{Event, events};
use super::handle::Vault;
use super::live::{CliLock, Live, LiveFile, owner_of};
use super::reconcile::reconcile;
use super::slots::{SlotInfo, slot_path};
use super::state::{State, Status};
use super::store::{Commit, Committed, point};

/// How many times a transaction runs when a shared pool keeps changing under it.
const TRIES: u32 = 5;

impl Vault {
    /// Runs `f` as one locked transaction (see the module invariants). A shared pool that
    /// another host changed between our read and our write (`Committed::Conflict`) runs it
    /// again on the new state, at most `TRIES` times: the rotation step's own compare-and-swap
    /// then sees the other host's move and records no second rotation.
    pub(super) fn transact<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut Tx) -> Result<T>,
    ) -> Result<T> {
        let mut try_ = 1;
        loop {
            match self.transact_once(op, &mut f, try_ == TRIES)? {
                (result, Committed::Done) => return result,
                (_, Committed::Conflict) => try_ += 1,
            }
        }
    }

    fn transact_once<T>(
        &self,
        op: &'static str,
        f: &mut impl FnMut(&mut Tx) -> Result<T>,
        last_try: bool,
    ) -> Result<(Result<T>, Committed)> {
        let held = self.store.lock(self.config.lock_timeout)?;
        point(op, "locked");
        let now = Utc::now();
        let mut events = Vec::new();
        let swept = self.sweep_temporaries();
        if swept > 0 {
            events.push(Event::new(events::TEMP_REMOVED, now).reason(format!(
                "removed {swept} leftover temporary file(s) of an interrupted write"
            )));
        }
        let (mut st, mut dirty) = self.store.load_locked(&held, now, &mut events)?;
        let infos = self.inspect_all()?;
        // A state without a valid current slot (new or rebuilt): prefer the account whose
        // credentials are live, so a rebuild does not swap the person's login.
        let live_hint = if st.accounts.contains_key(&st.current_index) {
            None
        } else {
            LiveFile::read(&self.paths.live_creds)
                .ok()
                .and_then(|l| l.bytes().and_then(|b| owner_of(b, &infos, st.live_slot)))
        };
        dirty |= reconcile(
            &mut st,
            &infos,
            now,
            self.policy(),
            live_hint,
            &mut events,
            true,
        );
        let mut tx = Tx {
            vault: self,
            op,
            st,
            now,
            infos,
            events,
            dirty,
            qlock: None,
            live: None,
            home_unsynced: false,
        };
        let result = f(&mut tx);
        // The CLI's lock covers only the live file: release it before our own bookkeeping.
        drop(tx.qlock.take());
        let Tx {
            st,
            events,
            dirty,
            home_unsynced,
            ..
        } = tx;
        let committed = self.store.commit(
            held,
            op,
            Commit {
                state: dirty.then_some(&st),
                events: &events,
                also_sync: home_unsynced.then_some(self.paths.home.as_path()),
                last_try,
            },
        )?;
        Ok((result, committed))
    }

    /// The directories our temporaries are written in, all guarded by `rotation.lock`: its own
    /// directory (the home, or an environment pool's state dir) and, for the slot files,
    /// `accounts/` and `accounts/backup/`.
    pub(super) fn temp_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.paths
                .lock
                .parent()
                .unwrap_or(&self.paths.home)
                .to_path_buf(),
        ];
        if self.env_pool().is_none() {
            dirs.push(self.paths.accounts.clone());
            dirs.push(self.paths.accounts.join("backup"));
        }
        dirs
    }

    /// Our temporaries left in `temp_dirs` (see `is_temp_name`).
    pub(super) fn leftover_temporaries(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in self.temp_dirs() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            found.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(is_temp_name))
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path()),
            );
        }
        found
    }

    /// Removes the temporaries a process killed in the middle of a write left behind (each a
    /// full 0600 credential copy). Call only under `rotation.lock`: every temporary is written
    /// under it, so while we hold it none of them is in use, whatever its age.
    pub(super) fn sweep_temporaries(&self) -> usize {
        self.leftover_temporaries()
            .into_iter()
            .filter(|p| fs::remove_file(p).is_ok())
            .count()
    }
}

/// One locked transaction.
pub(super) struct Tx<'v> {
    pub(super) vault: &'v Vault,
    pub(super) op: &'static str,
    pub(super) st: State,
    pub(super) now: DateTime<Utc>,
    pub(super) infos: BTreeMap<usize, SlotInfo>,
    pub(super) events: Vec<Event>,
    pub(super) dirty: bool,
    pub(super) qlock: Option<CliLock>,
    /// Set by `sync_live` (once per transaction) and kept current by `install`.
    pub(super) live: Option<Live>,
    /// A file in the qwen home was renamed and the directory not yet fsynced.
    pub(super) home_unsynced: bool,
}

impl Tx<'_> {
    pub(super) fn point(&self, step: &str) {
        point(self.op, step);
    }

    pub(super) fn log(&mut self, e: Event) {
        self.events.push(e);
    }

    pub(super) fn any_oauth(&self) -> bool {
        self.infos.values().any(|i| i.kind == Some(Kind::OAuth))
    }

    pub(super) fn kind(&self, n: usize) -> Option<Kind> {
        self.infos.get(&n).and_then(|i| i.kind)
    }

    pub(super) fn slot_file(&self, n: usize) -> PathBuf {
        slot_path(&self.vault.paths, n, self.kind(n).unwrap_or(Kind::OAuth))
    }

    /// Clears a cooldown or needs_login on `n` (not invalid: only a valid file clears that).
    pub(super) fn clear_status(&mut self, n: usize, trigger: &str) -> bool {
        let now = self.now;
        let Some(a) = self.st.accounts.get_mut(&n) else {
            return false;
        };
        if !matches!(a.status, Status::CoolingDown | Status::NeedsLogin) {
            return false;
        }
        let was = a.status;
        a.status = Status::Healthy;
        a.cooldown_until = None;
        a.last_reset = Some(now);
        self.dirty = true;
        self.log(
            Event::new(events::RESET, now)
                .slot(n)
                .reason(format!("was {}", was.as_str()))
                .trigger(trigger),
        );
        true
    }
}
