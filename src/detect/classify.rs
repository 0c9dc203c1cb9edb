//! Whole answers classified at once: a provider's HTTP error answer (the loopback relay) and
//! qwen's json output, judged by their structure so that a model answer quoting an error
//! phrase is never a hit.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::detect::anthropic::unix_reset;
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
/// Claude Code's result (`subtype` says "success" even on errors, so `is_error` decides) also
/// carries the API's answer: `api_error: "usage_limit_reached"` is a spent subscription login,
/// whatever the text; a text no phrase claims is judged by `api_error_status` /
/// `api_error_type` (401/403 or `authentication_error`: auth; 429 or `rate_limit_error`:
/// throttle). Its stream-json adds event lines ([`classify_stream_event`]): a rejected
/// `rate_limit_event` gives a usage limit's reset (`resetsAt`), and when the stream holds no
/// result line (the run was stopped early) the weightiest event line decides.
///
/// json is one array (or, Claude Code's, one object); stream-json is JSON Lines, of which the
/// last parseable `result` line counts. Truncated or invalid output gives `None`.
pub fn classify_json_output(stdout: &[u8], patterns: &Patterns) -> Option<Hit> {
    let Some(result) = result_element(stdout) else {
        return stream_events(stdout, patterns.now()).max_by_key(|h| h.class.rank());
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    if result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let message = text(result.pointer("/error/message"))
            .or_else(|| text(result.get("result")))
            .or_else(|| text(result.get("error")));
        let mut hit = judge_error(&result, message.as_deref(), patterns)?;
        if hit.class == Class::Quota && hit.reset_at.is_none() {
            hit.reset_at = stream_events(stdout, patterns.now())
                .filter(|h| h.class == Class::Quota)
                .find_map(|h| h.reset_at);
        }
        return Some(hit);
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

/// A failed run's result element: its message by the phrases, then Claude Code's fields.
fn judge_error(result: &Value, message: Option<&str>, patterns: &Patterns) -> Option<Hit> {
    let found = message.and_then(|m| patterns.classify(m));
    let limit = result.get("api_error").and_then(Value::as_str) == Some("usage_limit_reached");
    if limit && found.as_ref().is_none_or(|h| h.class != Class::Quota) {
        return Some(Hit {
            class: Class::Quota,
            phrase: "usage_limit_reached".to_string(),
            reset_at: message.and_then(|m| parse_reset(m, patterns.now())),
        });
    }
    found.or_else(|| api_status_hit(result))
}

/// Claude Code's `api_error_status` / `api_error_type` of a failed run whose text no phrase
/// claims. Other statuses (a 400 of the request's own, 500, 529) are nobody's account's fault.
fn api_status_hit(result: &Value) -> Option<Hit> {
    let status = result.get("api_error_status").and_then(Value::as_u64);
    let kind = result
        .get("api_error_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let class = match (status, kind) {
        (Some(401 | 403), _) | (_, "authentication_error" | "permission_error") => Class::Auth,
        (Some(429), _) | (_, "rate_limit_error") => Class::Throttle,
        _ => return None,
    };
    Some(Hit {
        class,
        phrase: status.map_or_else(|| kind.to_string(), |s| format!("HTTP {s}")),
        reset_at: None,
    })
}

/// One line of Claude Code's stream-json that reports a failing request before the result line:
/// `{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":<Unix s>,
/// "rateLimitType":"five_hour"}}` is a usage limit (quota until `resetsAt`);
/// `{"type":"system","subtype":"api_retry","error_status":N,…}` is claude retrying an error by
/// itself (for minutes): 429 a throttle, 401/403 auth, anything else (5xx, 529) nobody's.
/// Any other line gives `None`.
pub fn classify_stream_event(line: &[u8], now: DateTime<Utc>) -> Option<Hit> {
    let line = line.trim_ascii();
    if !line.starts_with(b"{") {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    match (
        v.get("type").and_then(Value::as_str),
        v.get("subtype").and_then(Value::as_str),
    ) {
        (Some("rate_limit_event"), _) => {
            let info = v.get("rate_limit_info")?;
            if info.get("status").and_then(Value::as_str) != Some("rejected") {
                return None;
            }
            let kind = info
                .get("rateLimitType")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let reset_at = match info.get("resetsAt") {
                Some(Value::Number(n)) => unix_reset(&n.to_string(), now),
                Some(Value::String(s)) => unix_reset(s, now),
                _ => None,
            };
            Some(Hit {
                class: Class::Quota,
                phrase: format!("usage limit ({})", crate::text::printable(kind)),
                reset_at,
            })
        }
        (Some("system"), Some("api_retry")) => {
            let status = v.get("error_status").and_then(Value::as_u64)?;
            let class = match status {
                429 => Class::Throttle,
                401 | 403 => Class::Auth,
                _ => return None,
            };
            Some(Hit {
                class,
                phrase: format!("HTTP {status}"),
                reset_at: None,
            })
        }
        _ => None,
    }
}

/// The event lines of a stream-json output that [`classify_stream_event`] judges, in order.
fn stream_events(stdout: &[u8], now: DateTime<Utc>) -> impl Iterator<Item = Hit> + '_ {
    let wanted = |l: &[u8]| {
        l.windows(16).any(|w| w == b"rate_limit_event") || l.windows(9).any(|w| w == b"api_retry")
    };
    stdout
        .split(|&b| b == b'\n')
        .filter(move |l| wanted(l))
        .filter_map(move |l| classify_stream_event(l, now))
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

    // --- Claude Code's json and stream-json -----------------------------------------------

    fn claude() -> std::sync::Arc<Patterns> {
        Patterns::for_profile(&crate::profile::CLAUDE)
            .with_clock(|| crate::detect::test_support::utc(2026, 12, 6, 9, 0, 0))
    }

    /// Claude Code 2.1.332's json result of a failed run, as printed (fields trimmed).
    fn claude_result(status: u16, kind: &str, text: &str, extra: &str) -> String {
        format!(
            r#"{{"type":"result","subtype":"success","is_error":true,"terminal_reason":"api_error","api_error_status":{status},"api_error_type":"{kind}","result":{}{extra},"num_turns":1}}"#,
            serde_json::Value::from(text)
        )
    }

    #[test]
    fn claude_json_errors_are_judged_by_is_error_not_subtype() {
        let p = claude();
        let judge = |doc: &str| classify_json_output(doc.as_bytes(), &p);
        let credit = claude_result(
            400,
            "invalid_request_error",
            "Credit balance is too low",
            "",
        );
        assert_eq!(class(&judge(&credit)), Some(Class::Quota));
        let key = claude_result(
            401,
            "authentication_error",
            "Invalid API key \u{b7} Fix external API key",
            "",
        );
        assert_eq!(class(&judge(&key)), Some(Class::Auth));
        let rate = claude_result(
            429,
            "rate_limit_error",
            "API Error: Request rejected (429) \u{b7} Number of request tokens has exceeded your per-minute rate limit",
            "",
        );
        assert_eq!(class(&judge(&rate)), Some(Class::Throttle));
        let server = claude_result(
            429,
            "rate_limit_error",
            "API Error: Server is temporarily limiting requests (not your usage limit) \u{b7} Rate limited",
            "",
        );
        assert_eq!(class(&judge(&server)), Some(Class::Throttle), "never quota");
        // A text no phrase claims: the status decides; a server fault is nobody's.
        let odd = claude_result(401, "authentication_error", "Something new", "");
        let hit = judge(&odd).expect("hit");
        assert_eq!((hit.class, hit.phrase.as_str()), (Class::Auth, "HTTP 401"));
        let odd = claude_result(429, "rate_limit_error", "Something new", "");
        assert_eq!(class(&judge(&odd)), Some(Class::Throttle));
        let overloaded = claude_result(
            529,
            "overloaded_error",
            "API Error: Repeated 529 Overloaded errors.",
            "",
        );
        assert_eq!(judge(&overloaded), None);
        let bad = claude_result(400, "invalid_request_error", "prompt is too long", "");
        assert_eq!(judge(&bad), None);
        // A successful answer that quotes every phrase is no hit.
        let ok = r#"{"type":"result","subtype":"success","is_error":false,"result":"Credit balance is too low and You've hit your 5-hour limit","num_turns":1}"#;
        assert_eq!(judge(ok), None);
    }

    #[test]
    fn claude_usage_limit_reached_is_quota_until_the_printed_reset() {
        let p = claude();
        let doc = claude_result(
            429,
            "rate_limit_error",
            "You've hit your 5-hour limit \u{b7} resets 4:18am (UTC)",
            r#","api_error":"usage_limit_reached""#,
        );
        let hit = classify_json_output(doc.as_bytes(), &p).expect("hit");
        assert_eq!(hit.class, Class::Quota);
        assert_eq!(
            hit.reset_at,
            Some(crate::detect::test_support::utc(2026, 12, 7, 4, 18, 0))
        );
        // `api_error` decides even when the text is one no phrase knows.
        let doc = claude_result(
            429,
            "rate_limit_error",
            "Limit reached",
            r#","api_error":"usage_limit_reached""#,
        );
        let hit = classify_json_output(doc.as_bytes(), &p).expect("hit");
        assert_eq!(
            (hit.class, hit.phrase.as_str(), hit.reset_at),
            (Class::Quota, "usage_limit_reached", None)
        );
        let weekly = claude_result(
            429,
            "rate_limit_error",
            "You've hit your weekly limit \u{b7} resets Dec 9, 1:25am (UTC)",
            r#","api_error":"usage_limit_reached""#,
        );
        let hit = classify_json_output(weekly.as_bytes(), &p).expect("hit");
        assert_eq!(
            hit.reset_at,
            Some(crate::detect::test_support::utc(2026, 12, 9, 1, 25, 0))
        );
    }

    #[test]
    fn claude_stream_json_events_report_a_limit_and_retries() {
        let p = claude();
        let now = p.now();
        let resets = now.timestamp() + 3 * 3600;
        let limit = format!(
            r#"{{"type":"rate_limit_event","rate_limit_info":{{"status":"rejected","resetsAt":{resets},"rateLimitType":"five_hour"}},"uuid":"u"}}"#
        );
        let hit = classify_stream_event(limit.as_bytes(), now).expect("hit");
        assert_eq!(hit.class, Class::Quota);
        assert_eq!(hit.reset_at, Some(now + chrono::TimeDelta::hours(3)));
        assert!(hit.phrase.contains("five_hour"), "{}", hit.phrase);
        let allowed = limit.replace("rejected", "allowed");
        assert_eq!(classify_stream_event(allowed.as_bytes(), now), None);
        let retry = |status: u16| {
            format!(
                r#"{{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":600,"error_status":{status}}}"#
            )
        };
        assert_eq!(
            class(&classify_stream_event(retry(429).as_bytes(), now)),
            Some(Class::Throttle)
        );
        assert_eq!(
            class(&classify_stream_event(retry(401).as_bytes(), now)),
            Some(Class::Auth)
        );
        assert_eq!(classify_stream_event(retry(529).as_bytes(), now), None);
        assert_eq!(classify_stream_event(retry(500).as_bytes(), now), None);
        for other in [
            &br#"{"type":"system","subtype":"init","apiKeySource":"ANTHROPIC_API_KEY"}"#[..],
            br#"{"type":"assistant","message":{"content":[{"type":"text","text":"rate_limit_event rejected"}]}}"#,
            b"not json",
            b"",
        ] {
            assert_eq!(classify_stream_event(other, now), None);
        }
        // The whole stream: the result line decides, the event gives its reset.
        let result = claude_result(
            429,
            "rate_limit_error",
            "You've hit your 5-hour limit",
            r#","api_error":"usage_limit_reached""#,
        );
        let stream = format!(
            "{}\n{limit}\n{result}\n",
            r#"{"type":"system","subtype":"init"}"#
        );
        let hit = classify_json_output(stream.as_bytes(), &p).expect("hit");
        assert_eq!(
            (hit.class, hit.reset_at),
            (Class::Quota, Some(now + chrono::TimeDelta::hours(3)))
        );
        // Stopped before its result line: the weightiest event decides.
        let cut = format!(
            "{}\n{}\n{limit}\n",
            r#"{"type":"system","subtype":"init"}"#,
            retry(429)
        );
        assert_eq!(
            class(&classify_json_output(cut.as_bytes(), &p)),
            Some(Class::Quota)
        );
        let cut = format!("{}\n{}\n", retry(401), retry(429));
        assert_eq!(
            class(&classify_json_output(cut.as_bytes(), &p)),
            Some(Class::Auth)
        );
        // A successful result after retries is no hit.
        let ok = format!(
            "{}\n{}\n",
            retry(429),
            r#"{"type":"result","subtype":"success","is_error":false,"result":"hi","num_turns":1}"#
        );
        assert_eq!(classify_json_output(ok.as_bytes(), &p), None);
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
