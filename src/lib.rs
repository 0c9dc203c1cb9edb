//! qwen-rotation: a drop-in `qwen` that rotates accounts when one runs out of quota.
//!
//! The binary (`src/main.rs`) reads like a contents page; each module answers one question.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod detect;
pub mod error;
pub mod fault;
pub mod locate;
pub mod pipes;
pub mod pty;
pub mod relay;
pub mod run;
pub mod settings;
pub mod signals;
pub mod state;
pub mod vault;

/// Prints one warning line to stderr, prefixed so the user knows who spoke.
pub fn warn(message: impl std::fmt::Display) {
    eprintln!("qwen-rotation: warning: {message}");
}
