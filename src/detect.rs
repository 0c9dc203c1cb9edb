//! Quota detection: normalise qwen's output and match it against phrase patterns. Pure, no I/O.
//! (Interface stub: the implementation fills these in; signatures are the contract.)

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::PatternConfig;

/// What kind of failure a message reports; each class has its own action (DESIGN.md, "Detection").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The account's quota is spent: rotate, cool down until the reset.
    Quota,
    /// Rate limited after qwen's own retries: rotate, short cooldown.
    Throttle,
    /// Credentials rejected: mark needs_login, try the next slot once.
    Auth,
}

/// One detection: the class, the phrase that matched (a pattern, never user text), and the reset
/// time when the message gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub class: Class,
    pub phrase: String,
    pub reset_at: Option<DateTime<Utc>>,
}

/// Where a stream's errors can stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// A stream that carries only errors and diagnostics (stderr): any match counts.
    Plain,
    /// The interactive screen: only a match inside qwen's `✕` error block counts.
    Screen,
}

/// The compiled pattern set (defaults, extended or replaced by `rotation.yaml`).
#[derive(Debug)]
pub struct Patterns {}

impl Patterns {
    pub fn defaults() -> Arc<Patterns> {
        todo!()
    }
    /// Err names the class, the entry number and the regex error.
    pub fn from_config(_cfg: &PatternConfig) -> Result<Arc<Patterns>, String> {
        todo!()
    }
    /// Classifies one complete message (already normalised or not).
    pub fn classify(&self, _text: &str) -> Option<Hit> {
        todo!()
    }
}

/// Streaming detector: feed raw bytes as they arrive; constant memory.
pub struct Detector {}

impl Detector {
    pub fn new(_patterns: Arc<Patterns>, _anchor: Anchor) -> Detector {
        todo!()
    }
    /// Returns the hit the first time one is seen (and `None` on every later call).
    pub fn feed(&mut self, _bytes: &[u8]) -> Option<Hit> {
        todo!()
    }
    pub fn hit(&self) -> Option<&Hit> {
        todo!()
    }
}

/// `--output-format json` / `stream-json`: looks only at the structure qwen uses for errors (the
/// result element), never at the text of a successful answer.
pub fn classify_json_output(_stdout: &[u8], _patterns: &Patterns) -> Option<Hit> {
    todo!()
}
