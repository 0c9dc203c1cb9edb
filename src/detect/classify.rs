//! Whole answers classified at once: a provider's HTTP error answer (the loopback relay) and
//! qwen's json output, judged by their structure so that a model answer quoting an error
//! phrase is never a hit.

use serde_json::Value;

use crate::detect::google::classify_google;
use crate::detect::patterns::Patterns;
use crate::detect::reset::parse_reset;
use crate::model::{Class, Hit};

/// Classifies a provider's HTTP error answer: 429 with a quota phrase → Quota, any other 429 →
/// Throttle; 401 → Auth; 403 with a quota phrase → Quota, any other 403 → Auth; other 4xx → what
/// the body says, if anything; 5xx and everything else → `None` (a server fault is not the
/// account's). An error event inside a 200 SSE stream is not an HTTP status: classify its text
/// with [`Patterns::classify`]. A Google API error (the Gemini API's shape) is judged by its
/// structure first (`google::classify_google`: daily vs per-minute quota, rejected key).
pub fn classify_http(status: u16, body: &str, patterns: &Patterns) -> Option<Hit> {
    if let Some(hit) = classify_google(status, body, patterns.now()) {
        return Some(hit);
    }
    let found = patterns.classify(body);
    let status_hit = |class: Class| Hit {
        class,
        phrase: format!("HTTP {status}"),
        reset_at: if class == Class::Auth {
            None
        } else {
            parse_reset(body, patterns.now())
        },
    };
    match status {
        429 => match found {
            Some(h) if h.class != Class::Auth => Some(h),
            _ => Some(status_hit(Class::Throttle)),
        },
        401 => match found {
            Some(h) if h.class == Class::Auth => Some(h),
            _ => Some(status_hit(Class::Auth)),
        },
        403 => match found {
            Some(h) if h.class != Class::Throttle => Some(h),
            _ => Some(status_hit(Class::Auth)),
        },
        400..=499 => found,
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON output
// ---------------------------------------------------------------------------------------------

/// How deep `stats` is searched for an error count.
const STATS_DEPTH: usize = 6;

/// `--output-format json` / `stream-json`: looks only at the structure qwen uses for errors (the
/// result element), never at the text of a successful answer.
///
/// - `is_error: true` (0.24): classify `error.message` (else `result`).
/// - `is_error: false` (0.12 exits 0 with the error as the answer, QWEN_FACTS.md §2): only when
///   `stats` counts an API error (`stats.models.*.api.totalErrors > 0`) is the `result` text
///   classified; an answer that merely quotes `insufficient_quota` has no error count.
///
/// json is one array; stream-json is JSON Lines, of which the last parseable `result` line
/// counts. Truncated or invalid output gives `None`.
pub fn classify_json_output(stdout: &[u8], patterns: &Patterns) -> Option<Hit> {
    let result = result_element(stdout)?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    if result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let message = text(result.pointer("/error/message"))
            .or_else(|| text(result.get("result")))
            .or_else(|| text(result.get("error")))?;
        return patterns.classify(&message);
    }
    let answer = text(result.get("result"))?;
    match result.get("stats") {
        Some(stats) if !counts_errors(stats, STATS_DEPTH) => return None,
        Some(_) => {}
        // qwen 0.12's stream-json result line carries no stats: there, only a result that *is*
        // one of qwen's own error reports counts (it starts with the report's fixed prefix; a
        // model answer that merely quotes one does not; the prefixes are the profile's).
        None if !crate::profile::active()
            .detect
            .json_error_prefixes
            .iter()
            .any(|p| answer.trim_start().starts_with(p)) =>
        {
            return None;
        }
        None => {}
    }
    patterns.classify(&answer)
}

fn result_element(stdout: &[u8]) -> Option<Value> {
    let is_result = |v: &Value| v.get("type").and_then(Value::as_str) == Some("result");
    let trimmed = stdout.trim_ascii();
    if trimmed.starts_with(b"[")
        && let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(trimmed)
    {
        return items.into_iter().rev().find(is_result);
    }
    // stream-json (or an array cut short, whose lines may still parse): the last result line.
    trimmed
        .rsplit(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| l.starts_with(b"{"))
        .find_map(|line| {
            serde_json::from_slice::<Value>(line)
                .ok()
                .filter(|v| v.is_object() && is_result(v))
        })
}

/// Does `stats` count an API error anywhere (`totalErrors > 0`)?
fn counts_errors(v: &Value, depth: usize) -> bool {
    match v {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "totalErrors" && v.as_f64().is_some_and(|n| n > 0.0))
                || (depth > 0 && counts_errors(v, depth - 1))
        }),
        Value::Array(items) => depth > 0 && items.iter().any(|v| counts_errors(v, depth - 1)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::{Datelike, Timelike};

    use crate::detect::test_support::{class, fixture, pats};

    #[test]
    fn json_output_is_judged_by_its_structure() {
        let p = pats();
        let cases: &[(&str, &str, Option<Class>)] = &[
            (
                "json_quota_0.12",
                fixture!("json_quota_0.12.txt"),
                Some(Class::Quota),
            ),
            (
                "stream_json_quota_0.12",
                fixture!("stream_json_quota_0.12.txt"),
                Some(Class::Quota),
            ),
            (
                "json_quota_cp_0.24",
                fixture!("json_quota_cp_0.24.txt"),
                Some(Class::Quota),
            ),
            (
                "json_discontinued_0.24",
                fixture!("json_discontinued_0.24.txt"),
                Some(Class::Auth),
            ),
            (
                "json_apikey_401_0.12",
                fixture!("json_apikey_401_0.12.txt"),
                Some(Class::Auth),
            ),
            (
                "json_answer_quoting_0.12",
                fixture!("json_answer_quoting_0.12.txt"),
                None,
            ),
        ];
        for &(name, text, want) in cases {
            assert_eq!(
                class(&classify_json_output(text.as_bytes(), &p)),
                want,
                "{name}"
            );
        }
        let hit =
            classify_json_output(fixture!("json_quota_cp_0.24.txt").as_bytes(), &p).expect("hit");
        assert!(
            hit.reset_at
                .is_some_and(|t| (t.month(), t.day(), t.hour(), t.minute()) == (11, 30, 9, 25))
        );
    }

    #[test]
    fn json_success_quoting_errors_is_not_a_hit() {
        let p = pats();
        let ok = r#"[{"type":"result","subtype":"success","is_error":false,"result":"insufficient_quota means your quota is spent","stats":{"models":{"m":{"api":{"totalRequests":1,"totalErrors":0}}}}}]"#;
        assert_eq!(classify_json_output(ok.as_bytes(), &p), None);
        // No stats (qwen 0.12 stream-json): only qwen's own report prefix counts, not a quote.
        let no_stats = r#"[{"type":"result","subtype":"success","is_error":false,"result":"It said: Qwen OAuth quota exceeded"}]"#;
        assert_eq!(classify_json_output(no_stats.as_bytes(), &p), None);
        let cancelled = r#"{"type":"result","subtype":"error_during_execution","is_error":true,"error":{"message":"Operation cancelled."}}"#;
        assert_eq!(classify_json_output(cancelled.as_bytes(), &p), None);
        // The error only in `result` (no `error` object).
        let result_only = r#"{"type":"result","is_error":true,"result":"[API Error: 401 Incorrect API key provided. ]"}"#;
        assert_eq!(
            class(&classify_json_output(result_only.as_bytes(), &p)),
            Some(Class::Auth)
        );
    }

    #[test]
    fn json_truncated_or_garbage_is_none_without_panic() {
        let p = pats();
        for text in [
            fixture!("json_quota_0.12.txt"),
            fixture!("json_quota_cp_0.24.txt"),
        ] {
            let b = text.trim_end().as_bytes();
            for k in 0..b.len() - 1 {
                assert_eq!(classify_json_output(&b[..k], &p), None, "cut at {k}");
            }
        }
        for junk in [
            &b""[..],
            b"   ",
            b"[",
            b"{",
            b"null",
            b"[1,2,3]",
            b"{\"type\":\"result\"}",
            b"\xff\xfe{]",
            b"[{\"type\":\"result\",\"is_error\":\"yes\"}]",
        ] {
            assert_eq!(
                classify_json_output(junk, &p),
                None,
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
        // stream-json cut in its last line: the last parseable result line still counts.
        let mut s = fixture!("stream_json_quota_0.12.txt").to_string();
        s.push_str("{\"type\":\"assis");
        assert_eq!(
            class(&classify_json_output(s.as_bytes(), &p)),
            Some(Class::Quota)
        );
        // Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(classify_json_output(deep.as_bytes(), &p), None);
    }

    // --- HTTP --------------------------------------------------------------------------------

    #[test]
    fn http_answers_classify_by_status_and_body() {
        let p = pats();
        let quota = r#"{"error":{"message":"Free allocated quota exceeded.","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let cp = r#"{"error":{"code":"insufficient_quota","message":"Your token-plan 1-week quota has been exhausted. The quota will reset at 11-30 09:25:00 UTC."}}"#;
        let throttle = r#"{"error":{"message":"Requests rate limit exceeded, please try again later.","code":"limit_requests"}}"#;
        let arrearage = r#"{"error":{"code":"Arrearage","message":"Access denied, please make sure your account is in good standing."}}"#;
        let c = |status, body| class(&classify_http(status, body, &p));
        assert_eq!(c(429, quota), Some(Class::Quota));
        assert_eq!(c(429, throttle), Some(Class::Throttle));
        assert_eq!(c(429, ""), Some(Class::Throttle));
        assert_eq!(
            c(429, r#"{"error":"invalid access token"}"#),
            Some(Class::Throttle)
        );
        assert_eq!(
            c(
                401,
                r#"{"error":{"message":"Incorrect API key provided."}}"#
            ),
            Some(Class::Auth)
        );
        assert_eq!(c(401, ""), Some(Class::Auth));
        assert_eq!(c(403, quota), Some(Class::Quota));
        assert_eq!(c(403, arrearage), Some(Class::Auth));
        assert_eq!(c(403, "forbidden"), Some(Class::Auth));
        assert_eq!(c(400, arrearage), Some(Class::Auth));
        assert_eq!(
            c(400, r#"{"error":{"message":"context length exceeded"}}"#),
            None
        );
        assert_eq!(c(500, quota), None);
        assert_eq!(c(503, "Throttling"), None);
        assert_eq!(c(200, quota), None);
        let h = classify_http(429, "", &p).expect("hit");
        assert_eq!(h.phrase, "HTTP 429");
        let h = classify_http(429, cp, &p).expect("hit");
        assert!(
            h.reset_at
                .is_some_and(|t| t.day() == 30 && t.hour() == 9 && t.minute() == 25)
        );
    }

    #[test]
    fn stream_json_result_without_stats_counts_only_qwens_own_reports() {
        let p = Patterns::defaults();
        let quota = br#"{"type":"system","subtype":"init"}
{"type":"result","subtype":"success","is_error":false,"result":"Qwen OAuth quota exceeded: Your free daily quota has been reached."}
"#;
        assert_eq!(
            classify_json_output(quota, &p).map(|h| h.class),
            Some(Class::Quota)
        );
        let answer = br#"{"type":"result","subtype":"success","is_error":false,"result":"The error Qwen OAuth quota exceeded means insufficient_quota."}
"#;
        assert_eq!(classify_json_output(answer, &p), None);
    }
}
