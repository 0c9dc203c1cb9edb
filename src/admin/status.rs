//! `--rotation-status` (also `--rotation-list`, `--watch`) and the one-line answers of the commands
//! that change one account: switch, next, remove, enable/disable, reset, label.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use crate::error::{Error, exit};
use crate::files;
use crate::model::Kind;
use crate::model::Strategy;
use crate::text::printable;
use crate::vault::state::Status;
use crate::vault::{self, LiveFile, Overview, Vault};

use super::ui::{
    Ui, capital, describe, effective_status, list, live_line, out, plural, print_json, relative,
    resolve, status_color, table, ts,
};

pub(super) fn status(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    let o = v.overview()?;
    if ui.json {
        print_json(&status_json(v, &o));
    } else {
        out(&status_text(v, &o, ui));
    }
    Ok(0)
}

/// How runs on slot `n` are watched: "relay" (the loopback relay in qwen's request path),
/// "scan" (qwen's output, with the reason the relay cannot be used), or "file swap" (OAuth).
pub(super) fn watch_mode(
    v: &Vault,
    n: usize,
    kind: Option<Kind>,
) -> (&'static str, Option<String>) {
    if kind != Some(Kind::ApiKey) {
        // A login the relay serves (claude's): its requests pass through the relay too.
        let relayed = v.config.relay && v.paths.profile.api.relay_login_headers.is_some();
        return (if relayed { "relay" } else { "file swap" }, None);
    }
    if !v.config.relay {
        return ("scan", Some("relay: false in rotation.yaml".into()));
    }
    let slot = match v.env_pool() {
        Some(pool) => pool.slots.get(&n).map(|s| s.api.clone()),
        None => vault::read_slot(&v.paths.api_key_slot(n))
            .ok()
            .and_then(|b| vault::check_api_key(&b).ok()),
    };
    let Some(slot) = slot else {
        return ("scan", Some("the slot file cannot be read".into()));
    };
    if slot.base_url.is_none() && v.paths.profile.api.default_base_url.is_none() {
        return (
            "scan",
            Some(format!(
                "the slot has no base URL ({}'s default is used)",
                v.paths.profile.name
            )),
        );
    }
    match crate::relay::relay_possible_for(&v.paths, slot.model.as_deref(), &[]) {
        Ok(()) => ("relay", None),
        Err(why) => ("scan", Some(why)),
    }
}

fn status_json(v: &Vault, o: &Overview) -> Value {
    let now = o.now;
    let accounts: Vec<Value> = o
        .state
        .accounts
        .iter()
        .map(|(n, a)| {
            let info = o.slots.get(n);
            let cooling = a.status_at(now) == Status::CoolingDown;
            json!({
                "slot": n,
                "label": a.label,
                "kind": a.kind.map(Kind::as_str),
                "watch": watch_mode(v, *n, a.kind).0,
                "enabled": a.enabled,
                "status": a.status_at(now).as_str(),
                "live": *n == o.state.current_index,
                "eligible": a.eligible(now),
                "cooldown_until": if cooling { ts(a.cooldown_until) } else { Value::Null },
                "cooldown_remaining_secs": if cooling { a.cooldown_until.map(|t| (t - now).num_seconds().max(0)) } else { None },
                "last_used": ts(a.last_used),
                "switches": a.switches_count,
                "hits": { "quota": a.hits.quota, "throttle": a.hits.throttle, "auth": a.hits.auth },
                "last_reason": a.last_reason,
                "last_reset": ts(a.last_reset),
                "remaining": a.remaining.as_ref().map(|r| json!({
                    "requests": r.requests,
                    "tokens": r.tokens,
                    "requests_reset": ts(r.requests_reset),
                    "tokens_reset": ts(r.tokens_reset),
                    "seen": ts(r.seen),
                })),
                "file": info.map(|i| i.path.display().to_string()),
                "mode": info.map(|i| format!("{:04o}", i.mode & 0o7777)),
                "problem": info.and_then(|i| i.problem.clone()),
            })
        })
        .collect();
    json!({
        "home": v.paths.home.display().to_string(),
        "pool": pool_source(v),
        "pool_store": v.pool_shown(),
        "state_file": v.store_files().state.display().to_string(),
        "strategy": strategy_name(v.config.strategy),
        "order": match v.policy().order {
            crate::model::Order::Slots => "slots",
            crate::model::Order::LoginsFirst => "logins-first",
        },
        "current": (o.state.current_index > 0).then_some(o.state.current_index),
        "live_slot": o.live_owner,
        "eligible": o.state.eligible_count(now),
        "total_accounts": o.state.accounts.len(),
        "switches_total": o.state.switches_total,
        "last_switch": ts(o.state.last_switch),
        "earliest_return": ts(o.state.earliest_return(now)),
        "state_problem": o.state_problem,
        "accounts": accounts,
    })
}

/// "files" (accounts/ in the home) or "environment" (QWEN_ROTATION_KEYS…).
fn pool_source(v: &Vault) -> &'static str {
    if v.env_pool().is_some() {
        "environment"
    } else {
        "files"
    }
}

/// One line on where an environment pool comes from and where its state is kept.
pub(super) fn pool_line(v: &Vault) -> Option<String> {
    let pool = v.env_pool()?;
    let sources: Vec<&str> = pool.slots.values().map(|s| s.source.as_str()).collect();
    let state = match &pool.state {
        crate::vault::env_pool::StateHome::Home => format!("in {}", v.paths.home.display()),
        crate::vault::env_pool::StateHome::Dir(d) => {
            format!(
                "in {} ({})",
                d.display(),
                v.paths.profile.pool_vars.state_dir
            )
        }
        crate::vault::env_pool::StateHome::Memory(_) => {
            format!(
                "for this process only (no writable {} or {})",
                v.paths.profile.home.var, v.paths.profile.pool_vars.state_dir
            )
        }
    };
    Some(format!(
        "accounts come from the environment ({}); slot files in {} are ignored; state is kept {state}",
        sources.join(", "),
        v.paths.accounts.display()
    ))
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::RoundRobin => "round-robin",
        Strategy::FillFirst => "fill-first",
    }
}

fn status_text(v: &Vault, o: &Overview, ui: &Ui) -> String {
    let now = o.now;
    let st = &o.state;
    if st.accounts.is_empty() && !v.paths.profile.creds.file_swap {
        // A CLI whose logins cannot be swapped: API keys only (a key's base URL is the
        // provider's by default).
        return format!(
            "No accounts in {} yet.\n  Add an API key (from stdin):    printf %s \"$KEY\" | {name} --rotation-add --api-key LABEL\n  Subscription logins (OAuth) are not rotated for {name} yet.\n",
            v.paths.home.display(),
            name = v.paths.profile.name
        );
    }
    if st.accounts.is_empty() {
        // A key without --base-url goes to the provider's default, where the profile has one.
        let key_options = if v.paths.profile.api.default_base_url.is_some() {
            ""
        } else {
            " --base-url URL --model M"
        };
        return format!(
            "No accounts in {} yet.\n  Capture the current login:      {name} --rotation-add LABEL\n  Log in to another account:      {name} --rotation-add --login LABEL\n  Add an API key (from stdin):    printf %s \"$KEY\" | {name} --rotation-add --api-key LABEL{key_options}\n",
            v.paths.home.display(),
            name = v.paths.profile.name
        );
    }
    let rows: Vec<Vec<String>> = st
        .accounts
        .iter()
        .map(|(n, a)| {
            let live = if *n == st.current_index { "*" } else { "" };
            let cooling = a.status_at(now) == Status::CoolingDown;
            vec![
                live.to_string(),
                n.to_string(),
                a.shown_label().unwrap_or_else(|| "-".into()),
                a.kind.map_or("?", Kind::human).to_string(),
                watch_mode(v, *n, a.kind).0.to_string(),
                effective_status(a, now).to_string(),
                if cooling {
                    relative(a.cooldown_until, now)
                        .trim_start_matches("in ")
                        .to_string()
                } else {
                    "-".into()
                },
                relative(a.last_used, now),
                a.switches_count.to_string(),
                format!("{}/{}/{}", a.hits.quota, a.hits.throttle, a.hits.auth),
            ]
        })
        .collect();
    let painted = |col: usize, _first: &str, cell: &str| -> String {
        match col {
            5 => ui.paint(cell, status_color(cell)),
            0 if cell == "*" => ui.paint(cell, "1"),
            _ => cell.to_string(),
        }
    };
    let mut text = match v.env_pool() {
        Some(_) => format!(
            "Accounts from the environment ({}):\n",
            strategy_name(v.config.strategy)
        ),
        None => format!(
            "Accounts in {} ({}):\n",
            v.paths.home.display(),
            strategy_name(v.config.strategy)
        ),
    };
    text.push_str(&table(
        &[
            "",
            "#",
            "LABEL",
            "KIND",
            "WATCH",
            "STATUS",
            "COOLDOWN",
            "LAST USED",
            "SWITCHES",
            "HITS Q/T/A",
        ],
        &rows,
        &painted,
    ));
    let remaining: Vec<String> = st
        .accounts
        .iter()
        .filter_map(|(n, a)| {
            let r = a.remaining.as_ref().filter(|r| !r.is_empty())?;
            Some(format!(
                "account {n}: {}{}",
                r.describe(now),
                r.seen
                    .map(|t| format!(", seen {}", relative(Some(t), now)))
                    .unwrap_or_default()
            ))
        })
        .collect();
    if !remaining.is_empty() {
        text.push_str(&format!(
            "Remaining quota the provider last announced: {}.\n",
            remaining.join("; ")
        ));
    }
    let eligible = st.eligible_count(now);
    text.push_str(&format!(
        "Live (*): {}. {eligible} of {} usable now. {} in total{}.\n",
        if st.accounts.contains_key(&st.current_index) {
            describe(st, st.current_index)
        } else {
            "none".into()
        },
        st.accounts.len(),
        plural(st.switches_total, "switch", "switches"),
        st.last_switch
            .map(|t| format!(", the last {}", relative(Some(t), now)))
            .unwrap_or_default()
    ));
    if eligible == 0 {
        match st.earliest_return(now) {
            Some(t) => text.push_str(&format!(
                "All accounts are spent; the first returns {}.\n",
                relative(Some(t), now)
            )),
            None => text.push_str(&format!(
                "No account is usable; see the notes below or run {} --rotation-doctor.\n",
                v.paths.profile.name
            )),
        }
    }
    if let Some(line) = chain_line(v, o) {
        text.push_str(&line);
    }
    for note in notes(v.paths.profile, o) {
        // Notes quote reasons and problems from hand-editable files.
        text.push_str(&format!("{} {}\n", ui.paint("!", "33"), printable(&note)));
    }
    if let Some(line) = pool_line(v) {
        text.push_str(&format!("Note: {line}.\n"));
    }
    text.push_str(&format!("Pool: {}.\n", v.pool_shown()));
    text
}

/// The fallback chain, when the pool holds logins and keys and puts logins first: which come
/// first, and while the pool is on a key, when the first login is back.
fn chain_line(v: &Vault, o: &Overview) -> Option<String> {
    let st = &o.state;
    if v.policy().order != crate::model::Order::LoginsFirst {
        return None;
    }
    let of = |kind: Kind| -> Vec<String> {
        st.accounts
            .iter()
            .filter(|(_, a)| a.kind == Some(kind) && a.enabled)
            .map(|(n, _)| n.to_string())
            .collect()
    };
    let (logins, keys) = (of(Kind::OAuth), of(Kind::ApiKey));
    if logins.is_empty() || keys.is_empty() {
        return None;
    }
    let mut line = format!(
        "Chain: logins first ({}), then API keys ({}) while every login cools down",
        logins.join(", "),
        keys.join(", ")
    );
    let on_key = st
        .accounts
        .get(&st.current_index)
        .is_some_and(|a| a.kind == Some(Kind::ApiKey));
    if on_key {
        let back = st
            .accounts
            .values()
            .filter(|a| a.kind == Some(Kind::OAuth) && a.enabled)
            .filter(|a| a.status_at(o.now) == Status::CoolingDown)
            .filter_map(|a| a.cooldown_until)
            .min();
        line.push_str(&match back {
            Some(t) => format!(
                "; the first login back at {} ({})",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                relative(Some(t), o.now)
            ),
            None => "; no login returns by itself (log in again)".to_string(),
        });
    }
    line.push_str(".\n");
    Some(line)
}

/// Problems worth a line under the status table.
fn notes(profile: &crate::profile::Profile, o: &Overview) -> Vec<String> {
    let (name, mut notes) = (profile.name, Vec::new());
    match &o.state_problem {
        // Not corrupt text: what is in its place (a FIFO, another user's file) is left alone.
        Some(p) if p.starts_with("cannot read") => notes.push(format!(
            "state.yaml is unreadable ({p}); runs go without rotation until it is fixed"
        )),
        Some(p) => notes.push(format!(
            "state.yaml is unreadable ({p}); the next run rebuilds it (a copy is kept)"
        )),
        None => {}
    }
    for (n, a) in &o.state.accounts {
        match a.status_at(o.now) {
            Status::NeedsLogin if a.enabled => notes.push(format!(
                "account {n} needs a new login ({}): {name} --rotation-add --login, then {name} --rotation-remove {n}; or {name} --rotation-reset {n} if it works again",
                a.last_reason.as_deref().unwrap_or("refused")
            )),
            Status::Invalid => notes.push(format!(
                "account {n} is unusable: {}",
                o.slots.get(n).and_then(|i| i.problem.clone()).or_else(|| a.last_reason.clone()).unwrap_or_default()
            )),
            _ => {}
        }
        if o.slots.get(n).is_some_and(|i| files::too_open(i.mode)) {
            notes.push(format!(
                "account {n}'s file can be read by other users: {name} --rotation-doctor --fix"
            ));
        }
    }
    if matches!(o.live, LiveFile::Symlink { .. }) {
        notes.push(format!(
            "{} is a symlink (the old layout); the next run makes it a regular file",
            profile.creds.file
        ));
    }
    notes
}

pub(super) fn watch(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    if !ui.tty_out || ui.json {
        return Err(Error::Usage(format!(
            "--watch redraws a terminal; run it in one, or use {} --rotation-status --json in scripts",
            v.paths.profile.name
        )));
    }
    // The first frame clears the screen; later ones redraw in place: cursor home, each line
    // followed by "erase to end of line", then "erase below" (no blank flash between frames).
    let mut first = true;
    loop {
        let o = v.overview()?;
        let mut body = status_text(v, &o, ui);
        body.push_str(&format!(
            "\n(refreshing every 2s, {}; Ctrl+C to stop)\n",
            Utc::now().format("%H:%M:%S")
        ));
        out(&watch_frame(&body, first));
        first = false;
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One `--watch` frame of `body` (see `watch`).
fn watch_frame(body: &str, first: bool) -> String {
    let mut frame = String::from(if first { "\x1b[H\x1b[2J" } else { "\x1b[H" });
    for line in body.lines() {
        frame.push_str(line);
        frame.push_str("\x1b[K\n");
    }
    frame.push_str("\x1b[J");
    frame
}

/// `--rotation-switch`: makes an account live.
pub(super) fn switch(v: &Vault, spec: &str) -> Result<i32, Error> {
    let (before, _) = resolve(v, spec)?;
    let s = v.switch(spec)?;
    let name = describe(&before.state, s.to);
    if s.from == s.to {
        out(&format!("{} is the live account.\n", capital(&name)));
    } else {
        out(&format!(
            "Switched from {} to {}.\n",
            describe(&before.state, s.from),
            name
        ));
    }
    Ok(0)
}

/// `--rotation-next`: moves to the next usable account; 1 when there is none.
pub(super) fn next(v: &Vault) -> Result<i32, Error> {
    let before = v.overview()?;
    match v.next()? {
        Some(s) => {
            out(&format!(
                "Switched from {} to {}.\n",
                describe(&before.state, s.from),
                describe(&before.state, s.to)
            ));
            Ok(0)
        }
        None => {
            crate::error::say(format_args!(
                "no other account is available (all cooling down, disabled or needing login); {} --rotation-status shows each",
                v.paths.profile.name
            ));
            Ok(exit::FAILURE)
        }
    }
}

/// `--rotation-remove`: removes an account (its file is kept in accounts/removed/).
pub(super) fn remove(v: &Vault, spec: &str) -> Result<i32, Error> {
    let (before, n) = resolve(v, spec)?;
    let moved = v.remove(spec)?;
    let after = v.overview()?;
    let mut text = format!(
        "Removed {}; its file is kept as {} (delete it to forget that login).\n",
        describe(&before.state, n),
        moved.display()
    );
    if before.state.current_index == n {
        text.push_str(&live_line(&after.state));
    }
    out(&text);
    Ok(0)
}

/// `--rotation-enable` / `--rotation-disable`: puts an account back in rotation or keeps it out.
pub(super) fn set_enabled(v: &Vault, spec: &str, enable: bool) -> Result<i32, Error> {
    let (before, n) = resolve(v, spec)?;
    let changed = v.set_enabled(spec, enable)?;
    let after = v.overview()?;
    let word = if enable { "enabled" } else { "disabled" };
    let mut text = if changed {
        format!("{} is {word} now.\n", capital(&describe(&before.state, n)))
    } else {
        format!(
            "{} was already {word}.\n",
            capital(&describe(&before.state, n))
        )
    };
    if after.state.current_index != before.state.current_index {
        text.push_str(&live_line(&after.state));
    }
    out(&text);
    Ok(0)
}

/// `--rotation-reset`: clears cooldowns and needs-login marks (of one account, or all).
pub(super) fn reset(v: &Vault, spec: &Option<String>) -> Result<i32, Error> {
    let before = match spec {
        Some(spec) => resolve(v, spec)?.0,
        None => v.overview()?,
    };
    let done = v.reset(spec.as_deref())?;
    let text = match done.as_slice() {
        [] => "Nothing to reset: no account is cooling down or waiting for a login.\n".to_string(),
        [n] => format!(
            "Reset {}: it is usable again.\n",
            describe(&before.state, *n)
        ),
        many => format!(
            "Reset {} accounts ({}): usable again.\n",
            many.len(),
            list(many)
        ),
    };
    out(&text);
    Ok(0)
}

/// `--rotation-label`: names an account, or removes its label.
pub(super) fn label(v: &Vault, spec: &str, label: &Option<String>) -> Result<i32, Error> {
    let (_, n) = resolve(v, spec)?;
    v.set_label(spec, label.as_deref())?;
    match label {
        Some(l) => out(&format!("Account {n} is labelled {}.\n", printable(l))),
        None => out(&format!("Account {n} has no label now.\n")),
    }
    Ok(0)
}
