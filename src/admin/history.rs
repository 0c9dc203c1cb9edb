//! `--rotation-stats` and `--rotation-log`: what rotation.log says happened. Read only.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use crate::error::Error;
use crate::model::Class;
use crate::model::Kind;
use crate::text::printable;
use crate::vault::audit::{self, Event, events};
use crate::vault::state::Status;
use crate::vault::usage::Usage;
use crate::vault::{Scope, Vault};

use super::ui::{Ui, describe, effective_status, out, plural, print_json, relative, table, ts};

// -- stats ------------------------------------------------------------------------------------

#[derive(Default)]
struct Day {
    runs: u64,
    switches: u64,
    hits: u64,
    exhausted: u64,
    quota: u64,
    throttle: u64,
    auth: u64,
}

/// Runs per account, from the `run` lines of rotation.log.
#[derive(Default)]
struct Runs {
    total: u64,
    /// Ended with a non-zero code (qwen's, or 75 when every account was spent).
    failed: u64,
    /// Runs that needed more than one attempt.
    retried: u64,
    duration_ms: u64,
    last: Option<DateTime<Utc>>,
    /// Requests the relay sent on this account that were answered (a run may use several).
    requests: u64,
}

impl Runs {
    fn average(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_millis(self.duration_ms / self.total))
    }
}

/// Both generations of the pool's history.
fn read_all(v: &Vault) -> Result<audit::Read, Error> {
    v.history(Scope::All)
        .map_err(|e| Error::io("read", v.store_files().log, e))
}

pub(super) fn stats(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    let o = v.overview()?;
    let log = read_all(v)?;
    let now = o.now;
    let mut cooldowns: BTreeMap<usize, u64> = BTreeMap::new();
    let mut runs: BTreeMap<usize, Runs> = BTreeMap::new();
    let mut days: BTreeMap<NaiveDate, Day> = BTreeMap::new();
    // What the relay measured, per day and account (the run line's `usage`).
    let mut metered: BTreeMap<(NaiveDate, usize), Usage> = BTreeMap::new();
    for e in &log.events {
        let Some(t) = e.time() else { continue };
        let day = days.entry(t.date_naive()).or_default();
        match e.event.as_str() {
            events::RUN => {
                day.runs += 1;
                if let Some(n) = e.slot {
                    let r = runs.entry(n).or_default();
                    r.total += 1;
                    r.failed += u64::from(e.code.is_some_and(|c| c != 0));
                    r.retried += u64::from(e.attempts.is_some_and(|a| a > 1));
                    r.duration_ms = r.duration_ms.saturating_add(e.duration_ms.unwrap_or(0));
                    r.last = r.last.max(Some(t));
                }
                for (n, count) in e.requests.iter().flatten() {
                    let r = runs.entry(*n).or_default();
                    r.requests = r.requests.saturating_add(*count);
                }
                for (n, u) in e.usage.iter().flatten() {
                    metered.entry((t.date_naive(), *n)).or_default().add(u);
                }
            }
            events::ACCOUNT_SWITCH => day.switches += 1,
            events::COOLDOWN | events::NEEDS_LOGIN => {
                day.hits += 1;
                match e.class.as_deref().and_then(Class::from_name) {
                    Some(Class::Quota) => day.quota += 1,
                    Some(Class::Throttle) => day.throttle += 1,
                    Some(Class::Auth) => day.auth += 1,
                    None => {}
                }
                if e.event == events::COOLDOWN
                    && let Some(n) = e.slot
                {
                    *cooldowns.entry(n).or_default() += 1;
                }
            }
            events::EXHAUSTED => day.exhausted += 1,
            _ => {}
        }
    }
    // A compact history: the last 14 days that saw any event.
    let recent: Vec<(&NaiveDate, &Day)> = days
        .iter()
        .rev()
        .take(14)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut per_account: BTreeMap<usize, Usage> = BTreeMap::new();
    for ((_, n), u) in &metered {
        per_account.entry(*n).or_default().add(u);
    }
    let recent_days: Vec<NaiveDate> = recent.iter().map(|(d, _)| **d).collect();
    let st = &o.state;
    if ui.json {
        let accounts: Vec<Value> = st
            .accounts
            .iter()
            .map(|(n, a)| {
                let r = runs.get(n);
                json!({
                    "slot": n,
                    "label": a.label,
                    "kind": a.kind.map(Kind::as_str),
                    "status": a.status_at(now).as_str(),
                    "runs": r.map_or(0, |r| r.total),
                    "runs_failed": r.map_or(0, |r| r.failed),
                    "runs_retried": r.map_or(0, |r| r.retried),
                    "relay_requests": r.map_or(0, |r| r.requests),
                    "metered": per_account.get(n).map(usage_json),
                    "run_avg_ms": r.and_then(Runs::average).map(|d| d.as_millis() as u64),
                    "last_run": ts(r.and_then(|r| r.last)),
                    "switches": a.switches_count,
                    "hits": { "quota": a.hits.quota, "throttle": a.hits.throttle, "auth": a.hits.auth },
                    "cooldowns": cooldowns.get(n).copied().unwrap_or(0),
                    "cooldown_until": if a.status_at(now) == Status::CoolingDown { ts(a.cooldown_until) } else { Value::Null },
                    "last_used": ts(a.last_used),
                    "last_reset": ts(a.last_reset),
                })
            })
            .collect();
        let history: Vec<Value> = recent
            .iter()
            .map(|(d, day)| {
                let mut used = Usage::default();
                for ((_, _), u) in metered.range((**d, 0)..=(**d, usize::MAX)) {
                    used.add(u);
                }
                json!({ "date": d.to_string(), "runs": day.runs, "switches": day.switches, "hits": day.hits,
                        "quota": day.quota, "throttle": day.throttle, "auth": day.auth, "exhausted": day.exhausted,
                        "requests": used.requests, "tokens_in": used.tokens_in, "tokens_out": used.tokens_out })
            })
            .collect();
        print_json(&json!({
            "runs_total": runs.values().map(|r| r.total).sum::<u64>(),
            "switches_total": st.switches_total,
            "last_switch": ts(st.last_switch),
            "current": (st.current_index > 0).then_some(st.current_index),
            "accounts": accounts,
            "history": history,
            "usage_by_day": metered
                .iter()
                .filter(|((d, _), _)| recent_days.contains(d))
                .map(|((d, n), u)| {
                    let mut v = usage_json(u);
                    v["date"] = json!(d.to_string());
                    v["slot"] = json!(n);
                    v
                })
                .collect::<Vec<_>>(),
            "log_lines_skipped": log.skipped,
        }));
        return Ok(0);
    }
    let mut text = String::from("Account usage:\n");
    if st.accounts.is_empty() {
        text.push_str(&format!(
            "  (no accounts yet; see {} --rotation-help)\n",
            v.paths.profile.name
        ));
    } else {
        let most = st
            .accounts
            .values()
            .map(|a| a.switches_count)
            .max()
            .unwrap_or(0);
        let rows: Vec<Vec<String>> = st
            .accounts
            .iter()
            .map(|(n, a)| {
                let mut switches = a.switches_count.to_string();
                if most > 0 && a.switches_count == most {
                    switches.push_str(" (most used)");
                }
                let r = runs.get(n);
                vec![
                    n.to_string(),
                    a.shown_label().unwrap_or_else(|| "-".into()),
                    match r {
                        Some(r) if r.failed > 0 => format!("{} ({} failed)", r.total, r.failed),
                        Some(r) => r.total.to_string(),
                        None => "0".into(),
                    },
                    r.and_then(Runs::average).map_or_else(
                        || "-".into(),
                        |d| match d.as_millis() {
                            ms @ 0..1000 => format!("{ms}ms"),
                            _ => format!("{:.1}s", d.as_secs_f64()),
                        },
                    ),
                    switches,
                    a.hits.quota.to_string(),
                    a.hits.throttle.to_string(),
                    a.hits.auth.to_string(),
                    cooldowns.get(n).copied().unwrap_or(0).to_string(),
                    if a.status_at(now) == Status::CoolingDown {
                        relative(a.cooldown_until, now)
                    } else {
                        effective_status(a, now).to_string()
                    },
                    relative(a.last_reset, now),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                "#",
                "LABEL",
                "RUNS",
                "AVG RUN",
                "SWITCHES",
                "QUOTA",
                "THROTTLE",
                "AUTH",
                "COOLDOWNS",
                "NOW",
                "LAST RESET",
            ],
            &rows,
            &|_, _, c| c.to_string(),
        ));
    }
    let relayed: Vec<String> = runs
        .iter()
        .filter(|(_, r)| r.requests > 0)
        .map(|(n, r)| format!("account {n}: {}", r.requests))
        .collect();
    if !relayed.is_empty() {
        text.push_str(&format!(
            "Requests answered through the relay: {}.\n",
            relayed.join(", ")
        ));
    }
    if metered.keys().any(|(d, _)| recent_days.contains(d)) {
        text.push_str("Requests and tokens through the relay, by day and account:\n");
        text.push_str(&usage_table(&metered, &recent_days));
    }
    let runs_total: u64 = runs.values().map(|r| r.total).sum();
    text.push_str(&format!(
        "Total runs: {runs_total}. Total rotations: {}{}.\nCurrent account: {}.\n",
        st.switches_total,
        st.last_switch
            .map(|t| format!(" (last {})", relative(Some(t), now)))
            .unwrap_or_default(),
        if st.accounts.contains_key(&st.current_index) {
            describe(st, st.current_index)
        } else {
            "none".into()
        }
    ));
    if !recent.is_empty() {
        text.push_str("History (rotation.log, by day):\n");
        let rows: Vec<Vec<String>> = recent
            .iter()
            .map(|(d, day)| {
                vec![
                    d.to_string(),
                    plural(day.runs, "run", "runs"),
                    plural(day.switches, "switch", "switches"),
                    format!(
                        "{} (quota {}, throttle {}, auth {})",
                        plural(day.hits, "hit", "hits"),
                        day.quota,
                        day.throttle,
                        day.auth
                    ),
                    if day.exhausted > 0 {
                        format!("{} times all spent", day.exhausted)
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        let t = table(
            &["DAY", "RUNS", "SWITCHES", "HITS", ""],
            &rows,
            &|_, _, c| c.to_string(),
        );
        // Drop the header line: the columns speak for themselves.
        text.push_str(t.split_once('\n').map_or("", |(_, rest)| rest));
    }
    out(&text);
    Ok(0)
}

/// One account's metered requests as JSON (stats and the dashboard read the same names).
fn usage_json(u: &Usage) -> Value {
    json!({
        "requests": u.requests,
        "answers": { "ok": u.ok, "quota": u.quota, "throttle": u.throttle, "auth": u.auth,
                     "server_error": u.server_error, "other": u.other },
        "tokens_in": u.tokens_in,
        "tokens_out": u.tokens_out,
        "avg_first_byte_ms": u.first_byte_ms.checked_div(u.requests),
        "avg_total_ms": u.total_ms.checked_div(u.requests),
    })
}

/// DAY, ACCOUNT, REQUESTS, TOKENS IN, TOKENS OUT, NOT OK, AVG FIRST BYTE for the days shown.
fn usage_table(metered: &BTreeMap<(NaiveDate, usize), Usage>, days: &[NaiveDate]) -> String {
    let rows: Vec<Vec<String>> = metered
        .iter()
        .filter(|((d, _), _)| days.contains(d))
        .map(|((d, n), u)| {
            let not_ok: Vec<String> = [
                (u.quota, "quota"),
                (u.throttle, "throttle"),
                (u.auth, "auth"),
                (u.server_error, "server error"),
                (u.other, "other"),
            ]
            .iter()
            .filter(|(c, _)| *c > 0)
            .map(|(c, what)| format!("{c} {what}"))
            .collect();
            vec![
                d.to_string(),
                n.to_string(),
                u.requests.to_string(),
                u.tokens_in.to_string(),
                u.tokens_out.to_string(),
                if not_ok.is_empty() {
                    "-".into()
                } else {
                    not_ok.join(", ")
                },
                u.first_byte_ms
                    .checked_div(u.requests)
                    .map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
            ]
        })
        .collect();
    table(
        &[
            "DAY",
            "#",
            "REQUESTS",
            "TOKENS IN",
            "TOKENS OUT",
            "NOT OK",
            "FIRST BYTE",
        ],
        &rows,
        &|_, _, c| c.to_string(),
    )
}

// -- log --------------------------------------------------------------------------------------

pub(super) fn log(v: &Vault, tail: Option<usize>, ui: &Ui) -> Result<i32, Error> {
    let read = read_all(v)?;
    let total = read.events.len();
    let keep = match (tail, ui.json) {
        (Some(0), _) | (None, true) => total,
        (Some(n), _) => n,
        (None, false) => 20,
    };
    let shown: &[Event] = &read.events[total.saturating_sub(keep)..];
    if ui.json {
        print_json(&serde_json::to_value(shown).unwrap_or(Value::Null));
        return Ok(0);
    }
    if total == 0 {
        out(&format!(
            "No events yet in {}.\n",
            v.store_files().log.display()
        ));
        return Ok(0);
    }
    let mut text = String::new();
    for e in shown {
        text.push_str(&log_line(e, ui));
        text.push('\n');
    }
    if shown.len() < total {
        text.push_str(&format!(
            "(the last {} of {total} events; --tail N for more, --tail 0 for all)\n",
            shown.len()
        ));
    }
    if read.skipped > 0 {
        text.push_str(&format!("({} unreadable lines skipped)\n", read.skipped));
    }
    out(&text);
    Ok(0)
}

/// One event as a line. Every text field comes from rotation.log, which anyone with the
/// home's permissions can edit: each is shown through `printable`.
fn log_line(e: &Event, ui: &Ui) -> String {
    let when = e.time().map_or_else(
        || printable(&e.timestamp),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    );
    let mut parts = vec![
        when,
        ui.paint(
            &format!("{:<16}", printable(&e.event)),
            if e.level == "WARN" { "33" } else { "1" },
        ),
    ];
    match (e.from, e.to) {
        (Some(f), Some(t)) => parts.push(format!("{f} -> {t}")),
        (Some(f), None) => parts.push(format!("from {f}")),
        _ => {}
    }
    if let Some(s) = e.slot {
        parts.push(format!("account {s}"));
    }
    if let Some(l) = &e.label {
        parts.push(format!("[{}]", printable(l)));
    }
    if let (Some(code), Some(attempts)) = (e.code, e.attempts) {
        let took = e
            .duration_ms
            .map(|ms| format!(", {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        parts.push(format!(
            "exit {code}, {}{took}",
            plural(u64::from(attempts), "attempt", "attempts")
        ));
    }
    if let Some(r) = &e.reason {
        parts.push(printable(r));
    }
    if let (Some(c), Some(p)) = (&e.class, &e.phrase) {
        parts.push(printable(&format!("({c}: {p})")));
    }
    if let Some(u) = &e.until {
        parts.push(format!("until {}", printable(u)));
    }
    if let Some(t) = &e.trigger {
        parts.push(format!("by {}", printable(t)));
    }
    parts.join("  ")
}
