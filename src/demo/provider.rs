//! The demo's provider: a small HTTP/1.1 server on 127.0.0.1 that speaks the profile's wire
//! format (the OpenAI-compatible API, the Gemini API, or Anthropic's Messages API) and answers by
//! the key it is asked with: the spent key gets the provider's quota error, the fresh key a short
//! answer, any other key the provider's bad-key error.
//!
//! Invariant: it serves loopback only, reads bounded requests with a deadline, and tells the
//! script about every request it answers (which account's key, what it answered) through a
//! channel, in arrival order. It stops accepting when dropped.

use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::profile::{Profile, Wire};

use super::http::{Request, read_request, send, send_events};

/// The quota answer of the spent key on the OpenAI-compatible API: the words and code of a
/// provider's 429.
pub const QUOTA_MESSAGE: &str = "Free allocated quota exceeded.";
pub const QUOTA_CODE: &str = "insufficient_quota";
/// The Gemini API's: a daily quota (a `QuotaFailure` whose quota id names a day), which gemini
/// gives up on at once, as the Gemini API sends it.
pub const GEMINI_QUOTA_STATUS: &str = "RESOURCE_EXHAUSTED";
pub const GEMINI_QUOTA_MESSAGE: &str =
    "You exceeded your current quota, please check your plan and billing details.";
const GEMINI_QUOTA_ID: &str = "GenerateRequestsPerDayPerProjectPerModel-FreeTier";

/// Anthropic's spent key: a 400 (not a 429) saying the credit balance is too low, which claude
/// gives up on at once (one request, "Credit balance is too low", exit 1) and the relay reads as
/// a spent key.
pub const ANTHROPIC_QUOTA_TYPE: &str = "invalid_request_error";
pub const ANTHROPIC_QUOTA_MESSAGE: &str =
    "Your credit balance is too low to access the Anthropic API.";
const ANTHROPIC_QUOTA_ADVICE: &str =
    " Please go to Plans & Billing to upgrade or purchase credits.";

/// The code and words of the spent key's 429 on `wire`, as the step line shows them.
pub fn quota_words(wire: Wire) -> (&'static str, &'static str) {
    match wire {
        Wire::OpenAi => (QUOTA_CODE, QUOTA_MESSAGE),
        Wire::Gemini => (GEMINI_QUOTA_STATUS, GEMINI_QUOTA_MESSAGE),
        Wire::Anthropic => (ANTHROPIC_QUOTA_TYPE, ANTHROPIC_QUOTA_MESSAGE),
    }
}

/// What the fresh key answers, naming the CLI (`qwen`).
pub fn answer_text(name: &str) -> String {
    format!(
        "Hello from account 2: account 1 ran out of quota, and the shim moved this request here \
         before {name} noticed."
    )
}

/// A connection quiet for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One answered request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// The account whose key was presented (1 spent, 2 fresh), or None for another key.
    pub account: Option<usize>,
    pub status: u16,
    pub stream: bool,
}

struct Keys {
    spent: String,
    fresh: String,
    answer: String,
}

impl Keys {
    /// The account `key` belongs to: 1 (spent), 2 (fresh), None (another key).
    fn account(&self, key: &str) -> Option<usize> {
        if key == self.spent {
            Some(1)
        } else if key == self.fresh {
            Some(2)
        } else {
            None
        }
    }

    /// What an answer to `key` will be: `spent` for account 1, 200 for account 2, `other` for
    /// a key of neither.
    fn seen(&self, key: &str, stream: bool, spent: u16, other: u16) -> Seen {
        let account = self.account(key);
        let status = match account {
            Some(1) => spent,
            Some(_) => 200,
            None => other,
        };
        Seen {
            at: Instant::now(),
            account,
            status,
            stream,
        }
    }
}

/// `stream` and `model` of a JSON request body (OpenAI's and Anthropic's carry both).
fn stream_and_model(body: &[u8]) -> (bool, String) {
    let body: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let stream = body
        .as_ref()
        .and_then(|b| b.get("stream")?.as_bool())
        .unwrap_or(false);
    let model = body
        .as_ref()
        .and_then(|b| b.get("model")?.as_str())
        .unwrap_or("demo-model")
        .to_string();
    (stream, model)
}

/// A running provider.
pub struct Provider {
    addr: SocketAddr,
    wire: Wire,
    stop: Arc<AtomicBool>,
}

impl Provider {
    /// Binds 127.0.0.1 on a free port and serves the profile's wire in background threads; every
    /// answered request goes to the returned receiver.
    pub fn start(
        profile: &Profile,
        spent: &str,
        fresh: &str,
    ) -> io::Result<(Provider, Receiver<Seen>)> {
        let wire = profile.api.wire;
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        // Bound is not reachable: with the loopback interface down, connecting fails. The
        // backlog holds this probe until the accept loop takes it and sees it close.
        drop(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let keys = Arc::new(Keys {
            spent: spent.to_string(),
            fresh: fresh.to_string(),
            answer: answer_text(profile.name),
        });
        let accept_stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("demo-provider".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if accept_stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (tx, keys) = (tx.clone(), Arc::clone(&keys));
                    let _ = thread::Builder::new()
                        .name("demo-provider-conn".into())
                        .spawn(move || {
                            let _ = serve(wire, &keys, &tx, conn);
                        });
                }
            })?;
        Ok((Provider { addr, wire, stop }, rx))
    }

    /// The base URL the accounts are added with: `http://127.0.0.1:PORT/v1` (OpenAI-compatible),
    /// `http://127.0.0.1:PORT` (the Gemini API and the Messages API: the CLI adds `/v1beta/…`,
    /// `/v1/messages` itself).
    pub fn base_url(&self) -> String {
        match self.wire {
            Wire::OpenAi => format!("http://{}/v1", self.addr),
            Wire::Gemini | Wire::Anthropic => format!("http://{}", self.addr),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(wire: Wire, keys: &Keys, tx: &Sender<Seen>, conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader)? {
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match wire {
            Wire::OpenAi => openai_chat(keys, tx, &req, &mut writer)?,
            Wire::Gemini => gemini(keys, tx, &req, &mut writer)?,
            Wire::Anthropic => anthropic(keys, tx, &req, &mut writer)?,
        }
        if close {
            break;
        }
    }
    Ok(())
}

/// `POST …/chat/completions`: the spent key gets 429 `insufficient_quota`, the fresh key the
/// answer (JSON, or server-sent events when the body asks for `stream`), any other key 401.
fn openai_chat(keys: &Keys, tx: &Sender<Seen>, req: &Request, w: &mut TcpStream) -> io::Result<()> {
    if req.method != "POST" || !req.path.ends_with("/chat/completions") {
        return send(
            w,
            404,
            &openai_error("not found", "invalid_request_error", "not_found"),
        );
    }
    let key = req
        .header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or_default()
        .trim();
    let (stream, model) = stream_and_model(&req.body);
    let seen = keys.seen(key, stream, 429, 401);
    let status = seen.status;
    let result = match status {
        429 => send(w, 429, &openai_error(QUOTA_MESSAGE, QUOTA_CODE, QUOTA_CODE)),
        200 => answer(w, &model, &keys.answer, stream),
        _ => send(
            w,
            401,
            &openai_error(
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
            ),
        ),
    };
    let _ = tx.send(seen);
    result
}

fn openai_error(message: &str, kind: &str, code: &str) -> Vec<u8> {
    serde_json::json!({"error": {"message": message, "type": kind, "code": code}})
        .to_string()
        .into_bytes()
}

fn answer(w: &mut TcpStream, model: &str, text: &str, stream: bool) -> io::Result<()> {
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("chatcmpl-demo-{created}");
    let usage =
        serde_json::json!({"prompt_tokens": 12, "completion_tokens": 24, "total_tokens": 36});
    if !stream {
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": usage,
        });
        return send(w, 200, body.to_string().as_bytes());
    }
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut last = chunk(serde_json::json!({}), "stop".into());
    last["usage"] = usage;
    let events = [
        chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!({"content": text}),
            serde_json::Value::Null,
        ),
        last,
    ];
    let mut frames: Vec<(Option<&str>, Vec<u8>)> = events
        .iter()
        .map(|e| (None, e.to_string().into_bytes()))
        .collect();
    frames.push((None, b"[DONE]".to_vec()));
    send_events(w, &frames)
}
/// `POST /v1beta/models/<model>:generateContent` or `:streamGenerateContent?alt=sse`, the key in
/// `x-goog-api-key` or `?key=`: the spent key gets the Gemini API's daily-quota 429, the fresh
/// key the answer, any other key 400 `API_KEY_INVALID`. `generateContent` is gemini's routing
/// classifier (and its other JSON questions), which wants JSON text back: anything else makes it
/// retry for a minute and more; `streamGenerateContent` gets the answer as server-sent events.
fn gemini(keys: &Keys, tx: &Sender<Seen>, req: &Request, w: &mut TcpStream) -> io::Result<()> {
    let target = req
        .path
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(model, method)| {
            req.method == "POST"
                && !model.is_empty()
                && matches!(*method, "generateContent" | "streamGenerateContent")
        });
    let Some((model, method)) = target else {
        let body = google_error(404, "NOT_FOUND", "Requested entity was not found.", &[]);
        return send(w, 404, &body);
    };
    let key = req
        .header("x-goog-api-key")
        .map(str::to_string)
        .or_else(|| {
            req.query
                .split('&')
                .find_map(|p| p.strip_prefix("key="))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let stream = method == "streamGenerateContent";
    let seen = keys.seen(key.trim(), stream, 429, 400);
    let status = seen.status;
    let candidate = |text: &str| {
        serde_json::json!({
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 24,
                              "totalTokenCount": 36},
            "modelVersion": model,
        })
    };
    let result = match status {
        429 => {
            let message = format!(
                "{GEMINI_QUOTA_MESSAGE}\n* Quota exceeded for metric: \
                 generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: \
                 100, model: {model}\nPlease retry in 36.5s."
            );
            let details = [
                serde_json::json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaMetric":
                        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": GEMINI_QUOTA_ID}]}),
                serde_json::json!({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": "36s"}),
            ];
            send(
                w,
                429,
                &google_error(429, GEMINI_QUOTA_STATUS, &message, &details),
            )
        }
        200 if stream => send_events(
            w,
            &[(None, candidate(&keys.answer).to_string().into_bytes())],
        ),
        200 => {
            // The classifier's JSON (and the next-speaker check's, should one come).
            let text = serde_json::json!({"reasoning": "a short greeting", "model_choice": "flash",
                                          "next_speaker": "user"});
            send(w, 200, candidate(&text.to_string()).to_string().as_bytes())
        }
        _ => {
            let details = [
                serde_json::json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com"}),
            ];
            let message = "API key not valid. Please pass a valid API key.";
            send(
                w,
                400,
                &google_error(400, "INVALID_ARGUMENT", message, &details),
            )
        }
    };
    let _ = tx.send(seen);
    result
}

fn google_error(code: u16, status: &str, message: &str, details: &[serde_json::Value]) -> Vec<u8> {
    let mut error = serde_json::json!({"code": code, "status": status, "message": message});
    if !details.is_empty() {
        error["details"] = serde_json::Value::Array(details.to_vec());
    }
    serde_json::json!({ "error": error })
        .to_string()
        .into_bytes()
}
/// `HEAD /api/hello` (claude's reachability probe) answers 200 and is not reported. `POST
/// /v1/messages` (claude adds `?beta=true`), the key in `x-api-key`: the spent key gets the 400
/// "credit balance is too low", the fresh key the answer (one JSON message, or the named
/// server-sent events of a stream: `message_start`, `content_block_start`,
/// `content_block_delta`, `content_block_stop`, `message_delta` with `usage`, `message_stop`),
/// any other key 401 `authentication_error`.
fn anthropic(keys: &Keys, tx: &Sender<Seen>, req: &Request, w: &mut TcpStream) -> io::Result<()> {
    if req.path == "/api/hello" && matches!(req.method.as_str(), "HEAD" | "GET") {
        return send(w, 200, b"");
    }
    if req.method != "POST" || req.path != "/v1/messages" {
        return send(w, 404, &anthropic_error("not_found_error", "Not found"));
    }
    let key = req.header("x-api-key").unwrap_or_default().trim();
    let (stream, model) = stream_and_model(&req.body);
    let seen = keys.seen(key, stream, 400, 401);
    let status = seen.status;
    let result = match status {
        400 => {
            let message = format!("{ANTHROPIC_QUOTA_MESSAGE}{ANTHROPIC_QUOTA_ADVICE}");
            send(w, 400, &anthropic_error(ANTHROPIC_QUOTA_TYPE, &message))
        }
        200 => message(w, &model, &keys.answer, stream),
        _ => send(
            w,
            401,
            &anthropic_error("authentication_error", "invalid x-api-key"),
        ),
    };
    let _ = tx.send(seen);
    result
}

fn anthropic_error(kind: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        .to_string()
        .into_bytes()
}

/// The fresh key's Messages API answer: `text` as one message, or as a stream.
fn message(w: &mut TcpStream, model: &str, text: &str, stream: bool) -> io::Result<()> {
    let id = "msg_demo_account_2";
    if !stream {
        let body = serde_json::json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 24},
        });
        return send(w, 200, body.to_string().as_bytes());
    }
    let events = [
        serde_json::json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}),
        serde_json::json!({"type": "content_block_stop", "index": 0}),
        serde_json::json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 24}}),
        serde_json::json!({"type": "message_stop"}),
    ];
    let frames: Vec<(Option<&str>, Vec<u8>)> = events
        .iter()
        .map(|e| (e["type"].as_str(), e.to_string().into_bytes()))
        .collect();
    send_events(w, &frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One request on a fresh connection (`connection: close`): the whole response as text.
    fn call(addr: &str, method: &str, target: &str, header: &str, body: &str) -> String {
        let host = addr.trim_start_matches("http://").trim_end_matches("/v1");
        let mut s = TcpStream::connect(host).unwrap();
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nhost: x\r\n{header}content-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn post(addr: &str, key: &str, stream: bool) -> String {
        let body = format!(r#"{{"model":"m","stream":{stream},"messages":[]}}"#);
        let auth = format!("authorization: Bearer {key}\r\n");
        call(addr, "POST", "/v1/chat/completions", &auth, &body)
    }

    #[test]
    fn each_key_gets_its_answer_and_every_request_is_reported() {
        let (p, rx) = Provider::start(&crate::profile::QWEN, "k-spent", "k-fresh").unwrap();
        let url = p.base_url();
        let spent = post(&url, "k-spent", true);
        assert!(spent.starts_with("HTTP/1.1 429"), "{spent}");
        assert!(
            spent.contains(QUOTA_MESSAGE) && spent.contains(QUOTA_CODE),
            "{spent}"
        );
        let fresh = post(&url, "k-fresh", false);
        assert!(fresh.starts_with("HTTP/1.1 200"), "{fresh}");
        assert!(fresh.contains(&answer_text("qwen")), "{fresh}");
        let streamed = post(&url, "k-fresh", true);
        assert!(streamed.contains("text/event-stream"), "{streamed}");
        assert!(streamed.contains("data: [DONE]"), "{streamed}");
        assert!(post(&url, "other", false).starts_with("HTTP/1.1 401"));
        let seen: Vec<(Option<usize>, u16, bool)> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .map(|s| (s.account, s.status, s.stream))
            .collect();
        assert_eq!(
            seen,
            [
                (Some(1), 429, true),
                (Some(2), 200, false),
                (Some(2), 200, true),
                (None, 401, false)
            ]
        );
    }

    /// A Gemini API request: `target` (path and query) with `key` in a header (or none).
    fn gemini_post(addr: &str, target: &str, key: Option<&str>) -> String {
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
        let key = key
            .map(|k| format!("x-goog-api-key: {k}\r\n"))
            .unwrap_or_default();
        call(addr, "POST", target, &key, body)
    }

    /// The JSON body of a response (after the head).
    fn json_body(response: &str) -> serde_json::Value {
        let body = response.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
    }

    #[test]
    fn the_gemini_wire_answers_each_key_as_the_gemini_api_does() {
        let (p, rx) = Provider::start(&crate::profile::GEMINI, "k-spent", "k-fresh").unwrap();
        let url = p.base_url();
        assert!(!url.ends_with("/v1"), "{url}");
        let stream = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
        let classify = "/v1beta/models/gemini-2.5-flash-lite:generateContent";
        // The spent key: the daily-quota 429, as gemini's own classifier reads it.
        let spent = gemini_post(&url, stream, Some("k-spent"));
        assert!(spent.starts_with("HTTP/1.1 429"), "{spent}");
        let error = &json_body(&spent)["error"];
        assert_eq!(error["status"], GEMINI_QUOTA_STATUS);
        assert_eq!(error["code"], 429);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with(GEMINI_QUOTA_MESSAGE)
        );
        assert_eq!(
            error["details"][0]["violations"][0]["quotaId"],
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
        );
        // The fresh key by `?key=`: the classifier's question gets JSON text.
        let classified = gemini_post(&url, &format!("{classify}?key=k-fresh"), None);
        assert!(classified.starts_with("HTTP/1.1 200"), "{classified}");
        let text = json_body(&classified)["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let choice: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(choice["model_choice"], "flash");
        // The fresh key's stream: server-sent events carrying the answer.
        let streamed = gemini_post(&url, stream, Some("k-fresh"));
        assert!(streamed.contains("text/event-stream"), "{streamed}");
        assert!(streamed.contains(&answer_text("gemini")), "{streamed}");
        // Another key, and another path.
        let other = gemini_post(&url, stream, Some("other"));
        assert!(other.starts_with("HTTP/1.1 400") && other.contains("API_KEY_INVALID"));
        assert!(
            gemini_post(&url, "/v1/chat/completions", Some("k-fresh")).starts_with("HTTP/1.1 404")
        );
        let seen: Vec<(Option<usize>, u16, bool)> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .map(|s| (s.account, s.status, s.stream))
            .collect();
        assert_eq!(
            seen,
            [
                (Some(1), 429, true),
                (Some(2), 200, false),
                (Some(2), 200, true),
                (None, 400, true)
            ]
        );
    }

    /// A Messages API request to `target` with `key` in `x-api-key` (or none), `method` POST
    /// with a body or HEAD without one.
    fn anthropic_call(
        addr: &str,
        method: &str,
        target: &str,
        key: Option<&str>,
        stream: bool,
    ) -> String {
        let body = if method == "POST" {
            format!(
                r#"{{"model":"claude-sonnet-4-5","max_tokens":32,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
            )
        } else {
            String::new()
        };
        let key = key
            .map(|k| format!("x-api-key: {k}\r\n"))
            .unwrap_or_default();
        call(addr, method, target, &key, &body)
    }

    #[test]
    fn the_anthropic_wire_answers_each_key_as_the_messages_api_does() {
        let (p, rx) = Provider::start(&crate::profile::CLAUDE, "k-spent", "k-fresh").unwrap();
        let url = p.base_url();
        assert!(!url.ends_with("/v1"), "{url}");
        let messages = "/v1/messages?beta=true";
        // claude's probe: 200, empty, not a request of an account.
        let hello = anthropic_call(&url, "HEAD", "/api/hello", None, false);
        assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
        // The spent key: the 400 credit-balance error, in Anthropic's error shape.
        let spent = anthropic_call(&url, "POST", messages, Some("k-spent"), true);
        assert!(spent.starts_with("HTTP/1.1 400"), "{spent}");
        let doc = json_body(&spent);
        assert_eq!(doc["type"], "error");
        assert_eq!(doc["error"]["type"], ANTHROPIC_QUOTA_TYPE);
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Your credit balance is too low")
        );
        // The fresh key: one message as JSON…
        let one = anthropic_call(&url, "POST", messages, Some("k-fresh"), false);
        assert!(one.starts_with("HTTP/1.1 200"), "{one}");
        let doc = json_body(&one);
        assert_eq!(doc["type"], "message");
        assert_eq!(doc["content"][0]["text"], answer_text("claude"));
        assert_eq!(doc["model"], "claude-sonnet-4-5");
        // …or the named events of a stream, in order, the text in the delta and usage at the end.
        let streamed = anthropic_call(&url, "POST", messages, Some("k-fresh"), true);
        assert!(streamed.contains("text/event-stream"), "{streamed}");
        let names: Vec<&str> = streamed
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ],
            "{streamed}"
        );
        let delta: serde_json::Value = streamed
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
            .find(|d| d["type"] == "content_block_delta")
            .unwrap();
        assert_eq!(delta["delta"]["text"], answer_text("claude"));
        assert!(
            streamed.contains(r#""usage":{"output_tokens":24}"#),
            "{streamed}"
        );
        // Another key, and another path.
        let other = anthropic_call(&url, "POST", messages, Some("other"), false);
        assert!(other.starts_with("HTTP/1.1 401") && other.contains("authentication_error"));
        assert!(
            anthropic_call(&url, "POST", "/v1/chat/completions", Some("k-fresh"), false)
                .starts_with("HTTP/1.1 404")
        );
        let seen: Vec<(Option<usize>, u16, bool)> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .map(|s| (s.account, s.status, s.stream))
            .collect();
        assert_eq!(
            seen,
            [
                (Some(1), 400, true),
                (Some(2), 200, false),
                (Some(2), 200, true),
                (None, 401, false)
            ]
        );
        // The probe and the unknown path were not reported (a report is sent before the
        // connection closes, and every call above read its answer to the close).
        assert!(rx.try_recv().is_err());
    }
}
