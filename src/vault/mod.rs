//! The account vault: slots on disk, the rotation step, and the management operations.
//!
//! Layout (DESIGN.md, "Files under the qwen home"): OAuth slot N is
//! `accounts/oauth_creds_N.json` (the seeds' file, copied verbatim into the live
//! `oauth_creds.json` when installed); API-key slot N is `accounts/api_key_N.json`
//! (`{"api_key","base_url","model","env_key"}`, injected into the child's environment).
//! Slot numbers are shared by both kinds.
//!
//! Files, lowest first: usage → state → selection, audit, slots → env_pool, live, store → source, fleet →
//! redis_store → reconcile → handle → tx → install, rotate → notify → manage, prepare; a file imports only files before it (the
//! methods of `Vault` and `Tx` are spread over handle … prepare). `store` is the seam of the
//! pool's shared record (lock, state.yaml, history), `redis_store` its shared implementation
//! for a fleet (`fleet` maps the pool's accounts to this host's slots); `source` says where the slots come from. The transaction invariants
//! are in `tx.rs`. May import the ground floor (text, files, model, error, fault), config and
//! detect; nothing above.

pub mod audit;
pub mod env_pool;
mod fleet;
mod handle;
mod install;
mod live;
mod manage;
mod notify;
mod prepare;
mod reconcile;
mod redis_store;
mod rotate;
mod selection;
mod slots;
mod source;
pub mod state;
mod store;
mod tx;
pub mod usage;

pub use handle::{ApiTarget, Launch, Overview, Rotation, Switch, Vault};
pub use live::{LiveFile, cli_lock_is_stale, encrypted_storage, owner_of};
pub use redis_store::RedisStore;
pub use slots::{
    ApiKeySlot, Scan, SlotInfo, check_api_key, check_oauth, parse_slot_name, read_slot, scan,
    slot_path, valid_api_key, valid_env_name,
};
pub use source::SlotSource;
pub use store::{FileStore, FleetCheck, RotationLock, Scope, Store, StoreFiles};
