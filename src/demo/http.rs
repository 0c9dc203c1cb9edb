//! The demo provider's HTTP/1.1: one request read (bounded in size; the caller's socket holds the
//! deadline), and the answers it writes: a JSON body, or a stream of server-sent events.
//!
//! Invariant: every answer keeps the connection open (`connection: keep-alive`), as a
//! provider's does; a stream is chunked and ends with its last chunk.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;

/// A request head or body larger than this is refused (the demo's client sends a few KB).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// A request: method, path, query, headers (lowercase names), body.
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `Ok(None)` on a clean close between requests.
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
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
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
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
        query,
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

/// A 200 `text/event-stream` answer, chunked: each of `events` as one event, its `event:` line
/// first when it has a name (Anthropic's stream names every event; the others send `data:` only).
pub fn send_events(w: &mut TcpStream, events: &[(Option<&str>, Vec<u8>)]) -> io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
    )?;
    for (name, data) in events {
        let mut f = Vec::with_capacity(data.len() + 32);
        if let Some(name) = name {
            f.extend_from_slice(format!("event: {name}\n").as_bytes());
        }
        f.extend_from_slice(b"data: ");
        f.extend_from_slice(data);
        f.extend_from_slice(b"\n\n");
        write!(w, "{:x}\r\n", f.len())?;
        w.write_all(&f)?;
        w.write_all(b"\r\n")?;
    }
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

/// A JSON answer with `status` (a HEAD's is empty).
pub fn send(w: &mut TcpStream, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
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
