//! HTTP/1.1 on the loopback side: reading qwen's requests (bounded head, bounded body), the
//! answers the relay makes itself, and writing answers back, streamed and flushed per chunk.
//! Invariant: nothing here knows slots or keys; it reads and writes bytes within fixed limits.

use std::fmt::Write as _;
use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::profile::Wire;

/// An idle keep-alive connection from qwen is closed after this long. Announced in a
/// `Keep-Alive: timeout=` header so undici closes its side first and never reuses a connection
/// we are about to drop (undici subtracts a second from the hint).
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Request line plus headers.
const MAX_HEAD: u64 = 64 * 1024;
const MAX_HEADERS: usize = 256;
/// A request body is kept in memory so it can be re-sent on the next key. Chat requests carry
/// the whole conversation (a few MB with images); past this the client gets a 413.
const MAX_BODY: usize = 256 << 20;
/// Read size for relaying bodies.
pub(super) const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Requests from qwen
// ---------------------------------------------------------------------------------------------

/// One request as qwen sent it.
pub(super) struct Incoming {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: Option<String>,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) body: Vec<u8>,
    /// The client wants the connection closed after this answer (or speaks HTTP/1.0).
    pub(super) close: bool,
}

impl Incoming {
    pub(super) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// The read side of a connection from qwen: within `deadline` in total when one is set (request
/// heads), else within [`IDLE_TIMEOUT`] per read (bodies). The socket option is set only when it
/// changes, so a body costs no extra system call per read.
pub(super) struct FromQwen<'a> {
    stream: &'a TcpStream,
    pub(super) deadline: Option<Instant>,
    applied: Option<Duration>,
}

impl<'a> FromQwen<'a> {
    pub(super) fn new(stream: &'a TcpStream) -> FromQwen<'a> {
        FromQwen {
            stream,
            deadline: None,
            applied: None,
        }
    }
}

impl Read for FromQwen<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                left
            }
            None => IDLE_TIMEOUT,
        };
        if self.applied != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.applied = Some(timeout);
        }
        (&*self.stream).read(buf)
    }
}

/// The write side of a connection to qwen; `started` once a byte of the current answer went out.
pub(super) struct ToQwen<'a> {
    stream: &'a TcpStream,
    pub(super) started: bool,
}

impl<'a> ToQwen<'a> {
    pub(super) fn new(stream: &'a TcpStream) -> ToQwen<'a> {
        ToQwen {
            stream,
            started: false,
        }
    }
}

impl Write for ToQwen<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.started = true;
        (&*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.stream).flush()
    }
}

/// One line, at most `limit` bytes, CRLF or LF stripped.
fn read_line(reader: &mut impl BufRead, limit: &mut u64) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = reader.by_ref().take(*limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    *limit = limit.saturating_sub(n as u64);
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or cut short",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// The request line and headers; `Ok(None)` on a clean close between requests.
pub(super) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Incoming>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut budget = MAX_HEAD;
    // Stray empty lines between requests are allowed (RFC 9112 §2.2).
    let line = loop {
        match read_line(reader, &mut budget) {
            Ok(None) => return Ok(None),
            Ok(Some(l)) if l.is_empty() => continue,
            Ok(Some(l)) => break l,
            // An idle keep-alive connection timing out is a normal end.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    };
    let line = String::from_utf8(line).map_err(|_| bad("request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Err(bad("unsupported request"));
    }
    let mut headers = Vec::new();
    loop {
        let Some(h) = read_line(reader, &mut budget)? else {
            return Err(bad("headers cut short"));
        };
        if h.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let colon = h
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header without a colon"))?;
        let name = std::str::from_utf8(&h[..colon])
            .map_err(|_| bad("header name"))?
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(bad("empty header name"));
        }
        headers.push((name, h[colon + 1..].trim_ascii().to_vec()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut req = Incoming {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
        close: false,
    };
    let connection = req
        .header("connection")
        .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase());
    req.close = match connection {
        Some(c) if c.contains("close") => true,
        Some(c) if c.contains("keep-alive") => false,
        _ => version == "HTTP/1.0",
    };
    Ok(Some(req))
}

/// The body by `Transfer-Encoding: chunked` or `Content-Length`; InvalidData when malformed or
/// larger than [`MAX_BODY`].
pub(super) fn read_body(reader: &mut impl BufRead, req: &Incoming) -> io::Result<Vec<u8>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().windows(7).any(|w| w == b"chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let mut budget = 1024;
            let line = read_line(reader, &mut budget)?.ok_or_else(|| bad("chunk cut short"))?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.split(';').next())
                .map(str::trim);
            let size = size
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or_else(|| bad("chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                let mut budget = MAX_HEAD;
                while let Some(t) = read_line(reader, &mut budget)? {
                    if t.is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    }
    let Some(len) = req.header("content-length") else {
        return Ok(Vec::new());
    };
    let len: usize = std::str::from_utf8(len)
        .ok()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| bad("content-length"))?;
    if len > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// Answers the relay makes itself (shaped like the provider's, so the CLI shows them as such)
// ---------------------------------------------------------------------------------------------

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Vec<u8>,
    /// "Every key is spent" ([`exhausted_answer`]).
    pub(super) all_spent: bool,
}

/// An answer of the relay's own in the shape of the CLI's provider: OpenAI's
/// `{"error":{"message","type","code"}}`, Google's `{"error":{"code","status","message"}}`, or
/// Anthropic's `{"type":"error","error":{"type","message"}}`.
pub(super) fn own_error(wire: Wire, status: u16, message: &str, kind: &str, code: &str) -> Answer {
    let body = match wire {
        Wire::OpenAi => {
            serde_json::json!({"error": {"message": message, "type": kind, "code": code}})
        }
        Wire::Gemini => serde_json::json!({"error": {
            "code": status,
            "status": google_status(status, code),
            "message": message,
        }}),
        Wire::Anthropic => serde_json::json!({"type": "error", "error": {
            "type": anthropic_type(status, code),
            "message": message,
        }}),
    };
    Answer {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.to_string().into_bytes(),
        all_spent: false,
    }
}

/// Google's status name for one of our answers. A refused token is a wiring fault, not a
/// rejected key: it gets a status no auth phrase matches.
fn google_status(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (_, "relay_token_mismatch") => "FAILED_PRECONDITION",
        (429, _) => "RESOURCE_EXHAUSTED",
        (504, _) => "DEADLINE_EXCEEDED",
        (500..=599, "relay_internal_error") => "INTERNAL",
        (500..=599, _) => "UNAVAILABLE",
        _ => "INVALID_ARGUMENT",
    }
}

/// Anthropic's error type for one of our answers. A refused token is a wiring fault, not a
/// rejected key: it gets a type no auth phrase matches.
fn anthropic_type(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (_, "relay_token_mismatch") => "invalid_request_error",
        (429, _) => "rate_limit_error",
        (404, _) => "not_found_error",
        (413, _) => "request_too_large",
        (500..=599, _) => "api_error",
        _ => "invalid_request_error",
    }
}

/// The answer to claude's `HEAD /api/hello` probe: 200, empty.
pub(super) fn hello_answer() -> Answer {
    Answer {
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
        all_spent: false,
    }
}

/// A quota answer the CLI gives up on at once. OpenAI-compatible: 0.24 fails fast on a
/// message with "quota", "exhausted" and "will reset"/"reset at" (`isQuotaExhaustedError`),
/// `x-should-retry: false` turns off the OpenAI SDK's own three retries, and
/// `insufficient_quota` in the text lets output scanning classify it whatever qwen prints
/// around it (0.12 shows only the message). Gemini: a 429 whose `QuotaFailure` names a daily
/// quota is terminal in gemini (no retry, no fallback in a headless run). Anthropic: claude
/// retries a 429 for minutes unless `x-should-retry: false` says not to.
fn quota_answer(wire: Wire, message: &str) -> Answer {
    let mut answer = own_error(
        wire,
        429,
        message,
        "insufficient_quota",
        "insufficient_quota",
    );
    if wire == Wire::Gemini {
        let body = serde_json::json!({"error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": message,
            "details": [{
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}],
            }],
        }});
        answer.body = body.to_string().into_bytes();
    }
    answer.headers.push(("x-should-retry", "false".into()));
    answer
}

/// OpenAI's error code in our quota messages, for output scanning of an OpenAI-compatible
/// CLI; a Google error carries its meaning in its structure instead.
fn openai_code(wire: Wire) -> &'static str {
    match wire {
        Wire::OpenAi => " (insufficient_quota)",
        Wire::Gemini | Wire::Anthropic => "",
    }
}

/// Every key spent (see [`quota_answer`] for why the CLI stops at once).
pub(super) fn exhausted_answer(wire: Wire, earliest: Option<DateTime<Utc>>) -> Answer {
    let when = match earliest {
        Some(t) => format!(
            "the first one will reset at {} (in {})",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            crate::text::human_duration(t - Utc::now())
        ),
        None => format!(
            "no reset time is known (see `{} --rotation-status`); the quota will reset at the provider's next reset",
            crate::profile::active().name
        ),
    };
    let message = format!(
        "qwen-rotation: all accounts exhausted{}: every account's quota has been exhausted; {when}",
        openai_code(wire)
    );
    let mut answer = quota_answer(wire, &message);
    answer.all_spent = true;
    answer
}

/// The next slot is one qwen must be restarted for: a quota answer qwen gives up on at once
/// (see [`quota_answer`]); run.rs's output scanning then reruns qwen.
pub(super) fn unservable_answer(wire: Wire, slot: usize) -> Answer {
    let message = format!(
        "qwen-rotation: quota exhausted{} on this key; account {slot} is next and \
         {} must be restarted to use it; the spent key's quota will reset at the provider's next reset",
        openai_code(wire),
        crate::profile::active().name
    );
    quota_answer(wire, &message)
}

/// The request did not carry the run's token. Worded without the auth phrases output scanning
/// rotates on: this is a wiring fault, not a spent account.
pub(super) fn refused_answer(wire: Wire) -> Answer {
    let mut answer = own_error(
        wire,
        401,
        "qwen-rotation relay: this request does not carry the key of this run; refused",
        "invalid_request_error",
        "relay_token_mismatch",
    );
    answer.headers.push(("x-should-retry", "false".into()));
    answer
}

// ---------------------------------------------------------------------------------------------
// Writing answers to qwen
// ---------------------------------------------------------------------------------------------

fn reason(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn head_common(head: &mut String, close: bool) {
    if close {
        head.push_str("connection: close\r\n");
    } else {
        let _ = write!(
            head,
            "connection: keep-alive\r\nkeep-alive: timeout={}\r\n",
            IDLE_TIMEOUT.as_secs()
        );
    }
}

pub(super) fn write_answer(
    out: &mut impl Write,
    answer: &Answer,
    method: &str,
    close: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", answer.status, reason(answer.status));
    for (k, v) in &answer.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "content-length: {}\r\n", answer.body.len());
    head_common(&mut head, close);
    head.push_str("\r\n");
    let mut frame = head.into_bytes();
    if !method.eq_ignore_ascii_case("HEAD") {
        frame.extend_from_slice(&answer.body);
    }
    out.write_all(&frame)?;
    out.flush()
}

/// Writes the provider's status and headers, then `prefix` and the rest of `body`, each read
/// passed on at once (chunked encoding when the provider gave no length). Ok(false) when the
/// connection must close: qwen asked so, or the provider's body broke off.
pub(super) fn stream_answer(
    out: &mut impl Write,
    status: u16,
    headers: &ureq::http::HeaderMap,
    method: &str,
    prefix: &[u8],
    body: &mut dyn Read,
    close: bool,
) -> io::Result<bool> {
    let bodyless =
        method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 || status < 200;
    let length = headers
        .get(ureq::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let listed: Vec<String> = headers
        .get_all(ureq::http::header::CONNECTION)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let name = name.as_str();
        if hop_by_hop(name) || listed.iter().any(|l| l == name) {
            continue;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(value.as_bytes()));
        head.push_str("\r\n");
    }
    let chunked = !bodyless && length.is_none();
    match (bodyless, length) {
        // A HEAD answer keeps the length it announces.
        (true, Some(n)) if method.eq_ignore_ascii_case("HEAD") => {
            let _ = write!(head, "content-length: {n}\r\n");
        }
        (true, _) => {}
        (false, Some(n)) => {
            let _ = write!(head, "content-length: {n}\r\n");
        }
        (false, None) => head.push_str("transfer-encoding: chunked\r\n"),
    }
    head_common(&mut head, close);
    head.push_str("\r\n");
    let mut frame = head.into_bytes();
    if bodyless {
        out.write_all(&frame)?;
        out.flush()?;
        return Ok(!close);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    let mut pending: &[u8] = prefix;
    let mut ended_cleanly = true;
    loop {
        let n = if pending.is_empty() {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    ended_cleanly = false;
                    break;
                }
            }
        } else {
            let n = pending.len().min(buf.len());
            buf[..n].copy_from_slice(&pending[..n]);
            pending = &pending[n..];
            n
        };
        if chunked {
            let _ = write!(ChunkHeader(&mut frame), "{n:x}\r\n");
            frame.extend_from_slice(&buf[..n]);
            frame.extend_from_slice(b"\r\n");
        } else {
            frame.extend_from_slice(&buf[..n]);
        }
        sent += n as u64;
        // One write per chunk: SSE events reach qwen the moment the provider sends them.
        out.write_all(&frame)?;
        frame.clear();
    }
    if let Some(n) = length
        && sent != n
    {
        ended_cleanly = false;
    }
    if chunked && ended_cleanly {
        frame.extend_from_slice(b"0\r\n\r\n");
    }
    if !frame.is_empty() {
        out.write_all(&frame)?;
    }
    out.flush()?;
    // A body that broke off can only be told to qwen by closing the connection without the
    // terminating chunk (or short of the announced length).
    Ok(ended_cleanly && !close)
}

/// `write!` into a Vec<u8> without going through io::Write's error plumbing.
struct ChunkHeader<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ChunkHeader<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Headers that belong to one connection (RFC 9110 §7.6.1) or that the relay sets itself.
pub(super) fn hop_by_hop(name: &str) -> bool {
    const DROP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "authorization",
        "expect",
        // Asked for identity so error bodies can be read and classified; ureq (built without
        // its gzip feature) would not decode a compressed one.
        "accept-encoding",
    ];
    DROP.iter().any(|d| name.eq_ignore_ascii_case(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Patterns;
    use crate::model::Class;

    #[test]
    fn hop_by_hop_and_credentials_are_not_forwarded() {
        for h in [
            "Connection",
            "keep-alive",
            "Transfer-Encoding",
            "Host",
            "Authorization",
            "Content-Length",
            "Accept-Encoding",
        ] {
            assert!(hop_by_hop(h), "{h}");
        }
        for h in [
            "content-type",
            "user-agent",
            "x-stainless-os",
            "openai-organization",
        ] {
            assert!(!hop_by_hop(h), "{h}");
        }
    }

    #[test]
    fn answers_make_qwen_give_up_at_once() {
        // qwen 0.24's isQuotaExhaustedError: "quota" && ("exhausted"|"exceeded") && ("will reset"|"reset at").
        let fail_fast = |a: &Answer| {
            let doc: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            let m = doc["error"]["message"].as_str().unwrap().to_lowercase();
            m.contains("quota")
                && (m.contains("exhausted") || m.contains("exceeded"))
                && (m.contains("will reset") || m.contains("reset at"))
        };
        let t = "2026-11-30T09:25:00Z".parse::<DateTime<Utc>>().unwrap();
        for a in [
            exhausted_answer(Wire::OpenAi, Some(t)),
            exhausted_answer(Wire::OpenAi, None),
            unservable_answer(Wire::OpenAi, 3),
        ] {
            assert_eq!(a.status, 429);
            assert!(fail_fast(&a));
            assert!(
                a.headers
                    .iter()
                    .any(|(k, v)| *k == "x-should-retry" && v == "false")
            );
        }
        assert!(
            String::from_utf8_lossy(&exhausted_answer(Wire::OpenAi, Some(t)).body)
                .contains("2026-11-30T09:25:00Z")
        );
    }

    #[test]
    fn output_scanning_reads_our_answers_as_they_are_meant() {
        let patterns = Patterns::defaults();
        let message = |a: &Answer| {
            let doc: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            doc["error"]["message"].as_str().unwrap().to_string()
        };
        // What qwen prints of them (0.12 shows the message alone) must classify as quota, so
        // run.rs reruns on an OAuth slot or ends with "exhausted" …
        for a in [
            exhausted_answer(Wire::OpenAi, None),
            unservable_answer(Wire::OpenAi, 2),
        ] {
            let hit = patterns.classify(&message(&a)).expect("classified");
            assert_eq!(hit.class, Class::Quota, "{}", message(&a));
        }
        // … and a refused token is a wiring fault, not an account to rotate away from.
        assert_eq!(
            patterns.classify(&message(&refused_answer(Wire::OpenAi))),
            None
        );
    }

    #[test]
    fn gemini_answers_are_google_errors_and_all_spent_is_a_daily_quota() {
        let now = "2026-11-30T09:25:00Z".parse::<DateTime<Utc>>().unwrap();
        let doc = |a: &Answer| serde_json::from_slice::<serde_json::Value>(&a.body).unwrap();
        for a in [
            exhausted_answer(Wire::Gemini, None),
            unservable_answer(Wire::Gemini, 2),
        ] {
            let d = doc(&a);
            assert_eq!((a.status, d["error"]["code"].as_u64()), (429, Some(429)));
            assert_eq!(d["error"]["status"], "RESOURCE_EXHAUSTED");
            // What gemini reads as final (a PerDay quotaId), and what we read as a quota.
            let id = d["error"]["details"][0]["violations"][0]["quotaId"]
                .as_str()
                .unwrap();
            assert!(id.contains("PerDay"), "{id}");
            let body = String::from_utf8_lossy(&a.body);
            let hit = crate::detect::classify_google(429, &body, now).unwrap();
            assert_eq!(hit.class, Class::Quota);
            assert!(!body.contains("insufficient_quota"), "{body}");
        }
        let refused = refused_answer(Wire::Gemini);
        let d = doc(&refused);
        assert_eq!(d["error"]["code"], 401);
        assert_eq!(d["error"]["status"], "FAILED_PRECONDITION");
        // A wiring fault: none of gemini's phrases (what output scanning rotates on) matches.
        let text = String::from_utf8_lossy(&refused.body).to_lowercase();
        for (_, name, re) in crate::profile::GEMINI.detect.phrases {
            assert!(!regex::Regex::new(re).unwrap().is_match(&text), "{name}");
        }
    }

    #[test]
    fn anthropic_answers_are_anthropic_errors_and_all_spent_stops_claude() {
        let doc = |a: &Answer| serde_json::from_slice::<serde_json::Value>(&a.body).unwrap();
        let header = |a: &Answer, name: &str| {
            a.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        for a in [
            exhausted_answer(Wire::Anthropic, None),
            unservable_answer(Wire::Anthropic, 2),
        ] {
            let d = doc(&a);
            assert_eq!(a.status, 429);
            assert_eq!(d["type"], "error");
            assert_eq!(d["error"]["type"], "rate_limit_error");
            // Without it claude retries a 429 for minutes.
            assert_eq!(header(&a, "x-should-retry").as_deref(), Some("false"));
            let body = String::from_utf8_lossy(&a.body);
            assert!(!body.contains("insufficient_quota"), "{body}");
        }
        assert!(exhausted_answer(Wire::Anthropic, None).all_spent);
        let refused = refused_answer(Wire::Anthropic);
        let d = doc(&refused);
        assert_eq!(refused.status, 401);
        assert_eq!(d["error"]["type"], "invalid_request_error");
        // A wiring fault: none of claude's phrases (what output scanning rotates on) matches.
        let text = String::from_utf8_lossy(&refused.body).to_lowercase();
        for (_, name, re) in crate::profile::CLAUDE.detect.phrases {
            assert!(!regex::Regex::new(re).unwrap().is_match(&text), "{name}");
        }
        let hello = hello_answer();
        assert_eq!((hello.status, hello.body.len()), (200, 0));
    }
}
