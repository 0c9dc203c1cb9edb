//! The run path's entry: find the real qwen, open the vault, pick the account, then hand the run
//! to the interactive or the headless loop.
//!
//! Invariant: the shim never stands in the user's way; any failure of its own machinery ends in
//! an exec of the real qwen, untouched.

use std::ffi::OsString;
use std::io::{self, IsTerminal};

use super::attempt::{attempt_env, start_relay};
use super::exec::{exec, fail, notice, within};
use super::headless::headless;
use super::interactive::interactive_session;
use crate::cli::Modifiers;
use crate::config::{Config, OnExhausted, Paths, PoolEnv};
use crate::detect::Patterns;
use crate::error::Error;
use crate::error::warn;
use crate::locate;
use crate::relay;
use crate::text::human_duration;
use crate::vault::env_pool;
use crate::vault::{Launch, SlotSource, Vault};

/// Runs the real qwen with `args`; never returns.
pub fn main(args: Vec<OsString>, modifiers: Modifiers) -> ! {
    let real = match locate::real_qwen() {
        Ok(found) => found.path,
        Err(e) => fail(&e),
    };
    let name = crate::profile::active().name;
    let off = crate::profile::active().pool_vars.off;
    if std::env::var_os(off).is_some_and(|v| v == "off" || v == "0") {
        exec(&real, &args, &[]);
    }
    let paths = Paths::from_env();
    // Read before `pool_source` removes the pool's variables from our environment.
    let pool_env = PoolEnv::capture();
    let source = match pool_source(&paths) {
        Ok(source) => source,
        Err(problem) => {
            warn(format!("{problem}; running {name} without rotation"));
            exec(&real, &args, &[])
        }
    };
    if !source.has_accounts(&paths) {
        // Accounts that exist but cannot be read (another user's home, a chmod) would silently
        // turn rotation off: say so once. Missing (no accounts configured) stays silent, and is
        // told by one stat, not a second listing.
        if let Err(e) =
            std::fs::metadata(&paths.accounts).and_then(|_| std::fs::read_dir(&paths.accounts))
            && e.kind() != io::ErrorKind::NotFound
        {
            warn(format!(
                "{}; running {name} without rotation",
                Error::io("read", &paths.accounts, e)
            ));
        }
        if modifiers.account.is_some() {
            warn(format!(
                "--rotation-account ignored: no accounts are configured (add one with {name} --rotation-add)"
            ));
        }
        exec(&real, &args, &[]);
    }

    let (config, problem) = Config::load(&paths.config);
    if let Some(problem) = problem {
        warn(problem);
    }
    let config = config.with_pool_env(&pool_env);
    let patterns = Patterns::from_config(&config.patterns).unwrap_or_else(|problem| {
        warn(format!(
            "{}: {problem}; using the built-in patterns",
            paths.config.display()
        ));
        Patterns::defaults()
    });
    let vault = Vault::with_source(paths, config, source);
    let launch = match prepare(&vault, modifiers.account.as_deref()) {
        Some(launch) => launch,
        None => exec(&real, &args, &[]),
    };

    if relay::key_withheld(&vault.paths, &launch, &args).is_some() {
        // qwen's settings would send the key elsewhere. Its failure without the key is not the
        // account's: nothing is rotated or marked (attempt_env leaves the key out, and says so).
        let env = attempt_env(&vault, &launch, None, &args);
        exec(&real, &args, &env);
    }
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    if interactive {
        interactive_session(&vault, &real, &args, patterns, launch);
    }
    let relay = start_relay(
        &vault,
        &patterns,
        &launch,
        &args,
        Box::new(|line| notice(&line)),
    );
    headless(
        &vault,
        &real,
        &args,
        &modifiers,
        patterns,
        launch,
        relay.as_ref(),
    )
}

/// Where this run's slots come from: a pool declared in the environment (its slots and its
/// state place), else the slot files. The key variables leave our environment first, so
/// neither qwen nor anything it starts inherits them (the relay, or the attempt's own
/// variables, carry the key).
fn pool_source(paths: &Paths) -> Result<SlotSource, String> {
    let declared = SlotSource::from_env(&paths.home);
    // SAFETY: the run path has started no thread yet (the relay and the signal thread come
    // later), so nothing reads the environment while it changes.
    unsafe { env_pool::scrub() };
    declared
}

/// Picks the account for the first attempt. `None` means "run qwen untouched" (after a warning);
/// every account being spent ends the run with exit 75 unless `rotation.yaml` says to wait.
fn prepare(vault: &Vault, pinned: Option<&str>) -> Option<Launch> {
    match vault.prepare(pinned) {
        Ok(launch) => Some(launch),
        Err(Error::Exhausted { earliest }) => {
            let wait = earliest
                .filter(|_| vault.config.on_exhausted == OnExhausted::Wait)
                .and_then(|t| within(t, vault.config.max_wait));
            match wait {
                Some(pause) => {
                    notice(&format!(
                        "all accounts exhausted; waiting {} for the first one to return",
                        human_duration(chrono::TimeDelta::from_std(pause).unwrap_or_default())
                    ));
                    std::thread::sleep(pause);
                    prepare(vault, pinned)
                }
                None => fail(&Error::Exhausted { earliest }),
            }
        }
        Err(e @ Error::NoSuchSlot(_)) => fail(&Error::Usage(e.to_string())),
        Err(e) => {
            warn(format!(
                "{e}; running {} without rotation",
                vault.paths.profile.name
            ));
            None
        }
    }
}
