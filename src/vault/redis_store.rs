//! `RedisStore`: one pool shared by any number of hosts through Redis (`pool: redis://…`).
//!
//! Under `<cli>-rotation:<pool>:` (`qwen-rotation:default:`; a gemini pool is
//! `gemini-rotation:…`, so one Redis holds both CLIs' pools apart) Redis holds `pool` (a hash: `version`, `current`,
//! `last_switch`, `switches_total`), `accounts` (a hash: identity → the account's shared fields
//! as JSON), `cooldown:<identity>` (the end of a cooldown, with a TTL, so it expires by
//! itself) and `events` (the audit events, a stream capped near `STREAM_MAX` entries). Secrets
//! never go there: identities are key fingerprints, labels or slot numbers (`fleet.rs`).
//!
//! Every host keeps its own `FileStore` (the home's `rotation.lock`, state.yaml, rotation.log):
//! the lock still guards the local live file, and every commit also writes the local files, so
//! a run that cannot reach Redis goes on with recent state.
//!
//! Atomicity across hosts is optimistic: `load_locked` reads the pool and its `version` in one
//! script (`READ`); `commit` runs one Lua script (EVALSHA, EVAL when the server lost it)
//! that writes state, cooldown keys and events and bumps the version only if the version is
//! still the one read, else answers `Conflict` and writes nothing. The transaction then runs
//! again (`Vault::transact`) and the rotation step's compare-and-swap sees the other host's move.
//!
//! Fail open: connect and every command time out after `pool_timeout` (100 ms), and all the
//! waiting on Redis a process does is bounded by twice that in every period of twenty times it
//! (`budget`: a run's whole exchange at its start — connect, read, commit — costs at most
//! 200 ms, however slowly each answer comes, and a relay at most 200 ms in 2 s); any Redis error (down, slow, refused password, a bad URL) prints one
//! warning naming the pool (password never shown) and the reason, and the rest of the process
//! uses the local files. The next run tries again.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::{Connection, ConnectionInfo, IntoConnectionInfo, RedisError, RedisResult, Script};

use crate::config::{Config, Paths};
use crate::error::Result;
use crate::text::redact_url;

use super::audit::{self, Event};
use super::fleet::{self, Outgoing, Shared};
use super::source::SlotSource;
use super::state::{Loaded, State};
use super::store::{Commit, Committed, FileStore, FleetCheck, Locked, Scope, Store, StoreFiles};

/// Reading the history for stats and log may move more bytes.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// The stream keeps about this many events (`XADD MAXLEN ~`).
pub const STREAM_MAX: u64 = 100_000;

/// The commit: compare the version, then write everything, or nothing.
/// KEYS: pool, accounts, events, then one cooldown key per entry of `cooldowns`.
/// ARGV: the version read ("" = events only), the payload (JSON), the stream's cap.
const COMMIT: &str = r#"
local v = redis.call('HGET', KEYS[1], 'version')
if not v then v = '0' end
if ARGV[1] ~= '' and v ~= ARGV[1] then return {0, v} end
local p = cjson.decode(ARGV[2])
if ARGV[1] ~= '' then
  for f, val in pairs(p.pool) do redis.call('HSET', KEYS[1], f, val) end
  for id, a in pairs(p.accounts) do redis.call('HSET', KEYS[2], id, a) end
  for i, c in ipairs(p.cooldowns) do
    if c[2] > 0 then
      redis.call('SET', KEYS[3 + i], c[1], 'PX', c[2])
    else
      redis.call('DEL', KEYS[3 + i])
    end
  end
  v = tostring(redis.call('HINCRBY', KEYS[1], 'version', 1))
end
for _, e in ipairs(p.events) do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', e)
end
return {1, v}
"#;

/// The read: the pool's fields, its accounts, and which cooldown keys are alive, as one
/// command (one reply, so one timeout bounds it). KEYS: pool, accounts, cooldown keys.
const READ: &str = r#"
local p = redis.call('HMGET', KEYS[1], 'version', 'current', 'last_switch', 'switches_total')
local a = redis.call('HGETALL', KEYS[2])
local c = {}
for i = 3, #KEYS do c[#c + 1] = redis.call('EXISTS', KEYS[i]) end
return {p, a, c}
"#;

/// Where the pool is and how to log in.
struct Target {
    info: ConnectionInfo,
    /// `<cli>-rotation:<pool>:`.
    prefix: String,
}

pub struct RedisStore {
    local: FileStore,
    paths: Paths,
    source: SlotSource,
    /// `Err`: the URL or the password file is unusable (the reason, one line).
    target: std::result::Result<Target, String>,
    shown: String,
    conn: Mutex<Option<Connection>>,
    /// Connect and per-command timeout (`pool_timeout`).
    timeout: Duration,
    /// The most this process waits on Redis in one period (twice `timeout`; a period is ten
    /// budgets long), and what the current period has used: (its start, the time waited).
    budget: Duration,
    waited: Mutex<(Instant, Duration)>,
    /// Set at the first failure: why the rest of this process uses the local files.
    down: Mutex<Option<String>>,
    /// What the last `peek` found (see `Store::settled`).
    unsettled: AtomicBool,
    script: Script,
    read_script: Script,
}

/// What `load_locked` read, kept in the lock until `commit`.
struct Held {
    file: Locked,
    seen: Mutex<Option<Seen>>,
}

struct Seen {
    shared: Shared,
    ids: BTreeMap<usize, String>,
    /// The host's own state as read, and the merged one the transaction started from.
    local: State,
    merged: State,
}

impl RedisStore {
    /// The pool named by `config.pool` (a URL) for this host's slots. Opening touches nothing:
    /// a bad URL is reported, once, when the pool is first needed.
    pub fn new(url: &str, config: &Config, paths: &Paths, source: SlotSource) -> RedisStore {
        let name = match config.pool_name.trim() {
            "" => crate::config::DEFAULT_POOL_NAME,
            n => n,
        };
        let shown = format!("{} ({})", redact_url(url), crate::text::printable(name));
        RedisStore {
            local: FileStore::new(paths),
            paths: paths.clone(),
            source,
            target: target(url, name, config).map(|info| Target {
                info,
                prefix: format!("{}-rotation:{name}:", paths.profile.name),
            }),
            shown,
            conn: Mutex::new(None),
            timeout: config.pool_timeout.max(Duration::from_millis(1)),
            budget: 2 * config.pool_timeout.max(Duration::from_millis(1)),
            waited: Mutex::new((Instant::now(), Duration::ZERO)),
            down: Mutex::new(None),
            unsettled: AtomicBool::new(false),
            script: Script::new(COMMIT),
            read_script: Script::new(READ),
        }
    }

    fn key(&self, t: &Target, what: &str) -> String {
        format!("{}{what}", t.prefix)
    }

    /// Runs `f` on the connection (made on first use). `None` when the pool is down for this
    /// process: then, the first time, one warning. `timeout`: a longer one for an admin
    /// command that reads more (outside the budget); `None`: a run's command, bounded by
    /// `pool_timeout` and by what is left of this period's budget.
    fn with<T>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&Target, &mut Connection) -> RedisResult<T>,
    ) -> Option<T> {
        if self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return None;
        }
        let t = match &self.target {
            Ok(t) => t,
            Err(problem) => {
                self.go_down(problem.clone());
                return None;
            }
        };
        let limit = match timeout {
            Some(long) => long,
            None => match self.allowance(Instant::now()) {
                Some(left) => left,
                None => {
                    self.go_down(self.over_budget());
                    return None;
                }
            },
        };
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let result = (|| {
            if conn.is_none() {
                let c = redis::Client::open(t.info.clone())?.get_connection_with_timeout(limit)?;
                *conn = Some(c);
            }
            let c = conn.as_mut().expect("connected above");
            c.set_write_timeout(Some(limit))?;
            c.set_read_timeout(Some(limit))?;
            f(t, c)
        })();
        if timeout.is_none() {
            self.spend(started.elapsed());
        }
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                *conn = None;
                drop(conn);
                let why = if e.is_timeout() && limit < self.timeout {
                    self.over_budget()
                } else {
                    reason(&e, limit)
                };
                self.go_down(why);
                None
            }
        }
    }

    /// How long the next command may wait: `pool_timeout`, or less when this period's budget
    /// is nearly used; `None` when it is used up.
    fn allowance(&self, now: Instant) -> Option<Duration> {
        let mut waited = self.waited.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(waited.0) >= 10 * self.budget {
            *waited = (now, Duration::ZERO);
        }
        let left = self.budget.saturating_sub(waited.1);
        (left >= Duration::from_millis(1)).then(|| left.min(self.timeout))
    }

    fn over_budget(&self) -> String {
        format!(
            "its answers took more than {} ms in all",
            self.budget.as_millis()
        )
    }

    fn spend(&self, spent: Duration) {
        let mut waited = self.waited.lock().unwrap_or_else(|p| p.into_inner());
        waited.1 += spent;
    }

    fn go_down(&self, why: String) {
        // The crate's messages name replies and socket errors, never the credentials; should
        // one ever quote the password, it is cut out here.
        let why = match self
            .target
            .as_ref()
            .ok()
            .and_then(|t| t.info.redis_settings().password())
        {
            Some(pw) if !pw.is_empty() && why.contains(pw) => why.replace(pw, "***"),
            _ => why,
        };
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_none() {
            crate::error::warn(format!(
                "the shared pool {} cannot be used: {why}; this run uses the local state in {}",
                self.shown,
                self.local.shown().trim_start_matches("files in ")
            ));
            *down = Some(why);
        }
    }

    /// This host's slot identities, for `local` (labels come from the host's state).
    fn ids(&self, local: &State) -> Option<BTreeMap<usize, String>> {
        let infos = self.source.inspect_all(&self.paths).ok()?;
        Some(fleet::identities(local, &infos))
    }

    /// The pool as Redis holds it, in one round trip (two the first time a server sees the
    /// script: EVALSHA, then EVAL).
    fn read(&self, ids: &BTreeMap<usize, String>) -> Option<Shared> {
        self.with(None, |t, c| {
            let wanted: BTreeSet<&String> = ids.values().collect();
            let mut call = self.read_script.prepare_invoke();
            call.key(self.key(t, "pool")).key(self.key(t, "accounts"));
            for id in &wanted {
                call.key(self.key(t, &format!("cooldown:{id}")));
            }
            let (pool, flat, alive): (Vec<Option<String>>, Vec<String>, Vec<i64>) =
                call.invoke(c)?;
            let accounts: BTreeMap<String, String> = flat
                .chunks(2)
                .filter_map(|kv| Some((kv[0].clone(), kv.get(1)?.clone())))
                .collect();
            let cooling: BTreeSet<String> = wanted
                .iter()
                .zip(alive)
                .filter(|(_, n)| *n > 0)
                .map(|(id, _)| (*id).clone())
                .collect();
            let field = |i: usize| pool.get(i).cloned().flatten();
            Ok(Shared {
                version: field(0).and_then(|v| v.parse().ok()).unwrap_or(0),
                current: field(1),
                last_switch: field(2),
                switches_total: field(3).and_then(|v| v.parse().ok()),
                accounts: accounts
                    .iter()
                    .filter_map(|(id, json)| Some((id.clone(), fleet::parse_account(json)?)))
                    .collect(),
                cooling,
            })
        })
    }

    /// Runs the commit script; `Some(true)`: written, `Some(false)`: the version moved on.
    fn write(&self, expected: Option<u64>, out: &Outgoing, events: &[Event]) -> Option<bool> {
        let cooldowns: Vec<(&String, serde_json::Value)> = out
            .cooldowns
            .iter()
            .map(|(id, cd)| {
                let v = match cd {
                    Some((until, ms)) => serde_json::json!([until, ms]),
                    None => serde_json::json!(["", 0]),
                };
                (id, v)
            })
            .collect();
        let payload = serde_json::json!({
            "pool": out.pool,
            "accounts": out.accounts,
            "cooldowns": cooldowns.iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "events": events.iter().map(Event::to_line).collect::<Vec<_>>(),
        });
        self.with(None, |t, c| {
            let mut call = self.script.prepare_invoke();
            call.key(self.key(t, "pool"))
                .key(self.key(t, "accounts"))
                .key(self.key(t, "events"));
            for (id, _) in &cooldowns {
                call.key(self.key(t, &format!("cooldown:{id}")));
            }
            call.arg(expected.map(|v| v.to_string()).unwrap_or_default())
                .arg(payload.to_string())
                .arg(STREAM_MAX);
            let (ok, _version): (i64, String) = call.invoke(c)?;
            Ok(ok == 1)
        })
    }
}

/// The connection settings for `url`, with the password from the environment or its file
/// when the URL holds none. Err: one line naming the problem and the fix.
fn target(url: &str, name: &str, config: &Config) -> std::result::Result<ConnectionInfo, String> {
    let vars = &crate::profile::active().pool_vars;
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let fix = "write it as redis://[user:password@]host:port/db (rediss:// for TLS)";
    if !matches!(
        scheme.as_deref(),
        Some("redis" | "rediss" | "unix" | "redis+unix")
    ) {
        return Err(format!(
            "the pool `{}` is not a Redis URL; {fix}",
            redact_url(url)
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the pool name `{}` holds spaces or control characters; set {} to a plain word",
            crate::text::printable(name),
            vars.pool_name
        ));
    }
    let info = url
        .into_connection_info()
        .map_err(|_| format!("the pool `{}` is not a Redis URL; {fix}", redact_url(url)))?;
    let mut redis = info.redis_settings().clone().set_skip_set_lib_name();
    if redis.password().is_none() {
        let password = match (&config.pool_password, &config.pool_password_file) {
            (Some(p), _) => Some(p.expose().to_string()),
            (None, Some(file)) => Some(
                crate::files::read_text(file, 4096)
                    .map_err(|e| {
                        format!(
                            "cannot read the pool's password from {} ({}): {}; fix the file or unset {}",
                            file.display(),
                            vars.pool_password_file,
                            crate::text::io_reason(&e),
                            vars.pool_password_file
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(p) = password {
            redis = redis.set_password(p);
        }
    }
    Ok(info.set_redis_settings(redis))
}

/// Why Redis could not be used, in one line (never the password: the crate's messages name
/// the server's reply or the socket's error, not the credentials).
fn reason(e: &RedisError, timeout: Duration) -> String {
    let vars = &crate::profile::active().pool_vars;
    let text = e.to_string();
    let no_perm = text.contains("NOPERM") || text.contains("can't run this command");
    if no_perm {
        return "its user may not run the commands the pool needs (see the ACL in docs/FLEET.md)"
            .into();
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        let what = if text.contains("NOAUTH") {
            "it asks for a password"
        } else {
            "it refused the user or password"
        };
        return format!(
            "{what}; set the password in the URL, {} or {}",
            vars.pool_password, vars.pool_password_file
        );
    }
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    if e.is_connection_refusal() {
        return "connection refused (is redis-server running there?)".into();
    }
    crate::text::printable(&text)
}

impl Store for RedisStore {
    fn peek(&self) -> Loaded {
        let local = match self.local.peek() {
            Loaded::Ok(st) => st,
            other => return other,
        };
        let Some(ids) = self.ids(&local) else {
            return Loaded::Ok(local);
        };
        match self.read(&ids) {
            Some(shared) => {
                let (merged, missing) = fleet::merge(&local, &ids, &shared);
                self.unsettled
                    .store(missing || merged != local, Ordering::Relaxed);
                Loaded::Ok(merged)
            }
            None => {
                self.unsettled.store(false, Ordering::Relaxed);
                Loaded::Ok(local)
            }
        }
    }

    fn settled(&self) -> bool {
        !self.unsettled.load(Ordering::Relaxed)
    }

    fn shared(&self) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    fn readable(&self) -> io::Result<()> {
        self.local.readable()
    }

    fn lock(&self, timeout: Duration) -> Result<Locked> {
        Ok(Locked::new(Held {
            file: self.local.lock(timeout)?,
            seen: Mutex::new(None),
        }))
    }

    fn load_locked(
        &self,
        held: &Locked,
        now: DateTime<Utc>,
        events: &mut Vec<Event>,
    ) -> Result<(State, bool)> {
        let h = held.get::<Held>().expect("a RedisStore lock");
        let (local, dirty) = self.local.load_locked(&h.file, now, events)?;
        let Some(ids) = self.ids(&local) else {
            return Ok((local, dirty));
        };
        let Some(shared) = self.read(&ids) else {
            return Ok((local, dirty));
        };
        let (merged, missing) = fleet::merge(&local, &ids, &shared);
        *h.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seen {
            shared,
            ids,
            local,
            merged: merged.clone(),
        });
        Ok((merged, dirty || missing))
    }

    fn commit(&self, held: Locked, op: &'static str, c: Commit<'_>) -> Result<Committed> {
        let h = held.into_inner::<Held>().expect("a RedisStore lock");
        let seen = h.seen.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut mirror = c.state;
        if let Some(seen) = &seen {
            let written = match c.state {
                Some(st) => {
                    // The state's slots may have changed (add, remove): map them again.
                    let ids = self.ids(st).unwrap_or_else(|| seen.ids.clone());
                    let out = fleet::outgoing(
                        st,
                        &ids,
                        &seen.shared,
                        seen.merged.current_index,
                        Utc::now(),
                    );
                    self.write(Some(seen.shared.version), &out, c.events)
                }
                None if !c.events.is_empty() => self.write(None, &Outgoing::default(), c.events),
                None => Some(true),
            };
            if written == Some(false) {
                if !c.last_try {
                    return Ok(Committed::Conflict);
                }
                self.go_down("the pool kept changing under this host's writes".into());
            }
            // The local files follow the pool, so a run that cannot reach it is recent.
            if mirror.is_none() && seen.merged != seen.local {
                mirror = Some(&seen.merged);
            }
        }
        self.local.commit(
            h.file,
            op,
            Commit {
                state: mirror,
                events: c.events,
                also_sync: c.also_sync,
                last_try: true,
            },
        )
    }

    fn append(&self, event: Event, lock_timeout: Duration) {
        let written = self.with(None, |t, c| {
            redis::cmd("XADD")
                .arg(self.key(t, "events"))
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX)
                .arg("*")
                .arg("event")
                .arg(event.to_line())
                .query::<String>(c)
        });
        if written.is_none() {
            self.local.append(event, lock_timeout);
        }
    }

    fn history(&self, scope: Scope) -> io::Result<audit::Read> {
        let read = self.with(Some(HISTORY_TIMEOUT), |t, c| {
            redis::cmd("XRANGE")
                .arg(self.key(t, "events"))
                .arg("-")
                .arg("+")
                .query::<Vec<(String, Vec<String>)>>(c)
        });
        match read {
            Some(entries) => {
                let mut lines = Vec::new();
                for (_, fields) in entries {
                    if let Some(line) = fields
                        .chunks(2)
                        .find(|f| f[0] == "event")
                        .and_then(|f| f.get(1))
                    {
                        lines.extend_from_slice(line.as_bytes());
                        lines.push(b'\n');
                    }
                }
                Ok(audit::parse(&lines))
            }
            None => self.local.history(scope),
        }
    }

    fn holders(&self) -> Vec<String> {
        self.local.holders()
    }

    fn files(&self) -> StoreFiles {
        self.local.files()
    }

    fn shown(&self) -> String {
        self.shown.clone()
    }

    fn fleet(&self) -> Option<FleetCheck> {
        let mut check = FleetCheck::default();
        let local = match self.local.peek() {
            Loaded::Ok(st) => st,
            _ => State::default(),
        };
        let ids = self.ids(&local).unwrap_or_default();
        match self.read(&ids) {
            None => {
                check.problem = self.down.lock().unwrap_or_else(|p| p.into_inner()).clone();
            }
            Some(shared) if shared.version == 0 => {}
            Some(shared) => {
                for (n, id) in &ids {
                    if !shared.accounts.contains_key(id) {
                        check
                            .only_here
                            .push(format!("{} ({id})", local.describe(*n)));
                    }
                }
                let mine: BTreeSet<&String> = ids.values().collect();
                check.only_there = shared
                    .accounts
                    .keys()
                    .filter(|id| !mine.contains(id))
                    .cloned()
                    .collect();
            }
        }
        Some(check)
    }
}
