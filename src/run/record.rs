//! One watched run as a `run` line in rotation.log, and how the run's notices name an account.
//!
//! Invariant: the line is written once, as the run leaves (`finish` or `fail`), never earlier.

use std::time::Instant;

use super::exec::fail;
use super::signals;
use crate::error::Error;
use crate::model::account_name;
use crate::model::{Class, Hit};
use crate::relay::{self, Relay};
use crate::vault::audit::{Event, events};
use crate::vault::{Launch, Vault};

/// One watched run, for its `run` line in rotation.log.
pub(super) struct RunRecord {
    started: Instant,
    pub(super) attempts: u32,
    /// The relay's count of answered requests per slot, when it is in the path.
    served: Option<relay::Served>,
    /// What the relay measured per slot, and the remaining quota it last saw per slot.
    metered: Option<(relay::Metered, relay::Seen)>,
}

impl RunRecord {
    pub(super) fn start(relay: Option<&Relay>) -> RunRecord {
        RunRecord {
            started: Instant::now(),
            attempts: 0,
            served: relay.map(Relay::served),
            metered: relay.map(|r| (r.metered(), r.remaining())),
        }
    }

    /// Appends the `run` line to the pool's history (`Store::append`: no lock, no fsync).
    fn write(&self, vault: &Vault, slot: usize, code: i32) {
        let event = Event::new(events::RUN, chrono::Utc::now()).slot(slot).run(
            code,
            self.attempts.max(1),
            self.started.elapsed(),
        );
        let event = Event {
            requests: self
                .served
                .as_ref()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            usage: self
                .metered
                .as_ref()
                .map(|(m, _)| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .filter(|m| !m.is_empty()),
            ..event
        };
        vault.append_run(event);
        // A login the CLI refreshed during the run goes back to its slot now. A failure here is
        // repaired by the next run's own sync.
        let _ = vault.sync_back();
        // The last remaining quota per account, for status and the dashboard: one locked
        // state write, only when the provider announced any. A failure costs only that view.
        if let Some((_, seen)) = &self.metered {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _ = vault.record_remaining(&seen);
        }
    }

    /// Records the run and leaves with qwen's outcome.
    pub(super) fn finish(&self, vault: &Vault, slot: usize, outcome: signals::Outcome) -> ! {
        let code = match outcome {
            signals::Outcome::Exited(code) => code,
            signals::Outcome::Signaled(sig) => 128 + sig,
        };
        self.write(vault, slot, code);
        signals::exit_with(outcome)
    }

    /// Records the run and leaves with the shim's own error (every account exhausted).
    pub(super) fn fail(&self, vault: &Vault, slot: usize, e: &Error) -> ! {
        self.write(vault, slot, e.exit_code());
        fail(e)
    }
}

/// "account 1 (work) quota exhausted"
pub(super) fn what(slot: usize, label: Option<String>, hit: &Hit) -> String {
    format!(
        "{} {}",
        account_name(slot, label.as_deref()),
        hit.class.human()
    )
}

/// `what`, with the profile's reason for an auth phrase that does not explain itself.
pub(super) fn what_why(
    slot: usize,
    label: Option<String>,
    hit: &Hit,
    profile: &crate::profile::Profile,
) -> String {
    let who = what(slot, label, hit);
    match profile
        .detect
        .auth_why
        .iter()
        .find(|(phrase, _)| hit.class == Class::Auth && *phrase == hit.phrase)
    {
        Some((_, why)) => format!("{who} ({why})"),
        None => who,
    }
}

/// The label of `slot`: the launch's when it is that slot (no file read), else none.
pub(super) fn launch_label(slot: usize, launch: &Launch) -> Option<String> {
    (launch.slot == slot)
        .then(|| launch.label.clone())
        .flatten()
}
