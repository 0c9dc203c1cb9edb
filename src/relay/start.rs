//! Starting and stopping the relay: [`Relay::start`] binds the port and spawns the accept
//! thread; the handle tells the run what qwen's environment needs and what the relay did.
//! Invariant: dropping the handle stops the relay.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::detect::Patterns;
use crate::model::{Kind, Secret};
use crate::vault::{Launch, Vault};

use super::meter::{Metered, Seen};
use super::proxy::Routes;
use super::server::RUN_TOKEN_HEADER;
use super::server::accept_loop;
use super::shared::{Active, Conns, Served, Shared, State};

/// What the relay needs to run.
pub struct Setup {
    /// Its own handle on the vault (same files, same lock as every other process).
    pub vault: Vault,
    pub patterns: Arc<Patterns>,
    /// The API-key slot the run starts on.
    pub launch: Launch,
    /// Shows one notice line to the person (stderr headless; the pty notice interactive).
    pub notify: Box<dyn Fn(String) + Send + Sync>,
    /// Where a subscription login's requests go ([`login_base`]); `None`: the relay serves API
    /// keys only.
    pub login_base: Option<String>,
}

/// This process runs inside a login run of ours (a tool of claude started the CLI again): the
/// inherited header variable already carries a run's token, and the inherited base URL is that
/// run's relay, which serves this run's requests on the same pool. No second relay then: the CLI
/// keeps the inherited variables.
pub fn inside_login_run(profile: &crate::profile::Profile) -> bool {
    profile
        .api
        .relay_login_headers
        .and_then(|var| std::env::var(var).ok())
        .is_some_and(|headers| carries_run_token(&headers))
}

fn carries_run_token(headers: &str) -> bool {
    headers.lines().any(|line| {
        line.split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case(RUN_TOKEN_HEADER))
    })
}

/// Where the CLI would send a login's requests, when the profile's relay serves logins: the
/// person's own base URL (a gateway), else the provider's.
pub fn login_base(profile: &crate::profile::Profile) -> Option<String> {
    let api = &profile.api;
    api.relay_login_headers?;
    std::env::var(api.base_url_var)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| api.default_base_url.map(str::to_string))
}

/// A running relay; stops when dropped.
pub struct Relay {
    /// `http://127.0.0.1:PORT/v1`: what qwen gets as `OPENAI_BASE_URL` (the profile's base-URL
    /// variable; gemini gets `http://127.0.0.1:PORT` as `GOOGLE_GEMINI_BASE_URL`).
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
            login_base,
        } = setup;
        let active = Active::from_launch(&launch, login_base.as_deref()).ok_or_else(|| {
            io::Error::other(format!(
                "account {} is not an API-key account with a base URL, which the relay needs",
                launch.slot
            ))
        })?;
        let chain = vault.policy().order == crate::model::Order::LoginsFirst
            && login_base.is_some()
            && vault.scan_slots().is_ok_and(|s| {
                let kinds: Vec<Kind> = s.values().flatten().copied().collect();
                kinds.contains(&Kind::OAuth) && kinds.contains(&Kind::ApiKey)
            });
        let token = Secret::new(random_hex(32)?);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        // Tries per request: one per slot on disk (the vault's report marks each spent slot,
        // so the loop ends anyway; this bound only guards against a slot coming back at once).
        let slots = vault.scan_slots().map(|s| s.len()).unwrap_or(0);
        let floor = vault.config.quota_floor;
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
            metered: Arc::new(Mutex::new(BTreeMap::new())),
            seen: Arc::new(Mutex::new(BTreeMap::new())),
            floor,
            stream_hit: Mutex::new(None),
            on_exhausted: Mutex::new(None),
            pool_checked: Mutex::new(None),
            login_base,
            chain,
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("qwen-relay-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener))?;
        Ok(Relay {
            base_url: format!("http://{addr}{}", shared.vault.paths.profile.api.relay_path),
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

    /// What the relay measured per slot so far (requests by class, tokens, latency).
    pub fn metered(&self) -> Metered {
        Arc::clone(&self.shared.metered)
    }

    /// The last remaining quota the provider announced per slot.
    pub fn remaining(&self) -> Seen {
        Arc::clone(&self.shared.seen)
    }

    /// The slot the relay is using now.
    pub fn current_slot(&self) -> usize {
        self.shared.state().active.slot
    }

    /// The slot an error qwen shows came from: the one whose stream carried the last error
    /// event the relay classified (already marked and left, so reporting it again finds it
    /// rotated, never blames the next key), else the current slot.
    pub fn failed_slot(&self) -> usize {
        let hit = *self
            .shared
            .stream_hit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        hit.unwrap_or_else(|| self.current_slot())
    }

    /// The variables an attempt on `launch` adds to the inherited environment when qwen talks
    /// through the relay; None when the relay cannot serve `launch` (run it with its own env).
    ///
    /// The run's token goes under the slot's key variable (or the profile's
    /// `relay_token_var`: claude's `ANTHROPIC_AUTH_TOKEN`) and the relay's URL under the
    /// profile's base-URL variable (`OPENAI_BASE_URL`; the real key and URL stay here), the
    /// slot's model under its first model variable (`OPENAI_MODEL`). A login (claude) keeps
    /// its own credentials: the token goes as the `x-rotation-token` header in the profile's
    /// `relay_login_headers` variable.
    /// `NO_PROXY`/`no_proxy` gain `127.0.0.1`: qwen 0.24 sends every request through
    /// `HTTPS_PROXY` (undici's EnvHttpProxyAgent, for http URLs too) unless NO_PROXY exempts
    /// the host, and a proxy cannot reach our loopback port.
    pub fn child_env(&self, launch: &Launch) -> Option<Vec<(OsString, OsString)>> {
        let vars = &self.shared.vault.paths.profile.api;
        let token = match launch.kind {
            // A login: the CLI keeps using (and refreshing) its own, and carries the run's
            // token as an extra header, after any of the person's own.
            Kind::OAuth => {
                let var = vars.relay_login_headers?;
                self.shared.active_for(launch)?;
                let ours = format!("{RUN_TOKEN_HEADER}: {}", self.token.expose());
                let value = match std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
                    Some(own) => format!("{}\n{ours}", own.trim_end()),
                    None => ours,
                };
                (OsString::from(var), OsString::from(value))
            }
            Kind::ApiKey => {
                let api = launch.api.as_ref()?;
                let var = vars
                    .relay_token_var
                    .map_or_else(|| OsString::from(&api.env_key), OsString::from);
                (var, OsString::from(self.token.expose()))
            }
        };
        let mut env = vec![
            token,
            (
                OsString::from(vars.base_url_var),
                OsString::from(&self.base_url),
            ),
        ];
        if let Some(model) = launch.api.as_ref().and_then(|a| a.model.as_ref()) {
            env.push((OsString::from(vars.model_vars[0]), OsString::from(model)));
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
        let Some(active) = self.shared.active_for(launch) else {
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

/// Sets `env` on `cmd`. When it carries the relay's token (under the profile's
/// `relay_token_var`, or in its `relay_login_headers` for a login), the profile's `relay_unset`
/// variables (a key of the person's own, which the CLI would send beside the token or prefer to
/// it) are removed from the child's environment; for a login also `relay_token_var`, which the
/// CLI would prefer to its login.
pub fn apply_env(cmd: &mut std::process::Command, env: &[(OsString, OsString)]) {
    let api = &crate::profile::active().api;
    let has = |var: Option<&str>| var.is_some_and(|var| env.iter().any(|(k, _)| *k == var));
    let login = has(api.relay_login_headers);
    if login || has(api.relay_token_var) {
        for var in api.relay_unset {
            cmd.env_remove(var);
        }
    }
    if login && let Some(var) = api.relay_token_var {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
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
    fn a_run_token_line_among_custom_headers_is_found_by_name() {
        assert!(carries_run_token("x-own: yes\nX-Rotation-Token: abc"));
        assert!(carries_run_token("x-rotation-token:abc"));
        assert!(!carries_run_token("x-own: x-rotation-token"));
        assert!(!carries_run_token(""));
    }

    #[test]
    fn random_tokens_are_64_hex_digits_and_differ() {
        let a = random_hex(32).unwrap();
        let b = random_hex(32).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
