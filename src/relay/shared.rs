//! What every connection thread shares: the slot the relay holds, the rotation step through
//! the vault, and the table of open connections.
//! Invariant: the state is locked only to read or swap, never across I/O.

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::detect::Patterns;
use crate::error::Error;
use crate::model::Hit;
use crate::model::account_name;
use crate::model::{Kind, Secret};
use crate::profile::Wire;
use crate::vault::{ApiTarget, Launch, Rotation, Vault};

use super::http::{Answer, exhausted_answer, unservable_answer};
use super::proxy::Routes;

/// Connections held at once: one thread and one file descriptor each (qwen keeps a handful).
/// Lower under a low open-file limit: a quarter of it, so the rest of the run keeps its own.
pub(super) const MAX_CONNS: usize = 512;
/// Of those, a quarter may be connections that have not (yet) shown the run's token. A new
/// connection past that drops the oldest such one: qwen's own connection shows its token in its
/// first milliseconds, a hostile one never does, so a flood only ever pushes out the flood.
const PENDING_SHARE: usize = 4;
/// What stands in for the run's token wherever qwen put it in a request's path or body.
pub(super) const REDACTED: &str = "[redacted]";

/// Successful requests per slot, counted by the relay.
pub type Served = Arc<Mutex<BTreeMap<usize, u64>>>;

pub(super) struct Shared {
    pub(super) vault: Vault,
    pub(super) patterns: Arc<Patterns>,
    pub(super) notify: Box<dyn Fn(String) + Send + Sync>,
    pub(super) token: Secret,
    /// Finds the token in anything qwen sends (a literal search), so it is never forwarded.
    pub(super) token_at: regex::bytes::Regex,
    pub(super) routes: Routes,
    pub(super) state: Mutex<State>,
    pub(super) max_tries: usize,
    /// The model qwen was started with (`OPENAI_MODEL`): rewritten to the slot's own model when
    /// a later slot names another one (a key for another provider).
    pub(super) start_model: Option<String>,
    /// One warning per outage, not one per request qwen retries (it retries 5xx ~28 times).
    pub(super) warned_upstream: AtomicBool,
    pub(super) warned_vault: AtomicBool,
    pub(super) warned_bug: AtomicBool,
    pub(super) stop: AtomicBool,
    pub(super) conns: Mutex<Conns>,
    /// Answers that reached qwen with a 2xx, per slot (the run line in rotation.log).
    pub(super) served: Served,
    /// What was measured per slot, and the last remaining quota announced per slot (`meter`).
    pub(super) metered: super::meter::Metered,
    pub(super) seen: super::meter::Seen,
    /// `quota_floor` of rotation.yaml.
    pub(super) floor: crate::config::QuotaFloor,
    /// The slot whose 200 stream carried the last error event the relay classified (and
    /// rotated away from), until a request succeeds: what qwen then shows came from there.
    pub(super) stream_hit: Mutex<Option<usize>>,
    /// See [`Relay::on_exhausted`](crate::relay::Relay::on_exhausted).
    pub(super) on_exhausted: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// When a shared pool was last looked at (`pool_check_due`).
    pub(super) pool_checked: Mutex<Option<std::time::Instant>>,
    /// Where a subscription login's requests go (the base URL the CLI would have used), when
    /// the relay serves logins (the profile's `relay_login_headers`); `None`: it serves keys only.
    pub(super) login_base: Option<String>,
    /// Logins first, and the pool holds logins and keys: while the relay is on a key, it looks
    /// whether a login is back before a request (at most every `POOL_CHECK`).
    pub(super) chain: bool,
}

/// How often the relay looks at a pool shared with other hosts (at most; only while requests
/// come).
const POOL_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// The connections the relay holds, oldest first (ids only grow).
pub(super) struct Conns {
    next: u64,
    pub(super) open: BTreeMap<u64, Open>,
    max: usize,
    max_pending: usize,
}

pub(super) struct Open {
    pub(super) stream: Arc<TcpStream>,
    /// It has carried a request with the run's token.
    trusted: bool,
}

impl Conns {
    /// Sized by this process's open-file limit (see [`MAX_CONNS`]).
    pub(super) fn new() -> Conns {
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
    pub(super) fn admit(&mut self, stream: &Arc<TcpStream>) -> Option<u64> {
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
pub(super) struct State {
    pub(super) active: Active,
    /// The vault's current slot is one the relay cannot serve, or none is left.
    pub(super) blocked: Option<Blocked>,
    pub(super) exhausted: Option<Option<DateTime<Utc>>>,
}

#[derive(Clone)]
pub(super) struct Active {
    pub(super) slot: usize,
    pub(super) label: Option<String>,
    /// The base URL, and for an API key the key and model. A login's access token is not held
    /// here: it is read when a request goes out (`Vault::login_access`), since the CLI may
    /// refresh it at any time.
    pub(super) target: ApiTarget,
    /// A subscription login (sent as `Authorization: Bearer <access token>`).
    pub(super) login: bool,
    /// `record_success` was called for this slot (once per slot change, not per request).
    recorded: bool,
}

impl Active {
    /// The slot `launch` names, when the relay can serve it: an API key with a base URL, or a
    /// login when the relay serves logins (`login_base`, where their requests go).
    pub(super) fn from_launch(launch: &Launch, login_base: Option<&str>) -> Option<Active> {
        let (target, login) = match launch.kind {
            Kind::ApiKey => (launch.api.clone()?, false),
            Kind::OAuth => {
                let target = ApiTarget {
                    base_url: login_base?.to_string(),
                    key: Secret::new(String::new()),
                    model: None,
                    env_key: String::new(),
                };
                (target, true)
            }
        };
        Some(Active {
            slot: launch.slot,
            label: launch.label.clone(),
            target,
            login,
            recorded: false,
        })
    }

    /// "account 1 (work)": the wording of every notice (`model::account_name`).
    pub(super) fn who(&self) -> String {
        account_name(self.slot, self.label.as_deref())
    }
}

#[derive(Clone, Copy)]
pub(super) enum Blocked {
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
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `text` with the run's token replaced (a request path).
    pub(super) fn scrub(&self, text: &str) -> String {
        match self.token_at.find(text.as_bytes()) {
            None => text.to_string(),
            Some(_) => text.replace(self.token.expose(), REDACTED),
        }
    }

    /// A query string without the parameters that carry the run's token (`?api_key=…`, the
    /// way some clients pass a key); None when nothing is left.
    pub(super) fn scrub_query(&self, query: &str) -> Option<String> {
        if !self.token_at.is_match(query.as_bytes()) {
            return Some(query.to_string());
        }
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !self.token_at.is_match(p.as_bytes()))
            .collect();
        (!kept.is_empty()).then(|| kept.join("&"))
    }

    /// The slot `launch` names, when this relay can serve it.
    pub(super) fn active_for(&self, launch: &Launch) -> Option<Active> {
        Active::from_launch(launch, self.login_base.as_deref())
    }

    /// What the CLI's requests look like (the profile's).
    pub(super) fn wire(&self) -> Wire {
        self.vault.paths.profile.api.wire
    }

    pub(super) fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows a notice. Printing it may fail (`eprintln!` panics when the caller closed our
    /// stderr: EPIPE); the request being served must not die with it, so a failure is dropped.
    pub(super) fn say(&self, line: String) {
        let _ = crate::error::guarded(|| {
            (self.notify)(line);
            Ok(())
        });
    }

    pub(super) fn warn_upstream(&self, line: String) {
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
    pub(super) fn trust(&self, id: u64) {
        if let Some(open) = self.conns().open.get_mut(&id) {
            open.trusted = true;
        }
    }

    /// The relay answered "every key is spent": the run may stop its attempt now.
    pub(super) fn exhausted_answered(&self) {
        let hook = self.on_exhausted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stop) = hook.as_ref() {
            stop();
        }
    }

    /// The slot a new request starts on, or the answer to give when none can take it. A blocked
    /// relay asks the vault again (cooldowns expire, another process may have rotated back to an
    /// API-key slot); that costs a file read, and only while blocked.
    pub(super) fn start_slot(&self) -> Result<Active, Answer> {
        let blocked = {
            let st = self.state();
            match st.blocked {
                None if !self.pool_check_due(&st.active) => return Ok(st.active.clone()),
                None => {
                    let active = st.active.clone();
                    drop(st);
                    return Ok(self.follow_pool(active));
                }
                Some(b) => b,
            }
        };
        match self.vault.prepare(None) {
            Ok(launch) => match self.active_for(&launch) {
                Some(active) => {
                    let mut st = self.state();
                    if st.active.slot != active.slot {
                        st.active = active;
                    }
                    st.blocked = None;
                    Ok(st.active.clone())
                }
                None => Err(unservable_answer(self.wire(), launch.slot)),
            },
            Err(Error::Exhausted { earliest }) => {
                self.state().exhausted = Some(earliest);
                Err(exhausted_answer(self.wire(), earliest))
            }
            Err(_) => Err(match blocked {
                Blocked::Exhausted { earliest } => exhausted_answer(self.wire(), earliest),
                Blocked::Unservable { slot } => unservable_answer(self.wire(), slot),
            }),
        }
    }

    /// Is it time to look at the pool again? A pool shared with other hosts, or a chain whose
    /// relay is on a key (a login may be back): at most once per `POOL_CHECK` (a burst of
    /// parallel requests looks once; the look is one file read, or one Redis round trip).
    fn pool_check_due(&self, active: &Active) -> bool {
        let login_may_be_back = self.chain && !active.login;
        if !self.vault.is_shared() && !login_may_be_back {
            return false;
        }
        let mut last = self.pool_checked.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < POOL_CHECK) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// The pool moved away from `active` (another host found its key spent; a login came back
    /// while the chain was on a key): this request starts on the pool's account instead.
    fn follow_pool(&self, active: Active) -> Active {
        let now = Utc::now();
        let moved = match self.vault.peek() {
            crate::vault::state::Loaded::Ok(view) => {
                view.current_index != active.slot
                    || !view.eligible(active.slot, now)
                    || view.desired(self.vault.policy(), now) != Some(active.slot)
            }
            _ => false,
        };
        if !moved {
            return active;
        }
        let Ok(launch) = self.vault.prepare(None) else {
            // Spent or unreadable: the request goes as it was; its answer decides.
            return active;
        };
        let Some(next) = self.active_for(&launch) else {
            return active;
        };
        let mut st = self.state();
        if st.blocked.is_some() || st.active.slot != active.slot || next.slot == active.slot {
            return st.active.clone();
        }
        st.active = next.clone();
        drop(st);
        self.say(if next.login && !active.login {
            format!(
                "{} is usable again; switched to it from {}",
                next.who(),
                active.who()
            )
        } else {
            format!(
                "the shared pool moved on from {}; switched to {}",
                active.who(),
                next.who()
            )
        });
        next
    }

    /// The rotation step for a request whose answer on `failed` classified as `hit`.
    pub(super) fn rotate(&self, failed: &Active, hit: &Hit) -> Next {
        self.rotate_saying(failed, hit, what(failed, hit))
    }

    /// One send on `slot` ended as `outcome` (the run line's `usage`).
    pub(super) fn count(
        &self,
        slot: usize,
        outcome: super::meter::Outcome,
        found: &super::meter::Found,
        first: std::time::Duration,
        total: std::time::Duration,
    ) {
        let mut m = self.metered.lock().unwrap_or_else(|p| p.into_inner());
        super::meter::record(m.entry(slot).or_default(), outcome, found, first, total);
    }

    /// An answer on `active` announced its remaining quota: kept for the run line and state,
    /// and when it is at or under `quota_floor`, the slot is rested until the announced reset
    /// now, before the next request (the rotation step, with its one log line).
    pub(super) fn saw_remaining(
        &self,
        active: &Active,
        r: crate::vault::usage::Remaining,
        act: bool,
    ) {
        let low = super::meter::under_floor(&r, self.floor).filter(|_| act);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(active.slot, r);
        let Some((what, n, reset_at)) = low else {
            return;
        };
        if self.state().active.slot != active.slot {
            return;
        }
        let hit = Hit {
            class: crate::model::Class::Throttle,
            phrase: format!("remaining {what} reached {n}"),
            reset_at,
        };
        let said = format!("{} has {n} {what} left", active.who());
        let _ = self.rotate_saying(active, &hit, said);
    }

    fn rotate_saying(&self, failed: &Active, hit: &Hit, what: String) -> Next {
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
                Next::Answer(exhausted_answer(self.wire(), earliest))
            }
            Ok(launch) => match self.active_for(&launch) {
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
                    Next::Answer(unservable_answer(self.wire(), launch.slot))
                }
            },
        }
    }

    /// A 2xx on `slot`: clears the exhausted mark; records the success once per slot change.
    pub(super) fn succeeded(&self, slot: usize) {
        self.warned_upstream.store(false, Ordering::SeqCst);
        *self.stream_hit.lock().unwrap_or_else(|p| p.into_inner()) = None;
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

pub(super) enum Next {
    /// Re-send the request on this slot.
    Slot(Active),
    /// Give qwen this answer instead of the provider's.
    Answer(Answer),
    /// Give qwen the provider's answer as it was.
    PassThrough,
}

/// "account 1 (work) quota exhausted": the same wording as the run path's notices.
fn what(active: &Active, hit: &Hit) -> String {
    format!("{} {}", active.who(), hit.class.human())
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
