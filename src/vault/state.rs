//! `state.yaml`: which account is live, and what we know about each one.
//!
//! Invariants:
//! - The seeds' fields keep their names and meaning (`current_index` is 1-based, `accounts` is a
//!   map `accountN -> {switches_count, last_used}`); every field we added has a default, so a
//!   hand-edited or seeds-written file that lacks them loads. Unknown fields are ignored.
//! - Loading is lenient per field (a garbled timestamp or count becomes "unknown", not an
//!   error); only a file that is not a YAML mapping at all is "corrupt" (the vault then keeps a
//!   `.corrupt` copy and rebuilds from `accounts/`).
//! - Everything here is pure: no I/O except `State::load`; choosing and marking slots
//!   (`selection.rs`) are unit tested here without a disk. Time is always passed in (`now`),
//!   never read here.
//! - Timestamps are written as RFC 3339 UTC with whole seconds (`2026-02-05T10:30:00Z`).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::Kind;
use crate::text::rfc3339;

/// A slot's health. `Healthy` is the only status a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Healthy,
    /// Spent or throttled until `cooldown_until`; clears itself when that passes.
    CoolingDown,
    /// The provider refused the credentials; only a person can fix it (login, `reset`).
    NeedsLogin,
    /// The slot file is unreadable or ambiguous; never installed, never overwritten.
    Invalid,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::CoolingDown => "cooling_down",
            Status::NeedsLogin => "needs_login",
            Status::Invalid => "invalid",
        }
    }

    /// Human spelling ("cooling down").
    pub fn human(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::CoolingDown => "cooling down",
            Status::NeedsLogin => "needs login",
            Status::Invalid => "invalid",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text
            .trim()
            .to_ascii_lowercase()
            .replace(['-', ' '], "_")
            .as_str()
        {
            "healthy" | "ok" | "active" => Some(Status::Healthy),
            "cooling_down" | "cooldown" | "cooling" => Some(Status::CoolingDown),
            "needs_login" | "login" => Some(Status::NeedsLogin),
            "invalid" => Some(Status::Invalid),
            _ => None,
        }
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    /// Unknown spellings load as `Healthy`: the vault re-checks every slot file under the lock.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Text(t) => Status::parse(&t).unwrap_or_default(),
            _ => Status::Healthy,
        })
    }
}

/// Hits per detection class that led to an action (a cooldown or a needs_login mark).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hits {
    #[serde(deserialize_with = "loose_u64")]
    pub quota: u64,
    #[serde(deserialize_with = "loose_u64")]
    pub throttle: u64,
    #[serde(deserialize_with = "loose_u64")]
    pub auth: u64,
}

impl Hits {
    pub fn total(&self) -> u64 {
        self.quota + self.throttle + self.auth
    }
}

/// One slot, as `accounts.accountN` in state.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Account {
    /// Seeds: how many times this account was switched *to*.
    #[serde(deserialize_with = "loose_u64")]
    pub switches_count: u64,
    /// Seeds: when this account was last made the live one.
    #[serde(with = "ts")]
    pub last_used: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "loose_string")]
    pub label: Option<String>,
    /// Derived from the slot file's name on every locked operation; stored for readers.
    #[serde(deserialize_with = "loose_kind")]
    pub kind: Option<Kind>,
    #[serde(deserialize_with = "loose_bool_true")]
    pub enabled: bool,
    pub status: Status,
    #[serde(with = "ts")]
    pub cooldown_until: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "loose_string")]
    pub last_reason: Option<String>,
    /// FNV-1a 64 (hex) of the bytes last installed from, or synced back into, this slot.
    /// The live file is "unchanged since installed" exactly when its digest equals this.
    #[serde(deserialize_with = "loose_string")]
    pub installed_digest: Option<String>,
    pub hits: Hits,
    /// When a cooldown or needs_login last ended (expiry, `reset`, or a successful run).
    #[serde(with = "ts")]
    pub last_reset: Option<DateTime<Utc>>,
    /// The last remaining quota the provider announced through the relay (absent: unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<crate::vault::usage::Remaining>,
}

impl Default for Account {
    fn default() -> Self {
        Account {
            switches_count: 0,
            last_used: None,
            label: None,
            kind: None,
            enabled: true,
            status: Status::Healthy,
            cooldown_until: None,
            last_reason: None,
            installed_digest: None,
            hits: Hits::default(),
            last_reset: None,
            remaining: None,
        }
    }
}

impl Account {
    pub fn new(kind: Kind) -> Account {
        Account {
            kind: Some(kind),
            ..Account::default()
        }
    }

    /// The status as of `now`: a cooldown that has passed reads as healthy.
    pub fn status_at(&self, now: DateTime<Utc>) -> Status {
        match self.status {
            Status::CoolingDown if self.cooldown_until.is_none_or(|t| t <= now) => Status::Healthy,
            s => s,
        }
    }

    /// Could a run use this slot now?
    pub fn eligible(&self, now: DateTime<Utc>) -> bool {
        self.enabled && self.kind.is_some() && self.status_at(now) == Status::Healthy
    }

    /// "account 3" or "account 3 (work)", safe to print (`model::account_name`).
    pub fn describe(&self, n: usize) -> String {
        crate::model::account_name(n, self.label.as_deref())
    }

    /// The label as it may be printed: state.yaml is hand-editable, so a label may hold escape
    /// sequences (OSC 52 clipboard writes, screen clears) or line breaks that forge a line;
    /// those are shown escaped, never sent to the terminal.
    pub fn shown_label(&self) -> Option<String> {
        self.label.as_deref().map(crate::text::printable)
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Seeds: the live account (1-based); 0 when there is none.
    #[serde(deserialize_with = "loose_usize")]
    pub current_index: usize,
    /// Seeds: number of slots.
    #[serde(deserialize_with = "loose_usize")]
    pub total_accounts: usize,
    #[serde(with = "ts")]
    pub last_switch: Option<DateTime<Utc>>,
    /// Seeds: equals the number of `account_switch` lines in rotation.log.
    #[serde(deserialize_with = "loose_u64")]
    pub switches_total: u64,
    /// The OAuth slot whose credentials are in the live `oauth_creds.json` (by our last write).
    /// Differs from `current_index` while the current slot is an API key or a run is pinned.
    #[serde(deserialize_with = "loose_opt_usize")]
    pub live_slot: Option<usize>,
    #[serde(with = "account_map")]
    pub accounts: BTreeMap<usize, Account>,
}

/// The result of reading state.yaml from disk.
#[derive(Debug)]
pub enum Loaded {
    Missing,
    Ok(State),
    /// The text is not a state file; the problem names why (never the content).
    Corrupt(String),
}

const HEADER: &str = "# qwen-rotation state (written by `qwen`; see `qwen --rotation-status`).\n\
                      # Hand edits are allowed; unknown fields are ignored.\n";

impl State {
    /// "account 3 (work)": slot `n` as every message names it, labelled when it has a label.
    pub fn describe(&self, n: usize) -> String {
        crate::model::account_name(n, self.accounts.get(&n).and_then(|a| a.label.as_deref()))
    }

    /// Parses YAML text. An empty document is an empty state.
    pub fn parse(text: &str) -> Result<State, String> {
        if text.trim().is_empty() {
            return Ok(State::default());
        }
        if let Some(problem) = crate::files::too_deep(text, crate::files::MAX_NESTING) {
            return Err(problem);
        }
        yaml_serde::from_str::<State>(text).map_err(|e| without_quotes(&e.to_string()))
    }

    pub fn to_yaml(&self) -> String {
        match yaml_serde::to_string(self) {
            Ok(body) if body.ends_with('\n') => format!("{HEADER}{body}"),
            Ok(body) => format!("{HEADER}{body}\n"),
            // Serialising plain data cannot fail; keep a loadable file regardless.
            Err(_) => format!("{HEADER}current_index: {}\n", self.current_index),
        }
    }

    /// Reads state.yaml without blocking on what is in its place and within the bounds of
    /// `files` (1 MiB, nesting 64): anything else is `Corrupt`, never a stalled run.
    pub fn load(path: &Path) -> Loaded {
        State::from_read(State::read(path))
    }

    /// The bytes of the state file at `path`, as `load` reads them.
    pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
        crate::files::read_regular(path, crate::files::MAX_OWN_FILE, false)
    }

    /// What `load` makes of what `read` returned.
    pub fn from_read(read: std::io::Result<Vec<u8>>) -> Loaded {
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Loaded::Corrupt(e.to_string()),
            Err(e) => Loaded::Corrupt(format!("cannot read it: {e}")),
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Err(_) => Loaded::Corrupt("it is not UTF-8 text".into()),
                Ok(text) => match State::parse(text) {
                    Ok(st) => Loaded::Ok(st),
                    Err(problem) => Loaded::Corrupt(problem),
                },
            },
        }
    }
}

/// A YAML error as one line without what it quotes: `invalid type: string "…", expected …`
/// would otherwise echo the file's text (a token pasted into the wrong file, say) into a warning.
fn without_quotes(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' => {
                // Skip to the closing quote (a backslash escapes the next character).
                let mut escaped = false;
                for q in chars.by_ref() {
                    match q {
                        '\\' if !escaped => escaped = true,
                        q if q == c && !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("(…)");
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    match out.trim() {
        "" => "unreadable".to_string(),
        t => t.to_string(),
    }
}

/// Any YAML scalar (or anything else), for fields that must load whatever a person wrote.
#[derive(Deserialize)]
#[serde(untagged)]
enum Loose {
    Bool(bool),
    Int(u64),
    Float(f64),
    Text(String),
    Other(serde::de::IgnoredAny),
}

fn loose_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match Loose::deserialize(d)? {
        Loose::Int(n) => n,
        Loose::Text(t) => t.trim().parse().unwrap_or(0),
        Loose::Float(f) if f >= 0.0 && f < u64::MAX as f64 => f as u64,
        _ => 0,
    })
}

fn loose_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    loose_u64(d).map(|n| usize::try_from(n).unwrap_or(0))
}

fn loose_opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    loose_usize(d).map(|n| (n > 0).then_some(n))
}

fn loose_bool_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Loose::deserialize(d)? {
        Loose::Bool(b) => b,
        Loose::Int(n) => n != 0,
        Loose::Text(t) => !matches!(
            t.trim().to_ascii_lowercase().as_str(),
            "false" | "no" | "off" | "0"
        ),
        _ => true,
    })
}

fn loose_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Loose::deserialize(d)? {
        Loose::Text(t) if !t.trim().is_empty() => Some(t),
        Loose::Int(n) => Some(n.to_string()),
        _ => None,
    })
}

fn loose_kind<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Kind>, D::Error> {
    Ok(match Loose::deserialize(d)? {
        Loose::Text(t) => Kind::parse(&t),
        _ => None,
    })
}

/// `Option<DateTime<Utc>>` as RFC 3339 text; anything unreadable loads as `None`.
mod ts {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Text(t) => DateTime::parse_from_rfc3339(t.trim())
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Loose::Int(secs) => i64::try_from(secs)
                .ok()
                .and_then(|s| DateTime::from_timestamp(s, 0)),
            _ => None,
        })
    }
}

/// `BTreeMap<usize, Account>` as the seeds' `accountN:` keys, in slot order. Keys that do not
/// name a slot, and entries that are not mappings, are skipped on load.
mod account_map {
    use super::*;
    use serde::ser::SerializeMap;

    pub fn serialize<S: Serializer>(m: &BTreeMap<usize, Account>, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (n, a) in m {
            map.serialize_entry(&format!("account{n}"), a)?;
        }
        map.end()
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Account(Box<Account>),
        Other(serde::de::IgnoredAny),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<usize, Account>, D::Error> {
        let raw: Option<BTreeMap<String, Entry>> = Option::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (key, entry) in raw.unwrap_or_default() {
            let Some(n) = slot_of_key(&key) else { continue };
            if let Entry::Account(a) = entry {
                out.insert(n, *a);
            }
        }
        Ok(out)
    }

    fn slot_of_key(key: &str) -> Option<usize> {
        let digits = key.trim().strip_prefix("account")?;
        let n: usize = digits.parse().ok()?;
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::selection::MAX_COOLDOWN;
    use super::*;
    use crate::model::{Class, Order, Policy, Strategy};
    use chrono::TimeDelta;
    use std::time::Duration;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn now() -> DateTime<Utc> {
        t("2026-11-25T12:00:00Z")
    }

    fn pool(n: usize) -> State {
        let mut st = State::default();
        for i in 1..=n {
            st.accounts.insert(i, Account::new(Kind::OAuth));
        }
        st.current_index = 1;
        st.total_accounts = n;
        st
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const RR: Policy = Policy {
        strategy: Strategy::RoundRobin,
        order: Order::Slots,
    };
    const FF: Policy = Policy {
        strategy: Strategy::FillFirst,
        order: Order::Slots,
    };
    const CHAIN: Policy = Policy {
        strategy: Strategy::RoundRobin,
        order: Order::LoginsFirst,
    };

    /// Slots 1 and 4 API keys, 2 and 3 logins: the chain must not follow slot order.
    fn mixed() -> State {
        let mut st = pool(4);
        for n in [1, 4] {
            st.accounts.get_mut(&n).unwrap().kind = Some(Kind::ApiKey);
        }
        st
    }

    #[test]
    fn logins_come_first_and_keys_only_while_every_login_cools_down() {
        let mut st = mixed();
        // On key 1 with logins usable: the run goes to a login.
        assert_eq!(st.desired(CHAIN, now()), Some(2));
        assert_eq!(st.desired(RR, now()), Some(1), "slot order stays on key 1");
        st.current_index = 2;
        assert_eq!(st.desired(CHAIN, now()), Some(2));
        // Login 2 spent: the next login, not key 4 (which follows in round-robin).
        st.mark(
            2,
            Class::Quota,
            Some(now() + TimeDelta::hours(5)),
            "five_hour",
            now(),
            HOUR,
            MIN,
        );
        assert_eq!(st.select(CHAIN, 2, Some(2), now()), Some(3));
        // Every login spent: the keys, in round-robin order.
        st.mark(
            3,
            Class::Quota,
            Some(now() + TimeDelta::hours(2)),
            "five_hour",
            now(),
            HOUR,
            MIN,
        );
        assert_eq!(st.select(CHAIN, 3, Some(3), now()), Some(4));
        st.current_index = 4;
        assert_eq!(
            st.desired(CHAIN, now()),
            Some(4),
            "a key while no login is usable"
        );
        // Login 3's reset passes: back to it, off the key that is still healthy.
        let later = now() + TimeDelta::hours(2) + TimeDelta::seconds(1);
        assert_eq!(st.desired(CHAIN, later), Some(3));
        // Fill-first within the chain: the lowest login.
        let all_back = now() + TimeDelta::hours(6);
        assert_eq!(
            st.desired(
                Policy {
                    strategy: Strategy::FillFirst,
                    ..CHAIN
                },
                all_back
            ),
            Some(2)
        );
    }

    #[test]
    fn a_chain_without_logins_or_without_keys_is_plain_slot_order() {
        let mut keys = pool(3);
        for a in keys.accounts.values_mut() {
            a.kind = Some(Kind::ApiKey);
        }
        assert_eq!(keys.select(CHAIN, 1, Some(1), now()), Some(2));
        let logins = pool(3);
        assert_eq!(logins.select(CHAIN, 3, Some(3), now()), Some(1));
        assert_eq!(logins.desired(CHAIN, now()), Some(1));
    }
    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn seeds_state_loads_with_defaults_for_new_fields() {
        let text = r#"
current_index: 1              # Currently active account (1-indexed)
total_accounts: 5             # Total configured accounts
last_switch: "2026-02-05T10:30:00Z"
switches_total: 43            # Total rotations performed
accounts:                     # Per-account stats
  account1:
    switches_count: 15
    last_used: "2026-02-05T10:28:00Z"
  account2:
    switches_count: 8
    last_used: "2026-02-05T10:30:00Z"
"#;
        let st = State::parse(text).unwrap();
        assert_eq!(st.current_index, 1);
        assert_eq!(st.total_accounts, 5);
        assert_eq!(st.switches_total, 43);
        assert_eq!(st.last_switch, Some(t("2026-02-05T10:30:00Z")));
        let a1 = &st.accounts[&1];
        assert_eq!(a1.switches_count, 15);
        assert!(a1.enabled);
        assert_eq!(a1.status, Status::Healthy);
        assert_eq!(a1.kind, None);
        assert_eq!(st.accounts[&2].last_used, Some(t("2026-02-05T10:30:00Z")));
    }

    #[test]
    fn round_trip_keeps_every_field_and_the_seeds_names() {
        let mut st = pool(3);
        st.live_slot = Some(1);
        st.last_switch = Some(now());
        let a = st.accounts.get_mut(&2).unwrap();
        a.label = Some("work".into());
        a.status = Status::CoolingDown;
        a.cooldown_until = Some(now() + TimeDelta::hours(2));
        a.hits.quota = 3;
        a.installed_digest = Some("00ff00ff00ff00ff".into());
        st.accounts.get_mut(&3).unwrap().kind = Some(Kind::ApiKey);
        let text = st.to_yaml();
        for key in [
            "current_index:",
            "total_accounts:",
            "last_switch:",
            "switches_total:",
            "account1:",
            "switches_count:",
            "last_used:",
        ] {
            assert!(text.contains(key), "{key} missing in\n{text}");
        }
        assert!(text.contains("2026-11-25T12:00:00Z"), "{text}");
        assert!(
            text.contains("cooling_down") && text.contains("api_key") && text.contains("oauth"),
            "{text}"
        );
        assert_eq!(State::parse(&text).unwrap(), st);
    }

    #[test]
    fn slot_order_is_numeric_not_lexical() {
        let st = pool(11);
        let text = st.to_yaml();
        let p2 = text.find("account2:").unwrap();
        let p10 = text.find("account10:").unwrap();
        assert!(p2 < p10);
        assert_eq!(st.select(RR, 9, None, now()), Some(10));
    }

    #[test]
    fn hand_edits_and_garbage_fields_load_leniently() {
        let text = "current_index: '2'\nfuture_field: [1, 2]\nlast_switch: yesterday\naccounts:\n  account2:\n    enabled: no\n    status: weird\n    switches_count: many\n    cooldown_until: 12\n  notes: hello\n  account0: {}\n  account3: just text\n";
        let st = State::parse(text).unwrap();
        assert_eq!(st.current_index, 2);
        assert_eq!(st.last_switch, None);
        assert_eq!(st.accounts.len(), 1, "{:?}", st.accounts.keys());
        let a = &st.accounts[&2];
        assert!(!a.enabled);
        assert_eq!(a.status, Status::Healthy);
        assert_eq!(a.switches_count, 0);
    }

    #[test]
    fn non_mappings_are_corrupt_and_empty_is_empty() {
        assert!(State::parse("- 1\n- 2\n").is_err());
        assert!(State::parse("{{{{").is_err());
        assert!(State::parse("accounts: 7\n").is_err());
        assert_eq!(State::parse("  \n").unwrap(), State::default());
    }

    #[test]
    fn a_corrupt_state_problem_never_quotes_the_file() {
        for text in [
            "SeCrEt-token\n",
            "accounts: \"SeCrEt\\\" more\"\n",
            "current_index: [`SeCrEt`]\naccounts: 'SeCrEt'\n",
            "- SeCrEt\n",
        ] {
            let problem = State::parse(text).unwrap_err();
            assert!(!problem.contains("SeCrEt"), "{problem}");
            assert!(
                !problem.contains('\n') && !problem.is_empty(),
                "{problem:?}"
            );
        }
    }

    #[test]
    fn round_robin_wraps_and_skips_ineligible() {
        let mut st = pool(4);
        st.accounts.get_mut(&2).unwrap().enabled = false;
        st.accounts.get_mut(&3).unwrap().status = Status::NeedsLogin;
        assert_eq!(st.select(RR, 1, Some(1), now()), Some(4));
        assert_eq!(st.select(RR, 4, Some(4), now()), Some(1));
        st.accounts.get_mut(&4).unwrap().status = Status::Invalid;
        assert_eq!(st.select(RR, 1, Some(1), now()), None);
        assert_eq!(st.select(RR, 1, None, now()), Some(1));
    }

    #[test]
    fn fill_first_takes_the_lowest_eligible() {
        let mut st = pool(3);
        st.current_index = 3;
        assert_eq!(st.desired(FF, now()), Some(1));
        assert_eq!(st.desired(RR, now()), Some(3));
        st.mark(1, Class::Quota, None, "quota", now(), HOUR, MIN);
        assert_eq!(st.desired(FF, now()), Some(2));
        // Once the cooldown passes, fill-first returns to slot 1.
        assert_eq!(st.desired(FF, now() + TimeDelta::hours(2)), Some(1));
    }

    #[test]
    fn expired_cooldowns_count_as_healthy_and_clear() {
        let mut st = pool(2);
        assert!(st.mark(1, Class::Throttle, None, "throttle", now(), HOUR, MIN));
        assert!(!st.eligible(1, now()));
        let later = now() + TimeDelta::minutes(2);
        assert!(st.eligible(1, later));
        assert_eq!(st.clear_expired(later), vec![1]);
        assert_eq!(st.accounts[&1].status, Status::Healthy);
        assert_eq!(
            st.accounts[&1].last_reset,
            Some(now() + TimeDelta::minutes(1))
        );
    }

    #[test]
    fn marks_are_idempotent_and_never_downgrade() {
        let mut st = pool(2);
        assert!(st.mark(1, Class::Quota, None, "quota", now(), HOUR, MIN));
        assert!(!st.mark(1, Class::Quota, None, "quota", now(), HOUR, MIN));
        // A throttle (shorter) does not shorten the quota cooldown.
        assert!(!st.mark(1, Class::Throttle, None, "throttle", now(), HOUR, MIN));
        assert_eq!(st.accounts[&1].hits.quota, 1);
        assert!(st.mark(1, Class::Auth, None, "auth", now(), HOUR, MIN));
        assert_eq!(st.accounts[&1].status, Status::NeedsLogin);
        assert!(!st.mark(1, Class::Quota, None, "quota", now(), HOUR, MIN));
        assert!(!st.mark(9, Class::Quota, None, "quota", now(), HOUR, MIN));
    }

    #[test]
    fn quota_uses_the_providers_reset_time_when_sane() {
        let mut st = pool(1);
        let reset = now() + TimeDelta::hours(3);
        st.mark(1, Class::Quota, Some(reset), "q", now(), HOUR, MIN);
        assert_eq!(st.accounts[&1].cooldown_until, Some(reset));
        let mut st = pool(1);
        st.mark(
            1,
            Class::Quota,
            Some(now() - TimeDelta::hours(3)),
            "q",
            now(),
            HOUR,
            MIN,
        );
        assert_eq!(
            st.accounts[&1].cooldown_until,
            Some(now() + TimeDelta::hours(1))
        );
        let mut st = pool(1);
        st.mark(
            1,
            Class::Quota,
            Some(now() + TimeDelta::days(4000)),
            "q",
            now(),
            HOUR,
            MIN,
        );
        assert_eq!(st.accounts[&1].cooldown_until, Some(now() + MAX_COOLDOWN));
    }

    #[test]
    fn earliest_return_ignores_needs_login_and_disabled() {
        let mut st = pool(3);
        st.mark(
            1,
            Class::Quota,
            Some(now() + TimeDelta::hours(5)),
            "q",
            now(),
            HOUR,
            MIN,
        );
        st.mark(
            2,
            Class::Quota,
            Some(now() + TimeDelta::hours(2)),
            "q",
            now(),
            HOUR,
            MIN,
        );
        st.mark(3, Class::Auth, None, "a", now(), HOUR, MIN);
        assert_eq!(st.earliest_return(now()), Some(now() + TimeDelta::hours(2)));
        st.accounts.get_mut(&2).unwrap().enabled = false;
        assert_eq!(st.earliest_return(now()), Some(now() + TimeDelta::hours(5)));
    }

    #[test]
    fn find_by_number_or_label() {
        let mut st = pool(2);
        st.accounts.get_mut(&2).unwrap().label = Some("Work".into());
        assert_eq!(st.find("2"), Some(2));
        assert_eq!(st.find("work"), Some(2));
        assert_eq!(st.find("3"), None);
        assert_eq!(st.find("home"), None);
    }

    #[test]
    fn record_switch_keeps_the_seeds_counters() {
        let mut st = pool(2);
        st.record_switch(2, now());
        st.record_switch(1, now());
        st.record_switch(2, now());
        assert_eq!(st.switches_total, 3);
        assert_eq!(st.current_index, 2);
        assert_eq!(st.accounts[&2].switches_count, 2);
        assert_eq!(st.accounts[&2].last_used, Some(now()));
    }
}
