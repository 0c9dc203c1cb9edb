//! What an attempt runs with: the request relay when it can be in the path, and the variables
//! the attempt adds to the inherited environment.
//!
//! Invariant: the real key enters qwen's environment only when no relay carries it and qwen will
//! send it to the slot's own base URL.

use std::ffi::OsString;
use std::sync::Arc;

use crate::detect::Patterns;
use crate::error::warn;
use crate::model::Kind;
use crate::relay::{self, Relay};
use crate::settings;
use crate::vault::{Launch, Vault};

/// Puts the loopback relay in qwen's request path when the run starts on an API-key slot (or a
/// login, for a CLI whose login requests the relay serves: claude) and nothing forbids it;
/// otherwise output scanning alone watches the run (and says why, once).
pub(super) fn start_relay(
    vault: &Vault,
    patterns: &Arc<Patterns>,
    launch: &Launch,
    args: &[OsString],
    notify: Box<dyn Fn(String) + Send + Sync>,
) -> Option<Relay> {
    let servable = match launch.kind {
        Kind::ApiKey => true,
        // Inside a login run of ours, that run's relay already serves this one.
        Kind::OAuth => {
            vault.paths.profile.api.relay_login_headers.is_some()
                && !relay::inside_login_run(vault.paths.profile)
        }
    };
    if !servable || !vault.config.relay {
        return None;
    }
    let model = launch.api.as_ref().and_then(|a| a.model.as_deref());
    if let Err(why) = relay::relay_possible_for(&vault.paths, model, args) {
        warn(format!(
            "{why}; watching {}'s output instead of relaying its requests",
            vault.paths.profile.name
        ));
        return None;
    }
    let setup = relay::Setup {
        vault: vault.clone(),
        patterns: Arc::clone(patterns),
        launch: launch.clone(),
        notify,
        login_base: relay::login_base(vault.paths.profile),
    };
    match Relay::start(setup) {
        Ok(relay) => Some(relay),
        Err(e) => {
            warn(format!(
                "the request relay did not start ({e}); watching {}'s output instead",
                vault.paths.profile.name
            ));
            None
        }
    }
}

/// The variables an attempt adds to the inherited environment (API-key slots).
fn child_env(launch: &Launch) -> Vec<(OsString, OsString)> {
    launch
        .env
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v.expose())))
        .collect()
}

/// Everything an attempt on `launch` adds to the environment: the slot's variables (or the
/// relay's), and the auth-type override when the slot's kind is not what qwen's settings select.
pub(super) fn attempt_env(
    vault: &Vault,
    launch: &Launch,
    relay: Option<&Relay>,
    args: &[OsString],
) -> Vec<(OsString, OsString)> {
    let mut env = slot_env(vault, launch, relay, args);
    let selected = settings::Selected::read(&vault.paths);
    if let Some(why) = settings::blocked(&vault.paths, launch, &selected) {
        warn(why);
    }
    match settings::override_env(&vault.paths, launch, &selected) {
        Ok(extra) => env.extend(extra),
        Err(e) => warn(format!(
            "cannot write the auth-type override under {}: {e}",
            vault.paths.home.display()
        )),
    }
    env
}

/// With the relay in the path, qwen gets the relay's address and the run's own token in place
/// of the provider's URL and the real key: the real key never enters qwen's environment.
/// Without it, the real key goes in only when qwen will send it to the slot's own base URL.
fn slot_env(
    vault: &Vault,
    launch: &Launch,
    relay: Option<&Relay>,
    args: &[OsString],
) -> Vec<(OsString, OsString)> {
    if let Some(env) = relay.and_then(|r| r.child_env(launch)) {
        return env;
    }
    let mut env = child_env(launch);
    if let Some(why) = relay::key_withheld(&vault.paths, launch, args) {
        warn(why);
        let api = &vault.paths.profile.api;
        env.retain(|(k, _)| *k == api.base_url_var || *k == api.model_vars[0]);
    }
    env
}
