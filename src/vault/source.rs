//! Where the slots come from: the files under `accounts/`, or the pool declared in the
//! environment (`SlotSource`, held by the `Vault`). Sits above `slots` and `env_pool`, so those
//! two never import each other.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::model::Kind;

use super::env_pool::{self, EnvSlot, Pool, StateHome};
use super::slots::{Scan, SlotInfo, inspect_slot, parse_slot_name, scan};

/// The slots of a pool: the slot files, or the keys declared in the environment.
#[derive(Debug, Clone, Default)]
pub enum SlotSource {
    /// `accounts/oauth_creds_N.json`, `accounts/api_key_N.json`.
    #[default]
    Files,
    /// `QWEN_ROTATION_KEYS`… (read once, at start).
    Env(Arc<Pool>),
}

impl SlotSource {
    /// The pool declared in the environment, else the slot files. Err: a malformed declaration.
    pub fn from_env(home: &Path) -> std::result::Result<SlotSource, String> {
        Ok(match env_pool::from_env(home)? {
            Some(pool) => SlotSource::Env(Arc::new(pool)),
            None => SlotSource::Files,
        })
    }

    /// The environment's pool, when the slots come from it.
    pub fn env_pool(&self) -> Option<&Pool> {
        match self {
            SlotSource::Files => None,
            SlotSource::Env(pool) => Some(pool),
        }
    }

    /// Cheap check for the fast path: is there at least one slot? For the files, one
    /// `read_dir` of `accounts/`, no file opened.
    pub fn has_accounts(&self, paths: &Paths) -> bool {
        if let SlotSource::Env(pool) = self {
            return !pool.slots.is_empty();
        }
        let Ok(entries) = fs::read_dir(&paths.accounts) else {
            return false;
        };
        entries
            .flatten()
            .any(|e| e.file_name().to_str().and_then(parse_slot_name).is_some())
    }

    /// `paths` with state, log and lock (and our settings override) where this pool keeps them.
    pub(super) fn place(&self, mut paths: Paths) -> Paths {
        let dir = match self.env_pool().map(|p| &p.state) {
            Some(StateHome::Dir(d) | StateHome::Memory(d)) => d.clone(),
            Some(StateHome::Home) | None => return paths,
        };
        paths.state = dir.join("state.yaml");
        paths.log = dir.join("rotation.log");
        paths.lock = dir.join("rotation.lock");
        paths.private = dir.join("rotation-settings");
        paths
    }

    /// The slot numbers and their kinds.
    pub(super) fn scan(&self, paths: &Paths) -> io::Result<Scan> {
        match self {
            SlotSource::Env(pool) => Ok(pool
                .slots
                .keys()
                .map(|n| (*n, vec![Kind::ApiKey]))
                .collect()),
            SlotSource::Files => scan(&paths.accounts),
        }
    }

    /// Reads every slot.
    pub(super) fn inspect_all(&self, paths: &Paths) -> Result<BTreeMap<usize, SlotInfo>> {
        if let SlotSource::Env(pool) = self {
            return Ok(pool
                .slots
                .iter()
                .map(|(n, slot)| (*n, inspect_env_slot(slot)))
                .collect());
        }
        let scanned = scan(&paths.accounts).map_err(|e| Error::io("read", &paths.accounts, e))?;
        Ok(scanned
            .iter()
            .map(|(n, kinds)| (*n, inspect_slot(paths, *n, kinds)))
            .collect())
    }
}

/// A slot of the environment's pool, as `inspect_slot` describes a file. Its `digest` is the
/// slot's identity (variable and key fingerprint), never the key.
pub(super) fn inspect_env_slot(slot: &EnvSlot) -> SlotInfo {
    SlotInfo {
        kind: Some(Kind::ApiKey),
        path: PathBuf::from(format!("${}", slot.source)),
        problem: None,
        digest: Some(slot.identity()),
        refresh: None,
        api: Some(slot.api.clone()),
        mode: 0o600,
        foreign_owner: false,
    }
}

/// The variable an environment slot's key came from (`None` for a slot file).
pub(super) fn env_source(info: &SlotInfo) -> Option<&str> {
    info.path.to_str()?.strip_prefix('$')
}
