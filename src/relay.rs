//! The loopback relay for API-key slots: qwen talks to us on 127.0.0.1, we talk to the provider.
//! (Interface stub: the implementation fills these in; signatures are the contract.)

use std::io;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::detect::Patterns;
use crate::vault::{Launch, Secret, Vault};

/// What the relay needs to run.
pub struct Setup {
    /// Its own handle on the vault (same files, same lock as every other process).
    pub vault: Vault,
    pub patterns: Arc<Patterns>,
    /// The API-key slot the run starts on.
    pub launch: Launch,
    /// Shows one notice line to the person (stderr headless; the pty notice interactive).
    pub notify: Box<dyn Fn(String) + Send + Sync>,
}

/// A running relay; stops when dropped.
pub struct Relay {
    /// `http://127.0.0.1:PORT/v1`: what qwen gets as `OPENAI_BASE_URL`.
    pub base_url: String,
    /// The per-run token qwen gets as its key; requests without it are refused.
    pub token: Secret,
}

impl Relay {
    pub fn start(setup: Setup) -> io::Result<Relay> {
        let _ = setup;
        Err(io::Error::other("the relay is not built yet"))
    }

    /// `Some(earliest)` once the relay has answered "every key is spent" to qwen.
    pub fn exhausted(&self) -> Option<Option<DateTime<Utc>>> {
        None
    }

    /// The slot the relay is using now.
    pub fn current_slot(&self) -> usize {
        0
    }
}
