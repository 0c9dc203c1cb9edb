//! The client side, relay → provider: one request sent on the current slot's key, its error
//! answer classified, and the same request re-sent on the next slot while one can take it.
//! Invariant: the run's token never goes upstream (header, query, path or body).

use std::io::{self, Read};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::detect::{self};
use crate::model::Class;
use crate::profile::Wire;

use super::http::{Answer, Incoming, ToQwen, hop_by_hop, own_error, stream_answer, write_answer};
use super::meter::{self, Found, Outcome, Tap};
use super::shared::{Active, Next, REDACTED, Shared};

/// The header the Gemini API takes its key from; never forwarded from the CLI.
const KEY_HEADER: &str = "x-goog-api-key";
/// The header Anthropic's API takes its key from; on that wire never forwarded from the CLI
/// (nor its `Authorization`, which carries the run's token).
const ANTHROPIC_KEY_HEADER: &str = "x-api-key";

/// Anthropic's list of beta features a request uses.
const BETA_HEADER: &str = "anthropic-beta";
/// The beta a subscription login's requests carry (observed on claude 2.1.332): a login's
/// request without it is refused, a key's request with it is not a key's.
const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Error answers are read whole to classify them. Provider error bodies are a few hundred
/// bytes; a larger one is passed through unclassified.
const MAX_ERROR_BODY: usize = 256 * 1024;

/// Sends `req` upstream, rotating as needed, and writes the answer to qwen. Ok(false) when the
/// connection to qwen must be closed (an answer whose end cannot be told otherwise).
pub(super) fn relay_request(
    shared: &Shared,
    req: &Incoming,
    out: &mut ToQwen<'_>,
) -> io::Result<bool> {
    crate::fault::point("relay.request");
    if req.method.eq_ignore_ascii_case("CONNECT") {
        let answer = own_error(
            shared.wire(),
            405,
            "qwen-rotation relay: CONNECT is not supported",
            "invalid_request_error",
            "bad_request",
        );
        return write_answer(out, &answer, &req.method, req.close).map(|()| !req.close);
    }
    let mut active = match shared.start_slot() {
        Ok(a) => a,
        Err(answer) => return answer_own(shared, out, &answer, req),
    };
    let mut tries = 0;
    let mut auth_moved = false;
    loop {
        tries += 1;
        let url = upstream_url(
            &active.target.base_url,
            shared.vault.paths.profile.api.relay_path,
            &shared.scrub(&req.path),
            req.query
                .as_deref()
                .and_then(|q| shared.scrub_query(q))
                .as_deref(),
        );
        // A login's token is read now (the CLI may have refreshed it); one that cannot be read
        // is that login's failure: the request moves on like on a 401.
        let credential = if active.login {
            match shared.vault.login_access(active.slot) {
                Ok(token) => token,
                Err(e) => {
                    let hit = crate::model::Hit {
                        class: Class::Auth,
                        phrase: format!("its login cannot be used ({e})"),
                        reset_at: None,
                    };
                    match shared.rotate(&active, &hit) {
                        Next::Slot(next) if tries < shared.max_tries && !auth_moved => {
                            auth_moved = true;
                            active = next;
                            continue;
                        }
                        Next::Answer(answer) => return answer_own(shared, out, &answer, req),
                        _ => {
                            let answer = own_error(
                                shared.wire(),
                                401,
                                &format!("qwen-rotation relay: {} {}", active.who(), hit.phrase),
                                "authentication_error",
                                "relay_login_unreadable",
                            );
                            return write_answer(out, &answer, &req.method, req.close)
                                .map(|()| !req.close);
                        }
                    }
                }
            }
        } else {
            active.target.key.clone()
        };
        let sent_at = Instant::now();
        let response = match send(shared, req, &active, &credential, &url) {
            Ok(r) => r,
            Err(e) => {
                let took = sent_at.elapsed();
                shared.count(
                    active.slot,
                    Outcome::ServerError,
                    &Found::default(),
                    took,
                    took,
                );
                let (status, message) = describe_failure(&e, &url);
                shared.warn_upstream(format!("{}: {message}", active.who()));
                let code = if status == 504 {
                    "relay_upstream_timeout"
                } else {
                    "relay_upstream_unreachable"
                };
                let answer = own_error(
                    shared.wire(),
                    status,
                    &format!("qwen-rotation relay: {message}"),
                    "relay_error",
                    code,
                );
                return write_answer(out, &answer, &req.method, req.close).map(|()| !req.close);
            }
        };
        let first = sent_at.elapsed();
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let remaining = meter::remaining(&parts.headers, Utc::now());
        let mut reader = body.into_reader();
        if status < 400 {
            // Nothing left on this key: it rests before this answer is passed on, so the next
            // request (which may follow its last byte at once) already goes to the next key.
            if let Some(r) = remaining {
                shared.saw_remaining(&active, r, status < 300);
            }
            let mut tap = Tap::new(&mut reader, |found| {
                answered(shared, &active, status, &found, first, sent_at.elapsed());
            });
            let written = stream_answer(
                out,
                status,
                &parts.headers,
                &req.method,
                &[],
                &mut tap,
                req.close,
            );
            tap.finish();
            return written;
        }
        // An error answer is classified below; its remaining amounts are only kept.
        if let Some(r) = remaining {
            shared.saw_remaining(&active, r, false);
        }
        // An error answer: small, so read it whole and see whether another key can do better.
        let (prefix, complete) = read_prefix(&mut reader, MAX_ERROR_BODY);
        let hit = complete
            .then(|| {
                let body = String::from_utf8_lossy(&prefix);
                let anthropic = (shared.wire() == Wire::Anthropic).then(|| {
                    let header = |name: &str| {
                        parts
                            .headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    detect::classify_anthropic(status, &header, &body, shared.patterns.now())
                });
                anthropic
                    .flatten()
                    .or_else(|| detect::classify_http(status, &body, &shared.patterns))
            })
            .flatten();
        let outcome = hit
            .as_ref()
            .map_or(Outcome::of_status(status), |h| Outcome::Hit(h.class));
        shared.count(
            active.slot,
            outcome,
            &Found::default(),
            first,
            sent_at.elapsed(),
        );
        if complete {
            // A second auth failure in one request is shown to qwen as it came: moving again
            // could walk every key on one request (never loop). It is reported by output
            // scanning or by the next request.
            if let Some(hit) = hit
                && !(hit.class == Class::Auth && auth_moved)
            {
                match shared.rotate(&active, &hit) {
                    // The spent slot is marked either way; a new send only within the bound.
                    Next::Slot(next) if tries < shared.max_tries => {
                        auth_moved |= hit.class == Class::Auth;
                        active = next;
                        continue;
                    }
                    Next::Slot(_) => {}
                    Next::Answer(answer) => return answer_own(shared, out, &answer, req),
                    Next::PassThrough => {}
                }
            }
        }
        let rest: Option<&mut dyn Read> = if complete { None } else { Some(&mut reader) };
        return match rest {
            None => stream_answer(
                out,
                status,
                &parts.headers,
                &req.method,
                &prefix,
                &mut io::empty(),
                req.close,
            ),
            Some(r) => stream_answer(
                out,
                status,
                &parts.headers,
                &req.method,
                &prefix,
                r,
                req.close,
            ),
        };
    }
}

/// A streamed answer on `active` has passed through: counted, and a 2xx marks the slot's
/// success, unless the stream carried an error event (`data: {"error":…}` in a 200): that is
/// classified like the same error as a status code. Its bytes have reached the CLI already, so
/// it cannot be retried here; the spent slot is marked and the next request goes to the next.
fn answered(
    shared: &Shared,
    active: &Active,
    status: u16,
    found: &Found,
    first: Duration,
    total: Duration,
) {
    let hit = found.error_event.as_deref().and_then(|event| {
        detect::classify_http(meter::event_status(event), event, &shared.patterns)
    });
    let outcome = match (&hit, &found.error_event) {
        (Some(h), _) => Outcome::Hit(h.class),
        (None, Some(_)) => Outcome::Other,
        (None, None) => Outcome::of_status(status),
    };
    shared.count(active.slot, outcome, found, first, total);
    match hit {
        Some(hit) => {
            *shared.stream_hit.lock().unwrap_or_else(|p| p.into_inner()) = Some(active.slot);
            if still_on(shared, active) {
                let _ = shared.rotate(active, &hit);
            }
        }
        None if found.error_event.is_none() && (200..300).contains(&status) => {
            shared.succeeded(active.slot);
        }
        None => {}
    }
}

/// The relay still holds `active`'s slot (no sibling request moved it on).
fn still_on(shared: &Shared, active: &Active) -> bool {
    let held = shared.state().active.slot;
    held == active.slot
}

/// Writes an answer the relay made itself; one that says every key is spent then lets the run
/// stop its attempt ([`Relay::on_exhausted`](crate::relay::Relay::on_exhausted)).
fn answer_own(
    shared: &Shared,
    out: &mut ToQwen<'_>,
    answer: &Answer,
    req: &Incoming,
) -> io::Result<bool> {
    let written = write_answer(out, answer, &req.method, req.close);
    if answer.all_spent {
        shared.exhausted_answered();
    }
    written.map(|()| !req.close)
}

/// The `anthropic-beta` list a request goes out with: the CLI's, with the OAuth beta added for
/// a login (the CLI sent the request with a key, or with the run's token) or removed for a key
/// (the CLI is logged in, the chain moved on to a key). `None`: no header.
fn anthropic_betas(req: &Incoming, login: bool) -> Option<String> {
    let mut betas: Vec<String> = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(BETA_HEADER))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|b| b.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|b| !b.is_empty() && b != OAUTH_BETA)
        .collect();
    if login {
        betas.push(OAUTH_BETA.to_string());
    }
    (!betas.is_empty()).then(|| betas.join(","))
}

/// `base` + the request path without the relay's own path (`prefix`, `/v1` for qwen): what the
/// CLI would have requested had it been given `base` as its base URL (the OpenAI SDK appends
/// the path to the base as is; the Gemini SDK appends `/v1beta/…` to a base without a path).
fn upstream_url(base: &str, prefix: &str, path: &str, query: Option<&str>) -> String {
    let rest = match path.strip_prefix(prefix) {
        Some(r) if !prefix.is_empty() && (r.is_empty() || r.starts_with('/')) => r,
        _ => path,
    };
    let mut url = format!("{}{rest}", base.trim_end_matches('/'));
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// The names listed in a `Connection` header are hop-by-hop too.
fn connection_listed(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn send(
    shared: &Shared,
    req: &Incoming,
    active: &Active,
    credential: &crate::model::Secret,
    url: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    use ureq::http::{HeaderName, HeaderValue};
    let listed = connection_listed(&req.headers);
    let wire = shared.wire();
    let mut builder = ureq::http::Request::builder()
        .method(req.method.as_str())
        .uri(url);
    for (name, value) in &req.headers {
        // Also drop any header that carries the run's token under another name (`api-key`, …):
        // the provider never sees it.
        if hop_by_hop(name)
            || name.eq_ignore_ascii_case(KEY_HEADER)
            || (wire == Wire::Anthropic
                && (name.eq_ignore_ascii_case(ANTHROPIC_KEY_HEADER)
                    || name.eq_ignore_ascii_case("authorization")))
            || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
            || shared.token_at.is_match(value)
            || (wire == Wire::Anthropic && name.eq_ignore_ascii_case(BETA_HEADER))
        {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        builder = builder.header(n, v);
    }
    if wire == Wire::Anthropic
        && let Some(betas) = anthropic_betas(req, active.login)
        && let Ok(v) = HeaderValue::from_str(&betas)
    {
        builder = builder.header(BETA_HEADER, v);
    }
    // The slot's key where the provider's API wants it (the run's token, wherever the CLI put
    // it, was dropped above).
    let (header, value) = match wire {
        Wire::OpenAi => (
            ureq::http::header::AUTHORIZATION,
            format!("Bearer {}", credential.expose()),
        ),
        Wire::Gemini => (
            HeaderName::from_static(KEY_HEADER),
            credential.expose().to_string(),
        ),
        Wire::Anthropic if active.login => (
            ureq::http::header::AUTHORIZATION,
            format!("Bearer {}", credential.expose()),
        ),
        Wire::Anthropic => (
            HeaderName::from_static(ANTHROPIC_KEY_HEADER),
            credential.expose().to_string(),
        ),
    };
    let mut auth = HeaderValue::from_str(&value).map_err(|_| {
        ureq::Error::BadUri("the key contains characters a header cannot carry".into())
    })?;
    auth.set_sensitive(true);
    builder = builder.header(header, auth);
    let agent = shared.routes.agent_for(url);
    let rewritten = rewrite_model(
        &req.body,
        shared.start_model.as_deref(),
        active.target.model.as_deref(),
    );
    let body: &[u8] = rewritten.as_deref().unwrap_or(&req.body);
    // The token in the body (a tool that printed qwen's environment into the conversation):
    // the provider never sees it.
    let scrubbed = shared.token_at.replace_all(body, REDACTED.as_bytes());
    let body: &[u8] = &scrubbed;
    if body.is_empty()
        && req.header("content-length").is_none()
        && req.header("transfer-encoding").is_none()
    {
        agent.run(builder.body(())?)
    } else {
        agent.run(builder.body(body)?)
    }
}

/// The request body with `"model": from` replaced by `to`, when the slot in use names another
/// model than the one qwen was started with; None when nothing needs changing.
fn rewrite_model(body: &[u8], from: Option<&str>, to: Option<&str>) -> Option<Vec<u8>> {
    let (from, to) = (from?, to?);
    if from == to || body.is_empty() {
        return None;
    }
    let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let model = doc.get_mut("model")?;
    if model.as_str() != Some(from) {
        return None;
    }
    *model = serde_json::Value::String(to.to_string());
    serde_json::to_vec(&doc).ok()
}

/// Reads up to `limit` bytes; `complete` when the body ended within them. A read error counts
/// as the end (what was read is still passed on).
fn read_prefix(reader: &mut impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    match reader.take(limit as u64 + 1).read_to_end(&mut buf) {
        Ok(_) if buf.len() <= limit => (buf, true),
        Ok(_) => (buf, false),
        Err(_) => (buf, true),
    }
}

/// Status and message for a request that got no answer. Only the URL's scheme, host, port and
/// path are named: userinfo and query can hold secrets.
fn describe_failure(e: &ureq::Error, url: &str) -> (u16, String) {
    let shown = shown_url(url);
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    match e {
        ureq::Error::Timeout(t) => (504, format!("{shown} did not answer in time ({t})")),
        ureq::Error::HostNotFound => (502, format!("cannot reach {shown} (host not found)")),
        ureq::Error::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionRefused => {
                (502, format!("cannot reach {shown} (connection refused)"))
            }
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                (504, format!("{shown} did not answer in time"))
            }
            // rustls reports handshake failures (a plain-HTTP port, a bad certificate) as
            // InvalidData on the socket.
            io::ErrorKind::InvalidData if https => {
                (502, format!("TLS failure talking to {shown} ({io})"))
            }
            _ => (502, format!("cannot reach {shown} ({io})")),
        },
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => {
            (502, format!("TLS failure talking to {shown} ({e})"))
        }
        ureq::Error::ConnectProxyFailed(why) => (
            502,
            format!("the proxy refused the tunnel to {shown} ({why})"),
        ),
        ureq::Error::Protocol(p) => (502, format!("{shown} did not answer in HTTP/1.1 ({p})")),
        other => (502, format!("cannot reach {shown} ({other})")),
    }
}

/// `scheme://host[:port]/path` of `url`.
pub(super) fn shown_url(url: &str) -> String {
    match url.parse::<ureq::http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or("?");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{host}{port}{}",
                uri.scheme_str().unwrap_or("http"),
                uri.path()
            )
        }
        Err(_) => "the provider".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn upstream_url_replaces_the_relay_prefix_by_the_base() {
        let cases = [
            (
                "https://x.test/v1",
                "/v1/chat/completions",
                None,
                "https://x.test/v1/chat/completions",
            ),
            (
                "https://x.test/v1/",
                "/v1/chat/completions",
                None,
                "https://x.test/v1/chat/completions",
            ),
            (
                "https://x.test/compatible-mode/v1",
                "/v1/models",
                Some("a=1"),
                "https://x.test/compatible-mode/v1/models?a=1",
            ),
            (
                "https://x.test",
                "/v1/chat/completions",
                None,
                "https://x.test/chat/completions",
            ),
            (
                "https://x.test/api/v1",
                "/chat/completions",
                None,
                "https://x.test/api/v1/chat/completions",
            ),
            ("https://x.test/v1", "/v1", None, "https://x.test/v1"),
            (
                "https://x.test/v1",
                "/v1beta/x",
                None,
                "https://x.test/v1/v1beta/x",
            ),
        ];
        for (base, path, query, want) in cases {
            assert_eq!(
                upstream_url(base, "/v1", path, query),
                want,
                "{base} + {path}"
            );
        }
        // The Gemini API: the relay's base has no path; the whole path goes on the slot's base.
        assert_eq!(
            upstream_url(
                "https://generativelanguage.googleapis.com/",
                "",
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
                Some("alt=sse")
            ),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn model_is_rewritten_only_when_the_slot_names_another() {
        let body = br#"{"model":"m1","stream":true}"#;
        let out = rewrite_model(body, Some("m1"), Some("m2")).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["model"], "m2");
        assert_eq!(doc["stream"], true);
        assert!(rewrite_model(body, Some("m1"), Some("m1")).is_none());
        assert!(rewrite_model(body, None, Some("m2")).is_none());
        assert!(rewrite_model(body, Some("other"), Some("m2")).is_none());
        assert!(rewrite_model(b"not json", Some("m1"), Some("m2")).is_none());
    }

    #[test]
    fn failures_name_the_problem_and_never_the_query() {
        let refused = ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        let (status, msg) = describe_failure(
            &refused,
            "http://127.0.0.1:9/v1/chat/completions?key=SECRET",
        );
        assert_eq!(status, 502);
        assert!(
            msg.contains("connection refused")
                && msg.contains("http://127.0.0.1:9/v1/chat/completions"),
            "{msg}"
        );
        assert!(!msg.contains("SECRET"));
        let tls = ureq::Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "received corrupt message",
        ));
        let (_, msg) = describe_failure(&tls, "https://user:pw@x.test/v1");
        assert!(msg.contains("TLS") && !msg.contains("pw"), "{msg}");
    }
}
