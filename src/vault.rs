//! The account vault: slots on disk, the rotation step, and the management operations.
//! (Interface stub: the implementation fills these in; signatures are the contract.)

use std::fmt;

use chrono::{DateTime, Utc};

use crate::config::{Config, Paths};
use crate::detect::Hit;
use crate::error::Result;

/// A credential value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OAuth,
    ApiKey,
}

/// What one attempt runs with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// 1-based slot number.
    pub slot: usize,
    pub label: Option<String>,
    pub kind: Kind,
    /// API-key slots: the variables to inject into the child (key, base URL, model).
    /// Empty for OAuth slots (their credentials are in the live file).
    pub env: Vec<(String, Secret)>,
    /// API-key slots: the real base URL and key, for the loopback relay.
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

impl Vault {
    pub fn open(paths: Paths, config: Config) -> Vault {
        Vault { paths, config }
    }
    /// Cheap check for the fast path: is there at least one slot file in `accounts/`?
    pub fn has_accounts(paths: &Paths) -> bool {
        let _ = paths;
        todo!()
    }
    /// Before an attempt: clear expired cooldowns, migrate a symlinked live file, make sure the
    /// current slot is eligible (rotating away from one that is cooling down) and installed.
    /// `pinned` = `--rotation-account`. Err(Exhausted) when nothing is eligible.
    pub fn prepare(&self, pinned: Option<&str>) -> Result<Launch> {
        let _ = pinned;
        todo!()
    }
    /// The rotation step (DESIGN.md), compare-and-swap on `failed`.
    pub fn report(&self, failed: usize, hit: &Hit) -> Result<Rotation> {
        let _ = (failed, hit);
        todo!()
    }
    /// An attempt on `slot` succeeded: mark it healthy if it was not (writes only on change).
    pub fn record_success(&self, slot: usize) -> Result<()> {
        let _ = slot;
        todo!()
    }
    /// Slots that could take a run now.
    pub fn eligible_count(&self) -> usize {
        todo!()
    }
}
