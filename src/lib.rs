//! qwen-rotation: a drop-in `qwen` that rotates accounts when one runs out of quota.
//!
//! The binary (`src/main.rs`) reads like a contents page; each module answers one question.

pub mod admin;
pub mod cli;
pub mod config;
pub mod detect;
pub mod error;
pub mod fault;
pub mod files;
pub mod locate;
pub mod model;
pub mod profile;
pub mod relay;
pub mod run;
pub mod settings;
pub mod text;
pub mod vault;

// Old names of modules that moved into a folder (`crate::state` is `crate::vault::state`, …).
pub use run::terminal as pty;
pub use run::{pipes, signals};
pub use vault::{audit, env_pool, state};

/// Prints one warning line to stderr, prefixed so the user knows who spoke. Each distinct
/// warning is printed once per process: the shim warns once and gets out of the way.
pub fn warn(message: impl std::fmt::Display) {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static SAID: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));
    let line = message.to_string();
    let first = SAID
        .lock()
        .map(|mut said| said.insert(line.clone()))
        .unwrap_or(true);
    if first {
        error::say(format_args!("warning: {line}"));
    }
}
