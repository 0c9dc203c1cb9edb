//! `rotation.log`: an append-only JSON Lines audit log, one line per event.
//!
//! Invariants:
//! - A line holds slot numbers, labels, classes, pattern phrases and times: never a token, a
//!   key, a prompt or any text qwen printed (`phrase` is the *pattern* that matched).
//! - Each line is appended with one `write(2)` on an `O_APPEND` descriptor, so concurrent
//!   writers never interleave inside a line; the vault appends only while holding
//!   `rotation.lock` anyway.
//! - Every `account_switch` line corresponds to exactly one increment of `switches_total`
//!   in state.yaml (the vault writes both in the same locked step).
//! - Reading is tolerant: lines that do not parse (a torn last line, a hand edit) are skipped
//!   and counted, never fatal.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Hit;
use crate::text::rfc3339;

/// The event names (the seeds' `account_switch` plus ours).
pub mod events {
    pub const ACCOUNT_SWITCH: &str = "account_switch";
    pub const COOLDOWN: &str = "cooldown";
    pub const NEEDS_LOGIN: &str = "needs_login";
    pub const SYNC_BACK: &str = "sync_back";
    pub const SLOT_ADDED: &str = "slot_added";
    pub const SLOT_REMOVED: &str = "slot_removed";
    pub const ENABLED: &str = "enabled";
    pub const DISABLED: &str = "disabled";
    pub const RESET: &str = "reset";
    pub const LABEL: &str = "label";
    pub const EXHAUSTED: &str = "exhausted";
    pub const MIGRATED_SYMLINK: &str = "migrated_symlink";
    pub const STATE_REBUILT: &str = "state_rebuilt";
    pub const INVALID: &str = "invalid";
    pub const BACKUP: &str = "backup";
    /// Temporaries of a write that was killed midway were removed (under the lock).
    pub const TEMP_REMOVED: &str = "temp_removed";
    /// One watched run ended: its last slot, exit code, attempts and duration.
    pub const RUN: &str = "run";
}

/// One log line. Field names are the seeds' (`timestamp`, `level`, `event`, `from`, `to`,
/// `reason`, `trigger`) plus ours; absent fields are left out of the line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    pub timestamp: String,
    pub level: String,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phrase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `run`: the exit code the caller saw (128+N for death by signal N).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// `run`: how many times qwen was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `run` through the relay: the requests each slot answered (slot → count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<std::collections::BTreeMap<usize, u64>>,
    /// `run` through the relay: what it measured per slot (requests by answer class, tokens,
    /// latency; never a prompt or an answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<std::collections::BTreeMap<usize, crate::vault::usage::Usage>>,
}

impl Event {
    /// An INFO event stamped `now`, carrying our pid.
    pub fn new(event: &str, now: DateTime<Utc>) -> Event {
        Event {
            timestamp: rfc3339(now),
            level: "INFO".into(),
            event: event.into(),
            pid: Some(std::process::id()),
            ..Event::default()
        }
    }

    pub fn warn(mut self) -> Event {
        self.level = "WARN".into();
        self
    }
    pub fn from(mut self, n: usize) -> Event {
        self.from = Some(n);
        self
    }
    pub fn to(mut self, n: usize) -> Event {
        self.to = Some(n);
        self
    }
    pub fn slot(mut self, n: usize) -> Event {
        self.slot = Some(n);
        self
    }
    pub fn reason(mut self, r: impl Into<String>) -> Event {
        self.reason = Some(r.into());
        self
    }
    pub fn trigger(mut self, t: impl Into<String>) -> Event {
        self.trigger = Some(t.into());
        self
    }
    pub fn label(mut self, l: Option<&str>) -> Event {
        self.label = l.map(str::to_string);
        self
    }
    pub fn kind(mut self, k: &str) -> Event {
        self.kind = Some(k.into());
        self
    }
    pub fn until(mut self, t: Option<DateTime<Utc>>) -> Event {
        self.until = t.map(rfc3339);
        self
    }
    /// The class, the matched pattern and the provider's reset time of a detection.
    pub fn hit(mut self, hit: &Hit) -> Event {
        self.class = Some(hit.class.name().into());
        self.phrase = Some(hit.phrase.clone());
        self.reset_at = hit.reset_at.map(rfc3339);
        self
    }

    /// The end of a watched run on `slot` (never its argv or prompt).
    pub fn run(mut self, code: i32, attempts: u32, duration: std::time::Duration) -> Event {
        self.code = Some(code);
        self.attempts = Some(attempts);
        self.duration_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The JSON line, without the newline.
    pub fn to_line(&self) -> String {
        // Serialising a struct of strings and numbers cannot fail; fall back to the bare event.
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"event\":\"{}\"}}", self.event))
    }

    pub fn time(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.timestamp)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Appends `events`, one `write(2)` per line, creating the log 0600 when missing. A symlink in
/// the log's place is refused (O_NOFOLLOW), never appended through: run as root, a link to
/// any file would otherwise get our lines.
pub fn append(path: &Path, events: &[Event]) -> io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO in the log's place (no reader: ENXIO) never blocks the open.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => io::Error::other(
                "it is a symbolic link, which the log never writes through; remove it and a new log starts",
            ),
            Some(nix::libc::ENXIO) => not_a_file(),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    // A hard link to a file elsewhere is refused as well.
    if meta.nlink() > 1 {
        return Err(io::Error::other(
            "it has other hard links, which the log never writes through; remove it and a new log starts",
        ));
    }
    crate::files::keep_owner(Some(&file), path);
    for e in events {
        let mut line = e.to_line();
        line.push('\n');
        // One write call per line: with O_APPEND the kernel places it atomically at the end.
        let written = file.write(line.as_bytes())?;
        if written != line.len() {
            // A short write on a regular file means the disk is full; finish the line so the
            // next one starts on its own line, then report.
            file.write_all(&line.as_bytes()[written..])?;
        }
    }
    Ok(())
}

fn not_a_file() -> io::Error {
    io::Error::other("it is not a regular file; move it out of the way and a new log starts")
}

/// Above this size `rotation.log` becomes `rotation.log.1` (replacing the previous one), so a
/// busy CI home keeps a bounded log: two generations, read together by `stats` and `log`.
pub const MAX_LOG_BYTES: u64 = 8 << 20;

/// The previous generation of the log.
pub fn previous(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    name.into()
}

/// Moves the log to `rotation.log.1` when it is larger than `max`. Call under `rotation.lock`
/// (so two processes never rotate at once). A writer that opened the old file just before the
/// rename finishes its line there: nothing is lost, it is read from `.1`.
pub fn rotate_if_large(path: &Path, max: u64) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > max => {
            std::fs::rename(path, previous(path))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Both generations, oldest first (`rotation.log.1`, then `rotation.log`).
pub fn read_all(path: &Path) -> io::Result<Read> {
    let mut old = read(&previous(path))?;
    let new = read(path)?;
    old.events.extend(new.events);
    old.skipped += new.skipped;
    Ok(old)
}

/// What reading the log found.
#[derive(Debug, Default)]
pub struct Read {
    pub events: Vec<Event>,
    /// Lines that were not JSON objects (skipped).
    pub skipped: usize,
}

/// Reads the whole log (missing → empty). Only the last `MAX_READ` bytes are looked at.
pub fn read(path: &Path) -> io::Result<Read> {
    const MAX_READ: u64 = 64 << 20;
    let bytes = match crate::files::open_regular(path, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::default()),
        Err(e) => return Err(e),
        Ok(f) => {
            use std::io::{Read as _, Seek, SeekFrom};
            let len = f.metadata()?.len();
            let mut f = f;
            let mut skip_partial = false;
            if len > MAX_READ {
                f.seek(SeekFrom::Start(len - MAX_READ))?;
                skip_partial = true;
            }
            let mut buf = Vec::new();
            f.take(MAX_READ).read_to_end(&mut buf)?;
            if skip_partial {
                let cut = buf
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(buf.len(), |p| p + 1);
                buf.drain(..cut);
            }
            buf
        }
    };
    Ok(parse(&bytes))
}

/// Parses JSON Lines, skipping lines that are not event objects.
pub fn parse(bytes: &[u8]) -> Read {
    let mut out = Read::default();
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => match serde_json::from_value::<Event>(v) {
                Ok(e) if !e.event.is_empty() => out.events.push(e),
                _ => out.skipped += 1,
            },
            _ => out.skipped += 1,
        }
    }
    out
}

/// Number of `account_switch` lines in both generations (equals `switches_total` until the
/// log has been rotated twice).
pub fn count_switches(path: &Path) -> io::Result<usize> {
    Ok(read_all(path)?
        .events
        .iter()
        .filter(|e| e.event == events::ACCOUNT_SWITCH)
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_seeds_fields_and_skip_absent_ones() {
        let now = DateTime::parse_from_rfc3339("2026-02-05T10:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = Event::new(events::ACCOUNT_SWITCH, now)
            .from(1)
            .to(2)
            .reason("quota_exhausted")
            .trigger("auto");
        let line = e.to_line();
        assert!(line.starts_with(r#"{"timestamp":"2026-02-05T10:30:00Z","level":"INFO","event":"account_switch","from":1,"to":2,"reason":"quota_exhausted","trigger":"auto""#), "{line}");
        assert!(!line.contains("phrase") && !line.contains('\n'));
    }

    #[test]
    fn seeds_lines_and_garbage_read_tolerantly() {
        let text = b"{\"timestamp\":\"2026-02-05T10:30:00Z\",\"level\":\"INFO\",\"event\":\"account_switch\",\n \"from\":1,\"to\":2}\n\
{\"timestamp\":\"2026-02-05T11:15:00Z\",\"level\":\"INFO\",\"event\":\"account_switch\",\"from\":5,\"to\":1,\"reason\":\"manual\",\"trigger\":\"account-qwen --switch\"}\n\
not json\n\xff\xfe\n[1,2]\n{\"event\":\"cooldown\",\"slot\":\"x\"}\n";
        let r = parse(text);
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].from, Some(5));
        assert_eq!(r.skipped, 6);
    }

    #[test]
    fn append_creates_0600_and_adds_whole_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rotation.log");
        let now = Utc::now();
        append(
            &p,
            &[
                Event::new(events::RESET, now).slot(1),
                Event::new(events::ACCOUNT_SWITCH, now).from(1).to(2),
            ],
        )
        .unwrap();
        append(&p, &[Event::new(events::ACCOUNT_SWITCH, now).from(2).to(1)]).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(count_switches(&p).unwrap(), 2);
        assert_eq!(read(&p).unwrap().events.len(), 3);
        assert_eq!(count_switches(&dir.path().join("absent")).unwrap(), 0);
    }

    #[test]
    fn a_large_log_moves_to_its_previous_generation_and_reads_together() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rotation.log");
        let now = Utc::now();
        let switch = Event::new(events::ACCOUNT_SWITCH, now).from(1).to(2);
        append(&p, &[switch.clone(), switch.clone()]).unwrap();
        assert!(!rotate_if_large(&p, 1 << 20).unwrap());
        assert!(rotate_if_large(&p, 10).unwrap());
        assert!(!p.exists() && previous(&p).exists());
        append(
            &p,
            &[Event::new(events::RUN, now).slot(2).run(
                0,
                1,
                std::time::Duration::from_millis(1500),
            )],
        )
        .unwrap();
        let all = read_all(&p).unwrap();
        assert_eq!(all.events.len(), 3);
        assert_eq!(all.events[2].duration_ms, Some(1500));
        assert_eq!(count_switches(&p).unwrap(), 2);
        let line = all.events[2].to_line();
        assert!(
            line.contains(r#""event":"run""#) && line.contains(r#""code":0,"attempts":1"#),
            "{line}"
        );
    }
}
