//! Where the slots come from: the files under `accounts/`, or the pool declared in the
//! environment. Sits above `slots` and `env_pool`, so those two never import each other.

use std::collections::BTreeMap;
use std::io::{self};
use std::path::PathBuf;

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::model::Kind;

use super::slots::{Scan, SlotInfo, inspect_slot, scan};

/// The slots of the pool: the environment's when one is declared, else `accounts/`.
pub fn scan_slots(paths: &Paths) -> io::Result<Scan> {
    match &paths.pool {
        Some(pool) => Ok(pool
            .slots
            .keys()
            .map(|n| (*n, vec![Kind::ApiKey]))
            .collect()),
        None => scan(&paths.accounts),
    }
}

/// A slot of the environment's pool, as `inspect_slot` describes a file. Its `digest` is the
/// slot's identity (variable and key fingerprint), never the key.
pub(super) fn inspect_env_slot(slot: &super::env_pool::EnvSlot) -> SlotInfo {
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

/// Reads every slot of the pool (the environment's, or the files in `accounts/`).
pub fn inspect_all(paths: &Paths) -> Result<BTreeMap<usize, SlotInfo>> {
    if let Some(pool) = &paths.pool {
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
