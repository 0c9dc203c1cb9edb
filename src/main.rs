//! `qwen`: the real Qwen Code CLI, with account rotation in front of it.

use std::ffi::OsString;

use qwen_rotation::cli::{self, Invocation};
use qwen_rotation::config::Paths;
use qwen_rotation::{admin, run};

fn main() {
    // First, before any secret is read: no other process of the user can read our memory or
    // environment, and no crash of ours can dump them (signals.rs).
    qwen_rotation::run::signals::keep_memory_private();
    // Which CLI we stand in front of: the name we were run as (any other name is qwen).
    qwen_rotation::profile::select(std::env::args_os().next().as_deref());
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    match cli::parse(&argv) {
        Ok(Invocation::Run { args, modifiers }) => run::main(args, modifiers),
        Ok(Invocation::Admin(args)) => {
            // Management output goes to people and pipes: `| head` ends us quietly, as it
            // would any Unix tool (the run path keeps EPIPE instead; see pipes.rs).
            // SAFETY: SIG_DFL installs no Rust handler.
            unsafe {
                let _ = nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGPIPE,
                    nix::sys::signal::SigHandler::SigDfl,
                );
            }
            let code = qwen_rotation::error::guarded(|| Ok(admin::run(&args, &Paths::from_env())))
                .unwrap_or_else(|bug| {
                    qwen_rotation::error::say(bug);
                    qwen_rotation::error::exit::FAILURE
                });
            std::process::exit(code)
        }
        Err(usage) => {
            qwen_rotation::error::say(usage);
            std::process::exit(qwen_rotation::error::exit::USAGE)
        }
    }
}
