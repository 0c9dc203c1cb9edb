//! Choosing and marking slots in a `State`: which slots may run, which one is next, how a hit
//! marks a slot and when it comes back. Pure: time is passed in (`now`), nothing is read or
//! written here, so every rule is unit tested without a disk (the tests live in state.rs).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::model::{Class, Kind, Order, Policy, Strategy};

use super::state::{State, Status};

/// Two cooldowns this close are the same hit seen by two processes.
const SAME_HIT: TimeDelta = TimeDelta::minutes(1);

/// Caps a provider's reset time: a garbled year must not bench an account for a decade.
pub(super) const MAX_COOLDOWN: TimeDelta = TimeDelta::days(31);

impl State {
    pub fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.accounts.keys().copied()
    }

    pub fn eligible(&self, n: usize, now: DateTime<Utc>) -> bool {
        self.accounts.get(&n).is_some_and(|a| a.eligible(now))
    }

    pub fn eligible_count(&self, now: DateTime<Utc>) -> usize {
        self.accounts.values().filter(|a| a.eligible(now)).count()
    }

    /// A slot by number ("2") or label (case-insensitive).
    pub fn find(&self, spec: &str) -> Option<usize> {
        let spec = spec.trim();
        if let Ok(n) = spec.parse::<usize>() {
            return self.accounts.contains_key(&n).then_some(n);
        }
        self.accounts
            .iter()
            .find(|(_, a)| {
                a.label
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(spec))
            })
            .map(|(n, _)| *n)
    }

    /// The next eligible slot other than `exclude`. Round-robin: the first one after `after`
    /// in slot order, wrapping (the seeds' behaviour). Fill-first: the lowest-numbered one.
    /// Logins first: among the eligible logins while there is one, else among the keys.
    pub fn select(
        &self,
        policy: Policy,
        after: usize,
        exclude: Option<usize>,
        now: DateTime<Utc>,
    ) -> Option<usize> {
        let ok = |n: &usize| Some(*n) != exclude && self.eligible(*n, now);
        let tier = self.first_tier(policy.order, &ok);
        let ok = |n: &usize| ok(n) && tier.is_none_or(|k| self.kind_of(*n) == Some(k));
        match policy.strategy {
            Strategy::FillFirst => self.slots().find(ok),
            Strategy::RoundRobin => {
                let later = self
                    .accounts
                    .range(after.saturating_add(1)..)
                    .map(|(n, _)| *n);
                let earlier = self.accounts.range(..=after).map(|(n, _)| *n);
                later.chain(earlier).find(ok)
            }
        }
    }

    /// The slot a run should use now: round-robin stays on the current slot while it is
    /// eligible (and, logins first, while it is a login or no login is eligible); fill-first
    /// always goes back to the lowest eligible slot.
    pub fn desired(&self, policy: Policy, now: DateTime<Utc>) -> Option<usize> {
        let current = self.current_index;
        let stay = self.eligible(current, now)
            && self
                .first_tier(policy.order, &|n: &usize| self.eligible(*n, now))
                .is_none_or(|k| self.kind_of(current) == Some(k));
        match policy.strategy {
            Strategy::RoundRobin if stay => Some(current),
            _ => self.select(policy, current, None, now),
        }
    }

    /// Logins first: `Some(OAuth)` when a login passes `ok`, so only logins are candidates;
    /// `None`: every slot that passes `ok` is.
    fn first_tier(&self, order: Order, ok: &dyn Fn(&usize) -> bool) -> Option<Kind> {
        let login = |n: &usize| self.kind_of(*n) == Some(Kind::OAuth) && ok(n);
        (order == Order::LoginsFirst && self.slots().any(|n| login(&n))).then_some(Kind::OAuth)
    }

    fn kind_of(&self, n: usize) -> Option<Kind> {
        self.accounts.get(&n).and_then(|a| a.kind)
    }

    /// When the first enabled, cooling-down slot returns (`None`: none will by itself).
    pub fn earliest_return(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.accounts
            .values()
            .filter(|a| a.enabled && a.kind.is_some() && a.status_at(now) == Status::CoolingDown)
            .filter_map(|a| a.cooldown_until)
            .min()
    }

    /// Marks slot `n` after a hit of `class`. Quota: cooling down until `reset_at` (when it is
    /// in the future and sane) or `now + quota_cooldown`; throttle: `now + throttle_cooldown`;
    /// auth: needs_login. Idempotent: a mark never shortens an existing cooldown, never
    /// downgrades needs_login/invalid, and returns false when nothing changed (so N processes
    /// reporting the same hit count it once).
    #[allow(clippy::too_many_arguments)]
    pub fn mark(
        &mut self,
        n: usize,
        class: Class,
        reset_at: Option<DateTime<Utc>>,
        reason: &str,
        now: DateTime<Utc>,
        quota_cooldown: Duration,
        throttle_cooldown: Duration,
    ) -> bool {
        let Some(a) = self.accounts.get_mut(&n) else {
            return false;
        };
        let current = a.status_at(now);
        if matches!(current, Status::NeedsLogin | Status::Invalid) {
            return false;
        }
        let until = match class {
            Class::Auth => None,
            Class::Quota => Some(
                reset_at
                    .filter(|t| *t > now)
                    .map(|t| t.min(now + MAX_COOLDOWN))
                    .unwrap_or_else(|| now + delta(quota_cooldown)),
            ),
            // A throttle rests `throttle_cooldown`, or until the provider's announced reset
            // when that is later (a rate limit whose remaining quota reached 0 for minutes).
            Class::Throttle => Some(
                reset_at
                    .map(|t| t.min(now + MAX_COOLDOWN))
                    .filter(|t| *t > now + delta(throttle_cooldown))
                    .unwrap_or_else(|| now + delta(throttle_cooldown)),
            ),
        };
        match until {
            None => {
                a.status = Status::NeedsLogin;
                a.cooldown_until = None;
                a.hits.auth += 1;
            }
            Some(until) => {
                // Already cooling down: only a clearly longer cooldown (a throttled slot that
                // then reports its quota spent) replaces it. Reports of the same hit from
                // other processes, seconds apart, change nothing.
                if current == Status::CoolingDown
                    && a.cooldown_until.is_some_and(|t| t + SAME_HIT >= until)
                {
                    return false;
                }
                // A zero cooldown would leave the slot eligible: nothing to mark.
                if until <= now {
                    return false;
                }
                a.status = Status::CoolingDown;
                a.cooldown_until = Some(until);
                match class {
                    Class::Quota => a.hits.quota += 1,
                    _ => a.hits.throttle += 1,
                }
            }
        }
        a.last_reason = Some(reason.to_string());
        true
    }

    /// Turns passed cooldowns into `healthy` (recording when). Returns the slots cleared.
    pub fn clear_expired(&mut self, now: DateTime<Utc>) -> Vec<usize> {
        let mut cleared = Vec::new();
        for (n, a) in self.accounts.iter_mut() {
            if a.status == Status::CoolingDown && a.status_at(now) == Status::Healthy {
                a.status = Status::Healthy;
                a.last_reset = a.cooldown_until.or(Some(now));
                a.cooldown_until = None;
                cleared.push(*n);
            }
        }
        cleared
    }

    /// Records that `to` became the live account (the seeds' counters).
    pub fn record_switch(&mut self, to: usize, now: DateTime<Utc>) {
        self.current_index = to;
        self.switches_total += 1;
        self.last_switch = Some(now);
        if let Some(a) = self.accounts.get_mut(&to) {
            a.switches_count += 1;
            a.last_used = Some(now);
        }
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d)
        .unwrap_or(MAX_COOLDOWN)
        .min(MAX_COOLDOWN)
}
