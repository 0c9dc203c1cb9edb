//! The loopback relay for API-key slots: qwen talks to us on 127.0.0.1, we talk to the provider.
//!
//! Invariant: a request that carries the run's token is sent to exactly one slot at a time, the
//! slot the relay holds as current when the request starts, with that slot's real key; a quota,
//! throttle or auth answer is never shown to qwen while another API-key slot can take the same
//! request (each move goes through [`Vault::report`], the one rotation step with its lock, its
//! log line and its counters), and every other answer reaches qwen unchanged and unbuffered. The
//! real keys never leave this process except in the `Authorization` header sent upstream; the
//! per-run token never leaves it except in qwen's environment (wherever qwen puts it in a
//! request, a header, the query, the path or the body, it is dropped or replaced before the
//! request goes upstream).
//!
//! Why it exists (DESIGN.md, "Request-level rotation"): qwen 0.24 retries a plain 429 for about
//! an hour and never re-reads its key, so output scanning alone is slow and needs a restart. In
//! the request path a quota answer is seen in milliseconds and the same request is re-sent on
//! the next key; qwen, headless or interactive, only sees the answer that worked.
//!
//! Anyone on this machine can connect to the port, so the relay assumes hostile local clients:
//! at most [`MAX_CONNS`] connections are held, of which a quarter may not have shown
//! the token (the oldest of those is dropped for a newcomer, so a flood of token-less
//! connections never locks qwen out), a request head must arrive whole within [`HEAD_TIMEOUT`]
//! (a total, not an idle timeout each byte resets: slowloris), and a request without the token
//! is answered from its head alone, before any byte of its body is read into memory. A panic in
//! a connection thread still answers the request it was serving (a 502 qwen shows and gives up
//! on), and a notice that cannot be printed never stops a request.
//!
//! Shape: plain std threads, one per connection (undici keeps a few connections alive and
//! reuses them), HTTP/1.1 with keep-alive; upstream through one `ureq` agent per proxy route
//! (connection pool, system trust store, `HTTPS_PROXY`/`NO_PROXY`). Answers are streamed back
//! chunk by chunk and flushed per chunk, so server-sent events reach qwen as they arrive.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::Paths;
use crate::detect::{self, Class, Hit, Patterns};
use crate::error::Error;
use crate::vault::{ApiTarget, Kind, Launch, Rotation, Secret, Vault};

/// Connecting to the provider (DNS, TCP, proxy tunnel and TLS handshake together). Only the
/// connection is bounded: a model may think for minutes before its first byte, and a stream may
/// pause, so nothing else is (qwen has its own request timeout and closes the connection).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle keep-alive connection from qwen is closed after this long. Announced in a
/// `Keep-Alive: timeout=` header so undici closes its side first and never reuses a connection
/// we are about to drop (undici subtracts a second from the hint).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Request line plus headers.
const MAX_HEAD: u64 = 64 * 1024;
const MAX_HEADERS: usize = 256;
/// A new connection's request head, or the next head on a connection that never showed the
/// token, must arrive whole within this long from the connection's start. qwen writes its request
/// the moment it has connected; a client that trickles one byte at a time (slowloris) is cut off.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections held at once: one thread and one file descriptor each (qwen keeps a handful).
/// Lower under a low open-file limit: a quarter of it, so the rest of the run keeps its own.
const MAX_CONNS: usize = 512;
/// Of those, a quarter may be connections that have not (yet) shown the run's token. A new
/// connection past that drops the oldest such one: qwen's own connection shows its token in its
/// first milliseconds, a hostile one never does, so a flood only ever pushes out the flood.
const PENDING_SHARE: usize = 4;
/// After refusing a request, its unread bytes are drained (into a small reused buffer, never
/// kept) for at most this long and this many bytes, so that closing does not reset the
/// connection under the refusal (a close with unread data sends RST, and the client may lose
/// the answer it has not read yet).
const REFUSED_LINGER: Duration = Duration::from_secs(1);
const REFUSED_DRAIN: usize = 1 << 20;
/// A request body is kept in memory so it can be re-sent on the next key. Chat requests carry
/// the whole conversation (a few MB with images); past this the client gets a 413.
const MAX_BODY: usize = 256 << 20;
/// Error answers are read whole to classify them. Provider error bodies are a few hundred
/// bytes; a larger one is passed through unclassified.
const MAX_ERROR_BODY: usize = 256 * 1024;
/// What stands in for the run's token wherever qwen put it in a request's path or body.
const REDACTED: &str = "[redacted]";
/// Read size for relaying bodies.
const CHUNK: usize = 64 * 1024;

/// Successful requests per slot, counted by the relay.
pub type Served = Arc<Mutex<BTreeMap<usize, u64>>>;

/// What the relay needs to run.
pub struct Setup {
    /// Its own handle on the vault (same files, same lock as every other process).
    pub vault: Vault,
    pub patterns: Arc<Patterns>,
    /// The API-key slot the run starts on.
    pub launch: Launch,
    /// Shows one notice line to the person (stderr headless; the pty notice interactive).
    pub notify: Box<dyn Fn(String) + Send + Sync>,
}

/// A running relay; stops when dropped.
pub struct Relay {
    /// `http://127.0.0.1:PORT/v1`: what qwen gets as `OPENAI_BASE_URL`.
    pub base_url: String,
    /// The per-run token qwen gets as its key; requests without it are refused.
    pub token: Secret,
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Binds 127.0.0.1 on a free port and serves in background threads until dropped.
    /// Err when the launch is not an API-key slot with a base URL, or the socket cannot be had.
    pub fn start(setup: Setup) -> io::Result<Relay> {
        let Setup {
            vault,
            patterns,
            launch,
            notify,
        } = setup;
        let active = Active::from_launch(&launch).ok_or_else(|| {
            io::Error::other(format!(
                "account {} is not an API-key account with a base URL, which the relay needs",
                launch.slot
            ))
        })?;
        let token = Secret::new(random_hex(32)?);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        // Tries per request: one per slot on disk (the vault's report marks each spent slot,
        // so the loop ends anyway; this bound only guards against a slot coming back at once).
        let slots = crate::vault::scan_slots(&vault.paths)
            .map(|s| s.len())
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            max_tries: slots.max(vault.eligible_count()).max(1),
            start_model: active.target.model.clone(),
            vault,
            patterns,
            notify,
            token_at: regex::bytes::Regex::new(&regex::escape(token.expose()))
                .map_err(io::Error::other)?,
            token: token.clone(),
            routes: Routes::from_env(),
            state: Mutex::new(State {
                active,
                blocked: None,
                exhausted: None,
            }),
            warned_upstream: AtomicBool::new(false),
            warned_vault: AtomicBool::new(false),
            warned_bug: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Conns::new()),
            served: Arc::new(Mutex::new(BTreeMap::new())),
            on_exhausted: Mutex::new(None),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("qwen-relay-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener))?;
        Ok(Relay {
            base_url: format!("http://{addr}/v1"),
            token,
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// `Some(earliest)` once the relay has answered "every key is spent" to qwen (and no
    /// request has succeeded since).
    pub fn exhausted(&self) -> Option<Option<DateTime<Utc>>> {
        self.shared.state().exhausted
    }

    /// Calls `stop` each time the relay answers "every key is spent" (after the answer is
    /// written). A headless run stops its attempt there: qwen 0.12 retries that answer for about
    /// a minute and nothing it could retry can succeed, and the run ends with [`Self::exhausted`].
    pub fn on_exhausted(&self, stop: Box<dyn Fn() + Send + Sync>) {
        *self
            .shared
            .on_exhausted
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(stop);
    }

    /// Successful requests per slot so far (shared: it stays readable after the relay stops).
    pub fn served(&self) -> Served {
        Arc::clone(&self.shared.served)
    }

    /// The slot the relay is using now.
    pub fn current_slot(&self) -> usize {
        self.shared.state().active.slot
    }

    /// The variables an attempt on `launch` adds to the inherited environment when qwen talks
    /// through the relay; None when the relay cannot serve `launch` (run it with its own env).
    ///
    /// The run's token goes under the slot's key variable and the relay's URL under
    /// `OPENAI_BASE_URL` (the real key and URL stay here), the slot's model under `OPENAI_MODEL`.
    /// `NO_PROXY`/`no_proxy` gain `127.0.0.1`: qwen 0.24 sends every request through
    /// `HTTPS_PROXY` (undici's EnvHttpProxyAgent, for http URLs too) unless NO_PROXY exempts
    /// the host, and a proxy cannot reach our loopback port.
    pub fn child_env(&self, launch: &Launch) -> Option<Vec<(OsString, OsString)>> {
        let api = launch
            .api
            .as_ref()
            .filter(|_| launch.kind == Kind::ApiKey)?;
        let mut env = vec![
            (
                OsString::from(&api.env_key),
                OsString::from(self.token.expose()),
            ),
            (
                OsString::from("OPENAI_BASE_URL"),
                OsString::from(&self.base_url),
            ),
        ];
        if let Some(model) = &api.model {
            env.push((OsString::from("OPENAI_MODEL"), OsString::from(model)));
        }
        let inherited = ["no_proxy", "NO_PROXY"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
        let no_proxy = match inherited {
            Some(v) => format!("{v},127.0.0.1"),
            None => "127.0.0.1".to_string(),
        };
        env.push((OsString::from("NO_PROXY"), OsString::from(&no_proxy)));
        env.push((OsString::from("no_proxy"), OsString::from(no_proxy)));
        Some(env)
    }

    /// Makes the relay send the next requests with `launch` (run.rs calls this after it rotated
    /// on its own, e.g. on a quota error inside a stream that only output scanning sees).
    /// Returns false, changing nothing, when `launch` is not a slot the relay can serve.
    pub fn switch_to(&self, launch: &Launch) -> bool {
        let Some(active) = Active::from_launch(launch) else {
            return false;
        };
        let mut st = self.shared.state();
        if st.active.slot != active.slot {
            st.active = active;
        }
        st.blocked = None;
        true
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // accept(2) does not notice a flag: a connection of our own wakes it. If even that
        // fails (no file descriptor left), the thread is left to end with the process rather
        // than joined forever.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(t) = self.accept.take()
            && woke
        {
            let _ = t.join();
        }
        // Connection threads blocked reading from qwen end now; one streaming an answer ends at
        // its next write. Not joined: a thread waiting on a slow provider must not hold us up.
        let open = std::mem::take(&mut self.shared.conns().open);
        for (_, conn) in open {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }
}

/// Err(reason) when the relay cannot be put in qwen's request path (qwen's settings fix the
/// provider's base URL): run.rs then falls back to output scanning.
pub fn relay_possible(paths: &Paths) -> Result<(), String> {
    relay_possible_for(paths, None, &[])
}

/// [`relay_possible`] knowing the model the slot injects as `OPENAI_MODEL` and qwen's argv.
///
/// - `--openai-base-url`/`--openaiBaseUrl` beats `OPENAI_BASE_URL`, and `--openai-api-key`
///   beats the key variable: qwen would go past the relay, or bring a key the relay refuses.
/// - qwen picks a `modelProviders` entry by the model it resolved (`--model`/`-m`, then
///   settings `model.name`, then `OPENAI_MODEL`/`QWEN_MODEL`; QWEN_FACTS_APIKEY.md §1), and such
///   an entry's `baseUrl` beats `OPENAI_BASE_URL`: requests for that model would go straight to
///   the provider with the relay's token as the key. Every settings file qwen merges is looked
///   at (system, workspace `.qwen/settings.json`, user); one matching entry is enough to say no.
pub fn relay_possible_for(
    paths: &Paths,
    model: Option<&str>,
    args: &[OsString],
) -> Result<(), String> {
    let from_args = model_from_args(args)?;
    match fixed_base_url(paths, from_args, model) {
        Some(fixed) => Err(format!(
            "{} fixes the base URL of model `{}` (modelProviders.{}), so qwen would send its \
             requests past the relay",
            fixed.file.display(),
            fixed.model,
            fixed.provider
        )),
        None => Ok(()),
    }
}

/// Why `launch`'s real key must stay out of qwen's environment when qwen talks to the provider
/// itself (no relay): qwen's settings send the model it will use to another endpoint than the
/// slot's own base URL, and qwen would send the key there. A workspace's `.qwen/settings.json`
/// is a repository's content, not the user's choice: it must not get a key by naming a model.
/// For a slot stored without a base URL (qwen's settings choose it), only an entry in the
/// workspace file is foreign.
pub fn key_withheld(paths: &Paths, launch: &Launch, args: &[OsString]) -> Option<String> {
    if launch.kind != Kind::ApiKey {
        return None;
    }
    let api = launch.api.as_ref();
    let slot_model = launch
        .env
        .iter()
        .find(|(k, _)| k == "OPENAI_MODEL")
        .map(|(_, v)| v.expose().to_string());
    let from_args = model_from_args(args).unwrap_or(None);
    let fixed = fixed_base_url(paths, from_args, slot_model.as_deref())?;
    let same = |base: &str| base.trim_end_matches('/') == fixed.base_url.trim_end_matches('/');
    let foreign = match api {
        Some(api) => !same(&api.base_url),
        None => fixed.workspace,
    };
    foreign.then(|| {
        format!(
            "{} sends model `{}` to {} (modelProviders.{}), not to the base URL of account {}: \
             qwen runs without that key and without rotation; remove that entry, or run qwen \
             outside that directory",
            fixed.file.display(),
            fixed.model,
            shown_url(&fixed.base_url),
            fixed.provider,
            launch.slot
        )
    })
}

/// The model named on the command line; Err when the command line itself points qwen at
/// another endpoint or key.
fn model_from_args(args: &[OsString]) -> Result<Option<String>, String> {
    let mut from_args = None;
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.to_string(), None),
        };
        match name.as_str() {
            "--" => break,
            "--openai-base-url" | "--openaiBaseUrl" => {
                return Err(format!(
                    "{name} on the command line sends qwen's requests past the relay"
                ));
            }
            "--openai-api-key" | "--openaiApiKey" => {
                return Err(format!(
                    "{name} on the command line gives qwen a key of its own"
                ));
            }
            "--model" | "-m" => from_args = inline.or_else(|| it.next().map(|v| v.to_string())),
            _ => {}
        }
    }
    Ok(from_args)
}

/// A `modelProviders` entry that fixes the base URL of the model qwen will use.
struct Fixed {
    file: PathBuf,
    /// The file is the workspace's `.qwen/settings.json`.
    workspace: bool,
    provider: String,
    model: String,
    base_url: String,
}

/// The first settings entry (in qwen's precedence) that fixes the base URL of the model qwen
/// resolves: `from_args`, else settings `model.name`, else `model` (the slot's), else the
/// environment's `OPENAI_MODEL`/`QWEN_MODEL`.
fn fixed_base_url(paths: &Paths, from_args: Option<String>, model: Option<&str>) -> Option<Fixed> {
    let cwd = std::env::current_dir().ok();
    let workspace = cwd.as_deref().map(|c| c.join(".qwen/settings.json"));
    let docs: Vec<(PathBuf, serde_json::Value)> = settings_files(paths, cwd.as_deref())
        .into_iter()
        .filter_map(|p| {
            // Untrusted (a repository's): never block on it, never read more than a settings
            // file can hold.
            let text = crate::files::read_text(&p, crate::files::MAX_OWN_FILE).ok()?;
            let doc = serde_json::from_str(&strip_json_comments(&text)).ok()?;
            Some((p, doc))
        })
        .collect();
    let from_settings = docs.iter().find_map(|(_, d)| {
        d.pointer("/model/name")
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    });
    let from_env = || {
        ["OPENAI_MODEL", "QWEN_MODEL"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    };
    let selected = from_args
        .or(from_settings)
        .or_else(|| model.map(str::to_string))
        .or_else(from_env)?;
    for (path, doc) in &docs {
        let Some(providers) = doc.get("modelProviders").and_then(|v| v.as_object()) else {
            continue;
        };
        for (provider, entries) in providers {
            let Some(entries) = entries.as_array() else {
                continue;
            };
            let base_url = entries.iter().find_map(|e| {
                (e.get("id").and_then(|v| v.as_str()) == Some(selected.as_str()))
                    .then(|| e.get("baseUrl").and_then(|v| v.as_str()))
                    .flatten()
                    .filter(|u| !u.trim().is_empty())
            });
            if let Some(base_url) = base_url {
                return Some(Fixed {
                    file: path.clone(),
                    workspace: workspace.as_ref() == Some(path),
                    provider: provider.clone(),
                    model: selected,
                    base_url: base_url.trim().to_string(),
                });
            }
        }
    }
    None
}

/// The settings files qwen merges, highest precedence first: system (QWEN_CODE_SYSTEM_SETTINGS_PATH
/// or /etc/qwen-code/settings.json), workspace (`<cwd>/.qwen/settings.json`), user.
fn settings_files(paths: &Paths, cwd: Option<&Path>) -> Vec<PathBuf> {
    let system = std::env::var_os("QWEN_CODE_SYSTEM_SETTINGS_PATH")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from("/etc/qwen-code/settings.json"),
            PathBuf::from,
        );
    let mut files = vec![system];
    if let Some(cwd) = cwd {
        let workspace = cwd.join(".qwen/settings.json");
        if workspace != paths.settings {
            files.push(workspace);
        }
    }
    files.push(paths.settings.clone());
    files
}

/// qwen reads its settings with strip-json-comments: `//` and `/* */` outside strings.
fn strip_json_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

struct Shared {
    vault: Vault,
    patterns: Arc<Patterns>,
    notify: Box<dyn Fn(String) + Send + Sync>,
    token: Secret,
    /// Finds the token in anything qwen sends (a literal search), so it is never forwarded.
    token_at: regex::bytes::Regex,
    routes: Routes,
    state: Mutex<State>,
    max_tries: usize,
    /// The model qwen was started with (`OPENAI_MODEL`): rewritten to the slot's own model when
    /// a later slot names another one (a key for another provider).
    start_model: Option<String>,
    /// One warning per outage, not one per request qwen retries (it retries 5xx ~28 times).
    warned_upstream: AtomicBool,
    warned_vault: AtomicBool,
    warned_bug: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Conns>,
    /// Answers that reached qwen with a 2xx, per slot (the run line in rotation.log).
    served: Served,
    /// See [`Relay::on_exhausted`].
    on_exhausted: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

/// The connections the relay holds, oldest first (ids only grow).
struct Conns {
    next: u64,
    open: BTreeMap<u64, Open>,
    max: usize,
    max_pending: usize,
}

struct Open {
    stream: Arc<TcpStream>,
    /// It has carried a request with the run's token.
    trusted: bool,
}

impl Conns {
    /// Sized by this process's open-file limit (see [`MAX_CONNS`]).
    fn new() -> Conns {
        let max = open_files_limit().map_or(MAX_CONNS, |n| (n / 4).clamp(16, MAX_CONNS));
        Conns {
            next: 0,
            open: BTreeMap::new(),
            max,
            max_pending: max / PENDING_SHARE,
        }
    }

    /// Registers a new connection, making room first (see [`PENDING_SHARE`]); None when every
    /// held connection is trusted and the table is full (the newcomer is closed).
    fn admit(&mut self, stream: &Arc<TcpStream>) -> Option<u64> {
        let pending = self.open.values().filter(|c| !c.trusted).count();
        if pending >= self.max_pending || self.open.len() >= self.max {
            let oldest = self
                .open
                .iter()
                .find(|(_, c)| !c.trusted)
                .map(|(id, _)| *id);
            // Shut down, not just forgotten: its thread wakes from its read and ends.
            let evicted = self.open.remove(&oldest?)?;
            let _ = evicted.stream.shutdown(Shutdown::Both);
        }
        let id = self.next;
        self.next += 1;
        self.open.insert(
            id,
            Open {
                stream: Arc::clone(stream),
                trusted: false,
            },
        );
        Some(id)
    }
}

/// What the relay holds between requests. Locked only to read or swap, never across I/O.
struct State {
    active: Active,
    /// The vault's current slot is one the relay cannot serve, or none is left.
    blocked: Option<Blocked>,
    exhausted: Option<Option<DateTime<Utc>>>,
}

#[derive(Clone)]
struct Active {
    slot: usize,
    label: Option<String>,
    target: ApiTarget,
    /// `record_success` was called for this slot (once per slot change, not per request).
    recorded: bool,
}

impl Active {
    fn from_launch(launch: &Launch) -> Option<Active> {
        let target = launch.api.clone().filter(|_| launch.kind == Kind::ApiKey)?;
        Some(Active {
            slot: launch.slot,
            label: launch.label.clone(),
            target,
            recorded: false,
        })
    }

    /// "account 1 (work)": the wording of run.rs's notices.
    fn who(&self) -> String {
        who(self.slot, self.label.as_deref())
    }
}

#[derive(Clone, Copy)]
enum Blocked {
    /// The vault moved to an OAuth slot (or an API-key slot without a base URL): qwen must be
    /// restarted on it, which run.rs does when qwen reports the quota error we answer.
    Unservable {
        slot: usize,
    },
    Exhausted {
        earliest: Option<DateTime<Utc>>,
    },
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `text` with the run's token replaced (a request path).
    fn scrub(&self, text: &str) -> String {
        match self.token_at.find(text.as_bytes()) {
            None => text.to_string(),
            Some(_) => text.replace(self.token.expose(), REDACTED),
        }
    }

    /// A query string without the parameters that carry the run's token (`?api_key=…`, the
    /// way some clients pass a key); None when nothing is left.
    fn scrub_query(&self, query: &str) -> Option<String> {
        if !self.token_at.is_match(query.as_bytes()) {
            return Some(query.to_string());
        }
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !self.token_at.is_match(p.as_bytes()))
            .collect();
        (!kept.is_empty()).then(|| kept.join("&"))
    }

    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows a notice. Printing it may fail (`eprintln!` panics when the caller closed our
    /// stderr: EPIPE); the request being served must not die with it, so a failure is dropped.
    fn say(&self, line: String) {
        let _ = crate::error::guarded(|| {
            (self.notify)(line);
            Ok(())
        });
    }

    fn warn_upstream(&self, line: String) {
        if !self.warned_upstream.swap(true, Ordering::SeqCst) {
            self.say(line);
        }
    }

    fn warn_vault(&self, line: String) {
        if !self.warned_vault.swap(true, Ordering::SeqCst) {
            self.say(line);
        }
    }

    /// Marks connection `id` as the run's own: it is never dropped for a newcomer.
    fn trust(&self, id: u64) {
        if let Some(open) = self.conns().open.get_mut(&id) {
            open.trusted = true;
        }
    }

    /// The relay answered "every key is spent": the run may stop its attempt now.
    fn exhausted_answered(&self) {
        let hook = self.on_exhausted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stop) = hook.as_ref() {
            stop();
        }
    }

    /// The slot a new request starts on, or the answer to give when none can take it. A blocked
    /// relay asks the vault again (cooldowns expire, another process may have rotated back to an
    /// API-key slot); that costs a file read, and only while blocked.
    fn start_slot(&self) -> Result<Active, Answer> {
        let blocked = {
            let st = self.state();
            match st.blocked {
                None => return Ok(st.active.clone()),
                Some(b) => b,
            }
        };
        match self.vault.prepare(None) {
            Ok(launch) => match Active::from_launch(&launch) {
                Some(active) => {
                    let mut st = self.state();
                    if st.active.slot != active.slot {
                        st.active = active;
                    }
                    st.blocked = None;
                    Ok(st.active.clone())
                }
                None => Err(unservable_answer(launch.slot)),
            },
            Err(Error::Exhausted { earliest }) => {
                self.state().exhausted = Some(earliest);
                Err(exhausted_answer(earliest))
            }
            Err(_) => Err(match blocked {
                Blocked::Exhausted { earliest } => exhausted_answer(earliest),
                Blocked::Unservable { slot } => unservable_answer(slot),
            }),
        }
    }

    /// The rotation step for a request whose answer on `failed` classified as `hit`.
    fn rotate(&self, failed: &Active, hit: &Hit) -> Next {
        let what = what(failed, hit);
        let next = match self.vault.report(failed.slot, hit) {
            Err(e) => {
                self.warn_vault(format!("{what}; cannot rotate: {e}"));
                return Next::PassThrough;
            }
            Ok(Rotation::Exhausted { earliest }) => Err(earliest),
            Ok(Rotation::Switched { .. } | Rotation::AlreadyRotated { .. }) => {
                match self.vault.prepare(None) {
                    Ok(launch) => Ok(launch),
                    Err(Error::Exhausted { earliest }) => Err(earliest),
                    Err(e) => {
                        self.warn_vault(format!("{what}; cannot switch: {e}"));
                        return Next::PassThrough;
                    }
                }
            }
        };
        match next {
            Err(earliest) => {
                {
                    let mut st = self.state();
                    st.blocked = Some(Blocked::Exhausted { earliest });
                    st.exhausted = Some(earliest);
                }
                self.say(format!("{what}; no other account is left"));
                Next::Answer(exhausted_answer(earliest))
            }
            Ok(launch) => match Active::from_launch(&launch) {
                Some(active) => {
                    let moved_here = {
                        let mut st = self.state();
                        // Compare-and-swap in memory too: a sibling request that saw the same
                        // failure may have moved the relay already (and said so).
                        let ours = st.active.slot == failed.slot && active.slot != failed.slot;
                        if st.active.slot != active.slot {
                            st.active = active.clone();
                        }
                        st.blocked = None;
                        ours
                    };
                    if moved_here {
                        self.say(format!("{what}; switched to {}", active.who()));
                    }
                    Next::Slot(active)
                }
                None => {
                    // run.rs reruns qwen on that slot once qwen reports our quota answer, and
                    // says so itself: no notice here, or the person reads it twice.
                    self.state().blocked = Some(Blocked::Unservable { slot: launch.slot });
                    Next::Answer(unservable_answer(launch.slot))
                }
            },
        }
    }

    /// A 2xx on `slot`: clears the exhausted mark; records the success once per slot change.
    fn succeeded(&self, slot: usize) {
        self.warned_upstream.store(false, Ordering::SeqCst);
        *self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(slot)
            .or_default() += 1;
        let record = {
            let mut st = self.state();
            st.exhausted = None;
            let first = st.active.slot == slot && !st.active.recorded;
            if first {
                st.active.recorded = true;
            }
            first
        };
        if record && let Err(e) = self.vault.record_success(slot) {
            self.warn_vault(format!("cannot record the success of account {slot}: {e}"));
        }
    }
}

enum Next {
    /// Re-send the request on this slot.
    Slot(Active),
    /// Give qwen this answer instead of the provider's.
    Answer(Answer),
    /// Give qwen the provider's answer as it was.
    PassThrough,
}

/// "account 1 (work) quota exhausted": the same wording as run.rs's notices.
fn what(active: &Active, hit: &Hit) -> String {
    let why = match hit.class {
        Class::Quota => "quota exhausted",
        Class::Throttle => "rate limited",
        Class::Auth => "was refused (needs login)",
    };
    format!("{} {why}", active.who())
}

fn who(slot: usize, label: Option<&str>) -> String {
    match label {
        Some(label) => format!("account {slot} ({label})"),
        None => format!("account {slot}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Answers the relay makes itself (OpenAI-shaped, so qwen shows them like a provider's)
// ---------------------------------------------------------------------------------------------

struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// "Every key is spent" ([`exhausted_answer`]).
    all_spent: bool,
}

fn openai_error(status: u16, message: &str, kind: &str, code: &str) -> Answer {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "code": code}});
    Answer {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.to_string().into_bytes(),
        all_spent: false,
    }
}

/// Every key spent. Worded so qwen gives up at once instead of retrying for an hour: 0.24
/// fails fast on a message with "quota", "exhausted" and "will reset"/"reset at"
/// (`isQuotaExhaustedError`), and `x-should-retry: false` turns off the OpenAI SDK's own three
/// retries. `insufficient_quota` in the text lets output scanning classify it whatever qwen
/// prints around it (0.12 shows only the message).
fn exhausted_answer(earliest: Option<DateTime<Utc>>) -> Answer {
    let when = match earliest {
        Some(t) => format!(
            "the first one will reset at {} (in {})",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            crate::config::human_duration(t - Utc::now())
        ),
        None => "no reset time is known (see `qwen --rotation-status`); the quota will reset at the provider's next reset".into(),
    };
    let message = format!(
        "qwen-rotation: all accounts exhausted (insufficient_quota): every account's quota has been exhausted; {when}"
    );
    let mut answer = openai_error(429, &message, "insufficient_quota", "insufficient_quota");
    answer.headers.push(("x-should-retry", "false".into()));
    answer.all_spent = true;
    answer
}

/// The next slot is one qwen must be restarted for: a quota answer qwen gives up on at once
/// (same wording rules as [`exhausted_answer`]); run.rs's output scanning then reruns qwen.
fn unservable_answer(slot: usize) -> Answer {
    let message = format!(
        "qwen-rotation: quota exhausted (insufficient_quota) on this key; account {slot} is next and \
         qwen must be restarted to use it; the spent key's quota will reset at the provider's next reset"
    );
    let mut answer = openai_error(429, &message, "insufficient_quota", "insufficient_quota");
    answer.headers.push(("x-should-retry", "false".into()));
    answer
}

/// The request did not carry the run's token. Worded without the auth phrases output scanning
/// rotates on: this is a wiring fault, not a spent account.
fn refused_answer() -> Answer {
    let mut answer = openai_error(
        401,
        "qwen-rotation relay: this request does not carry the key of this run; refused",
        "invalid_request_error",
        "relay_token_mismatch",
    );
    answer.headers.push(("x-should-retry", "false".into()));
    answer
}

// ---------------------------------------------------------------------------------------------
// The server side: qwen → relay
// ---------------------------------------------------------------------------------------------

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
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

/// One request as qwen sent it.
struct Incoming {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The client wants the connection closed after this answer (or speaks HTTP/1.0).
    close: bool,
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
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
                let answer = openai_error(
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
        if !authorized(&req, &shared.token) {
            // Answered from the head alone: nobody without the token makes us read its body.
            write_answer(&mut out, &refused_answer(), &req.method, true)?;
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
                let answer = openai_error(
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
    let mut answer = openai_error(
        502,
        "qwen-rotation relay: internal error while relaying this request (a bug in qwen-rotation; please report it with qwen --rotation-version)",
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

/// The read side of a connection from qwen: within `deadline` in total when one is set (request
/// heads), else within [`IDLE_TIMEOUT`] per read (bodies). The socket option is set only when it
/// changes, so a body costs no extra system call per read.
struct FromQwen<'a> {
    stream: &'a TcpStream,
    deadline: Option<Instant>,
    applied: Option<Duration>,
}

impl<'a> FromQwen<'a> {
    fn new(stream: &'a TcpStream) -> FromQwen<'a> {
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
struct ToQwen<'a> {
    stream: &'a TcpStream,
    started: bool,
}

impl<'a> ToQwen<'a> {
    fn new(stream: &'a TcpStream) -> ToQwen<'a> {
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

/// `Authorization: Bearer <token>`, compared in constant time (the token is the only thing that
/// stands between another local user and the keys).
fn authorized(req: &Incoming, token: &Secret) -> bool {
    let Some(value) = req.header("authorization") else {
        return false;
    };
    let given = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => return false,
    };
    constant_time_eq(given, token.expose().as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (every token is 64 hex digits); the content is.
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
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
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Incoming>> {
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
fn read_body(reader: &mut impl BufRead, req: &Incoming) -> io::Result<Vec<u8>> {
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
// The client side: relay → provider
// ---------------------------------------------------------------------------------------------

/// Sends `req` upstream, rotating as needed, and writes the answer to qwen. Ok(false) when the
/// connection to qwen must be closed (an answer whose end cannot be told otherwise).
fn relay_request(shared: &Shared, req: &Incoming, out: &mut ToQwen<'_>) -> io::Result<bool> {
    crate::fault::point("relay.request");
    if req.method.eq_ignore_ascii_case("CONNECT") {
        let answer = openai_error(
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
            &shared.scrub(&req.path),
            req.query
                .as_deref()
                .and_then(|q| shared.scrub_query(q))
                .as_deref(),
        );
        let response = match send(shared, req, &active, &url) {
            Ok(r) => r,
            Err(e) => {
                let (status, message) = describe_failure(&e, &url);
                shared.warn_upstream(format!("{}: {message}", active.who()));
                let code = if status == 504 {
                    "relay_upstream_timeout"
                } else {
                    "relay_upstream_unreachable"
                };
                let answer = openai_error(
                    status,
                    &format!("qwen-rotation relay: {message}"),
                    "relay_error",
                    code,
                );
                return write_answer(out, &answer, &req.method, req.close).map(|()| !req.close);
            }
        };
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let mut reader = body.into_reader();
        if status < 400 {
            let keep = stream_answer(
                out,
                status,
                &parts.headers,
                &req.method,
                &[],
                &mut reader,
                req.close,
            )?;
            if (200..300).contains(&status) {
                shared.succeeded(active.slot);
            }
            return Ok(keep);
        }
        // An error answer: small, so read it whole and see whether another key can do better.
        let (prefix, complete) = read_prefix(&mut reader, MAX_ERROR_BODY);
        if complete {
            let text = String::from_utf8_lossy(&prefix);
            let hit = detect::classify_http(status, &text, &shared.patterns);
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

/// Writes an answer the relay made itself; one that says every key is spent then lets the run
/// stop its attempt ([`Relay::on_exhausted`]).
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

/// `base` + the request path without the relay's `/v1`: what qwen would have requested had it
/// been given `base` as `OPENAI_BASE_URL` (the OpenAI SDK appends the path to the base as is).
fn upstream_url(base: &str, path: &str, query: Option<&str>) -> String {
    let rest = match path.strip_prefix("/v1") {
        Some(r) if r.is_empty() || r.starts_with('/') => r,
        _ => path,
    };
    let mut url = format!("{}{rest}", base.trim_end_matches('/'));
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Headers that belong to one connection (RFC 9110 §7.6.1) or that the relay sets itself.
fn hop_by_hop(name: &str) -> bool {
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
    url: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    use ureq::http::{HeaderName, HeaderValue};
    let listed = connection_listed(&req.headers);
    let mut builder = ureq::http::Request::builder()
        .method(req.method.as_str())
        .uri(url);
    for (name, value) in &req.headers {
        // Also drop any header that carries the run's token under another name (`api-key`, …):
        // the provider never sees it.
        if hop_by_hop(name)
            || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
            || shared.token_at.is_match(value)
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
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", active.target.key.expose()))
        .map_err(|_| {
            ureq::Error::BadUri("the key contains characters a header cannot carry".into())
        })?;
    auth.set_sensitive(true);
    builder = builder.header(ureq::http::header::AUTHORIZATION, auth);
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
fn shown_url(url: &str) -> String {
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

fn write_answer(
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
fn stream_answer(
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

// ---------------------------------------------------------------------------------------------
// Proxies: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY, as curl reads them
// ---------------------------------------------------------------------------------------------

/// One agent (and connection pool) per way out. ureq's own `Proxy::try_from_env` takes the
/// first of ALL_PROXY, HTTPS_PROXY, HTTP_PROXY for every scheme; curl, node and qwen choose by
/// the target's scheme, so the relay does too.
struct Routes {
    direct: ureq::Agent,
    https: Option<ureq::Agent>,
    http: Option<ureq::Agent>,
    no_proxy: Vec<String>,
}

impl Routes {
    fn from_env() -> Routes {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let proxy = |names: &[&str]| var(names).and_then(|v| ureq::Proxy::new(v.trim()).ok());
        let https = proxy(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]);
        let http = proxy(&["http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"]);
        let no_proxy = var(&["NO_PROXY", "no_proxy"])
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Routes {
            direct: agent(None),
            https: https.map(|p| agent(Some(p))),
            http: http.map(|p| agent(Some(p))),
            no_proxy,
        }
    }

    fn agent_for(&self, url: &str) -> &ureq::Agent {
        let Ok(uri) = url.parse::<ureq::http::Uri>() else {
            return &self.direct;
        };
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if no_proxy_matches(&self.no_proxy, &host) {
            return &self.direct;
        }
        let via = if uri.scheme_str() == Some("https") {
            &self.https
        } else {
            &self.http
        };
        via.as_ref().unwrap_or(&self.direct)
    }
}

/// curl's rules: `*` matches everything; `example.com` and `.example.com` match the host and
/// its subdomains; a `:port` suffix is ignored.
fn no_proxy_matches(entries: &[String], host: &str) -> bool {
    entries.iter().any(|e| {
        if e == "*" {
            return true;
        }
        let e = e.trim_start_matches("*.").trim_start_matches('.');
        let e = match e.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => e,
        };
        let e = e.trim_start_matches('[').trim_end_matches(']');
        !e.is_empty() && (host == e || host.strip_suffix(e).is_some_and(|rest| rest.ends_with('.')))
    })
}

fn agent(proxy: Option<ureq::Proxy>) -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    let config = ureq::Agent::config_builder()
        // Error statuses are answers to relay (and to classify), not failures.
        .http_status_as_error(false)
        // Redirects go back to qwen as they came.
        .max_redirects(0)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .proxy(proxy)
        // The system's trust store, so a corporate CA installed on the machine works.
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::PlatformVerifier)
                .build(),
        )
        // ureq's own defaults (`accept: */*`, its user agent) are not added when qwen set none.
        .accept("")
        .max_idle_connections_per_host(8)
        .max_idle_age(Duration::from_secs(60))
        .build();
    ureq::Agent::new_with_config(config)
}

/// The soft `RLIMIT_NOFILE` of this process, from /proc/self/limits ("Max open files").
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(upstream_url(base, path, query), want, "{base} + {path}");
        }
    }

    #[test]
    fn token_comparison_needs_the_whole_token() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }

    #[test]
    fn random_tokens_are_64_hex_digits_and_differ() {
        let a = random_hex(32).unwrap();
        let b = random_hex(32).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
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
    fn no_proxy_follows_curl() {
        let entries: Vec<String> = [
            "localhost",
            ".internal.test",
            "10.0.0.1:8080",
            "*.corp.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(no_proxy_matches(&entries, "localhost"));
        assert!(no_proxy_matches(&entries, "a.internal.test"));
        assert!(no_proxy_matches(&entries, "internal.test"));
        assert!(no_proxy_matches(&entries, "10.0.0.1"));
        assert!(no_proxy_matches(&entries, "x.corp.test"));
        assert!(!no_proxy_matches(&entries, "notinternal.test"));
        assert!(!no_proxy_matches(&entries, "api.example.com"));
        assert!(no_proxy_matches(&["*".to_string()], "anything"));
    }

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
            exhausted_answer(Some(t)),
            exhausted_answer(None),
            unservable_answer(3),
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
            String::from_utf8_lossy(&exhausted_answer(Some(t)).body)
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
        for a in [exhausted_answer(None), unservable_answer(2)] {
            let hit = patterns.classify(&message(&a)).expect("classified");
            assert_eq!(hit.class, Class::Quota, "{}", message(&a));
        }
        // … and a refused token is a wiring fault, not an account to rotate away from.
        assert_eq!(patterns.classify(&message(&refused_answer())), None);
    }

    #[test]
    fn argv_that_bypasses_the_relay_rules_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        for bad in [
            &["-p", "hi", "--openai-base-url", "https://x.test/v1"][..],
            &["--openaiBaseUrl=https://x.test/v1"],
            &["--openai-api-key", "k"],
            &["--openaiApiKey=k"],
        ] {
            let err = relay_possible_for(&paths, None, &args(bad)).unwrap_err();
            assert!(!err.contains("x.test") && !err.contains("=k"), "{err}");
        }
        assert!(relay_possible_for(&paths, None, &args(&["-p", "--", "--openai-api-key"])).is_ok());
        assert!(relay_possible_for(&paths, None, &args(&["-p", "hello"])).is_ok());
    }

    #[test]
    fn a_key_is_withheld_only_from_an_endpoint_other_than_its_slots() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        let launch = |base: Option<&str>| Launch {
            slot: 1,
            label: None,
            kind: Kind::ApiKey,
            env: vec![("OPENAI_MODEL".into(), Secret::new("m1".to_string()))],
            api: base.map(|b| ApiTarget {
                base_url: b.into(),
                key: Secret::new("sk-x".to_string()),
                model: Some("m1".into()),
                env_key: "OPENAI_API_KEY".into(),
            }),
        };
        let slot = launch(Some("https://good.test/v1"));
        assert!(key_withheld(&paths, &slot, &[]).is_none());
        let provider = |url: &str| {
            format!(r#"{{"modelProviders":{{"openai":[{{"id":"m1","baseUrl":"{url}"}}]}}}}"#)
        };
        std::fs::write(&paths.settings, provider("https://good.test/v1/")).unwrap();
        assert!(key_withheld(&paths, &slot, &[]).is_none());
        std::fs::write(
            &paths.settings,
            provider("https://u:hunter2@evil.test/v1?k=QUERYSECRET"),
        )
        .unwrap();
        let why = key_withheld(&paths, &slot, &[]).expect("withheld");
        assert!(
            why.contains("https://evil.test/v1")
                && !why.contains("hunter2")
                && !why.contains("QUERYSECRET"),
            "{why}"
        );
        // Another model on the command line is not routed there.
        let args = [OsString::from("--model"), OsString::from("m2")];
        assert!(key_withheld(&paths, &slot, &args).is_none());
        // A slot without a base URL follows the user's own settings.
        assert!(key_withheld(&paths, &launch(None), &[]).is_none());
    }

    #[test]
    fn settings_comments_are_stripped_outside_strings() {
        let text = "{\n // a comment\n \"a\": \"x//y\", /* block */ \"b\": \"/*z*/\"\n}";
        let doc: serde_json::Value = serde_json::from_str(&strip_json_comments(text)).unwrap();
        assert_eq!(doc["a"], "x//y");
        assert_eq!(doc["b"], "/*z*/");
    }

    #[test]
    fn a_model_provider_with_a_base_url_rules_the_relay_out() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        assert!(relay_possible_for(&paths, Some("m1"), &[]).is_ok());
        std::fs::write(
            &paths.settings,
            r#"{"modelProviders":{"openai":[{"id":"m1","baseUrl":"https://coding.dashscope.aliyuncs.com/v1","envKey":"K"}]}}"#,
        )
        .unwrap();
        let err = relay_possible_for(&paths, Some("m1"), &[]).unwrap_err();
        assert!(err.contains("settings.json") && err.contains("m1"), "{err}");
        assert!(relay_possible_for(&paths, Some("m2"), &[]).is_ok());
        // settings' model.name selects the provider entry whatever the slot says.
        std::fs::write(
            &paths.settings,
            r#"{"model":{"name":"m1"},"modelProviders":{"openai":[{"id":"m1","baseUrl":"https://x.test/v1"}]}}"#,
        )
        .unwrap();
        assert!(relay_possible_for(&paths, Some("m2"), &[]).is_err());
        // `--model` beats settings.
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(relay_possible_for(&paths, None, &args(&["-p", "x", "--model", "m2"])).is_ok());
        assert!(relay_possible_for(&paths, None, &args(&["--model=m1"])).is_err());
        // An entry without a base URL only names the key variable: the relay still works.
        std::fs::write(
            &paths.settings,
            r#"{"modelProviders":{"openai":[{"id":"m1","envKey":"K"}]}}"#,
        )
        .unwrap();
        assert!(relay_possible_for(&paths, Some("m1"), &[]).is_ok());
    }
}
