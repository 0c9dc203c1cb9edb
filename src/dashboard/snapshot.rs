//! The pool as the dashboard shows it: one JSON document built from the vault's read API (the
//! overview `--rotation-status` prints and the history `--rotation-stats` counts). Pure once the
//! overview and the history are read: `build` takes both and "now", so tests pin the clock.
//!
//! Invariant: only labels, kinds, statuses, times, counts and the log's reasons and classes go
//! in (every text field through `printable`, as status and log show them): never a slot file's
//! path or contents, a key, a token or a base URL.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use crate::error::Error;
use crate::model::{Class, Kind, Strategy};
use crate::text::{printable, rfc3339};
use crate::vault::audit::{self, Event, events};
use crate::vault::state::Status;
use crate::vault::{Overview, Scope, Vault};

/// Days of history the charts show (the last ones that saw any event).
pub const DAYS: usize = 14;
/// Switches and hits the timeline shows.
pub const TIMELINE: usize = 200;
/// Latest events listed.
pub const LATEST: usize = 50;

/// The pool now, read without a lock.
pub fn snapshot(v: &Vault) -> Result<Value, Error> {
    let o = v.overview()?;
    let log = v
        .history(Scope::All)
        .map_err(|e| Error::io("read", v.store_files().log, e))?;
    // Where the pool is kept, in a word: never a path or a URL (a URL may name a host the
    // viewer has no business knowing).
    let pool = if v
        .config
        .pool
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty())
    {
        if v.is_shared() {
            "shared"
        } else {
            "shared, unreachable: this host's files"
        }
    } else if v.env_pool().is_some() {
        "environment"
    } else {
        "files"
    };
    Ok(build(
        &o,
        &log,
        pool,
        strategy_name(v.config.strategy),
        o.now,
    ))
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::RoundRobin => "round-robin",
        Strategy::FillFirst => "fill-first",
    }
}

fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn text(s: &Option<String>) -> Value {
    s.as_deref()
        .map_or(Value::Null, |s| Value::String(printable(s)))
}

#[derive(Default, Clone, Copy)]
struct Count {
    runs: u64,
    hits: u64,
    switches: u64,
    requests: u64,
    tokens: u64,
}

/// The dashboard's document (see the module's invariant for what may go in).
pub fn build(
    o: &Overview,
    log: &audit::Read,
    pool: &str,
    strategy: &str,
    now: DateTime<Utc>,
) -> Value {
    let st = &o.state;
    let mut runs: BTreeMap<usize, u64> = BTreeMap::new();
    let mut days: BTreeMap<NaiveDate, BTreeMap<usize, Count>> = BTreeMap::new();
    for e in &log.events {
        let Some(t) = e.time() else { continue };
        let day = days.entry(t.date_naive()).or_default();
        match e.event.as_str() {
            events::RUN => {
                if let Some(n) = e.slot {
                    *runs.entry(n).or_default() += 1;
                    day.entry(n).or_default().runs += 1;
                }
                for (n, u) in e.usage.iter().flatten() {
                    let c = day.entry(*n).or_default();
                    c.requests = c.requests.saturating_add(u.requests);
                    c.tokens = c
                        .tokens
                        .saturating_add(u.tokens_in.saturating_add(u.tokens_out));
                }
            }
            events::COOLDOWN | events::NEEDS_LOGIN => {
                if let Some(n) = e.slot {
                    day.entry(n).or_default().hits += 1;
                }
            }
            events::ACCOUNT_SWITCH => {
                if let Some(n) = e.to {
                    day.entry(n).or_default().switches += 1;
                }
            }
            _ => {}
        }
    }
    let accounts: Vec<Value> = st
        .accounts
        .iter()
        .map(|(n, a)| {
            let status = a.status_at(now);
            let cooling = status == Status::CoolingDown;
            json!({
                "slot": n,
                "label": a.shown_label(),
                "kind": a.kind.map(Kind::as_str),
                "enabled": a.enabled,
                "status": if a.enabled { status.as_str() } else { "disabled" },
                "live": *n == st.current_index,
                "eligible": a.eligible(now),
                "cooldown_until": if cooling { ts(a.cooldown_until) } else { Value::Null },
                "last_used": ts(a.last_used),
                "last_reason": text(&a.last_reason),
                "switches": a.switches_count,
                "hits": { "quota": a.hits.quota, "throttle": a.hits.throttle, "auth": a.hits.auth },
                "runs": runs.get(n).copied().unwrap_or(0),
                // What the provider last announced through the relay; "—" when unknown.
                "remaining": a.remaining.as_ref().filter(|r| !r.is_empty()).map(|r| json!({
                    "requests": r.requests,
                    "tokens": r.tokens,
                    "requests_reset": ts(r.requests_reset),
                    "tokens_reset": ts(r.tokens_reset),
                    "seen": ts(r.seen),
                })),
                "problem": o.slots.get(n).and_then(|i| i.problem.as_deref()).map(printable),
            })
        })
        .collect();
    let recent: Vec<Value> = days
        .iter()
        .rev()
        .take(DAYS)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|(d, per)| {
            let per: serde_json::Map<String, Value> = per
                .iter()
                .map(|(n, c)| {
                    (
                        n.to_string(),
                        json!({ "runs": c.runs, "hits": c.hits, "switches": c.switches,
                                "requests": c.requests, "tokens": c.tokens }),
                    )
                })
                .collect();
            json!({ "date": d.to_string(), "accounts": per })
        })
        .collect();
    let marks: Vec<&Event> = log
        .events
        .iter()
        .filter(|e| {
            matches!(
                e.event.as_str(),
                events::ACCOUNT_SWITCH | events::COOLDOWN | events::NEEDS_LOGIN | events::EXHAUSTED
            )
        })
        .collect();
    let timeline: Vec<Value> = marks[marks.len().saturating_sub(TIMELINE)..]
        .iter()
        .map(|e| event_json(e))
        .collect();
    let latest: Vec<Value> = log.events[log.events.len().saturating_sub(LATEST)..]
        .iter()
        .rev()
        .map(event_json)
        .collect();
    json!({
        "now": rfc3339(now),
        "pool": pool,
        "strategy": strategy,
        "live": st.accounts.contains_key(&st.current_index).then_some(st.current_index),
        "usable": st.eligible_count(now),
        "total": st.accounts.len(),
        "switches_total": st.switches_total,
        "last_switch": ts(st.last_switch),
        "earliest_return": ts(st.earliest_return(now)),
        "state_problem": text(&o.state_problem),
        "accounts": accounts,
        "days": recent,
        "timeline": timeline,
        "events": latest,
        "log_lines_skipped": log.skipped,
    })
}

/// One log line as the page lists it: its time, name and the fields that say what happened.
fn event_json(e: &Event) -> Value {
    json!({
        "time": e.time().map(rfc3339).unwrap_or_else(|| printable(&e.timestamp)),
        "event": printable(&e.event),
        "level": printable(&e.level),
        "slot": e.slot,
        "from": e.from,
        "to": e.to,
        "label": text(&e.label),
        "class": e.class.as_deref().and_then(Class::from_name).map(Class::name),
        "reason": text(&e.reason),
        "until": text(&e.until),
        "code": e.code,
        "attempts": e.attempts,
        "duration_ms": e.duration_ms,
    })
}

/// The document without its clock: two snapshots that differ only in "now" show the same page.
pub fn same_pool(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("now");
        }
        v
    };
    strip(a) == strip(b)
}
