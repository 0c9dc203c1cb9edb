//! `--rotation-dashboard`: the page, its event stream, `/api/pool` and `/metrics` on 127.0.0.1,
//! behind a random token. std threads: one watches the pool, one accepts, one per connection.
//!
//! Invariants: bound to 127.0.0.1 only; every request without the token is a 403 and nothing
//! else; a request head is bounded in size and time, connections in number, and a client that
//! stops reading is dropped, so no local client can hang the server; only the snapshot (no
//! secret, see `snapshot`) is served. SIGINT, SIGTERM and SIGHUP stop it (exit 0).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::error::Error;
use crate::vault::Vault;
use crate::vault::audit;
use crate::vault::state::{Loaded, State};

use super::http::{Request, answer, read_request, same_secret, stream_head};
use super::metrics::prometheus;
use super::page::page;
use super::snapshot::{same_pool, snapshot};

/// How often the pool's files are looked at (metadata only), and how often the snapshot is
/// rebuilt even when they did not change (a cooldown that ends changes no file).
const POLL: Duration = Duration::from_millis(250);
const REBUILD: Duration = Duration::from_secs(5);
/// A comment line on every event stream this often, so a dead client is noticed.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Connections served at once (event streams included); more are closed unanswered.
pub const MAX_CONNS: usize = 32;

/// The latest snapshot, its number, and whether the server is stopping.
struct Hub {
    latest: Mutex<(u64, Arc<String>)>,
    changed: Condvar,
    stop: AtomicBool,
}

struct Server {
    vault: Vault,
    token: String,
    cookie: String,
    hub: Hub,
    conns: AtomicUsize,
}

/// Runs the dashboard until a signal; returns the exit code.
pub fn serve(v: &Vault, port: Option<u16>) -> Result<i32, Error> {
    let first = snapshot(v)?;
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port.unwrap_or(0)))
        .map_err(|e| {
            Error::Other(format!(
                "cannot listen on 127.0.0.1:{} ({}); choose another --port, or leave it out for a free one",
                port.unwrap_or(0),
                crate::text::io_reason(&e)
            ))
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("cannot read the dashboard's port: {e}")))?
        .port();
    let token = random_hex(24).map_err(|e| Error::io("read", "/dev/urandom", e))?;
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize);
    }
    // A client that goes away mid-answer is an error on its own socket, never a signal.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGPIPE,
        Arc::new(AtomicBool::new(false)),
    );
    let server = Arc::new(Server {
        vault: v.clone(),
        cookie: format!("qwen_rotation_dashboard_{port}"),
        token,
        hub: Hub {
            latest: Mutex::new((1, Arc::new(first.to_string()))),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        },
        conns: AtomicUsize::new(0),
    });
    let mut out = io::stdout();
    let _ = writeln!(
        out,
        "Dashboard of the pool: http://127.0.0.1:{port}/?token={}\n\
         (listening on 127.0.0.1 only; the token in the URL is the only way in, so keep it private; Ctrl-C stops it)",
        server.token
    );
    let _ = out.flush();
    let watcher = {
        let server = Arc::clone(&server);
        thread::Builder::new()
            .name("dashboard-watch".into())
            .spawn(move || watch(&server, first))
            .map_err(|e| Error::Other(format!("cannot start the dashboard: {e}")))?
    };
    accept(&server, &listener, &signal);
    server.hub.stop.store(true, Ordering::SeqCst);
    server.hub.changed.notify_all();
    let _ = watcher.join();
    crate::error::say("dashboard stopped");
    Ok(0)
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn accept(server: &Arc<Server>, listener: &TcpListener, signal: &AtomicUsize) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    while signal.load(Ordering::SeqCst) == 0 {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(250u16)) {
            Ok(0) | Err(_) => continue,
            Ok(_) => {}
        }
        let Ok((conn, _)) = listener.accept() else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        if server.conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
            server.conns.fetch_sub(1, Ordering::SeqCst);
            continue; // closed unanswered
        }
        let ours = Arc::clone(server);
        let spawned = thread::Builder::new()
            .name("dashboard-conn".into())
            .spawn(move || {
                let _ = handle(&ours, conn);
                ours.conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            server.conns.fetch_sub(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the pool looks like now: the state as the store's cheap lock-free read gives it (a
/// store that keeps it elsewhere than in a file included), and the metadata of the log, the
/// slot files' directory and the live file.
#[derive(PartialEq)]
struct Fingerprint {
    state: Option<State>,
    files: Vec<Option<(u64, u64, SystemTime)>>,
}

fn fingerprint(v: &Vault) -> Fingerprint {
    let state = match v.peek() {
        Loaded::Ok(st) => Some(st),
        Loaded::Missing | Loaded::Corrupt(_) => None,
    };
    Fingerprint {
        state,
        files: file_marks(v),
    }
}

fn file_marks(v: &Vault) -> Vec<Option<(u64, u64, SystemTime)>> {
    let files = v.store_files();
    [
        files.state.clone(),
        files.log.clone(),
        audit::previous(&files.log),
        v.paths.accounts.clone(),
        v.paths.live_creds.clone(),
    ]
    .iter()
    .map(|p| {
        std::fs::metadata(p).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (
                m.ino(),
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )
        })
    })
    .collect()
}

/// Publishes a new snapshot whenever the pool's state or files change (and at least every
/// `REBUILD`, when the pool itself changed).
fn watch(server: &Server, first: Value) {
    let mut shown = first;
    let mut seen = fingerprint(&server.vault);
    let mut built = Instant::now();
    while !server.hub.stop.load(Ordering::SeqCst) {
        thread::sleep(POLL);
        let now = fingerprint(&server.vault);
        if now == seen && built.elapsed() < REBUILD {
            continue;
        }
        seen = now;
        built = Instant::now();
        // A snapshot that cannot be read now (a file mid-replacement, a lock) is tried again.
        let Ok(snap) = snapshot(&server.vault) else {
            continue;
        };
        if same_pool(&snap, &shown) {
            continue;
        }
        let text = Arc::new(snap.to_string());
        shown = snap;
        let mut latest = server.hub.latest.lock().unwrap_or_else(|p| p.into_inner());
        *latest = (latest.0 + 1, text);
        drop(latest);
        server.hub.changed.notify_all();
    }
}

fn handle(server: &Server, mut conn: TcpStream) -> io::Result<()> {
    let req = read_request(&mut conn, &server.cookie)?;
    let by_query = req
        .query_token
        .as_deref()
        .is_some_and(|t| same_secret(t, &server.token));
    let by_cookie = req
        .cookie_token
        .as_deref()
        .is_some_and(|t| same_secret(t, &server.token));
    if !by_query && !by_cookie {
        return answer(
            &mut conn,
            "403 Forbidden",
            "text/plain; charset=utf-8",
            "",
            b"forbidden: open the URL the dashboard printed, with its ?token=\n",
            false,
        );
    }
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return answer(
                &mut conn,
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "Allow: GET, HEAD\r\n",
                b"only GET and HEAD\n",
                false,
            );
        }
    };
    route(server, &mut conn, &req, head_only)
}

fn route(server: &Server, conn: &mut TcpStream, req: &Request, head_only: bool) -> io::Result<()> {
    let json = "application/json; charset=utf-8";
    match req.path.as_str() {
        "/" | "/index.html" => {
            // The first visit's token becomes a cookie (this port's only, never sent elsewhere),
            // so the page's own requests need not carry it.
            let cookie = format!(
                "Set-Cookie: {}={}; Path=/; HttpOnly; SameSite=Strict\r\n",
                server.cookie, server.token
            );
            answer(
                conn,
                "200 OK",
                "text/html; charset=utf-8",
                &cookie,
                page(None).as_bytes(),
                head_only,
            )
        }
        "/events" if !head_only => events(server, conn),
        "/api/pool" => {
            let body = fresh(server);
            answer(conn, "200 OK", json, "", body.as_bytes(), head_only)
        }
        "/metrics" => {
            let body = match snapshot(&server.vault) {
                Ok(snap) => prometheus(&snap),
                Err(_) => latest_value(server)
                    .map(|v| prometheus(&v))
                    .unwrap_or_default(),
            };
            answer(
                conn,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                "",
                body.as_bytes(),
                head_only,
            )
        }
        _ => answer(
            conn,
            "404 Not Found",
            "text/plain; charset=utf-8",
            "",
            b"not found: the dashboard serves /, /events, /api/pool and /metrics\n",
            head_only,
        ),
    }
}

/// The pool now (the last published snapshot when it cannot be read this moment).
fn fresh(server: &Server) -> String {
    match snapshot(&server.vault) {
        Ok(snap) => snap.to_string(),
        Err(_) => server
            .hub
            .latest
            .lock()
            .map(|l| l.1.to_string())
            .unwrap_or_default(),
    }
}

fn latest_value(server: &Server) -> Option<Value> {
    let text = server.hub.latest.lock().ok()?.1.clone();
    serde_json::from_str(&text).ok()
}

/// `/events`: the snapshot now, then each new one, and a heartbeat when nothing changes.
fn events(server: &Server, conn: &mut TcpStream) -> io::Result<()> {
    stream_head(conn)?;
    let hub = &server.hub;
    let (mut sent, text) = {
        let l = hub.latest.lock().unwrap_or_else(|p| p.into_inner());
        (l.0, Arc::clone(&l.1))
    };
    send(conn, &text)?;
    loop {
        let guard = hub.latest.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = hub
            .changed
            .wait_timeout_while(guard, HEARTBEAT, |l| {
                l.0 == sent && !hub.stop.load(Ordering::SeqCst)
            })
            .unwrap_or_else(|p| p.into_inner());
        if hub.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let next = (guard.0 != sent).then(|| (guard.0, Arc::clone(&guard.1)));
        drop(guard);
        match next {
            Some((n, text)) => {
                sent = n;
                send(conn, &text)?;
            }
            None => {
                conn.write_all(b": heartbeat\n\n")?;
                conn.flush()?;
            }
        }
    }
}

fn send(conn: &mut TcpStream, json: &str) -> io::Result<()> {
    // One line: JSON from serde holds no raw line break.
    conn.write_all(format!("event: pool\ndata: {json}\n\n").as_bytes())?;
    conn.flush()
}
