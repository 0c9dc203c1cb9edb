//! The little HTTP/1.1 the dashboard speaks: one request per connection (GET or HEAD), its head
//! bounded in size and time, the token checked before anything else, answers closed after.
//!
//! Invariant: a request without the token (in `?token=` or the cookie the first visit sets) is
//! answered 403 from its head alone, with no body but a fixed line.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A request head must arrive whole within this long, and be at most this large.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_HEAD: usize = 16 * 1024;
/// A client that stops reading is dropped after a write blocks this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One request's head: what the dashboard looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `token=` of the query.
    pub query_token: Option<String>,
    /// The dashboard's cookie (`name`) from a `Cookie:` header.
    pub cookie_token: Option<String>,
}

/// Reads one request head from `conn`, within `HEAD_TIMEOUT` and `MAX_HEAD`. `cookie` is the
/// name of the dashboard's cookie. Err: too slow, too large, or not HTTP.
pub fn read_request(conn: &mut TcpStream, cookie: &str) -> io::Result<Request> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head too slow",
            ));
        }
        conn.set_read_timeout(Some(left))?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a head",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            head.truncate(end);
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
    parse(&head, cookie)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP request"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The request line and the headers we read, from a head without its blank line.
pub fn parse(head: &[u8], cookie: &str) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query_token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string);
    let mut cookie_token = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("cookie") {
            for c in value.split(';') {
                if let Some((k, v)) = c.trim().split_once('=')
                    && k == cookie
                {
                    cookie_token = Some(v.to_string());
                }
            }
        }
    }
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query_token,
        cookie_token,
    })
}

/// `a == b` in time that depends on their lengths only.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Headers every answer carries: nothing cached, nothing referred, nothing fetched from
/// anywhere but this page itself.
const SAFE: &str = "Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nContent-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n";

/// Writes a whole answer and closes the exchange (`Connection: close`). `extra` are more header
/// lines, each ending in CRLF; `head_only` leaves the body out (HEAD).
pub fn answer(
    conn: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{SAFE}{extra}\r\n",
        body.len()
    );
    let mut all = head.into_bytes();
    if !head_only {
        all.extend_from_slice(body);
    }
    conn.write_all(&all)?;
    conn.flush()
}

/// The head of an event stream (its body runs until either side closes).
pub fn stream_head(conn: &mut TcpStream) -> io::Result<()> {
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: close\r\nX-Accel-Buffering: no\r\n{SAFE}\r\nretry: 2000\n\n"
    );
    conn.write_all(head.as_bytes())?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_query_or_our_cookie() {
        let r = parse(
            b"GET /api/pool?x=1&token=abc HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: other=zz; dash_1=def",
            "dash_1",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/pool");
        assert_eq!(r.query_token.as_deref(), Some("abc"));
        assert_eq!(r.cookie_token.as_deref(), Some("def"));
        let r = parse(b"GET / HTTP/1.1\r\nCookie: dash_2=def", "dash_1").unwrap();
        assert_eq!((r.query_token, r.cookie_token), (None, None));
    }

    #[test]
    fn what_is_not_http_is_refused() {
        for bad in [
            &b"GET /"[..],
            b"GET / FTP/1.0",
            b"GET / HTTP/1.1 x",
            b"\xff\xfe",
            b"GET / HTTP/1.1\r\nnocolon",
        ] {
            assert_eq!(parse(bad, "c"), None, "{bad:?}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcd", "abcd"));
        assert!(!same_secret("abcd", "abce"));
        assert!(!same_secret("abcd", "abc"));
        assert!(!same_secret("", "a"));
    }
}
