//! The demo's provider: a small HTTP/1.1 server on 127.0.0.1 that speaks the profile's wire
//! format and answers by the key it is asked with: the spent key gets a quota error, the fresh
//! key a short answer, any other key 401.
//!
//! Invariant: it serves loopback only, reads bounded requests with a deadline, and tells the
//! script about every request it answers (which account's key, what it answered) through a
//! channel, in arrival order. It stops accepting when dropped.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::profile::Wire;

/// The quota answer of the spent key: the words and code of a provider's 429.
pub const QUOTA_MESSAGE: &str = "Free allocated quota exceeded.";
pub const QUOTA_CODE: &str = "insufficient_quota";
/// What the fresh key answers.
pub const ANSWER: &str = "Hello from account 2: account 1 ran out of quota, and the shim moved \
                          this request here before qwen noticed.";

/// A request head or body larger than this is refused (the demo's client sends a few KB).
const MAX_REQUEST: usize = 4 * 1024 * 1024;
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
}

/// A running provider.
pub struct Provider {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Provider {
    /// Binds 127.0.0.1 on a free port and serves `wire` in background threads; every answered
    /// request goes to the returned receiver.
    pub fn start(wire: Wire, spent: &str, fresh: &str) -> io::Result<(Provider, Receiver<Seen>)> {
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
        Ok((Provider { addr, stop }, rx))
    }

    /// The base URL the accounts are added with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
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
            Wire::Gemini => return Ok(()),
        }
        if close {
            break;
        }
    }
    Ok(())
}

/// A request: method, path, headers (lowercase names), body.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `Ok(None)` on a clean close between requests.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidData, "request too large");
    let mut line = String::new();
    loop {
        line.clear();
        if reader.by_ref().take(8192).read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut head_size = line.len();
    loop {
        let mut h = String::new();
        if reader.by_ref().take(8192).read_line(&mut h)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head_size += h.len();
        if head_size > 64 * 1024 {
            return Err(too_big());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.by_ref().take(1024).read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    let mut t = String::new();
                    if reader.by_ref().take(8192).read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if req.body.len() + size > MAX_REQUEST {
                return Err(too_big());
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
        if len > MAX_REQUEST {
            return Err(too_big());
        }
        req.body.resize(len, 0);
        reader.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
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
    let body: Option<serde_json::Value> = serde_json::from_slice(&req.body).ok();
    let stream = body
        .as_ref()
        .and_then(|b| b.get("stream")?.as_bool())
        .unwrap_or(false);
    let model = body
        .as_ref()
        .and_then(|b| b.get("model")?.as_str())
        .unwrap_or("demo-model")
        .to_string();
    let (account, status) = if key == keys.spent {
        (Some(1), 429)
    } else if key == keys.fresh {
        (Some(2), 200)
    } else {
        (None, 401)
    };
    let seen = Seen {
        at: Instant::now(),
        account,
        status,
        stream,
    };
    let result = match status {
        429 => send(w, 429, &openai_error(QUOTA_MESSAGE, QUOTA_CODE, QUOTA_CODE)),
        200 => answer(w, &model, stream),
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

fn answer(w: &mut TcpStream, model: &str, stream: bool) -> io::Result<()> {
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("chatcmpl-demo-{created}");
    let usage =
        serde_json::json!({"prompt_tokens": 12, "completion_tokens": 24, "total_tokens": 36});
    if !stream {
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
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
            serde_json::json!({"content": ANSWER}),
            serde_json::Value::Null,
        ),
        last,
    ];
    w.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
    )?;
    let mut frame = |data: &[u8]| -> io::Result<()> {
        let mut f = Vec::with_capacity(data.len() + 8);
        f.extend_from_slice(b"data: ");
        f.extend_from_slice(data);
        f.extend_from_slice(b"\n\n");
        write!(w, "{:x}\r\n", f.len())?;
        w.write_all(&f)?;
        w.write_all(b"\r\n")
    };
    for e in &events {
        frame(e.to_string().as_bytes())?;
    }
    frame(b"[DONE]")?;
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

fn send(w: &mut TcpStream, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: keep-alive\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(addr: &str, key: &str, stream: bool) -> String {
        let mut s =
            TcpStream::connect(addr.trim_start_matches("http://").trim_end_matches("/v1")).unwrap();
        let body = format!(r#"{{"model":"m","stream":{stream},"messages":[]}}"#);
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn each_key_gets_its_answer_and_every_request_is_reported() {
        let (p, rx) = Provider::start(Wire::OpenAi, "k-spent", "k-fresh").unwrap();
        let url = p.base_url();
        let spent = post(&url, "k-spent", true);
        assert!(spent.starts_with("HTTP/1.1 429"), "{spent}");
        assert!(
            spent.contains(QUOTA_MESSAGE) && spent.contains(QUOTA_CODE),
            "{spent}"
        );
        let fresh = post(&url, "k-fresh", false);
        assert!(fresh.starts_with("HTTP/1.1 200"), "{fresh}");
        assert!(fresh.contains(ANSWER), "{fresh}");
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
}
