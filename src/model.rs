//! The shared vocabulary every layer names: a credential ([`Secret`]), a slot's kind
//! ([`Kind`]), a rotation strategy ([`Strategy`]), what kind of failure a message reports
//! ([`Class`]) and one detection ([`Hit`]).
//!
//! It imports only `text` (an account's label is printed escaped).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A credential value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    OAuth,
    ApiKey,
}

impl Kind {
    /// The spelling in state.yaml, the log and `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OAuth => "oauth",
            Kind::ApiKey => "api_key",
        }
    }

    /// The spelling in tables.
    pub fn human(self) -> &'static str {
        match self {
            Kind::OAuth => "oauth",
            Kind::ApiKey => "api-key",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "oauth" | "qwen_oauth" => Some(Kind::OAuth),
            "api_key" | "apikey" | "openai" => Some(Kind::ApiKey),
            _ => None,
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Kind::parse(&text).ok_or_else(|| serde::de::Error::custom("kind is oauth or api_key"))
    }
}

/// How the next slot is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The seeds' default: after a hit, move to the next slot in order.
    RoundRobin,
    /// Stay on the first healthy slot until it is spent.
    FillFirst,
}

/// Which accounts are tried first: the fallback chain (`order` in rotation.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Slot order, whatever each slot holds.
    Slots,
    /// Subscription logins first; API keys only while every login is cooling down, and back to
    /// a login as soon as one returns.
    LoginsFirst,
}

/// How the vault picks an account: the strategy within the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub strategy: Strategy,
    pub order: Order,
}

/// What kind of failure a message reports; each class has its own action (DESIGN.md, "Detection").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The account's quota is spent: rotate, cool down until the reset.
    Quota,
    /// Rate limited after qwen's own retries: rotate, short cooldown.
    Throttle,
    /// Credentials rejected: mark needs_login, try the next slot once.
    Auth,
}

impl Class {
    /// The precedence rank (the `detect` module header): higher wins when one message holds
    /// several classes.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Class::Quota => 3,
            Class::Auth => 2,
            Class::Throttle => 1,
        }
    }

    /// Every class, in the order tables and `--json` output list them.
    pub const ALL: [Class; 3] = [Class::Quota, Class::Throttle, Class::Auth];

    /// The one spelling of the class in state.yaml (`hits:`), the log (`"class"`), `--json`
    /// output and the `patterns:` section of config.yaml.
    pub fn name(self) -> &'static str {
        match self {
            Class::Quota => "quota",
            Class::Throttle => "throttle",
            Class::Auth => "auth",
        }
    }

    /// The class a logged `"class"` names; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What happened to the account, for notices: "account 1 (work) quota exhausted".
    pub fn human(self) -> &'static str {
        match self {
            Class::Quota => "quota exhausted",
            Class::Throttle => "rate limited",
            Class::Auth => "was refused (needs login)",
        }
    }

    /// The `reason` of the `account_switch` event a hit of this class causes.
    pub fn switch_reason(self) -> &'static str {
        match self {
            Class::Quota => "quota_exhausted",
            Class::Throttle => "throttled",
            Class::Auth => "auth_failed",
        }
    }
}

/// "account 3" or "account 3 (work)": the one wording of an account in every message. The
/// label is shown escaped (`text::printable`): state.yaml is hand-editable, so a label may
/// hold escape sequences or line breaks that would forge a line; escaping twice changes
/// nothing, so an already escaped label prints the same.
pub fn account_name(n: usize, label: Option<&str>) -> String {
    match label {
        Some(label) => format!("account {n} ({})", crate::text::printable(label)),
        None => format!("account {n}"),
    }
}

/// One detection: the class, the phrase that matched (a pattern, never user text), and the reset
/// time when the message gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub class: Class,
    pub phrase: String,
    pub reset_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_named_with_its_label_escaped_once() {
        assert_eq!(account_name(3, None), "account 3");
        assert_eq!(account_name(3, Some("work")), "account 3 (work)");
        let forged = account_name(1, Some("a\x1b]52;c;x\x07\nb"));
        assert_eq!(forged, r"account 1 (a\u{1b}]52;c;x\u{7}\nb)");
        // A label that arrives escaped already (Launch.label) prints the same.
        assert_eq!(
            account_name(1, Some(&crate::text::printable("a\nb"))),
            r"account 1 (a\nb)"
        );
    }

    #[test]
    fn each_class_reads_back_from_its_name() {
        for class in Class::ALL {
            assert_eq!(Class::from_name(class.name()), Some(class));
        }
        assert_eq!(Class::from_name("quota_exhausted"), None);
    }
}
