//! Anthropic Messages API error answers (`{"type":"error","error":{"type","message"}}`), judged
//! by their status, structure and headers: a spent key, a usage limit, a rate limit, a rejected
//! key. Pure: "now" is passed in, headers through a lookup.
//!
//! - 429 with `anthropic-ratelimit-unified-status: rejected` and a
//!   `anthropic-ratelimit-unified-representative-claim` (`five_hour`, `seven_day`, …): a usage
//!   limit, quota until `anthropic-ratelimit-unified-reset` (Unix seconds).
//! - Any other 429 (`rate_limit_error`, or the unified headers without a claim: "not your usage
//!   limit"): throttle, for `retry-after` seconds.
//! - 400 `invalid_request_error` saying "credit balance is too low": quota (no reset known).
//! - 401 `authentication_error`, 403 `permission_error`: auth.
//!
//! Anything else gives `None`, and the caller judges it by its phrases.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::model::{Class, Hit};

/// How far ahead a reset or a retry-after may lie and still be believed.
const MAX_AHEAD: i64 = 31 * 86_400;

/// Anthropic's error answer of `status`, classified; `None` when it is not one we know.
/// `header` looks a response header up by its lowercase name.
pub fn classify_anthropic(
    status: u16,
    header: &dyn Fn(&str) -> Option<String>,
    body: &str,
    now: DateTime<Utc>,
) -> Option<Hit> {
    let doc: Option<Value> = serde_json::from_str(body.trim()).ok();
    let error = doc.as_ref().and_then(|d| d.get("error"));
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let hit = |class: Class, phrase: String, reset_at: Option<DateTime<Utc>>| {
        Some(Hit {
            class,
            phrase,
            reset_at,
        })
    };
    match (status, kind) {
        (429, _) => {
            let rejected = header("anthropic-ratelimit-unified-status")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("rejected"));
            let claim = header("anthropic-ratelimit-unified-representative-claim")
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty());
            if let (true, Some(claim)) = (rejected, claim) {
                let reset =
                    header("anthropic-ratelimit-unified-reset").and_then(|r| unix_reset(&r, now));
                return hit(Class::Quota, format!("usage limit ({claim})"), reset);
            }
            let after = header("retry-after").and_then(|r| retry_after(&r, now));
            hit(Class::Throttle, "rate_limit_error".to_string(), after)
        }
        (400, "invalid_request_error")
            if message
                .to_ascii_lowercase()
                .contains("credit balance is too low") =>
        {
            hit(Class::Quota, "credit balance is too low".to_string(), None)
        }
        (401, _) | (_, "authentication_error") => {
            hit(Class::Auth, "authentication_error".to_string(), None)
        }
        (403, _) | (_, "permission_error") => {
            hit(Class::Auth, "permission_error".to_string(), None)
        }
        _ => None,
    }
}

/// `anthropic-ratelimit-unified-reset`: Unix seconds, believed when in the future and not too far.
pub(super) fn unix_reset(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let secs: i64 = text.trim().parse().ok()?;
    let at = DateTime::from_timestamp(secs, 0)?;
    (at > now && at - now <= TimeDelta::seconds(MAX_AHEAD)).then_some(at)
}

/// `retry-after` in seconds (the form Anthropic sends).
fn retry_after(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && (0.0..=MAX_AHEAD as f64).contains(&secs))
        .then(|| now + TimeDelta::milliseconds((secs * 1000.0).round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn classify(status: u16, headers: &[(&str, &str)], body: &str) -> Option<Hit> {
        let owned: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        classify_anthropic(status, &lookup, body, now())
    }

    fn error(kind: &str, message: &str) -> String {
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
            .to_string()
    }

    #[test]
    fn a_low_credit_balance_is_a_spent_key() {
        let body = error(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
        );
        let hit = classify(400, &[], &body).unwrap();
        assert_eq!(hit.class, Class::Quota);
        assert_eq!(hit.reset_at, None);
        // Another 400 is the request's fault, not the key's.
        assert!(
            classify(
                400,
                &[],
                &error("invalid_request_error", "max_tokens: too large")
            )
            .is_none()
        );
    }

    #[test]
    fn a_rate_limit_is_a_throttle_for_its_retry_after() {
        let body = error(
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        );
        let hit = classify(429, &[("retry-after", "30")], &body).unwrap();
        assert_eq!(hit.class, Class::Throttle);
        assert_eq!(hit.reset_at, Some(now() + TimeDelta::seconds(30)));
        let hit = classify(429, &[], &body).unwrap();
        assert_eq!((hit.class, hit.reset_at), (Class::Throttle, None));
    }

    #[test]
    fn a_usage_limit_with_its_claim_is_quota_until_the_unified_reset() {
        let reset = now() + TimeDelta::hours(3);
        let reset_s = reset.timestamp().to_string();
        let body = error("rate_limit_error", "Rate limited");
        let hit = classify(
            429,
            &[
                ("anthropic-ratelimit-unified-status", "rejected"),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour",
                ),
                ("anthropic-ratelimit-unified-reset", &reset_s),
                ("retry-after", "10800"),
            ],
            &body,
        )
        .unwrap();
        assert_eq!(hit.class, Class::Quota);
        assert_eq!(hit.reset_at, Some(reset));
        assert!(hit.phrase.contains("five_hour"), "{}", hit.phrase);
        // The same headers without a claim: the server limiting requests, not a usage limit.
        let hit = classify(
            429,
            &[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", &reset_s),
            ],
            &body,
        )
        .unwrap();
        assert_eq!(hit.class, Class::Throttle);
    }

    #[test]
    fn a_rejected_key_is_auth_and_a_server_fault_is_nobodys() {
        let hit = classify(
            401,
            &[],
            &error("authentication_error", "invalid x-api-key"),
        )
        .unwrap();
        assert_eq!(hit.class, Class::Auth);
        let hit = classify(403, &[], &error("permission_error", "no access")).unwrap();
        assert_eq!(hit.class, Class::Auth);
        assert!(classify(529, &[], &error("overloaded_error", "Overloaded")).is_none());
        assert!(classify(500, &[], &error("api_error", "Internal server error")).is_none());
        assert!(classify(500, &[], "not json").is_none());
    }

    #[test]
    fn a_reset_in_the_past_or_far_away_is_not_believed() {
        assert_eq!(unix_reset("0", now()), None);
        assert_eq!(unix_reset("99999999999", now()), None);
        assert_eq!(unix_reset("soon", now()), None);
        assert_eq!(retry_after("-1", now()), None);
    }
}
