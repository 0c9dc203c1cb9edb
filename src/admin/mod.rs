//! `qwen --rotation-<command>`: the management commands a person (or a script) runs.
//!
//! Invariants:
//! - One command per invocation. Parsing is complete before anything runs: bad usage prints
//!   one line `qwen-rotation: <problem>; <fix>` on stderr and exits 2, having touched nothing.
//! - Every change goes through a `Vault` method (one locked transaction each); this file only
//!   parses, asks, and prints.
//! - No output path formats a secret: keys are read from stdin or a no-echo prompt, never from
//!   argv, and only `Secret` carries them to the vault.
//! - Read commands take `--json` (one JSON document on stdout); human output is an aligned
//!   table with relative times, coloured only on a terminal without NO_COLOR.
//!
//! Exit codes: 0 done · 1 failed (or `next`: no other account, `doctor`: problems remain) ·
//! 2 bad usage, including an account number or label that does not exist.
//!
//! Files, lowest first (a file imports only files above it, by full path):
//! `ui` (output helpers) → `parse` (argv to a `Command`), `findings` (what doctor reports) →
//! `help`, `history` (stats, log), `add` (add, setup) → `status` (status, watch and the
//! one-account commands) → `doctor_env`, `doctor_home` (the checks) → `doctor` → `dispatch`
//! (`main` and `run`: the one entry).
//! May import every layer below admin (vocabulary, config/cli/locate/detect, vault,
//! settings/relay/run); nothing imports admin but main.

mod add;
mod dispatch;
mod doctor;
mod doctor_env;
mod doctor_home;
mod findings;
mod help;
mod history;
mod parse;
mod status;
mod ui;

pub use dispatch::{main, run};
