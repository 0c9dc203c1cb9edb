//! Bringing state.yaml in line with the slot files and the live file. Pure: works on the
//! state in memory and reports events; the caller writes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::model::{Kind, Policy};

use super::audit::{Event, events};
use super::slots::SlotInfo;
use super::source::env_source;
use super::state::{Account, State, Status};

/// Brings `st` in line with the slot files: adds slots found on disk, drops slots whose files
/// are gone (with a warning), marks unreadable ones invalid (and valid ones no longer
/// invalid), clears passed cooldowns and makes sure `current_index` names a slot. Returns
/// whether anything changed. `loud`: print the warnings (not for read-only views).
pub(super) fn reconcile(
    st: &mut State,
    infos: &BTreeMap<usize, SlotInfo>,
    now: DateTime<Utc>,
    strategy: Policy,
    live_owner: Option<usize>,
    events: &mut Vec<Event>,
    loud: bool,
) -> bool {
    let before = st.clone();
    let gone: Vec<usize> = st.slots().filter(|n| !infos.contains_key(n)).collect();
    let env_pool = infos.values().any(|i| env_source(i).is_some());
    for n in gone {
        if loud && env_pool {
            crate::error::warn(format!(
                "account {n} is in state.yaml but no key variable declares it any more; dropped it"
            ));
        } else if loud {
            crate::error::warn(format!(
                "account {n} is in state.yaml but its file is gone from accounts/; dropped it"
            ));
        }
        st.accounts.remove(&n);
        events.push(
            Event::new(events::SLOT_REMOVED, now)
                .warn()
                .slot(n)
                .reason("file missing")
                .trigger("scan"),
        );
    }
    for (n, info) in infos {
        let a = st.accounts.entry(*n).or_insert_with(|| {
            events.push(
                Event::new(events::SLOT_ADDED, now)
                    .slot(*n)
                    .kind(info.kind.map_or("unknown", Kind::as_str))
                    .trigger("scan"),
            );
            Account::default()
        });
        a.kind = info.kind;
        if let Some(source) = env_source(info)
            && a.installed_digest != info.digest
        {
            // An environment slot is known by its variable and key fingerprint: another key
            // under the same number is another account, which starts with a clean slate.
            if a.installed_digest.is_some() {
                *a = Account {
                    label: a.label.take(),
                    enabled: a.enabled,
                    ..Account::new(Kind::ApiKey)
                };
                a.last_reset = Some(now);
                a.last_reason = Some(format!("the key in {source} changed"));
                events.push(
                    Event::new(events::RESET, now)
                        .slot(*n)
                        .reason(format!("the key in {source} changed"))
                        .trigger("scan"),
                );
            }
            a.installed_digest = info.digest.clone();
        }
        match (&info.problem, a.status) {
            (Some(problem), s)
                if s != Status::Invalid || a.last_reason.as_deref() != Some(problem.as_str()) =>
            {
                a.status = Status::Invalid;
                a.cooldown_until = None;
                a.last_reason = Some(problem.clone());
                events.push(
                    Event::new(events::INVALID, now)
                        .warn()
                        .slot(*n)
                        .reason(problem.clone())
                        .trigger("scan"),
                );
            }
            (None, Status::NeedsLogin)
                if info.kind == Some(Kind::OAuth)
                    && a.installed_digest.is_some()
                    && info.digest != a.installed_digest =>
            {
                // The person put a new login into the slot file.
                a.status = Status::Healthy;
                a.last_reset = Some(now);
                a.last_reason = Some("new credentials in the slot file".into());
                events.push(
                    Event::new(events::RESET, now)
                        .slot(*n)
                        .reason("new credentials in the slot file")
                        .trigger("scan"),
                );
            }
            (None, Status::Invalid) => {
                a.status = Status::Healthy;
                a.last_reset = Some(now);
                a.last_reason = Some("file valid again".into());
                events.push(
                    Event::new(events::RESET, now)
                        .slot(*n)
                        .reason("file valid again")
                        .trigger("scan"),
                );
            }
            _ => {}
        }
    }
    st.clear_expired(now);
    st.total_accounts = st.accounts.len();
    if st
        .live_slot
        .is_some_and(|n| infos.get(&n).is_none_or(|i| i.kind != Some(Kind::OAuth)))
    {
        st.live_slot = None;
    }
    let current_ok = st
        .accounts
        .get(&st.current_index)
        .is_some_and(|a| a.enabled);
    let any_enabled = st.accounts.values().any(|a| a.enabled);
    if !st.accounts.contains_key(&st.current_index) || (!current_ok && any_enabled) {
        // Prefer the account whose credentials are live (a rebuilt state), then the strategy.
        st.current_index = live_owner
            .filter(|n| st.eligible(*n, now))
            .or_else(|| st.select(strategy, 0, None, now))
            .or_else(|| st.accounts.iter().find(|(_, a)| a.enabled).map(|(n, _)| *n))
            .or_else(|| st.slots().next())
            .unwrap_or(0);
    }
    *st != before
}
