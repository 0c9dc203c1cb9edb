//! The shared vocabulary: what kind of failure a message reports ([`Class`]) and one detection
//! ([`Hit`]), named by detection, state, audit, vault and relay alike.
//!
//! This module imports nothing of ours.

use chrono::{DateTime, Utc};

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

impl Class {
    /// The precedence rank (the `detect` module header): higher wins when one message holds
    /// several classes.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Class::Quota => 3,
            Class::Auth => 2,
            Class::Throttle => 1,
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Class::Quota => "quota",
            Class::Throttle => "throttle",
            Class::Auth => "auth",
        }
    }
}

/// One detection: the class, the phrase that matched (a pattern, never user text), and the reset
/// time when the message gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub class: Class,
    pub phrase: String,
    pub reset_at: Option<DateTime<Utc>>,
}
