//! Google API error answers (`{"error":{"code","status","message","details":[…]}}`, the Gemini
//! API's shape), judged by their structure: a daily quota, a per-minute quota, a rejected key.
//! Pure: "now" is passed in.
//!
//! - 429 `RESOURCE_EXHAUSTED` with a `QuotaFailure` whose `quotaId` names a day (`PerDay`,
//!   `Daily`), or a message saying `limit: 0` (no quota at all on this model): quota, until
//!   midnight Pacific time (when Google resets daily quotas), or the `RetryInfo` delay if that
//!   is later.
//! - Any other `RESOURCE_EXHAUSTED` (a per-minute quota): throttle, for the `RetryInfo` delay.
//! - `API_KEY_INVALID`, 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`: auth.
//!
//! Anything else (or a body of another shape) gives `None`, and the caller judges it by its
//! phrases.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::model::{Class, Hit};

/// Google's error answer of `status`, classified; `None` when `body` is not one.
pub fn classify_google(status: u16, body: &str, now: DateTime<Utc>) -> Option<Hit> {
    let doc: Value = serde_json::from_str(body.trim()).ok()?;
    // Some front ends wrap the error in a one-element array.
    let error = match &doc {
        Value::Array(items) => items.first()?.get("error")?,
        other => other.get("error")?,
    };
    let state = error.get("status").and_then(Value::as_str)?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let details: &[Value] = error
        .get("details")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let of_type = |suffix: &'static str| {
        details.iter().filter(move |d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(suffix))
        })
    };
    let reason_is = |want: &str| {
        of_type("google.rpc.ErrorInfo")
            .any(|d| d.get("reason").and_then(Value::as_str) == Some(want))
    };
    let retry = of_type("google.rpc.RetryInfo")
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(parse_delay);
    let hit = |class: Class, phrase: &str, reset_at: Option<DateTime<Utc>>| Hit {
        class,
        phrase: phrase.to_string(),
        reset_at,
    };
    if reason_is("API_KEY_INVALID") || message.contains("API key not valid") {
        return Some(hit(Class::Auth, "API_KEY_INVALID", None));
    }
    match (status, state) {
        (_, "RESOURCE_EXHAUSTED") => {
            let daily_id = of_type("google.rpc.QuotaFailure")
                .filter_map(|d| d.get("violations").and_then(Value::as_array))
                .flatten()
                .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
                .any(|id| id.contains("PerDay") || id.contains("Daily"));
            let none_left = message.contains("limit: 0,") || message.ends_with("limit: 0");
            let after_retry = retry.map(|d| now + d);
            if daily_id || none_left {
                let midnight = next_pacific_midnight(now);
                let reset = after_retry.map_or(midnight, |r| r.max(midnight));
                Some(hit(
                    Class::Quota,
                    "daily quota (RESOURCE_EXHAUSTED)",
                    Some(reset),
                ))
            } else {
                Some(hit(Class::Throttle, "RESOURCE_EXHAUSTED", after_retry))
            }
        }
        (401, _) | (_, "UNAUTHENTICATED") => Some(hit(Class::Auth, "UNAUTHENTICATED", None)),
        (403, _) | (_, "PERMISSION_DENIED") => Some(hit(Class::Auth, "PERMISSION_DENIED", None)),
        _ => None,
    }
}

/// A `google.protobuf.Duration` as JSON gives it (`"36s"`, `"0.5s"`).
fn parse_delay(text: &str) -> Option<TimeDelta> {
    let secs: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && (0.0..=31.0 * 86_400.0).contains(&secs))
        .then(|| TimeDelta::milliseconds((secs * 1000.0).round() as i64))
}

/// The next midnight in America/Los_Angeles after `now`. US rule since 2007: daylight time
/// (UTC−7) from the second Sunday of March 02:00 local to the first Sunday of November 02:00
/// local; standard time (UTC−8) otherwise.
pub fn next_pacific_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let local = now.naive_utc() + Duration::hours(pacific_offset_hours(now));
    let next_day = local.date().succ_opt().unwrap_or(local.date());
    let midnight = next_day.and_hms_opt(0, 0, 0).unwrap_or(local);
    // The offset at that midnight (a change happens at 02:00, never at midnight).
    let offset = pacific_offset_hours((midnight + Duration::hours(8)).and_utc());
    (midnight - Duration::hours(offset)).and_utc()
}

/// UTC−7 (−7) while US daylight time is in force in the Pacific zone, else UTC−8 (−8).
pub fn pacific_offset_hours(at: DateTime<Utc>) -> i64 {
    let year = at.year();
    // Daylight time starts at 02:00 PST (10:00 UTC) and ends at 02:00 PDT (09:00 UTC).
    let start = nth_sunday(year, 3, 2).and_hms_opt(10, 0, 0);
    let end = nth_sunday(year, 11, 1).and_hms_opt(9, 0, 0);
    let naive: NaiveDateTime = at.naive_utc();
    match (start, end) {
        (Some(s), Some(e)) if naive >= s && naive < e => -7,
        _ => -8,
    }
}

/// The `n`th Sunday of `month` in `year`.
fn nth_sunday(year: i32, month: u32, n: u32) -> NaiveDate {
    let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default();
    let to_sunday = (7 - first.weekday().num_days_from_sunday()) % 7;
    first + Duration::days(i64::from(to_sunday + 7 * (n - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn body(quota_id: &str, limit: u32, delay: &str) -> String {
        serde_json::json!({"error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": format!("You exceeded your current quota, please check your plan and billing details.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: {limit}, model: gemini-2.5-pro\nPlease retry in 36.5s."),
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": quota_id}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
            ]
        }})
        .to_string()
    }

    #[test]
    fn pacific_offset_follows_the_us_rule() {
        // 2026: DST from Sunday 8 March 10:00 UTC to Sunday 1 November 09:00 UTC.
        assert_eq!(pacific_offset_hours(at("2026-01-15T12:00:00Z")), -8);
        assert_eq!(pacific_offset_hours(at("2026-03-08T09:59:59Z")), -8);
        assert_eq!(pacific_offset_hours(at("2026-03-08T10:00:00Z")), -7);
        assert_eq!(pacific_offset_hours(at("2026-07-04T00:00:00Z")), -7);
        assert_eq!(pacific_offset_hours(at("2026-11-01T08:59:59Z")), -7);
        assert_eq!(pacific_offset_hours(at("2026-11-01T09:00:00Z")), -8);
        // 2027: 14 March and 7 November.
        assert_eq!(
            nth_sunday(2027, 3, 2),
            NaiveDate::from_ymd_opt(2027, 3, 14).unwrap()
        );
        assert_eq!(
            nth_sunday(2027, 11, 1),
            NaiveDate::from_ymd_opt(2027, 11, 7).unwrap()
        );
    }

    #[test]
    fn the_next_pacific_midnight_is_07_or_08_utc() {
        let cases = [
            // Winter: midnight PST is 08:00 UTC.
            ("2026-12-06T06:52:00Z", "2026-12-06T08:00:00Z"),
            ("2026-12-06T08:00:00Z", "2026-12-07T08:00:00Z"),
            // Summer: midnight PDT is 07:00 UTC.
            ("2026-07-04T12:00:00Z", "2026-07-05T07:00:00Z"),
            // Across the changes: the evening before each change, local time.
            ("2026-03-08T05:00:00Z", "2026-03-08T08:00:00Z"),
            ("2026-03-08T12:00:00Z", "2026-03-09T07:00:00Z"),
            ("2026-10-31T12:00:00Z", "2026-11-01T07:00:00Z"),
            ("2026-11-01T12:00:00Z", "2026-11-02T08:00:00Z"),
            // New Year in Los Angeles.
            ("2026-12-31T20:00:00Z", "2027-01-01T08:00:00Z"),
        ];
        for (now, want) in cases {
            assert_eq!(next_pacific_midnight(at(now)), at(want), "{now}");
        }
    }

    #[test]
    fn a_daily_quota_lasts_until_midnight_pacific_and_a_minute_quota_for_its_delay() {
        let now = at("2026-12-06T06:52:00Z");
        let daily = classify_google(
            429,
            &body(
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                100,
                "36s",
            ),
            now,
        )
        .unwrap();
        assert_eq!(daily.class, Class::Quota);
        assert_eq!(daily.reset_at, Some(at("2026-12-06T08:00:00Z")));
        let none_left = classify_google(
            429,
            &body(
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                0,
                "7s",
            ),
            now,
        )
        .unwrap();
        assert_eq!(none_left.class, Class::Quota);
        let minute = classify_google(
            429,
            &body(
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                5,
                "7s",
            ),
            now,
        )
        .unwrap();
        assert_eq!(minute.class, Class::Throttle);
        assert_eq!(minute.reset_at, Some(now + TimeDelta::seconds(7)));
    }

    #[test]
    fn rejected_keys_are_auth_and_other_shapes_are_left_alone() {
        let now = at("2026-12-06T06:52:00Z");
        let invalid = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert_eq!(
            classify_google(400, invalid, now).unwrap().class,
            Class::Auth
        );
        for (status, state) in [(401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED")] {
            let b = format!(r#"{{"error":{{"code":{status},"message":"no","status":"{state}"}}}}"#);
            assert_eq!(classify_google(status, &b, now).unwrap().class, Class::Auth);
        }
        let not_found =
            r#"{"error":{"code":404,"message":"models/x is not found","status":"NOT_FOUND"}}"#;
        assert_eq!(classify_google(404, not_found, now), None);
        let openai = r#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(classify_google(429, openai, now), None);
        assert_eq!(classify_google(429, "not json", now), None);
    }
}
