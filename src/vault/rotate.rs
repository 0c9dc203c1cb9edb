//! The rotation step inside a transaction: pick the slot to run (slow path of `prepare`), and
//! after a hit mark the failed slot and move to the next eligible one.

use std::fs;

use crate::error::{Error, Result};
use crate::model::Kind;
use crate::model::{Class, Hit};

use super::audit::{Event, events};
use super::handle::{Launch, Rotation, api_launch};
use super::live::Live;
use super::state::Status;
use super::tx::Tx;

impl Tx<'_> {
    /// `prepare`'s slow path.
    pub(super) fn prepare(&mut self, pinned: Option<&str>) -> Result<Launch> {
        let symlinked = fs::symlink_metadata(&self.vault.paths.live_creds)
            .is_ok_and(|m| m.file_type().is_symlink());
        if self.any_oauth() || symlinked {
            self.sync_live()?;
        }
        let now = self.now;
        let target = match pinned {
            Some(spec) => {
                let n = self
                    .st
                    .find(spec)
                    .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
                let a = self.st.accounts.get(&n).cloned().unwrap_or_default();
                if !a.eligible(now) {
                    let why = if !a.enabled {
                        "disabled".to_string()
                    } else {
                        a.status_at(now).human().to_string()
                    };
                    crate::error::warn(format!(
                        "{} (from --rotation-account) is {why}",
                        a.describe(n)
                    ));
                    let earliest = (a.status_at(now) == Status::CoolingDown && a.enabled)
                        .then_some(a.cooldown_until)
                        .flatten();
                    return Err(Error::Exhausted { earliest });
                }
                if let Err(e) = self.install(n) {
                    if let Error::Invalid { problem, .. } = &e {
                        self.mark_invalid(n, problem);
                    }
                    return Err(e);
                }
                n
            }
            None => loop {
                let current = self.st.current_index;
                match self.st.desired(self.vault.policy(), now) {
                    None => {
                        return Err(Error::Exhausted {
                            earliest: self.st.earliest_return(now),
                        });
                    }
                    Some(n) if n == current => match self.install(n) {
                        Ok(()) => break n,
                        Err(Error::Invalid { problem, .. }) => self.mark_invalid(n, &problem),
                        Err(e) => return Err(e),
                    },
                    Some(n) => {
                        let reason = match self.st.accounts.get(&current) {
                            Some(a) if !a.enabled => "disabled".to_string(),
                            Some(a) if a.status_at(now) != Status::Healthy => {
                                a.status_at(now).as_str().to_string()
                            }
                            _ => "fill_first".to_string(),
                        };
                        match self.switch_to(current, n, &reason, "auto", None) {
                            Ok(()) => break n,
                            Err(Error::Invalid { problem, .. }) => self.mark_invalid(n, &problem),
                            Err(e) => return Err(e),
                        }
                    }
                }
            },
        };
        let account = self.st.accounts.get(&target).cloned().unwrap_or_default();
        match self.kind(target) {
            Some(Kind::ApiKey) => {
                let api = self
                    .infos
                    .get(&target)
                    .and_then(|i| i.api.clone())
                    .ok_or_else(|| Error::Invalid {
                        path: self.slot_file(target),
                        problem: "not a valid API-key slot".into(),
                    })?;
                Ok(api_launch(
                    target,
                    &account,
                    api,
                    self.vault.paths.profile.api.default_base_url,
                ))
            }
            _ => Ok(Launch {
                slot: target,
                label: account.shown_label(),
                kind: Kind::OAuth,
                env: Vec::new(),
                api: None,
            }),
        }
    }

    /// The rotation step, after the lock and the state read (DESIGN.md steps 2–6).
    pub(super) fn rotate(&mut self, failed: usize, hit: &Hit) -> Result<Rotation> {
        let now = self.now;
        let strategy = self.vault.policy();
        let reason_text = format!("{}: {}", hit.class.name(), hit.phrase);
        let current = self.st.current_index;
        // 2. Compare-and-swap: someone already moved on; only make sure `failed` is marked.
        if current != failed {
            if !self.doubtful(failed, hit) {
                self.mark(failed, hit, &reason_text);
            }
            return Ok(if self.st.eligible(current, now) {
                Rotation::AlreadyRotated { to: current }
            } else {
                match self.st.desired(strategy, now) {
                    Some(to) => Rotation::AlreadyRotated { to },
                    None => Rotation::Exhausted {
                        earliest: self.st.earliest_return(now),
                    },
                }
            });
        }
        if !self.st.accounts.contains_key(&failed) {
            return Err(Error::NoSuchSlot(failed.to_string()));
        }
        // 3. Sync-back of the live file into the failed OAuth slot; a missing or unusable
        //    live file of that slot means qwen dropped the login: needs_login.
        let mut marked = false;
        if self.kind(failed) == Some(Kind::OAuth) {
            let owned_before = self.st.live_slot == Some(failed);
            let live = self.sync_live()?;
            if owned_before && matches!(live, Live::Missing | Live::Invalid) {
                let why = if live == Live::Missing {
                    "the live credentials were deleted (refresh failed)"
                } else {
                    "the live credentials are unusable"
                };
                let auth = Hit {
                    class: Class::Auth,
                    phrase: hit.phrase.clone(),
                    reset_at: None,
                };
                self.mark(failed, &auth, why);
                marked = true;
            }
        }
        // 4. Mark the failed slot.
        if !marked && self.mark(failed, hit, &reason_text) {
            marked = true;
        }
        // 5–6. Pick and install the next slot.
        match self.switch_auto(
            failed,
            failed,
            hit.class.switch_reason(),
            "auto",
            Some(hit),
            strategy,
        )? {
            Some(to) => Ok(Rotation::Switched { from: failed, to }),
            None => {
                let earliest = self.st.earliest_return(now);
                if marked {
                    self.log(
                        Event::new(events::EXHAUSTED, now)
                            .warn()
                            .from(failed)
                            .until(earliest)
                            .hit(hit)
                            .trigger("auto"),
                    );
                }
                Ok(Rotation::Exhausted { earliest })
            }
        }
    }

    /// An auth failure reported on an OAuth slot after another process moved the live file
    /// away from it proves nothing about that slot: qwen reads `oauth_creds.json` when it
    /// starts, and a run launched on `failed` may have started after the swap and failed on
    /// the account installed since. needs_login is permanent (only a person or a successful
    /// run clears it), so it waits for a failure seen while `failed` is live. Cooldowns expire
    /// by themselves and an API key is in the child's own environment: those are marked.
    pub(super) fn doubtful(&self, failed: usize, hit: &Hit) -> bool {
        hit.class == Class::Auth
            && self.kind(failed) == Some(Kind::OAuth)
            && self.st.current_index != failed
    }

    /// Marks slot `n` for `hit` (cooldown or needs_login) and logs it; false when that changed
    /// nothing (already marked at least as strongly).
    pub(super) fn mark(&mut self, n: usize, hit: &Hit, reason: &str) -> bool {
        let cfg = &self.vault.config;
        let (quota_cd, throttle_cd) = (cfg.quota_cooldown, cfg.throttle_cooldown);
        let changed = self.st.mark(
            n,
            hit.class,
            hit.reset_at,
            reason,
            self.now,
            quota_cd,
            throttle_cd,
        );
        if changed {
            self.dirty = true;
            self.log_mark(n, hit);
        }
        changed
    }

    pub(super) fn log_mark(&mut self, n: usize, hit: &Hit) {
        let a = self.st.accounts.get(&n);
        let until = a.and_then(|a| a.cooldown_until);
        let name = match a.map(|a| a.status) {
            Some(Status::NeedsLogin) => events::NEEDS_LOGIN,
            _ => events::COOLDOWN,
        };
        let e = Event::new(name, self.now)
            .slot(n)
            .hit(hit)
            .until(until)
            .trigger("auto");
        self.log(if name == events::NEEDS_LOGIN {
            e.warn()
        } else {
            e
        });
    }
}
