//! What every command prints with: the `Ui` (JSON or a terminal, colour or not), stdout that
//! ignores a closed pipe, JSON with terminal controls escaped, relative times, aligned tables and
//! the words for an account. Imports nothing of admin/.

use std::io::{self, IsTerminal, Write};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::error::Error;
use crate::text::acts_on_terminal;
use crate::text::human_duration;
use crate::text::rfc3339;
use crate::vault::state::{Account, State};
use crate::vault::{Overview, Vault};

pub(super) struct Ui {
    pub(super) json: bool,
    pub(super) color: bool,
    pub(super) tty_in: bool,
    pub(super) tty_out: bool,
}

impl Ui {
    pub(super) fn detect(json: bool) -> Ui {
        let tty_out = io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Ui {
            json,
            color: tty_out && !no_color && !json,
            tty_in: io::stdin().is_terminal(),
            tty_out,
        }
    }

    pub(super) fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth reporting.
pub(super) fn out(text: &str) {
    let mut o = io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// `--json` keeps every value exact (a script matches the label it wrote), so labels and
/// reasons are not rewritten: JSON escaping carries them. serde_json escapes only C0 controls;
/// DEL, C1 controls and bidi marks are escaped here too (`\u009b`), so the document piped to a
/// terminal drives nothing either. Outside strings pretty JSON holds only ASCII punctuation,
/// digits, letters, spaces and newlines, so every such character is inside a string, where
/// `\uXXXX` means the same character.
pub(super) fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    let mut safe = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if c != '\n' && acts_on_terminal(c) {
            safe.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            safe.push(c);
        }
    }
    safe.push('\n');
    out(&safe);
}

/// "2m ago", "in 4h 12m", "never".
pub(super) fn relative(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "never".into(),
        Some(t) if t > now => format!("in {}", human_duration(t - now)),
        Some(t) if now - t < TimeDelta::seconds(5) => "just now".into(),
        Some(t) => format!("{} ago", human_duration(now - t)),
    }
}

pub(super) fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// Renders rows as aligned columns (display width = chars; our cells are ASCII or short).
pub(super) fn table(
    header: &[&str],
    rows: &[Vec<String>],
    painted: &dyn Fn(usize, &str, &str) -> String,
) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>, raw: &[String]| -> String {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(raw[i].chars().count());
            s.push(' ');
            s.push_str(c);
            if i + 1 < cols {
                s.push_str(&" ".repeat(pad + 1));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut text = line(head.clone(), &head);
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| painted(i, &r[0], c))
            .collect();
        text.push_str(&line(cells, r));
    }
    text
}

pub(super) fn status_color(status: &str) -> &'static str {
    match status {
        "healthy" => "32",
        "cooling down" => "33",
        "disabled" => "2",
        _ => "31",
    }
}

pub(super) fn effective_status(a: &Account, now: DateTime<Utc>) -> &'static str {
    if !a.enabled {
        "disabled"
    } else {
        a.status_at(now).human()
    }
}

/// Looks an account up before any change, so a mistyped one writes nothing.
pub(super) fn resolve(v: &Vault, spec: &str) -> Result<(Overview, usize), Error> {
    let o = v.overview()?;
    let n = o
        .state
        .find(spec)
        .ok_or_else(|| Error::NoSuchSlot(spec.to_string()))?;
    Ok((o, n))
}

pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(super) fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

pub(super) fn list(slots: &[usize]) -> String {
    slots
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn describe(st: &State, n: usize) -> String {
    st.describe(n)
}

pub(super) fn live_line(st: &State) -> String {
    if st.accounts.contains_key(&st.current_index) {
        format!(
            "The live account is {} now.\n",
            describe(st, st.current_index)
        )
    } else {
        "No account is live now.\n".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(relative(None, now), "never");
        assert_eq!(relative(Some(now - TimeDelta::seconds(125)), now), "2m ago");
        assert_eq!(
            relative(Some(now + TimeDelta::seconds(3900)), now),
            "in 1h 5m"
        );
        assert_eq!(relative(Some(now), now), "just now");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["1".to_string(), "long-label".to_string()],
            vec!["12".to_string(), "x".to_string()],
        ];
        let t = table(&["#", "LABEL"], &rows, &|_, _, c| c.to_string());
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str| {
            l.find("LABEL")
                .or_else(|| l.find("long"))
                .or_else(|| l.rfind('x'))
        };
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[1]), col(lines[2]));
    }
}
