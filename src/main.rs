//! `qwen`: the real Qwen Code CLI, with account rotation in front of it.
//!
//! Contents: `cli` splits argv into the CLI's arguments and ours; `run` is the watched run
//! (src/run/), `admin` the `--rotation-*` commands (src/admin/). docs/ARCHITECTURE.md has the
//! whole house.

use std::ffi::OsString;

use qwen_rotation::cli::{self, Invocation};
use qwen_rotation::{admin, error, profile, run};

fn main() {
    // First, before any secret is read: no other process of the user can read our memory or
    // environment, and no crash of ours can dump them (src/run/signals.rs).
    run::signals::keep_memory_private();
    // Which CLI we stand in front of: the name we were run as (any other name is qwen).
    profile::select(std::env::args_os().next().as_deref());
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    match cli::parse(&argv) {
        Ok(Invocation::Run { args, modifiers }) => run::main(args, modifiers),
        Ok(Invocation::Admin(args)) => admin::main(&args),
        Err(usage) => {
            error::say(usage);
            std::process::exit(error::exit::USAGE)
        }
    }
}
