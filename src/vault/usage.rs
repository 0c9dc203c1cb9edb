//! What the relay measured on one account in one run (`Usage`, in the run line of the history)
//! and the last remaining quota a provider announced for an account (`Remaining`, in
//! state.yaml). Invariant: counts, token numbers, milliseconds and times only: never a prompt,
//! an answer or a header value other than the provider's remaining/reset numbers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::text::rfc3339;

/// One account's requests in one run through the relay. Every send upstream counts once in
/// `requests` and once in exactly one answer class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub requests: u64,
    /// 2xx answers (a 200 stream that ended in an error event counts in that error's class).
    pub ok: u64,
    pub quota: u64,
    pub throttle: u64,
    pub auth: u64,
    /// 5xx answers, and sends that got no answer (refused, timed out).
    pub server_error: u64,
    /// Other answers (a 4xx that is none of the above, a 3xx).
    pub other: u64,
    /// Prompt tokens the provider reported (`usage.prompt_tokens`, `promptTokenCount`).
    pub tokens_in: u64,
    /// Answer tokens (`usage.completion_tokens`, `candidatesTokenCount`).
    pub tokens_out: u64,
    /// Sum over the requests of the time from sending to the answer's head.
    pub first_byte_ms: u64,
    /// Sum over the requests of the time from sending to the answer's last byte.
    pub total_ms: u64,
}

impl Usage {
    /// Adds `other`'s counts to this one.
    pub fn add(&mut self, o: &Usage) {
        let pairs = [
            (&mut self.requests, o.requests),
            (&mut self.ok, o.ok),
            (&mut self.quota, o.quota),
            (&mut self.throttle, o.throttle),
            (&mut self.auth, o.auth),
            (&mut self.server_error, o.server_error),
            (&mut self.other, o.other),
            (&mut self.tokens_in, o.tokens_in),
            (&mut self.tokens_out, o.tokens_out),
            (&mut self.first_byte_ms, o.first_byte_ms),
            (&mut self.total_ms, o.total_ms),
        ];
        for (mine, theirs) in pairs {
            *mine = mine.saturating_add(theirs);
        }
    }
}

/// The last remaining quota an answer announced (`x-ratelimit-remaining-*`, `-reset-*`), with
/// when it was seen. Unknown parts stay `None`. A garbled stored value loads as unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Remaining {
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "loose_num"
    )]
    pub requests: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "loose_num"
    )]
    pub tokens: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_ts",
        deserialize_with = "loose_ts"
    )]
    pub requests_reset: Option<DateTime<Utc>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_ts",
        deserialize_with = "loose_ts"
    )]
    pub tokens_reset: Option<DateTime<Utc>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_ts",
        deserialize_with = "loose_ts"
    )]
    pub seen: Option<DateTime<Utc>>,
}

impl Remaining {
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// "12 requests (reset in 40s), 3000 tokens": what status shows; resets already past are
    /// left out (the amount is then stale and shown as last seen).
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let part = |n: Option<u64>, what: &str, reset: Option<DateTime<Utc>>| {
            n.map(|n| {
                let mut s = format!("{n} {what}");
                if let Some(r) = reset.filter(|r| *r > now) {
                    s.push_str(&format!(
                        " (reset in {})",
                        crate::text::human_duration(r - now)
                    ));
                }
                s
            })
        };
        [
            part(self.requests, "requests", self.requests_reset),
            part(self.tokens, "tokens", self.tokens_reset),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    }
}

fn ser_ts<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Loose {
    Int(u64),
    Text(String),
    Other(serde::de::IgnoredAny),
}

fn loose_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Loose::deserialize(d)? {
        Loose::Int(n) => Some(n),
        Loose::Text(t) => t.trim().parse().ok(),
        Loose::Other(_) => None,
    })
}

fn loose_ts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Ok(match Loose::deserialize(d)? {
        Loose::Text(t) => DateTime::parse_from_rfc3339(t.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_loads_leniently_and_describes_only_future_resets() {
        let r: Remaining = yaml_serde::from_str(
            "requests: 3\ntokens: soon\nrequests_reset: 2026-01-01T00:01:00Z\n",
        )
        .unwrap();
        assert_eq!(r.requests, Some(3));
        assert_eq!(r.tokens, None);
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(r.describe(now), "3 requests (reset in 1m)");
        assert_eq!(r.describe(now + chrono::Duration::hours(1)), "3 requests");
    }

    #[test]
    fn usage_adds_up() {
        let mut a = Usage {
            requests: 2,
            ok: 1,
            tokens_in: 10,
            ..Usage::default()
        };
        a.add(&Usage {
            requests: 1,
            quota: 1,
            tokens_out: 5,
            ..Usage::default()
        });
        assert_eq!((a.requests, a.ok, a.quota), (3, 1, 1));
        assert_eq!((a.tokens_in, a.tokens_out), (10, 5));
    }
}
