//! The run path: find the real qwen, pick the account, run, detect, rotate, run again.
//!
//! Invariant: the shim never stands in the user's way. With no accounts, with
//! `QWEN_ROTATION=off`, or when its own machinery fails (a warning says so, once), the real
//! qwen is exec'd in place of the shim: same argv, env, cwd, stdin and status, nothing between.
//!
//! Files, lowest first (each imports only files earlier in this list): `signals` (the child
//! tree, exit with qwen's status) → `terminal/` (interactive relay on a pty), `stdin` (replayable
//! input), `streams` (qwen's stdout/stderr relayed and held) → `pipes` (one headless attempt) →
//! `exec` (exec qwen, or fail) → `record` (the `run` log line), `attempt` (relay and environment
//! of an attempt) → `headless`, `interactive` (the attempt loops) → `start` (`main`).
//! May import everything below it (vocabulary, config/cli/locate/detect, vault, settings, relay).

mod attempt;
mod exec;
mod headless;
mod interactive;
pub mod pipes;
mod record;
pub mod signals;
mod start;
pub mod stdin;
pub mod streams;
pub mod terminal;

pub use exec::fail;
pub use start::main;
