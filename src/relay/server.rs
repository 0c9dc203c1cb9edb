//! The server side, qwen → relay: the accept loop, one thread per connection, the token check
//! and the refusals.
//! Invariant: a request without the run's token is answered from its head alone.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::model::Secret;
use crate::profile::Wire;

use super::http::{
    CHUNK, FromQwen, IDLE_TIMEOUT, Incoming, ToQwen, hello_answer, own_error, read_body, read_head,
    refused_answer, write_answer,
};
use super::shared::Shared;
use super::upstream::relay_request;

/// A new connection's request head, or the next head on a connection that never showed the
/// token, must arrive whole within this long from the connection's start. qwen writes its request
/// the moment it has connected; a client that trickles one byte at a time (slowloris) is cut off.
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// After refusing a request, its unread bytes are drained (into a small reused buffer, never
/// kept) for at most this long and this many bytes, so that closing does not reset the
/// connection under the refusal (a close with unread data sends RST, and the client may lose
/// the answer it has not read yet).
const REFUSED_LINGER: Duration = Duration::from_secs(1);
const REFUSED_DRAIN: usize = 1 << 20;

pub(super) fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let conn = match conn {
            Ok(c) => Arc::new(c),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a full table.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) {
                    thread::sleep(Duration::from_millis(20));
                }
                continue;
            }
        };
        // Full of the run's own connections: the newcomer is closed (dropped here).
        let Some(id) = shared.conns().admit(&conn) else {
            continue;
        };
        let ours = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("qwen-relay-conn".into())
            .spawn(move || {
                // Unregistered however the thread ends (a panic outside a request included).
                let _registered = Registered { shared: &ours, id };
                let _ = serve_connection(&ours, id, &conn);
            });
        if spawned.is_err() {
            // No thread (a process or memory limit): the connection is closed unanswered.
            if let Some(open) = shared.conns().open.remove(&id) {
                let _ = open.stream.shutdown(Shutdown::Both);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A connection's place in [`Shared::conns`], given up when its thread ends.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.conns().open.remove(&self.id);
    }
}

fn serve_connection(shared: &Shared, id: u64, conn: &TcpStream) -> io::Result<()> {
    // Each SSE chunk is one write; without TCP_NODELAY Nagle would hold small ones back.
    conn.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(CHUNK, FromQwen::new(conn));
    let mut out = ToQwen::new(conn);
    let mut trusted = false;
    loop {
        // Until the token is seen, the whole head has a total deadline; qwen's own keep-alive
        // connection may then sit idle between requests.
        reader.get_mut().deadline =
            Some(Instant::now() + if trusted { IDLE_TIMEOUT } else { HEAD_TIMEOUT });
        let head = read_head(&mut reader);
        reader.get_mut().deadline = None;
        let mut req = match head {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let answer = own_error(
                    shared.wire(),
                    400,
                    "qwen-rotation relay: malformed request",
                    "invalid_request_error",
                    "bad_request",
                );
                write_answer(&mut out, &answer, "GET", true)?;
                return refuse_rest(conn);
            }
            Err(e) => return Err(e),
        };
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Claude's reachability probe: answered here, never sent on (it carries no key).
        if shared.wire() == Wire::Anthropic
            && req.method.eq_ignore_ascii_case("HEAD")
            && req.path == "/api/hello"
        {
            write_answer(&mut out, &hello_answer(), &req.method, req.close)?;
            if req.close {
                return Ok(());
            }
            continue;
        }
        if !authorized(&req, &shared.token, shared.wire()) {
            // Answered from the head alone: nobody without the token makes us read its body.
            write_answer(&mut out, &refused_answer(shared.wire()), &req.method, true)?;
            return refuse_rest(conn);
        }
        if !trusted {
            trusted = true;
            shared.trust(id);
        }
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
        {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        match read_body(&mut reader, &req) {
            Ok(body) => req.body = body,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let answer = own_error(
                    shared.wire(),
                    413,
                    "qwen-rotation relay: request body too large or malformed",
                    "invalid_request_error",
                    "bad_request",
                );
                write_answer(&mut out, &answer, &req.method, true)?;
                return refuse_rest(conn);
            }
            Err(e) => return Err(e),
        }
        if !serve_request(shared, &req, &mut out)? || req.close {
            return Ok(());
        }
    }
}

/// [`relay_request`], with a panic in it (a bug) still answering qwen: a 502 it shows and gives
/// up on, when nothing of the answer was written yet; otherwise the connection closes, which
/// tells qwen the answer broke off. Either way qwen never waits for an answer that will not come.
fn serve_request(shared: &Shared, req: &Incoming, out: &mut ToQwen<'_>) -> io::Result<bool> {
    out.started = false;
    let bug = match crate::error::guarded(|| Ok(relay_request(shared, req, out))) {
        Ok(served) => return served,
        Err(bug) => bug,
    };
    if !shared.warned_bug.swap(true, Ordering::SeqCst) {
        shared.say(format!("request relay: {bug}"));
    }
    if out.started {
        return Ok(false);
    }
    let mut answer = own_error(
        shared.wire(),
        502,
        &format!(
            "qwen-rotation relay: internal error while relaying this request (a bug in qwen-rotation; please report it with {} --rotation-version)",
            crate::profile::active().name
        ),
        "relay_error",
        "relay_internal_error",
    );
    answer.headers.push(("x-should-retry", "false".into()));
    write_answer(out, &answer, &req.method, true).map(|()| false)
}

/// After a refusal: no more writes, and the request's unread bytes are drained for a moment
/// (into a small buffer, dropped) so closing does not reset the connection under the answer.
fn refuse_rest(conn: &TcpStream) -> io::Result<()> {
    conn.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + REFUSED_LINGER;
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < REFUSED_DRAIN {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        conn.set_read_timeout(Some(left))?;
        match (&*conn).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// The header that carries the run's token beside a login's own `Authorization` (claude's
/// `ANTHROPIC_CUSTOM_HEADERS`); never forwarded (it holds the token).
pub(super) const RUN_TOKEN_HEADER: &str = "x-rotation-token";

/// The request carries the run's token where the CLI puts its key: `Authorization: Bearer`
/// (OpenAI-compatible; Anthropic's, where claude puts `ANTHROPIC_AUTH_TOKEN`, or
/// [`RUN_TOKEN_HEADER`] beside a login's own bearer), or `x-goog-api-key` / the `key=` query
/// parameter (the Gemini API). Compared in constant time (the token is the only thing that
/// stands between another local user and the keys).
fn authorized(req: &Incoming, token: &Secret, wire: Wire) -> bool {
    let matches = |given: &[u8]| constant_time_eq(given, token.expose().as_bytes());
    if wire == Wire::Anthropic
        && req
            .header(RUN_TOKEN_HEADER)
            .is_some_and(|v| matches(v.trim_ascii()))
    {
        return true;
    }
    let given = match wire {
        Wire::OpenAi | Wire::Anthropic => req.header("authorization").and_then(|value| match value
            .get(..7)
        {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                Some(value[7..].trim_ascii())
            }
            _ => None,
        }),
        Wire::Gemini => req
            .header("x-goog-api-key")
            .map(<[u8]>::trim_ascii)
            .or_else(|| {
                req.query.as_deref().and_then(|q| {
                    q.split('&')
                        .find_map(|p| p.strip_prefix("key="))
                        .map(str::as_bytes)
                })
            }),
    };
    given.is_some_and(matches)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (every token is 64 hex digits); the content is.
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_the_whole_token() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
