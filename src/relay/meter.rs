//! What the relay measures while an answer passes through: token counts from the provider's
//! `usage` (OpenAI `usage.prompt_tokens/completion_tokens`, Gemini
//! `usageMetadata.promptTokenCount/candidatesTokenCount`, Anthropic `usage.input_tokens/
//! output_tokens` in `message_start` and, cumulative, `message_delta`), an error event inside a
//! 200 stream (`data: {"error":…}`; Anthropic's `event: error` with
//! `data: {"type":"error","error":…}`), and the remaining quota of the `x-ratelimit-*` headers.
//!
//! Invariant: the answer is never held back or changed: [`Tap`] scans each read as it passes,
//! keeping only a short tail (so a key split over two reads is still found) and, once an error
//! event starts, that one line (bounded). Nothing of a prompt or an answer is kept afterwards:
//! only numbers, and an error event's text long enough to classify it.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::bytes::Regex;

use crate::vault::usage::{Remaining, Usage};

/// Per slot, what this run's relay measured.
pub type Metered = Arc<Mutex<BTreeMap<usize, Usage>>>;
/// Per slot, the last remaining quota announced.
pub type Seen = Arc<Mutex<BTreeMap<usize, Remaining>>>;

/// Bytes kept from one read for the next: longer than any key and its number.
const TAIL: usize = 64;
/// An error event is kept up to this long to be classified (provider errors are short).
const MAX_ERROR_EVENT: usize = 8 * 1024;

fn token_keys() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    // A key inside a JSON string is escaped (`\"prompt_tokens\"`), so answer text that quotes
    // one never matches.
    RE.get_or_init(|| {
        Regex::new(
            r#"(?-u)"(prompt_tokens|completion_tokens|promptTokenCount|candidatesTokenCount|input_tokens|output_tokens)"[ \t\r\n]*:[ \t\r\n]*([0-9]{1,15})"#,
        )
        .expect("static regex")
    })
}

fn error_key() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    // A plain literal: searched at memory speed. Where it sits is checked by `event_start`.
    RE.get_or_init(|| Regex::new(r#"(?-u)"error""#).expect("static regex"))
}

/// Where the JSON of an error event starts: `"error"` is the first key of an object that is
/// the whole `data:` field of its line (`data: {"error":…`), or the key right after
/// `"type":"error"` (Anthropic's `data: {"type":"error","error":{"type","message"}}`). None for
/// `"error"` anywhere else (inside a JSON string its quotes are escaped).
fn event_start(window: &[u8], key: usize) -> Option<usize> {
    let line = window[..key]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let before = window[line..key].strip_prefix(b"data:")?;
    let brace = before.iter().position(|b| *b == b'{')?;
    let after = &before[brace + 1..];
    (blank(&before[..brace]) && (blank(after) || type_error_first(after)))
        .then_some(line + "data:".len())
}

fn blank(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// `"type":"error",` and nothing else (blanks aside): what stands before Anthropic's `"error"`.
fn type_error_first(mut s: &[u8]) -> bool {
    for part in [&b"\"type\""[..], b":", b"\"error\"", b","] {
        s = s.trim_ascii_start();
        match s.strip_prefix(part) {
            Some(rest) => s = rest,
            None => return false,
        }
    }
    blank(s)
}

/// What a scan of one answer found. Token counts keep the last value seen: Gemini repeats
/// cumulative counts in every chunk, Anthropic's `message_delta` repeats the output count of
/// `message_start` grown; OpenAI-compatible providers send them once, at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub(super) tokens_in: Option<u64>,
    pub(super) tokens_out: Option<u64>,
    /// The JSON of an error event in a streamed answer (the text after `data:`).
    pub(super) error_event: Option<String>,
}

/// Scans an answer's bytes as they pass.
#[derive(Default)]
pub(super) struct Scanner {
    tail: Vec<u8>,
    window: Vec<u8>,
    /// An error event being collected (until its line ends or the bound).
    error: Option<Vec<u8>>,
    pub(super) found: Found,
}

impl Scanner {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(err) = self.error.as_mut()
            && self.found.error_event.is_none()
        {
            collect(err, bytes);
            if line_done(err) {
                self.finish_error();
            }
        }
        self.window.clear();
        self.window.extend_from_slice(&self.tail);
        self.window.extend_from_slice(bytes);
        for c in token_keys().captures_iter(&self.window) {
            let n = std::str::from_utf8(&c[2]).ok().and_then(|t| t.parse().ok());
            match &c[1] {
                b"prompt_tokens" | b"promptTokenCount" | b"input_tokens" => {
                    self.found.tokens_in = n
                }
                _ => self.found.tokens_out = n,
            }
        }
        if self.error.is_none()
            && let Some(start) = error_key()
                .find_iter(&self.window)
                .find_map(|m| event_start(&self.window, m.start()))
        {
            let mut err = Vec::new();
            collect(&mut err, &self.window[start..]);
            let done = line_done(&err);
            self.error = Some(err);
            if done {
                self.finish_error();
            }
        }
        let keep = self.window.len().min(TAIL);
        self.tail.clear();
        self.tail
            .extend_from_slice(&self.window[self.window.len() - keep..]);
    }

    /// The answer ended: an error event still being collected is taken as it is.
    pub(super) fn end(&mut self) -> Found {
        if self.error.is_some() && self.found.error_event.is_none() {
            self.finish_error();
        }
        std::mem::take(&mut self.found)
    }

    fn finish_error(&mut self) {
        if let Some(err) = self.error.as_ref() {
            let line = err.split(|b| *b == b'\n').next().unwrap_or_default();
            self.found.error_event = Some(String::from_utf8_lossy(line).trim().to_string());
        }
    }
}

fn collect(into: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_ERROR_EVENT.saturating_sub(into.len());
    into.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn line_done(bytes: &[u8]) -> bool {
    bytes.contains(&b'\n') || bytes.len() >= MAX_ERROR_EVENT
}

/// A reader that hands every byte to a [`Scanner`] on its way through, and what it found to
/// `done` once the body ends, before the writer can pass that end on (so a verdict on the
/// answer is in place before the client can send its next request).
pub(super) struct Tap<'a, F: FnOnce(Found)> {
    inner: &'a mut dyn Read,
    scanner: Scanner,
    done: Option<F>,
}

impl<'a, F: FnOnce(Found)> Tap<'a, F> {
    pub(super) fn new(inner: &'a mut dyn Read, done: F) -> Self {
        Tap {
            inner,
            scanner: Scanner::default(),
            done: Some(done),
        }
    }

    /// Hands over what was found, once (the body ended, broke off, or was never read).
    pub(super) fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.scanner.end());
        }
    }
}

impl<F: FnOnce(Found)> Read for Tap<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scanner.feed(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            self.finish();
        }
        Ok(n)
    }
}

/// How one send upstream ended, for its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ok,
    Hit(crate::model::Class),
    ServerError,
    Other,
}

impl Outcome {
    /// An answer's status that no rotation class claimed.
    pub(super) fn of_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            500.. => Outcome::ServerError,
            _ => Outcome::Other,
        }
    }
}

/// Adds one send to `u`: its outcome, its tokens, its times.
pub(super) fn record(
    u: &mut Usage,
    outcome: Outcome,
    found: &Found,
    first: Duration,
    total: Duration,
) {
    use crate::model::Class;
    u.requests += 1;
    let class = match outcome {
        Outcome::Ok => &mut u.ok,
        Outcome::Hit(Class::Quota) => &mut u.quota,
        Outcome::Hit(Class::Throttle) => &mut u.throttle,
        Outcome::Hit(Class::Auth) => &mut u.auth,
        Outcome::ServerError => &mut u.server_error,
        Outcome::Other => &mut u.other,
    };
    *class += 1;
    u.tokens_in = u.tokens_in.saturating_add(found.tokens_in.unwrap_or(0));
    u.tokens_out = u.tokens_out.saturating_add(found.tokens_out.unwrap_or(0));
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    u.first_byte_ms = u.first_byte_ms.saturating_add(ms(first));
    u.total_ms = u.total_ms.saturating_add(ms(total));
}

/// The status an error event stands for, so it is classified like the same error as a status
/// code: Google's numeric `code` (429), else Anthropic's error type the status its API gives it
/// (`overloaded_error` 529, `api_error` 500, `rate_limit_error` 429, `authentication_error`
/// 401, `permission_error` 403, `billing_error` 402, `invalid_request_error` 400), else a
/// status named by its type or code (`rate_limit_exceeded`, `insufficient_quota` → 429;
/// `invalid_api_key` → 401), else 400 (then the configured patterns alone decide).
pub(super) fn event_status(event: &str) -> u16 {
    let doc: serde_json::Value = serde_json::from_str(event).unwrap_or_default();
    let err = &doc["error"];
    if let Some(n) = err["code"].as_u64().filter(|n| (400..600).contains(n)) {
        return n as u16;
    }
    if doc["type"] == "error" {
        let status = match err["type"].as_str().unwrap_or("") {
            "invalid_request_error" => Some(400),
            "authentication_error" => Some(401),
            "billing_error" => Some(402),
            "permission_error" => Some(403),
            "not_found_error" => Some(404),
            "request_too_large" => Some(413),
            "rate_limit_error" => Some(429),
            "api_error" => Some(500),
            "overloaded_error" => Some(529),
            _ => None,
        };
        if let Some(status) = status {
            return status;
        }
    }
    let named = [&err["code"], &err["type"], &err["status"]]
        .iter()
        .filter_map(|v| v.as_str())
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(" ");
    if ["rate_limit", "quota", "resource_exhausted", "throttl"]
        .iter()
        .any(|k| named.contains(k))
    {
        429
    } else if ["invalid_api_key", "unauthenticated", "authentication"]
        .iter()
        .any(|k| named.contains(k))
    {
        401
    } else {
        400
    }
}

/// The `x-ratelimit-*` headers of an answer, seen `now`; None when it carries none.
pub(super) fn remaining(headers: &ureq::http::HeaderMap, now: DateTime<Utc>) -> Option<Remaining> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let number = |name: &str| text(name).and_then(|t| t.trim().parse::<u64>().ok());
    let reset = |name: &str| {
        text(name)
            .and_then(parse_reset)
            .and_then(|d| chrono::TimeDelta::from_std(d).ok())
            .map(|d| now + d)
    };
    let r = Remaining {
        requests: number("x-ratelimit-remaining-requests"),
        tokens: number("x-ratelimit-remaining-tokens"),
        requests_reset: reset("x-ratelimit-reset-requests"),
        tokens_reset: reset("x-ratelimit-reset-tokens"),
        seen: Some(now),
    };
    (!r.is_empty()).then_some(r)
}

/// OpenAI's reset form: `6m0s`, `1s`, `20ms`, `1h2m3.5s`, or a bare number of seconds.
pub(super) fn parse_reset(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, scale) = [("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u))?;
        total += n * scale;
        rest = &rest[unit.len()..];
    }
    (total.is_finite() && total <= 1e9).then(|| Duration::from_secs_f64(total))
}

/// The amount under the floor, if any: ("requests", reset) or ("tokens", reset).
pub(super) fn under_floor(
    r: &Remaining,
    floor: crate::config::QuotaFloor,
) -> Option<(&'static str, u64, Option<DateTime<Utc>>)> {
    if let Some(n) = r.requests.filter(|n| *n <= floor.requests) {
        return Some(("requests", n, r.requests_reset));
    }
    r.tokens
        .filter(|n| *n <= floor.tokens)
        .map(|n| ("tokens", n, r.tokens_reset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> Found {
        let mut s = Scanner::default();
        for p in parts {
            s.feed(p);
        }
        s.end()
    }

    #[test]
    fn usage_is_found_in_json_and_in_the_last_sse_chunk_even_split_across_reads() {
        let json = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}"#;
        let f = scan(&[json]);
        assert_eq!((f.tokens_in, f.tokens_out), (Some(12), Some(7)));
        let (a, b) = json.split_at(40);
        assert_eq!(scan(&[a, b]), f);
        let sse = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9}}\n\ndata: [DONE]\n\n";
        let f = scan(&[&sse[..50], &sse[50..]]);
        assert_eq!((f.tokens_in, f.tokens_out), (Some(3), Some(9)));
        let gemini = b"data: {\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":1}}\r\n\r\ndata: {\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":4}}\r\n\r\n";
        let f = scan(&[gemini]);
        assert_eq!((f.tokens_in, f.tokens_out), (Some(5), Some(4)));
        assert_eq!(f.error_event, None);
        let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"cache_creation_input_tokens\":50,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n";
        let f = scan(&[&anthropic[..40], &anthropic[40..]]);
        assert_eq!((f.tokens_in, f.tokens_out), (Some(7), Some(3)));
    }

    #[test]
    fn answer_text_quoting_a_key_is_not_counted() {
        let body = br#"{"choices":[{"message":{"content":"say \"prompt_tokens\": 999"}}]}"#;
        assert_eq!(scan(&[body]).tokens_in, None);
    }

    #[test]
    fn an_error_event_in_a_stream_is_kept_whole_for_classification() {
        let sse = b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"You exceeded your current quota\",\"type\":\"insufficient_quota\"}}\n\n";
        let f = scan(&[&sse[..30], &sse[30..70], &sse[70..]]);
        let e = f.error_event.unwrap();
        assert!(e.starts_with("{\"error\""), "{e}");
        assert!(e.ends_with("}}"), "{e}");
        assert_eq!(event_status(&e), 429);
        assert_eq!(
            event_status(r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#),
            429
        );
        assert_eq!(event_status(r#"{"error":{"code":"invalid_api_key"}}"#), 401);
        assert_eq!(event_status(r#"{"error":{"message":"odd"}}"#), 400);
    }

    fn anthropic_error(kind: &str, message: &str) -> String {
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
            .to_string()
    }

    #[test]
    fn an_anthropic_error_event_in_a_200_stream_is_kept_and_classified() {
        let event = anthropic_error("overloaded_error", "Overloaded");
        let sse = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":7,\"output_tokens\":1}}}}}}\n\nevent: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"text_delta\",\"text\":\"say \\\"type\\\":\\\"error\\\",\\\"error\\\"\"}}}}\n\nevent: error\ndata: {event}\n\n"
        );
        let bytes = sse.as_bytes();
        let whole = scan(&[bytes]);
        assert_eq!(whole.error_event.as_deref(), Some(event.as_str()));
        assert_eq!(whole.tokens_in, Some(7));
        // Split anywhere, also inside `"type":"error"`: the same.
        for cut in (1..bytes.len()).step_by(3) {
            assert_eq!(scan(&[&bytes[..cut], &bytes[cut..]]), whole, "cut at {cut}");
        }
        // Text that quotes the shape is no event (its quotes are escaped), nor is a key that is
        // not right after `"type":"error"`.
        let quoted = scan(&[&bytes[..bytes.len() - event.len() - 23]]);
        assert_eq!(quoted.error_event, None);
        for line in [
            "data: {\"type\":\"message\",\"error\":{}}\n",
            "data: {\"type\":\"error\",\"x\":1,\"error\":{}}\n",
            "data: [{\"type\":\"error\",\"error\":{}}]\n",
        ] {
            assert_eq!(scan(&[line.as_bytes()]).error_event, None, "{line}");
        }
        assert!(
            scan(&[b"data: { \"type\" : \"error\" , \"error\":{\"type\":\"api_error\"}}\n"])
                .error_event
                .is_some()
        );
    }

    #[test]
    fn an_anthropic_error_event_stands_for_its_status_and_classifies_as_it() {
        use crate::detect::{Patterns, classify_http};
        use crate::model::Class;
        let patterns = Patterns::for_profile(&crate::profile::CLAUDE);
        let judge = |kind: &str, message: &str| {
            let event = anthropic_error(kind, message);
            let status = event_status(&event);
            (
                status,
                classify_http(status, &event, &patterns).map(|h| h.class),
            )
        };
        assert_eq!(judge("overloaded_error", "Overloaded"), (529, None));
        assert_eq!(judge("api_error", "Internal server error"), (500, None));
        assert_eq!(
            judge(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit"
            ),
            (429, Some(Class::Throttle))
        );
        assert_eq!(
            judge(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API."
            ),
            (400, Some(Class::Quota))
        );
        assert_eq!(
            judge("authentication_error", "invalid x-api-key"),
            (401, Some(Class::Auth))
        );
        assert_eq!(judge("permission_error", "no"), (403, Some(Class::Auth)));
        assert_eq!(
            judge("invalid_request_error", "prompt is too long"),
            (400, None)
        );
        assert_eq!(judge("something_new", "odd"), (400, None));
    }

    #[test]
    fn resets_read_the_openai_forms() {
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_reset("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_reset("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5x"), None);
    }

    #[test]
    fn remaining_headers_and_the_floor() {
        let now = Utc::now();
        let mut h = ureq::http::HeaderMap::new();
        assert_eq!(remaining(&h, now), None);
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "6m0s".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "5000".parse().unwrap());
        let r = remaining(&h, now).unwrap();
        assert_eq!(r.requests, Some(0));
        assert_eq!(r.requests_reset, Some(now + chrono::Duration::minutes(6)));
        let floor = crate::config::QuotaFloor::default();
        assert_eq!(
            under_floor(&r, floor),
            Some(("requests", 0, r.requests_reset))
        );
        let r = Remaining {
            requests: Some(3),
            ..r
        };
        assert_eq!(under_floor(&r, floor), None);
        let high = crate::config::QuotaFloor {
            requests: 0,
            tokens: 5000,
        };
        assert_eq!(under_floor(&r, high), Some(("tokens", 5000, None)));
    }
}

#[cfg(test)]
mod speed {
    #[test]
    #[ignore = "a figure, not a check: cargo test --release --lib relay::meter::speed -- --ignored"]
    fn scanning_speed() {
        let mut event = b"data: ".to_vec();
        event.resize(16 * 1024 - 2, b'x');
        event.extend_from_slice(b"\n\n");
        let chunk = event.repeat(4);
        let mut s = super::Scanner::default();
        let t = std::time::Instant::now();
        for _ in 0..1600 {
            s.feed(&chunk);
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!("scanner: {:.0} MiB/s", 100.0 / secs);
    }
}
