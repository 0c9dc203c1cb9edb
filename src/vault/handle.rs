//! The vault handle and what it hands out: `Vault` (paths and config), the `Launch` one attempt
//! runs with, `Rotation`, `Overview`, `Switch`. Opening a vault touches no file.

use std::collections::BTreeMap;
use std::fs;

use chrono::{DateTime, Utc};

use crate::config::{Config, Paths};
use crate::error::{Error, Result};
use crate::model::{Kind, Secret};

use super::live::LiveFile;
use super::slots::{ApiKeySlot, SlotInfo, parse_slot_name};
use super::state::{Account, State};

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

pub struct Vault {
    pub paths: Paths,
    pub config: Config,
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
    pub fn open(paths: Paths, config: Config) -> Vault {
        Vault { paths, config }
    }

    /// Cheap check for the fast path: is there at least one slot file in `accounts/`?
    /// One `read_dir`, no file opened.
    pub fn has_accounts(paths: &Paths) -> bool {
        if let Some(pool) = &paths.pool {
            return !pool.slots.is_empty();
        }
        let Ok(entries) = fs::read_dir(&paths.accounts) else {
            return false;
        };
        entries
            .flatten()
            .any(|e| e.file_name().to_str().and_then(parse_slot_name).is_some())
    }

    /// Err(Usage) when the pool is declared in the environment: its accounts are changed there.
    pub fn files_pool(&self, what: &str) -> Result<()> {
        match &self.paths.pool {
            None => Ok(()),
            Some(_) => Err(Error::Usage(format!(
                "the accounts come from {} and {}N, so there is nothing to {what} here; change those variables instead (or unset them to use the slot files)",
                self.paths.profile.pool_vars.keys, self.paths.profile.pool_vars.key_prefix
            ))),
        }
    }
}

pub(super) fn api_launch(n: usize, account: &Account, api: ApiKeySlot) -> Launch {
    let env = api.env();
    let target = api.base_url.clone().map(|base_url| ApiTarget {
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
