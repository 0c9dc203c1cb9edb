//! `/metrics`: the snapshot as Prometheus text (exposition format 0.0.4), for people who already
//! scrape their hosts. Per account: status, live, cooldown seconds left, switches, hits by class,
//! runs, the remaining requests and tokens last announced (when known); for the pool: the live account, usable and total accounts, switches.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The statuses an account can be in, one series each (1 for the current one).
const STATUSES: &[&str] = &[
    "healthy",
    "cooling_down",
    "needs_login",
    "invalid",
    "disabled",
];

/// `snap` (see `snapshot::build`) as Prometheus text.
pub fn prometheus(snap: &Value) -> String {
    let now = snap["now"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let accounts = snap["accounts"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP qwen_rotation_{name} {help}");
        let _ = writeln!(out, "# TYPE qwen_rotation_{name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "qwen_rotation_{name}{labels} {value}");
        }
    };
    let id = |a: &Value| {
        format!(
            "slot=\"{}\",label=\"{}\"",
            a["slot"],
            escape(a["label"].as_str().unwrap_or(""))
        )
    };
    let per = |f: &dyn Fn(&Value) -> f64| -> Vec<(String, f64)> {
        accounts
            .iter()
            .map(|a| (format!("{{{}}}", id(a)), f(a)))
            .collect()
    };
    let num = |v: &Value| v.as_f64().unwrap_or(0.0);
    family(
        "account_status",
        "gauge",
        "1 for the account's current status.",
        accounts
            .iter()
            .flat_map(|a| {
                STATUSES.iter().map(move |s| {
                    (
                        format!("{{{},status=\"{s}\"}}", id(a)),
                        f64::from(u8::from(a["status"] == *s)),
                    )
                })
            })
            .collect(),
    );
    // Only the accounts whose provider announced an amount: an unknown is no series, not 0.
    for (what, key) in [("requests", "requests"), ("tokens", "tokens")] {
        family(
            &format!("account_remaining_{what}"),
            "gauge",
            &format!("The {what} left the provider last announced (x-ratelimit-remaining-{what})."),
            accounts
                .iter()
                .filter_map(|a| {
                    let n = a["remaining"][key].as_f64()?;
                    Some((format!("{{{}}}", id(a)), n))
                })
                .collect(),
        );
    }
    family(
        "account_live",
        "gauge",
        "1 for the live account.",
        per(&|a| f64::from(u8::from(a["live"] == true))),
    );
    family(
        "account_cooldown_seconds",
        "gauge",
        "Seconds until a cooling-down account is usable again (0 otherwise).",
        per(&|a| {
            let until = a["cooldown_until"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            match (until, now) {
                (Some(u), Some(n)) => (u.with_timezone(&Utc) - n).num_seconds().max(0) as f64,
                _ => 0.0,
            }
        }),
    );
    family(
        "account_switches_total",
        "counter",
        "Times the pool switched to the account.",
        per(&|a| num(&a["switches"])),
    );
    family(
        "account_hits_total",
        "counter",
        "Quota, throttle and auth hits of the account.",
        accounts
            .iter()
            .flat_map(|a| {
                ["quota", "throttle", "auth"]
                    .into_iter()
                    .map(move |c| (format!("{{{},class=\"{c}\"}}", id(a)), num(&a["hits"][c])))
            })
            .collect(),
    );
    family(
        "account_runs_total",
        "counter",
        "Watched runs that ended on the account (rotation.log).",
        per(&|a| num(&a["runs"])),
    );
    family(
        "live_account",
        "gauge",
        "Slot number of the live account (0: none).",
        vec![(String::new(), num(&snap["live"]))],
    );
    family(
        "usable_accounts",
        "gauge",
        "Accounts usable now.",
        vec![(String::new(), num(&snap["usable"]))],
    );
    family(
        "accounts",
        "gauge",
        "Accounts in the pool.",
        vec![(String::new(), num(&snap["total"]))],
    );
    family(
        "switches_total",
        "counter",
        "Switches of the whole pool.",
        vec![(String::new(), num(&snap["switches_total"]))],
    );
    out
}

/// A label value: backslash, quote and line break escaped as the format asks.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accounts_become_series_with_escaped_labels() {
        let snap = json!({
            "now": "2026-01-01T00:00:00Z", "live": 2, "usable": 1, "total": 2, "switches_total": 3,
            "accounts": [
                { "slot": 1, "label": "a\"b\\c", "status": "cooling_down", "live": false,
                  "cooldown_until": "2026-01-01T00:01:30Z", "switches": 1,
                  "hits": { "quota": 2, "throttle": 0, "auth": 0 }, "runs": 4 },
                { "slot": 2, "label": null, "status": "healthy", "live": true,
                  "cooldown_until": null, "switches": 2,
                  "hits": { "quota": 0, "throttle": 1, "auth": 0 }, "runs": 0,
                  "remaining": { "requests": 0, "tokens": null } },
            ]
        });
        let text = prometheus(&snap);
        assert!(
            text.contains("qwen_rotation_account_remaining_requests{slot=\"2\",label=\"\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("qwen_rotation_account_remaining_requests{slot=\"1\""));
        assert!(!text.contains("qwen_rotation_account_remaining_tokens{slot"));
        assert!(
            text.contains(
                "qwen_rotation_account_cooldown_seconds{slot=\"1\",label=\"a\\\"b\\\\c\"} 90\n"
            ),
            "{text}"
        );
        assert!(text.contains("qwen_rotation_account_status{slot=\"1\",label=\"a\\\"b\\\\c\",status=\"cooling_down\"} 1\n"));
        assert!(text.contains(
            "qwen_rotation_account_status{slot=\"2\",label=\"\",status=\"cooling_down\"} 0\n"
        ));
        assert!(text.contains("qwen_rotation_account_live{slot=\"2\",label=\"\"} 1\n"));
        assert!(text.contains(
            "qwen_rotation_account_hits_total{slot=\"1\",label=\"a\\\"b\\\\c\",class=\"quota\"} 2\n"
        ));
        assert!(
            text.contains("qwen_rotation_account_runs_total{slot=\"1\",label=\"a\\\"b\\\\c\"} 4\n")
        );
        assert!(text.contains("qwen_rotation_live_account 2\n"));
        assert!(text.contains("qwen_rotation_usable_accounts 1\n"));
        assert!(text.contains("# TYPE qwen_rotation_switches_total counter\n"));
    }
}
