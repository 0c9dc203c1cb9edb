//! The vault handle and what it hands out: `Vault` (paths, config, where the slots come from
//! and the store of the pool's state), the `Launch` one attempt runs with, `Rotation`,
//! `Overview`, `Switch`. Opening a vault touches no file.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{Config, Paths};
use crate::error::{Error, Result};
use crate::model::{Kind, Secret};

use super::audit::{self, Event};
use super::env_pool::Pool;
use super::live::LiveFile;
use super::redis_store::RedisStore;
use super::slots::{ApiKeySlot, Scan, SlotInfo};
use super::source::SlotSource;
use super::state::{Account, Loaded, State};
use super::store::{FileStore, FleetCheck, Scope, Store, StoreFiles};

/// What one attempt runs with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// 1-based slot number.
    pub slot: usize,
    /// Safe to print (`Account::shown_label`): it is only ever shown, in notices.
    pub label: Option<String>,
    pub kind: Kind,
    /// API-key slots: the variables to inject into the child (key, base URL, model).
    /// Empty for OAuth slots (their credentials are in the live file).
    pub env: Vec<(String, Secret)>,
    /// API-key slots: the real base URL and key, for the loopback relay. `None` for OAuth
    /// slots and for API-key slots stored without a base URL (qwen then uses its settings).
    pub api: Option<ApiTarget>,
}

#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub base_url: String,
    pub key: Secret,
    pub model: Option<String>,
    /// The variable qwen reads the key from (`OPENAI_API_KEY` unless settings name another).
    pub env_key: String,
}

/// The result of the rotation step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// This call moved the live account.
    Switched { from: usize, to: usize },
    /// Another process had already rotated away from the failed slot; use `to`.
    AlreadyRotated { to: usize },
    /// No eligible slot is left.
    Exhausted { earliest: Option<DateTime<Utc>> },
}

/// Cheap to clone: the relay and the interactive hot-swap thread hold their own copy.
#[derive(Clone)]
pub struct Vault {
    /// With an environment pool, state, log, lock and `private` are where the pool keeps them.
    pub paths: Paths,
    pub config: Config,
    pub(super) source: SlotSource,
    pub(super) store: Arc<dyn Store>,
}

/// A read-only picture of the vault for `status`, `stats` and `doctor` (takes no lock).
#[derive(Debug, Clone)]
pub struct Overview {
    /// The state as a locked operation would see it (reconciled in memory, not written).
    pub state: State,
    /// state.yaml could not be read: why (the view was rebuilt from `accounts/`).
    pub state_problem: Option<String>,
    pub slots: BTreeMap<usize, SlotInfo>,
    pub live: LiveFile,
    /// The slot the live file belongs to, when one does.
    pub live_owner: Option<usize>,
    pub now: DateTime<Utc>,
}

/// What a management command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub from: usize,
    pub to: usize,
}

impl Vault {
    /// The vault of the slot files in `paths`.
    pub fn open(paths: Paths, config: Config) -> Vault {
        Vault::with_source(paths, config, SlotSource::Files)
    }

    /// The vault of the pool declared in the environment, else of the slot files. Err: a
    /// malformed declaration (bad usage).
    pub fn from_env(paths: Paths, config: Config) -> std::result::Result<Vault, String> {
        let source = SlotSource::from_env(&paths.home)?;
        Ok(Vault::with_source(paths, config, source))
    }

    /// The vault of `source`'s slots, its state kept where that source says.
    pub fn with_source(paths: Paths, config: Config, source: SlotSource) -> Vault {
        let paths = source.place(paths);
        let store: Arc<dyn Store> = match config.pool.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                Arc::new(RedisStore::new(url, &config, &paths, source.clone()))
            }
            _ => Arc::new(FileStore::new(&paths)),
        };
        Vault {
            paths,
            config,
            source,
            store,
        }
    }

    /// Cheap check for the fast path: is there at least one slot file in `accounts/`?
    /// One `read_dir`, no file opened.
    pub fn has_accounts(paths: &Paths) -> bool {
        SlotSource::Files.has_accounts(paths)
    }

    /// The environment's pool, when the slots come from it.
    pub fn env_pool(&self) -> Option<&Pool> {
        self.source.env_pool()
    }

    /// The slot numbers and their kinds.
    pub fn scan_slots(&self) -> io::Result<Scan> {
        self.source.scan(&self.paths)
    }

    /// Every slot, read.
    pub fn inspect_all(&self) -> Result<BTreeMap<usize, SlotInfo>> {
        self.source.inspect_all(&self.paths)
    }

    /// The state as it is now, read without the lock.
    pub fn peek(&self) -> Loaded {
        self.store.peek()
    }

    /// Can state.yaml be opened and read? (`NotFound` when there is none yet.)
    pub fn state_readable(&self) -> io::Result<()> {
        self.store.readable()
    }

    /// The history: both generations of the log (`Scope::All`) or the current one.
    pub fn history(&self, scope: Scope) -> io::Result<audit::Read> {
        self.store.history(scope)
    }

    /// Appends a run's line to the history (outside a transaction; warns on failure).
    pub fn append_run(&self, event: Event) {
        self.store.append(event, self.config.lock_timeout);
    }

    /// Who holds the pool lock now.
    pub fn lock_holders(&self) -> Vec<String> {
        self.store.holders()
    }

    /// The files the store keeps.
    pub fn store_files(&self) -> StoreFiles {
        self.store.files()
    }

    /// Where the pool is kept (`files in ~/.qwen`, `redis://host:6379/0 (default)`).
    pub fn pool_shown(&self) -> String {
        self.store.shown()
    }

    /// How this pool picks accounts (rotation.yaml's strategy and order, else the profile's).
    pub fn policy(&self) -> crate::model::Policy {
        self.config.policy(self.paths.profile)
    }

    /// The pool's order, moving round-robin: what `--rotation-next` and taking an account out
    /// of use follow.
    pub(super) fn policy_round_robin(&self) -> crate::model::Policy {
        crate::model::Policy {
            strategy: crate::model::Strategy::RoundRobin,
            ..self.policy()
        }
    }

    /// Is the pool shared with other hosts, and reachable (the relay then follows it)?
    pub fn is_shared(&self) -> bool {
        self.store.shared()
    }

    /// A shared pool's health for doctor (`None`: the pool is in files).
    pub fn fleet(&self) -> Option<FleetCheck> {
        self.store.fleet()
    }

    /// Err(Usage) when the pool is declared in the environment: its accounts are changed there.
    pub fn files_pool(&self, what: &str) -> Result<()> {
        match self.env_pool() {
            None => Ok(()),
            Some(_) => Err(Error::Usage(format!(
                "the accounts come from {} and {}N, so there is nothing to {what} here; change those variables instead (or unset them to use the slot files)",
                self.paths.profile.pool_vars.keys, self.paths.profile.pool_vars.key_prefix
            ))),
        }
    }
}

/// The launch of API-key slot `n`. A key stored without a base URL is served by the relay at
/// `default_base_url` (the profile's provider), if the profile names one.
pub(super) fn api_launch(
    n: usize,
    account: &Account,
    api: ApiKeySlot,
    default_base_url: Option<&str>,
) -> Launch {
    let env = api.env();
    let base_url = api
        .base_url
        .clone()
        .or_else(|| default_base_url.map(str::to_string));
    let target = base_url.map(|base_url| ApiTarget {
        base_url,
        key: api.key.clone(),
        model: api.model.clone(),
        env_key: api.env_key.clone(),
    });
    Launch {
        slot: n,
        label: account.shown_label(),
        kind: Kind::ApiKey,
        env,
        api: target,
    }
}
