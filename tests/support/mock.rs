//! A mock OpenAI-compatible provider on 127.0.0.1 for the real-qwen tests.
//!
//! Invariant: the answer depends only on the bearer token (OAuth `access_token` or API key), so a
//! test chooses each account's fate by naming its token, and every request is recorded in arrival
//! order so the test can assert which accounts were tried. Plain std: one accept thread, one thread
//! per connection, HTTP/1.1 with keep-alive (node's fetch reuses connections), chunked SSE.
//!
//! Tokens (first match wins, so `tok1_quota_cp` is Coding Plan quota and `tok_ok` is success):
//! `stream_quota` 200 SSE with an error event · `quota_cp` 429 Coding Plan "will reset at" ·
//! `quota` 429 insufficient_quota "Free allocated quota exceeded." · `throttle` 429 limit_requests ·
//! `unauthorized` 401 · `forbidden` 403 Arrearage · `server_error` 500 · `quote` success whose text
//! quotes the quota phrases · `slow` success after [`Mock::set_slow_delay`] · anything else success
//! with the text `REPLY-FROM-<token>` (what QWEN_FACTS.md shows on stdout).
//!
//! Modifier: a token containing `fast` adds `x-should-retry: false` (the OpenAI SDK then skips its
//! own 3 retries) and `retry-after-ms: 1` / `retry-after: 1` to error answers, to shorten qwen's
//! retry paths in the few tests that need an error qwen retries (see tests/real_qwen.rs for what
//! each version actually honours).
//!
//! Successful answers carry `usage` (10 prompt, 5 completion tokens: in the JSON answer, and in
//! the last SSE chunk). A token containing `remaining0` adds OpenAI's rate-limit headers saying
//! no request is left (`x-ratelimit-remaining-requests: 0`, reset `6m0s`); `remaining`, 42 left
//! (see [`rate_limit_headers`]).
//!
//! `CONNECT host:port` makes the mock an HTTP proxy: a tunnel to the mock itself keeps speaking HTTP
//! on the same connection; a tunnel to a host registered with [`Mock::route`] is spliced to that
//! local address (used to put a local TLS "OAuth host" behind `chat.qwen.ai:443`).
//!
//! Fixture credentials carry the secret mark of support/secrets.rs; the mock drops it when it
//! reads a bearer token, so recorded tokens and answers name the account, not its secret.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// What the mock does for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Ok,
    /// 429 `insufficient_quota`, "Free allocated quota exceeded." (the free tier / DashScope body).
    Quota,
    /// 429 `insufficient_quota`, Alibaba Coding Plan wording with a reset time.
    QuotaCodingPlan,
    /// 429 `limit_requests`, "Requests rate limit exceeded, please try again later."
    Throttle,
    /// 401 `invalid_api_key`, "Incorrect API key provided."
    Unauthorized,
    /// 403 `Arrearage`.
    Forbidden,
    /// 500.
    ServerError,
    /// 200 SSE whose first event is an `insufficient_quota` error object.
    StreamQuota,
    /// 200, an answer that quotes the quota phrases (no-false-positive tests).
    Quote,
    /// 200 after the mock's slow delay.
    Slow,
}

impl Behaviour {
    /// The behaviour a token selects (see the module header for the order).
    pub fn for_token(token: &str) -> Behaviour {
        const TABLE: &[(&str, Behaviour)] = &[
            ("stream_quota", Behaviour::StreamQuota),
            ("quota_cp", Behaviour::QuotaCodingPlan),
            ("quota", Behaviour::Quota),
            ("throttle", Behaviour::Throttle),
            ("unauthorized", Behaviour::Unauthorized),
            ("forbidden", Behaviour::Forbidden),
            ("server_error", Behaviour::ServerError),
            ("quote", Behaviour::Quote),
            ("slow", Behaviour::Slow),
        ];
        TABLE
            .iter()
            .find(|(needle, _)| token.contains(needle))
            .map_or(Behaviour::Ok, |(_, b)| b.clone())
    }
}

pub const QUOTA_MESSAGE: &str = "Free allocated quota exceeded.";
/// The reset the Coding Plan answer announces: 09:25:00 UTC three days after the mock first
/// answers, so the year-less `MM-DD` form always names a near future instant, whatever today's
/// date (a fixed `11-30` made the suite pass only in November).
pub fn coding_plan_reset() -> DateTime<Utc> {
    static RESET: LazyLock<DateTime<Utc>> = LazyLock::new(|| {
        let day = Utc::now().date_naive() + chrono::Days::new(3);
        day.and_hms_opt(9, 25, 0).expect("a valid time").and_utc()
    });
    *RESET
}

/// The reset as Coding Plan words it (`11-30 09:25:00`).
pub fn coding_plan_reset_words() -> String {
    coding_plan_reset().format("%m-%d %H:%M:%S").to_string()
}

/// The reset as the shim records it (`2026-11-30T09:25:00Z`).
pub fn coding_plan_reset_stamp() -> String {
    coding_plan_reset().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Coding Plan's quota message, as the provider words it.
pub fn coding_plan_message() -> String {
    format!(
        "Your token-plan 1-week quota has been exhausted. The quota will reset at {} UTC.",
        coding_plan_reset_words()
    )
}
pub const THROTTLE_MESSAGE: &str = "Requests rate limit exceeded, please try again later.";

/// The answer text for a successful request with this token.
pub fn reply_text(token: &str) -> String {
    match Behaviour::for_token(token) {
        Behaviour::Quote => format!(
            "REPLY-FROM-{token}: a 429 with code \"insufficient_quota\" means \
             \"Free allocated quota exceeded.\"; qwen then prints \
             \"Qwen OAuth quota exceeded: Your free daily quota has been reached.\""
        ),
        _ => format!("REPLY-FROM-{token}"),
    }
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The bearer token (empty when there was none).
    pub token: String,
    /// `model` from the JSON body, if any.
    pub model: Option<String>,
    pub stream: bool,
    /// The text of the last user message, if the body had one.
    pub prompt: Option<String>,
    pub at: Instant,
    pub wall: SystemTime,
    /// The `Host` header, or the CONNECT target.
    pub host: String,
}

#[derive(Default)]
struct Log {
    requests: Vec<Request>,
}

struct Inner {
    log: Mutex<Log>,
    changed: Condvar,
    overrides: Mutex<HashMap<String, Behaviour>>,
    routes: Mutex<HashMap<String, SocketAddr>>,
    slow_delay: Mutex<Duration>,
    stop: AtomicBool,
    addr: SocketAddr,
}

/// A running mock; stops accepting when dropped.
pub struct Mock {
    inner: Arc<Inner>,
}

impl Mock {
    /// Binds 127.0.0.1:0 and serves in background threads.
    pub fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("mock: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock: local_addr");
        let inner = Arc::new(Inner {
            log: Mutex::new(Log::default()),
            changed: Condvar::new(),
            overrides: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            slow_delay: Mutex::new(Duration::from_secs(3)),
            stop: AtomicBool::new(false),
            addr,
        });
        let accept_inner = Arc::clone(&inner);
        thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if accept_inner.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let inner = Arc::clone(&accept_inner);
                    let _ = thread::Builder::new()
                        .name("mock-conn".into())
                        .spawn(move || {
                            let _ = serve_connection(&inner, conn);
                        });
                }
            })
            .expect("mock: spawn accept thread");
        Mock { inner }
    }

    /// `http://127.0.0.1:PORT` — what goes into `resource_url` (qwen appends `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// `http://127.0.0.1:PORT/v1` — what goes into `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.log.lock().unwrap().requests.clone()
    }

    /// Bearer tokens of the chat-completion requests so far, in arrival order.
    pub fn tokens(&self) -> Vec<String> {
        self.chat_requests().into_iter().map(|r| r.token).collect()
    }

    /// The chat-completion requests so far, in arrival order.
    pub fn chat_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/chat/completions"))
            .collect()
    }

    /// Blocks until at least `n` requests satisfy `pred`, or `timeout` passes; true if reached.
    pub fn wait_for(&self, n: usize, timeout: Duration, pred: impl Fn(&Request) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut log = self.inner.log.lock().unwrap();
        loop {
            if log.requests.iter().filter(|r| pred(r)).count() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            log = self
                .inner
                .changed
                .wait_timeout(log, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Makes `token` behave as `behaviour` from now on, whatever its name says.
    pub fn set_behaviour(&self, token: &str, behaviour: Behaviour) {
        self.inner
            .overrides
            .lock()
            .unwrap()
            .insert(token.to_string(), behaviour);
    }

    /// How long a `slow` token waits before answering (default 3 s).
    pub fn set_slow_delay(&self, delay: Duration) {
        *self.inner.slow_delay.lock().unwrap() = delay;
    }

    /// Splices proxy tunnels to `host_port` (e.g. `chat.qwen.ai:443`) to a local address.
    pub fn route(&self, host_port: &str, to: SocketAddr) {
        self.inner
            .routes
            .lock()
            .unwrap()
            .insert(host_port.to_string(), to);
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.inner.addr);
    }
}

/// A parsed HTTP/1.1 request head plus body.
struct Incoming {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `Ok(None)` on a clean close between requests.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Incoming>> {
    let mut line = String::new();
    // Skip stray CRLFs between pipelined requests (RFC 9112 §2.2).
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Incoming {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            reader.read_exact(&mut req.body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        req.body.resize(len, 0);
        reader.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

fn serve_connection(inner: &Arc<Inner>, conn: TcpStream) -> io::Result<()> {
    // An idle keep-alive connection is dropped after a while so threads do not pile up.
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader)? {
        if inner.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if req.method == "CONNECT" {
            record(inner, &req, String::new(), None);
            let own = format!("{}", inner.addr);
            let target = req.target.clone();
            let route = inner.routes.lock().unwrap().get(&target).copied();
            if target == own || target == format!("localhost:{}", inner.addr.port()) {
                writer.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
                continue; // the tunnel to ourselves speaks plain HTTP on this connection
            }
            let Some(to) = route else {
                writer.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")?;
                return Ok(());
            };
            let upstream = TcpStream::connect(to)?;
            writer.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
            // Bytes the BufReader already holds belong to the tunnel.
            let buffered = reader.buffer().to_vec();
            let mut up_w = upstream.try_clone()?;
            up_w.write_all(&buffered)?;
            let mut client_r = reader.into_inner();
            let mut up_r = upstream;
            let mut client_w = writer;
            let t = thread::spawn(move || {
                let _ = io::copy(&mut up_r, &mut client_w);
                let _ = client_w.shutdown(Shutdown::Write);
            });
            client_r.set_read_timeout(None)?;
            let _ = io::copy(&mut client_r, &mut up_w);
            let _ = up_w.shutdown(Shutdown::Write);
            let _ = t.join();
            return Ok(());
        }
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        respond(inner, &req, &mut writer)?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

fn record(inner: &Inner, req: &Incoming, token: String, body: Option<&serde_json::Value>) {
    let path = if req.method == "CONNECT" {
        String::new()
    } else {
        // Absolute-form targets (plain proxying) keep only the path.
        match req.target.find("://") {
            Some(i) => {
                let rest = &req.target[i + 3..];
                rest.find('/')
                    .map_or("/".to_string(), |j| rest[j..].to_string())
            }
            None => req.target.clone(),
        }
    };
    let prompt = body.and_then(last_user_text);
    let entry = Request {
        method: req.method.clone(),
        path,
        token,
        model: body.and_then(|b| b.get("model")?.as_str().map(str::to_string)),
        stream: body
            .and_then(|b| b.get("stream")?.as_bool())
            .unwrap_or(false),
        prompt,
        at: Instant::now(),
        wall: SystemTime::now(),
        host: if req.method == "CONNECT" {
            req.target.clone()
        } else {
            req.header("host").unwrap_or_default().to_string()
        },
    };
    inner.log.lock().unwrap().requests.push(entry);
    inner.changed.notify_all();
}

fn last_user_text(body: &serde_json::Value) -> Option<String> {
    let messages = body.get("messages")?.as_array()?;
    let msg = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))?;
    match msg.get("content")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text")?.as_str())
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

fn respond(inner: &Inner, req: &Incoming, w: &mut TcpStream) -> io::Result<()> {
    let token = req
        .header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or_default()
        .trim();
    let token = token.strip_prefix("SeCrEt-").unwrap_or(token).to_string();
    let body: Option<serde_json::Value> = serde_json::from_slice(&req.body).ok();
    record(inner, req, token.clone(), body.as_ref());
    let path = req.target.split('?').next().unwrap_or_default();
    if req.method != "POST" || !path.ends_with("/v1/chat/completions") {
        return send(
            w,
            404,
            &[],
            br#"{"error":{"message":"not found","type":"invalid_request_error"}}"#,
        );
    }
    let stream = body
        .as_ref()
        .and_then(|b| b.get("stream")?.as_bool())
        .unwrap_or(false);
    let model = body
        .as_ref()
        .and_then(|b| b.get("model")?.as_str())
        .unwrap_or("coder-model")
        .to_string();
    let behaviour = inner
        .overrides
        .lock()
        .unwrap()
        .get(&token)
        .cloned()
        .unwrap_or_else(|| Behaviour::for_token(&token));
    let fast = token.contains("fast");
    let retry_headers: &[(&str, &str)] = if fast {
        &[
            ("x-should-retry", "false"),
            ("retry-after-ms", "1"),
            ("retry-after", "1"),
        ]
    } else {
        &[]
    };
    let error = |message: &str, kind: &str, code: &str| -> Vec<u8> {
        serde_json::json!({"error": {"message": message, "type": kind, "code": code}})
            .to_string()
            .into_bytes()
    };
    match behaviour {
        Behaviour::Quota => send(
            w,
            429,
            retry_headers,
            &error(QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota"),
        ),
        Behaviour::QuotaCodingPlan => send(
            w,
            429,
            retry_headers,
            &error(
                &coding_plan_message(),
                "insufficient_quota",
                "insufficient_quota",
            ),
        ),
        Behaviour::Throttle => send(
            w,
            429,
            retry_headers,
            &error(THROTTLE_MESSAGE, "limit_requests", "limit_requests"),
        ),
        Behaviour::Unauthorized => send(
            w,
            401,
            &[],
            &error(
                "Incorrect API key provided. ",
                "invalid_request_error",
                "invalid_api_key",
            ),
        ),
        Behaviour::Forbidden => send(
            w,
            403,
            &[],
            &error(
                "Access denied, please make sure your account is in good standing.",
                "Arrearage",
                "Arrearage",
            ),
        ),
        Behaviour::ServerError => send(
            w,
            500,
            retry_headers,
            &error(
                "The server had an error while processing your request.",
                "server_error",
                "internal_error",
            ),
        ),
        Behaviour::StreamQuota => {
            let event = error(QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota");
            send_sse(w, &[event])
        }
        Behaviour::Slow => {
            let delay = *inner.slow_delay.lock().unwrap();
            thread::sleep(delay);
            answer(w, &token, &model, stream)
        }
        Behaviour::Ok | Behaviour::Quote => answer(w, &token, &model, stream),
    }
}

/// The rate-limit headers a token asks for (OpenAI's form): `remaining0` — no request left
/// (reset in 6m0s), `remaining` — 42 left; any other token, none.
pub fn rate_limit_headers(token: &str) -> &'static [(&'static str, &'static str)] {
    if token.contains("remaining0") {
        &[
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "90000"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]
    } else if token.contains("remaining") {
        &[
            ("x-ratelimit-remaining-requests", "42"),
            ("x-ratelimit-reset-requests", "1m30s"),
            ("x-ratelimit-remaining-tokens", "12345"),
        ]
    } else {
        &[]
    }
}

fn answer(w: &mut TcpStream, token: &str, model: &str, stream: bool) -> io::Result<()> {
    let text = reply_text(token);
    let limits = rate_limit_headers(token);
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("chatcmpl-mock-{created}");
    let usage =
        serde_json::json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    if !stream {
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": usage,
        });
        return send(w, 200, limits, body.to_string().as_bytes());
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
    let events: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
    send_sse_with(w, limits, &events)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

fn send(w: &mut TcpStream, status: u16, extra: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: keep-alive\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// A 200 `text/event-stream`, one chunked-encoding chunk per event, then `[DONE]`.
fn send_sse(w: &mut TcpStream, events: &[Vec<u8>]) -> io::Result<()> {
    send_sse_with(w, &[], events)
}

fn send_sse_with(w: &mut TcpStream, extra: &[(&str, &str)], events: &[Vec<u8>]) -> io::Result<()> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\nconnection: keep-alive\r\n",
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    let mut chunk = |data: &[u8]| -> io::Result<()> {
        let mut frame = Vec::with_capacity(data.len() + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\n\n");
        write!(w, "{:x}\r\n", frame.len())?;
        w.write_all(&frame)?;
        w.write_all(b"\r\n")?;
        w.flush()
    };
    for e in events {
        chunk(e)?;
    }
    chunk(b"[DONE]")?;
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}
