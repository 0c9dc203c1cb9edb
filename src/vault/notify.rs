//! `notify_command` (rotation.yaml): alerts. When an account is spent, needs a login, comes back,
//! or every account is spent, the command runs through `/bin/sh -c` with one JSON event on its
//! stdin, detached (its own process group; nothing waits for it before qwen goes on) and
//! stopped after `notify_timeout`.
//!
//! Invariants: an alert carries the slot, label, kind, class, times and counts only, never a
//! key, token or file's contents; the command's environment is reduced to `KEPT` (no key or
//! pool variable reaches it); a command that cannot start is one warning, never a failed run.
//! Alerts are derived from the state before and after one operation of this process, so an
//! account spent by another process is announced by that process.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::model::Kind;
use crate::text::rfc3339;

use super::handle::{Rotation, Vault};
use super::state::{Loaded, State, Status};

/// The variables the command sees (a desktop notification needs the session's bus; a webhook
/// its proxy), and nothing else of ours.
const KEPT: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// What `what` changed, as alerts: `before` and `after` are the stored states around it;
/// `focus` limits "spent" and "needs login" to the slot this process reported (None: any).
pub(super) fn alerts(
    before: &State,
    after: &State,
    focus: Option<usize>,
    now: DateTime<Utc>,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (n, a) in &after.accounts {
        let old = before.accounts.get(n);
        let was = old.map(|o| o.status);
        let base = |event: &str| {
            json!({
                "event": event,
                "slot": n,
                "label": a.shown_label(),
                "kind": a.kind.map(Kind::as_str),
            })
        };
        let ours = focus.is_none_or(|f| f == *n);
        match a.status {
            Status::CoolingDown
                if ours
                    && (was != Some(Status::CoolingDown)
                        || old.and_then(|o| o.cooldown_until) != a.cooldown_until) =>
            {
                let mut e = base("account_spent");
                e["until"] = a.cooldown_until.map(rfc3339).into();
                e["reason"] = a.last_reason.as_deref().map(crate::text::printable).into();
                out.push(e);
            }
            Status::NeedsLogin if ours && was != Some(Status::NeedsLogin) => {
                let mut e = base("needs_login");
                e["reason"] = a.last_reason.as_deref().map(crate::text::printable).into();
                out.push(e);
            }
            Status::Healthy if matches!(was, Some(Status::CoolingDown | Status::NeedsLogin)) => {
                let mut e = base("account_back");
                let expired = old.and_then(|o| o.cooldown_until).is_some_and(|t| t <= now);
                e["reason"] = if expired {
                    "cooldown over".into()
                } else {
                    a.last_reason.as_deref().map(crate::text::printable).into()
                };
                out.push(e);
            }
            _ => {}
        }
    }
    if before.eligible_count(now) > 0
        && after.eligible_count(now) == 0
        && !after.accounts.is_empty()
    {
        out.push(json!({
            "event": "all_spent",
            "earliest_return": after.earliest_return(now).map(rfc3339),
        }));
    }
    for e in &mut out {
        e["time"] = rfc3339(now).into();
        e["usable"] = after.eligible_count(now).into();
        e["total"] = after.accounts.len().into();
    }
    out
}

fn stored(loaded: Loaded) -> Option<State> {
    match loaded {
        Loaded::Ok(st) => Some(st),
        Loaded::Missing | Loaded::Corrupt(_) => None,
    }
}

impl Vault {
    /// Runs `op`, then the alerts its change calls for. Costs one state read before and one
    /// after, and only when a `notify_command` is set.
    pub(super) fn alerting<T>(
        &self,
        focus: Option<usize>,
        op: impl FnOnce() -> crate::error::Result<T>,
        quiet: impl FnOnce(&T) -> bool,
    ) -> crate::error::Result<T> {
        let Some(command) = self.config.notify_command.clone() else {
            return op();
        };
        let before = stored(self.peek()).unwrap_or_default();
        let result = op()?;
        if quiet(&result) {
            return Ok(result);
        }
        // An alert is never worth a failed run: a bug of ours here is one line, and qwen goes on.
        let announced = crate::error::guarded(|| {
            if let Some(after) = stored(self.peek()) {
                let cli = self.paths.profile.name;
                for mut alert in alerts(&before, &after, focus, Utc::now()) {
                    alert["cli"] = cli.into();
                    run(&command, self.config.notify_timeout, &alert);
                }
            }
            Ok(())
        });
        if let Err(bug) = announced {
            crate::error::warn(bug);
        }
        Ok(result)
    }
}

/// A report that another process had already made announces nothing (that process did).
pub(super) fn already_rotated(r: &Rotation) -> bool {
    matches!(r, Rotation::AlreadyRotated { .. })
}

/// Starts `command` with `alert` on stdin; a thread of ours stops it after `timeout` (and
/// reaps it), and when `timeout(1)` is installed it also bounds a command that outlives us.
fn run(command: &str, timeout: Duration, alert: &Value) {
    let secs = timeout.as_secs().max(1).to_string();
    let wrapper = ["/usr/bin/timeout", "/bin/timeout"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let mut cmd = match wrapper {
        Some(t) => {
            let mut c = Command::new(t);
            c.args(["-k", "2", &secs, "/bin/sh", "-c", command]);
            c
        }
        None => {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", command]);
            c
        }
    };
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| KEPT.contains(&k)) {
            cmd.env(k, v);
        }
    }
    let event = alert["event"].as_str().unwrap_or("");
    cmd.env("QWEN_ROTATION_EVENT", event)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            crate::error::warn(format!(
                "notify_command in rotation.yaml cannot start ({}); the alert is dropped",
                crate::text::io_reason(&e)
            ));
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // One short line: it fits in the pipe, so this never waits for the command.
        let _ = stdin.write_all(format!("{alert}\n").as_bytes());
    }
    let _ = std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || {
            let deadline = Instant::now() + timeout;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(child.id() as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        let _ = child.wait();
                        return;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::state::Account;
    use chrono::TimeDelta;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn pool(statuses: &[(Status, Option<i64>)]) -> State {
        let mut st = State::default();
        for (i, (s, mins)) in statuses.iter().enumerate() {
            let mut a = Account::new(Kind::OAuth);
            a.status = *s;
            a.cooldown_until = mins.map(|m| now() + TimeDelta::minutes(m));
            a.label = Some(format!("acct{}", i + 1));
            st.accounts.insert(i + 1, a);
        }
        st.current_index = 1;
        st
    }

    fn events(v: &[Value]) -> Vec<(String, Option<u64>)> {
        v.iter()
            .map(|e| (e["event"].as_str().unwrap().to_string(), e["slot"].as_u64()))
            .collect()
    }

    #[test]
    fn spent_needs_login_back_and_all_spent_are_told_once() {
        let healthy = (Status::Healthy, None);
        let before = pool(&[healthy, healthy, (Status::CoolingDown, Some(-1))]);
        let after = pool(&[
            (Status::CoolingDown, Some(300)),
            (Status::NeedsLogin, None),
            healthy,
        ]);
        let got = alerts(&before, &after, None, now());
        assert_eq!(
            events(&got),
            vec![
                ("account_spent".into(), Some(1)),
                ("needs_login".into(), Some(2)),
                ("account_back".into(), Some(3)),
            ]
        );
        assert_eq!(got[0]["until"], "2026-03-01T17:00:00Z");
        assert_eq!(got[0]["label"], "acct1");
        assert_eq!(got[2]["reason"], "cooldown over");
        assert_eq!(got[0]["usable"], 1);
        // Focused on slot 1: slot 2's mark was another process's to announce.
        assert_eq!(
            events(&alerts(&before, &after, Some(1), now())),
            vec![
                ("account_spent".into(), Some(1)),
                ("account_back".into(), Some(3))
            ]
        );
        // Nothing changed: nothing to say.
        assert!(alerts(&after, &after, None, now()).is_empty());
        let spent = pool(&[(Status::CoolingDown, Some(300)), (Status::NeedsLogin, None)]);
        let got = alerts(
            &pool(&[healthy, (Status::NeedsLogin, None)]),
            &spent,
            None,
            now(),
        );
        assert_eq!(
            events(&got),
            vec![
                ("account_spent".into(), Some(1)),
                ("all_spent".into(), None)
            ]
        );
        assert_eq!(got[1]["earliest_return"], "2026-03-01T17:00:00Z");
    }
}
