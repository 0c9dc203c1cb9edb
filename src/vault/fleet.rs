//! The shared pool's view of the state, and its mapping to this host's slot numbers. Pure: no
//! I/O (the Redis exchange is `redis_store`).
//!
//! Accounts are matched across hosts by identity, never by slot number: an API key by its key
//! fingerprint (`key:1a2b3c4d`, 32 bits of a hash, never the key), else the slot's label
//! (`label:work`), else the number (`slot:3`). What is shared: which account is live, the pool's
//! switch counters, and per account its status, cooldown, reason, hits, switches, last use and
//! whether it is enabled. What stays on the host: the slot files, the live file, which slot's
//! credentials are in it (`live_slot`, `installed_digest`), labels and kinds, and an `invalid`
//! mark (a slot file unreadable here says nothing about the account elsewhere).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::env_pool::fingerprint;
use super::slots::SlotInfo;
use super::state::{Account, State, Status};

/// The pool as Redis holds it (what `load` read).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Shared {
    /// Bumped by every state write; 0 when the pool is not in Redis (new, or Redis lost it).
    pub version: u64,
    /// The identity of the live account.
    pub current: Option<String>,
    pub last_switch: Option<String>,
    pub switches_total: Option<u64>,
    /// Identity → the shared fields of that account.
    pub accounts: BTreeMap<String, Account>,
    /// The identities whose cooldown key is still alive (its TTL has not run out).
    pub cooling: BTreeSet<String>,
}

/// What a commit writes to Redis for this host's accounts.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Outgoing {
    /// Pool fields to set (`current`, `last_switch`, `switches_total`).
    pub pool: BTreeMap<&'static str, String>,
    /// Identity → the account's shared fields (JSON).
    pub accounts: BTreeMap<String, String>,
    /// Identity → cooldown end and its time to live in ms (`None`: no cooldown, delete the key).
    pub cooldowns: BTreeMap<String, Option<(String, u64)>>,
}

/// Each local slot's identity (see the module notes). Two slots with one identity are one
/// account twice; both then follow the same shared record.
pub(super) fn identities(
    local: &State,
    infos: &BTreeMap<usize, SlotInfo>,
) -> BTreeMap<usize, String> {
    infos
        .iter()
        .map(|(n, info)| {
            let id = match (
                &info.api,
                local.accounts.get(n).and_then(|a| a.label.as_deref()),
            ) {
                (Some(api), _) => format!("key:{}", fingerprint(api.key.expose())),
                (None, Some(label)) if !label.trim().is_empty() => {
                    format!("label:{}", label.trim())
                }
                _ => format!("slot:{n}"),
            };
            (*n, id)
        })
        .collect()
}

/// The state a transaction works on: the host's own (`local`) with the pool's shared fields on
/// top. The bool: the pool lacks this host's accounts (or is not in Redis at all), so the next
/// commit must write them.
pub(super) fn merge(
    local: &State,
    ids: &BTreeMap<usize, String>,
    shared: &Shared,
) -> (State, bool) {
    let mut st = local.clone();
    if shared.version == 0 {
        return (st, true);
    }
    if let Some(n) = shared
        .current
        .as_ref()
        .and_then(|cur| ids.iter().find(|(_, id)| *id == cur).map(|(n, _)| *n))
    {
        st.current_index = n;
    }
    if let Some(t) = shared
        .last_switch
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        st.last_switch = Some(t.with_timezone(&Utc));
    }
    if let Some(total) = shared.switches_total {
        st.switches_total = total;
    }
    let mut missing = false;
    for (n, id) in ids {
        let Some(theirs) = shared.accounts.get(id) else {
            missing = true;
            continue;
        };
        let mine = st.accounts.entry(*n).or_default();
        let keep_invalid = mine.status == Status::Invalid;
        let (label, kind, digest) = (mine.label.take(), mine.kind, mine.installed_digest.take());
        *mine = theirs.clone();
        mine.label = label;
        mine.kind = kind;
        mine.installed_digest = digest;
        if keep_invalid {
            mine.status = Status::Invalid;
        } else if mine.status == Status::CoolingDown && !shared.cooling.contains(id) {
            // The cooldown key ran out (or an operator deleted it): the account is back.
            mine.status = Status::Healthy;
            mine.cooldown_until = None;
        }
    }
    (st, missing)
}

/// What to write for `st` (this host's accounts only; accounts in the pool that this host
/// lacks stay untouched). `current` is written when this transaction moved it (`loaded` is the
/// merged state it started from) or when the pool has none.
pub(super) fn outgoing(
    st: &State,
    ids: &BTreeMap<usize, String>,
    shared: &Shared,
    loaded_current: usize,
    now: DateTime<Utc>,
) -> Outgoing {
    let mut out = Outgoing::default();
    if (st.current_index != loaded_current || shared.current.is_none())
        && let Some(id) = ids.get(&st.current_index)
    {
        out.pool.insert("current", id.clone());
    }
    if let Some(t) = st.last_switch {
        out.pool.insert("last_switch", crate::text::rfc3339(t));
    }
    out.pool
        .insert("switches_total", st.switches_total.to_string());
    for (n, id) in ids {
        let Some(a) = st.accounts.get(n) else {
            continue;
        };
        let mut shared_a = Account {
            label: None,
            kind: None,
            installed_digest: None,
            ..a.clone()
        };
        if a.status == Status::Invalid {
            // Not the pool's business: keep what the pool said about that account.
            let before = shared.accounts.get(id).cloned().unwrap_or_default();
            shared_a.status = before.status;
            shared_a.cooldown_until = before.cooldown_until;
        }
        let ttl = match (shared_a.status, shared_a.cooldown_until) {
            (Status::CoolingDown, Some(until)) if until > now => {
                let ms = (until - now).num_milliseconds().max(1) as u64;
                Some((crate::text::rfc3339(until), ms))
            }
            _ => None,
        };
        out.cooldowns.insert(id.clone(), ttl);
        out.accounts.insert(
            id.clone(),
            serde_json::to_string(&shared_a).unwrap_or_else(|_| "{}".into()),
        );
    }
    out
}

/// An account's shared fields as Redis holds them (JSON); `None` for text that is not one.
pub(super) fn parse_account(json: &str) -> Option<Account> {
    serde_json::from_str(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Secret};
    use crate::vault::ApiKeySlot;
    use std::path::PathBuf;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn info(key: Option<&str>) -> SlotInfo {
        SlotInfo {
            kind: Some(if key.is_some() {
                Kind::ApiKey
            } else {
                Kind::OAuth
            }),
            path: PathBuf::from("x"),
            problem: None,
            digest: None,
            refresh: None,
            api: key.map(|k| ApiKeySlot {
                key: Secret::new(k),
                base_url: None,
                model: None,
                env_key: "OPENAI_API_KEY".into(),
            }),
            mode: 0o600,
            foreign_owner: false,
        }
    }

    fn two_keys() -> (State, BTreeMap<usize, SlotInfo>) {
        let mut st = State {
            current_index: 1,
            ..State::default()
        };
        st.accounts.insert(1, Account::new(Kind::ApiKey));
        st.accounts.insert(2, Account::new(Kind::ApiKey));
        st.accounts.insert(3, Account::new(Kind::OAuth));
        st.accounts.get_mut(&3).unwrap().label = Some("work".into());
        let infos = BTreeMap::from([
            (1, info(Some("sk-first-key-000000"))),
            (2, info(Some("sk-second-key-00000"))),
            (3, info(None)),
        ]);
        (st, infos)
    }

    #[test]
    fn identities_are_key_fingerprints_labels_or_numbers_never_keys() {
        let (mut st, mut infos) = two_keys();
        infos.insert(4, info(None));
        st.accounts.insert(4, Account::new(Kind::OAuth));
        let ids = identities(&st, &infos);
        assert!(
            ids[&1].starts_with("key:") && ids[&1].len() == 12,
            "{}",
            ids[&1]
        );
        assert_ne!(ids[&1], ids[&2]);
        assert!(!ids.values().any(|id| id.contains("sk-")));
        assert_eq!(ids[&3], "label:work");
        assert_eq!(ids[&4], "slot:4");
    }

    #[test]
    fn a_host_with_other_numbers_follows_the_pool_by_identity() {
        let now = t("2026-11-25T12:00:00Z");
        let (st_a, infos_a) = two_keys();
        let ids_a = identities(&st_a, &infos_a);
        // Host A moved to its slot 2 and cooled its slot 1 down.
        let mut moved = st_a.clone();
        moved.current_index = 2;
        let a1 = moved.accounts.get_mut(&1).unwrap();
        a1.status = Status::CoolingDown;
        a1.cooldown_until = Some(t("2026-11-25T13:00:00Z"));
        let out = outgoing(&moved, &ids_a, &Shared::default(), 1, now);
        assert_eq!(out.pool["current"], ids_a[&2]);
        assert_eq!(out.cooldowns[&ids_a[&1]].as_ref().unwrap().1, 3_600_000);
        assert_eq!(out.cooldowns[&ids_a[&2]], None);
        let shared = Shared {
            version: 3,
            current: out.pool.get("current").cloned(),
            last_switch: None,
            switches_total: Some(1),
            accounts: out
                .accounts
                .iter()
                .map(|(id, j)| (id.clone(), parse_account(j).unwrap()))
                .collect(),
            cooling: BTreeSet::from([ids_a[&1].clone()]),
        };
        // Host B holds the same keys as its slots 5 and 7.
        let mut st_b = State {
            current_index: 5,
            ..State::default()
        };
        st_b.accounts.insert(5, Account::new(Kind::ApiKey));
        st_b.accounts.insert(7, Account::new(Kind::ApiKey));
        let infos_b = BTreeMap::from([
            (5, info(Some("sk-first-key-000000"))),
            (7, info(Some("sk-second-key-00000"))),
        ]);
        let ids_b = identities(&st_b, &infos_b);
        let (merged, missing) = merge(&st_b, &ids_b, &shared);
        assert!(!missing);
        assert_eq!(merged.current_index, 7);
        assert_eq!(merged.switches_total, 1);
        assert_eq!(merged.accounts[&5].status, Status::CoolingDown);
        assert!(!merged.eligible(5, now));
        assert_eq!(
            merged.accounts[&5].kind,
            Some(Kind::ApiKey),
            "kind stays local"
        );
        // The cooldown key ran out: the account is back, whatever the record says.
        let expired = Shared {
            cooling: BTreeSet::new(),
            ..shared
        };
        let (merged, _) = merge(&st_b, &ids_b, &expired);
        assert_eq!(merged.accounts[&5].status, Status::Healthy);
    }

    #[test]
    fn an_empty_pool_is_rebuilt_from_the_host_and_invalid_stays_local() {
        let now = t("2026-11-25T12:00:00Z");
        let (mut st, infos) = two_keys();
        st.accounts.get_mut(&2).unwrap().status = Status::Invalid;
        st.accounts.get_mut(&1).unwrap().installed_digest = Some("abc".into());
        let ids = identities(&st, &infos);
        let (merged, missing) = merge(&st, &ids, &Shared::default());
        assert!(
            missing,
            "nothing in Redis: the next commit writes every account"
        );
        assert_eq!(merged, st);
        let out = outgoing(&st, &ids, &Shared::default(), 1, now);
        assert_eq!(out.accounts.len(), 3);
        let two = parse_account(&out.accounts[&ids[&2]]).unwrap();
        assert_eq!(
            two.status,
            Status::Healthy,
            "invalid is this host's business"
        );
        let one = parse_account(&out.accounts[&ids[&1]]).unwrap();
        assert_eq!(one.installed_digest, None, "digests stay on the host");
        assert_eq!(out.pool["current"], ids[&1]);
        // A host lacking the pool's current account does not drag the pool to its own.
        let foreign = Shared {
            version: 1,
            current: Some("key:ffffffff".into()),
            ..Shared::default()
        };
        let out = outgoing(&st, &ids, &foreign, 1, now);
        assert!(!out.pool.contains_key("current"));
    }
}
