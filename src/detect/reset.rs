//! Reset times: the instant a quota or throttle message says the account returns, read from
//! its text. Pure; a message without a usable time gives `None`.

use std::sync::OnceLock;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Utc};

/// A message this late after its reset time still means "reset at that time", not "next year".
const RESET_GRACE: TimeDelta = TimeDelta::days(1);

/// How far ahead a reset without a year may lie. Providers word daily, weekly and monthly
/// quotas this way; a `MM-DD` further ahead than a month is a message read long after its date
/// (or a garbled one), not a quota that lasts most of a year.
const YEARLESS_HORIZON: TimeDelta = TimeDelta::days(31);

/// The reset time a message announces: Coding Plan's `will reset at 11-30 09:25:00 UTC` (no
/// year: the first such instant not more than a day before `now` — this year, or next year
/// across New Year; a message read up to a day late still gives the past instant rather than
/// one a year away) and ISO-8601 forms (`resets at 2026-11-30T09:25:00Z`, `reset time:
/// 2026-11-30 17:25:00+08:00`). A time without a zone is UTC.
///
/// A year-less instant more than [`YEARLESS_HORIZON`] ahead gives `None`: the message names no
/// usable reset, so the account gets the configured `quota_cooldown`, as for a message without
/// one (benching it for eleven months, or silently for the 31-day cap, would be a guess).
pub fn parse_reset(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    static RE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| {
            regex::Regex::new(
                r"(?ix)
                \breset(?:s|ting)?(?:\s+time)?(?:\s+(?:is|at|on|after))?\s*:?\s*
                (?: (?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})
                  | (?P<mo2>\d{1,2})[-/](?P<d2>\d{1,2}) )
                (?: (?:t|\s+) (?P<h>\d{1,2}):(?P<mi>\d{2}) (?::(?P<s>\d{2})(?:[.,]\d+)?)? )?
                (?: \s*(?P<tz>z|utc|gmt|[+-]\d{2}:?\d{2}) )?",
            )
            .ok()
        })
        .as_ref()?;
    re.captures_iter(text)
        .find_map(|c| reset_from(&c, now))
        .or_else(|| reset_after(text, now))
        .or_else(|| reset_clock(text, now))
}

/// Claude Code's usage-limit form: a wall-clock time in a named zone, with or without a date
/// (`resets 4:18am (UTC)`, `resets Dec 9, 1:25am (UTC)`, `resets 5pm (UTC)`): the first such
/// instant after `now` (tomorrow's when today's has passed; next year's when this year's date
/// has). An instant more than [`YEARLESS_HORIZON`] ahead gives `None`, as for a year-less date.
///
/// Only a zone whose offset is known without a time-zone database counts: UTC and its aliases,
/// and a fixed offset (`UTC+2`, `GMT-05:30`). An IANA name (`(Europe/Berlin)`, what claude prints
/// for a person's local zone) cannot be resolved here (no tz crate: the offset depends on the
/// zone's rules and the date), so the message gives `None` and the account gets the configured
/// default `quota_cooldown`, as for a message naming no reset.
fn reset_clock(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    static RE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| {
            regex::Regex::new(
                r"(?ix)
                \bresets\s+(?:at\s+)?
                (?: (?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+
                    (?P<d>\d{1,2})(?:st|nd|rd|th)?,?\s+(?:at\s+)? )?
                (?P<h>\d{1,2})(?::(?P<mi>\d{2}))?\s*(?P<ap>am|pm)
                \s*\(\s*(?P<tz>[^()\s]{1,64})\s*\)",
            )
            .ok()
        })
        .as_ref()?;
    re.captures_iter(text).find_map(|c| {
        let num = |name: &str| c.name(name).and_then(|m| m.as_str().parse::<u32>().ok());
        let h12 = num("h").filter(|h| (1..=12).contains(h))?;
        let mi = num("mi").unwrap_or(0);
        let pm = c.name("ap")?.as_str().eq_ignore_ascii_case("pm");
        let h = h12 % 12 + if pm { 12 } else { 0 };
        let offset = zone_offset(c.name("tz")?.as_str())?;
        let local_now = now + offset;
        let at = |date: NaiveDate| -> Option<DateTime<Utc>> {
            let naive = date.and_hms_opt(h, mi, 0)?;
            Some(Utc.from_utc_datetime(&naive) - offset)
        };
        let next = match c.name("mon") {
            None => {
                let today = local_now.date_naive();
                [today, today.succ_opt()?]
                    .into_iter()
                    .filter_map(at)
                    .find(|t| *t > now)
            }
            Some(mon) => {
                let month = month_number(mon.as_str())?;
                let day = num("d")?;
                (local_now.year()..=local_now.year() + 1)
                    .filter_map(|y| NaiveDate::from_ymd_opt(y, month, day))
                    .filter_map(at)
                    .find(|t| *t > now)
            }
        };
        next.filter(|t| *t <= now + YEARLESS_HORIZON)
    })
}

/// The offset of a zone named in parentheses, when it needs no time-zone database: UTC and its
/// aliases, or `UTC±H[:MM]` / `GMT±HHMM`. `None` for anything else (an IANA name).
fn zone_offset(zone: &str) -> Option<TimeDelta> {
    let z = zone.to_ascii_lowercase();
    let rest = [
        "etc/utc",
        "etc/gmt",
        "etc/universal",
        "utc",
        "gmt",
        "universal",
        "zulu",
        "z",
    ]
    .iter()
    .find_map(|p| z.strip_prefix(p))?;
    if rest.is_empty() || rest == "0" || rest == "+0" || rest == "-0" {
        return Some(TimeDelta::zero());
    }
    // `Etc/GMT+5` means five hours *behind* (POSIX sign); spare the reader that trap.
    if z.starts_with("etc/") {
        return None;
    }
    let (sign, digits) = match rest.as_bytes().first()? {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        _ => return None,
    };
    let (hh, mm) = match digits.split_once(':') {
        Some((h, m)) => (h, m),
        None if digits.len() > 2 => digits.split_at(digits.len() - 2),
        None => (digits, "0"),
    };
    let (hh, mm): (i64, i64) = (hh.parse().ok()?, mm.parse().ok()?);
    (hh <= 14 && mm < 60).then(|| TimeDelta::minutes(sign * (hh * 60 + mm)))
}

fn month_number(name: &str) -> Option<u32> {
    let m = name.get(..3)?.to_ascii_lowercase();
    [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|n| *n == m)
    .and_then(|i| u32::try_from(i + 1).ok())
}

/// Gemini's relative form (`Your quota will reset after 2h3m4s.`): `now` plus that duration.
fn reset_after(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    static RE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| {
            regex::Regex::new(
                r"(?i)\breset(?:s)?\s+after\s+(?:(?P<h>\d{1,4})h)?(?:(?P<m>\d{1,4})m)?(?:(?P<s>\d{1,6})(?:\.\d+)?s)?",
            )
            .ok()
        })
        .as_ref()?;
    re.captures_iter(text).find_map(|c| {
        let part = |name: &str| c.name(name).and_then(|m| m.as_str().parse::<i64>().ok());
        let (h, m, s) = (part("h"), part("m"), part("s"));
        if h.is_none() && m.is_none() && s.is_none() {
            return None;
        }
        let secs = h.unwrap_or(0) * 3600 + m.unwrap_or(0) * 60 + s.unwrap_or(0);
        now.checked_add_signed(TimeDelta::seconds(secs))
    })
}

fn reset_from(c: &regex::Captures<'_>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let num = |name: &str| c.name(name).and_then(|m| m.as_str().parse::<u32>().ok());
    let (h, mi, s) = match c.name("h") {
        Some(_) => (num("h")?, num("mi")?, num("s").unwrap_or(0).min(59)),
        None => (0, 0, 0),
    };
    let offset = match c.name("tz").map(|m| m.as_str().to_ascii_lowercase()) {
        Some(tz) if tz.starts_with('+') || tz.starts_with('-') => {
            let digits: String = tz.chars().filter(char::is_ascii_digit).collect();
            let hh: i64 = digits.get(..2)?.parse().ok()?;
            let mm: i64 = digits.get(2..4)?.parse().ok()?;
            let secs = hh * 3600 + mm * 60;
            if tz.starts_with('-') { -secs } else { secs }
        }
        _ => 0,
    };
    let at = |year: i32, month: u32, day: u32| -> Option<DateTime<Utc>> {
        let naive = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, mi, s)?;
        Some(Utc.from_utc_datetime(&naive) - TimeDelta::seconds(offset))
    };
    if let Some(y) = c.name("y").and_then(|m| m.as_str().parse::<i32>().ok()) {
        return at(y, num("mo")?, num("d")?);
    }
    let (mo, d) = (num("mo2")?, num("d2")?);
    (now.year() - 1..=now.year() + 1)
        .filter_map(|y| at(y, mo, d))
        .find(|t| *t >= now - RESET_GRACE)
        .filter(|t| *t <= now + YEARLESS_HORIZON)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::detect::test_support::utc;

    #[test]
    fn reset_times_parse() {
        let now = utc(2026, 11, 24, 12, 0, 0);
        let text = "The quota will reset at 11-30 09:25:00 UTC.";
        assert_eq!(parse_reset(text, now), Some(utc(2026, 11, 30, 9, 25, 0)));
        assert_eq!(
            parse_reset(&text.to_lowercase(), now),
            Some(utc(2026, 11, 30, 9, 25, 0))
        );
        assert_eq!(
            parse_reset("will reset at 11-30 09:25 UTC", now),
            Some(utc(2026, 11, 30, 9, 25, 0))
        );
        assert_eq!(
            parse_reset("quota resets at 2026-12-01T00:00:00Z", now),
            Some(utc(2026, 12, 1, 0, 0, 0))
        );
        assert_eq!(
            parse_reset("reset time: 2026-12-01 08:00:00+08:00", now),
            Some(utc(2026, 12, 1, 0, 0, 0))
        );
        assert_eq!(
            parse_reset("resets at 2026-12-01T08:00:00.123-0130", now),
            Some(utc(2026, 12, 1, 9, 30, 0))
        );
        assert_eq!(
            parse_reset("reset on 2026-12-01", now),
            Some(utc(2026, 12, 1, 0, 0, 0))
        );
        assert_eq!(parse_reset("no reset here", now), None);
        assert_eq!(parse_reset("will reset at 13-40 09:25:00 UTC", now), None);
        assert_eq!(parse_reset("will reset at 11-30 25:00:00 UTC", now), None);
        assert_eq!(parse_reset("discontinued on 2026-04-15", now), None);
    }

    #[test]
    fn a_reset_after_a_duration_counts_from_now() {
        let now = utc(2026, 11, 24, 12, 0, 0);
        let line = "Attempt 1 failed: You have exhausted your capacity on this model. Your quota will reset after 2h3m4s.. Retrying after 8352610ms...";
        assert_eq!(parse_reset(line, now), Some(utc(2026, 11, 24, 14, 3, 4)));
        assert_eq!(
            parse_reset(&line.to_lowercase(), now),
            Some(utc(2026, 11, 24, 14, 3, 4))
        );
        assert_eq!(
            parse_reset("your quota will reset after 45s.", now),
            Some(utc(2026, 11, 24, 12, 0, 45))
        );
        assert_eq!(
            parse_reset("will reset after 1m30.5s", now),
            Some(utc(2026, 11, 24, 12, 1, 30))
        );
        assert_eq!(parse_reset("will reset after a while", now), None);
    }

    #[test]
    fn reset_times_without_a_year_pick_the_next_one() {
        let text = "will reset at 01-01 09:25:00 UTC";
        assert_eq!(
            parse_reset(text, utc(2026, 12, 31, 23, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0)),
            "across New Year"
        );
        assert_eq!(
            parse_reset(text, utc(2027, 1, 1, 9, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0))
        );
        // Read late (up to a day): the instant that just passed, not one a year away.
        assert_eq!(
            parse_reset(text, utc(2027, 1, 1, 10, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0))
        );
        assert_eq!(
            parse_reset(
                "will reset at 12-31 23:59:00 UTC",
                utc(2027, 1, 1, 0, 10, 0)
            ),
            Some(utc(2026, 12, 31, 23, 59, 0)),
            "printed before New Year, read after"
        );
        // Up to a month ahead is a reset; 02-29 in a leap year.
        assert_eq!(
            parse_reset(text, utc(2026, 12, 2, 0, 0, 0)),
            Some(utc(2027, 1, 1, 9, 25, 0))
        );
        assert_eq!(
            parse_reset("will reset at 02-29 00:00:00 UTC", utc(2028, 2, 1, 0, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn claude_usage_limit_resets_give_the_next_such_instant() {
        let now = utc(2026, 12, 6, 9, 0, 0);
        let five = "You've hit your 5-hour limit \u{b7} resets 4:18am (UTC)";
        // 4:18 today has passed: tomorrow's.
        assert_eq!(parse_reset(five, now), Some(utc(2026, 12, 7, 4, 18, 0)));
        assert_eq!(
            parse_reset(&five.to_lowercase(), now),
            Some(utc(2026, 12, 7, 4, 18, 0))
        );
        // Still ahead today: today's.
        assert_eq!(
            parse_reset(five, utc(2026, 12, 6, 1, 0, 0)),
            Some(utc(2026, 12, 6, 4, 18, 0))
        );
        assert_eq!(
            parse_reset("resets 12:05am (UTC)", now),
            Some(utc(2026, 12, 7, 0, 5, 0))
        );
        assert_eq!(
            parse_reset("resets 12pm (UTC)", now),
            Some(utc(2026, 12, 6, 12, 0, 0))
        );
        assert_eq!(
            parse_reset("resets 11:30pm (UTC+2)", now),
            Some(utc(2026, 12, 6, 21, 30, 0))
        );
        let weekly = "You've hit your weekly limit \u{b7} resets Dec 9, 1:25am (UTC)";
        assert_eq!(parse_reset(weekly, now), Some(utc(2026, 12, 9, 1, 25, 0)));
        // Across New Year.
        assert_eq!(
            parse_reset("resets Jan 2, 3pm (UTC)", utc(2026, 12, 30, 0, 0, 0)),
            Some(utc(2027, 1, 2, 15, 0, 0))
        );
        // Its date just passed: next year's is no reset (beyond a month), so the default
        // cooldown applies.
        assert_eq!(parse_reset(weekly, utc(2026, 12, 9, 2, 0, 0)), None);
        // An IANA zone cannot be resolved without a time-zone database: no reset.
        assert_eq!(parse_reset("resets 4:18am (Europe/Berlin)", now), None);
        assert_eq!(parse_reset("resets 13:00am (UTC)", now), None);
        assert_eq!(parse_reset("resets Foo 9, 1:25am (UTC)", now), None);
        // The warning before a limit names the same kind of reset; reading it is harmless (only
        // a hit's message is read).
        assert_eq!(
            parse_reset(
                "You've used 90% of your 5-hour limit \u{b7} resets 4am (UTC)",
                now
            ),
            Some(utc(2026, 12, 7, 4, 0, 0))
        );
    }

    #[test]
    fn reset_times_without_a_year_further_than_a_month_are_no_reset() {
        let text = "will reset at 01-01 09:25:00 UTC";
        // More than a day old: the next 01-01 is a year away, so the message names no reset.
        assert_eq!(parse_reset(text, utc(2027, 1, 3, 0, 0, 0)), None);
        assert_eq!(parse_reset(text, utc(2026, 11, 30, 9, 0, 0)), None);
        // 02-29 outside a leap year's February: no such day within a month.
        assert_eq!(
            parse_reset("will reset at 02-29 00:00:00 UTC", utc(2026, 3, 1, 0, 0, 0)),
            None
        );
        // A year given explicitly is taken as written (the cooldown cap applies later).
        assert_eq!(
            parse_reset("resets at 2027-06-01T00:00:00Z", utc(2026, 12, 6, 0, 0, 0)),
            Some(utc(2027, 6, 1, 0, 0, 0))
        );
    }
}
