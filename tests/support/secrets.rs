//! The secret scan. Every fixture credential the support modules write (OAuth access and refresh
//! tokens, API keys) starts with [`SECRET_MARK`], and every output the support modules capture
//! from the shim (stdout, stderr, pty transcripts) and every file the shim writes beside the
//! credentials (state.yaml, rotation.log, the settings overlay, `.corrupt` copies) is searched
//! for it. The mock model API strips the mark when it reads a bearer token, so answers such as
//! `REPLY-FROM-tok2_ok` name the account without carrying its secret.
//! Included by the other support modules with `#[path = "secrets.rs"] mod secrets;`.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

/// Every fixture secret starts with this, so one search finds any leak.
pub const SECRET_MARK: &str = "SeCrEt";

/// `name` as a fixture secret.
pub fn secret(name: &str) -> String {
    format!("{SECRET_MARK}-{name}")
}

/// `token` without the fixture mark (what the mock and the tests call the account by).
pub fn unmarked(token: &str) -> &str {
    token
        .strip_prefix(SECRET_MARK)
        .and_then(|t| t.strip_prefix('-'))
        .unwrap_or(token)
}

/// The finding when `bytes` (one output channel, named by `what`) holds a fixture secret: the
/// text before the secret, never the secret itself.
pub fn leak(what: &str, bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let at = text.find(SECRET_MARK)?;
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(40)
        .map_or(0, |(i, _)| i);
    Some(format!(
        "{what} leaks a secret near: {:?}",
        &text[start..at]
    ))
}

/// Fails the test when `bytes` holds a fixture secret.
pub fn assert_clean(what: &str, bytes: &[u8]) {
    if let Some(finding) = leak(what, bytes) {
        panic!("{finding}");
    }
}

/// The findings in every file the shim writes in a qwen home, except the credential files
/// themselves (slots, the live file, and their backups are where secrets belong), and qwen's own
/// files.
pub fn home_leaks(qwen_home: &Path) -> Vec<String> {
    const OURS: &[&str] = &[
        "state.yaml",
        "rotation.log",
        "rotation.lock",
        "rotation.yaml",
    ];
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(qwen_home) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let ours = OURS.iter().any(|o| name.starts_with(o));
        if ours && path.is_file() {
            found.extend(leak(&name, &fs::read(&path).unwrap_or_default()));
        } else if name == "rotation-settings" {
            for f in fs::read_dir(&path).into_iter().flatten().flatten() {
                let bytes = fs::read(f.path()).unwrap_or_default();
                found.extend(leak(
                    &format!("rotation-settings/{:?}", f.file_name()),
                    &bytes,
                ));
            }
        }
    }
    found
}

/// Fails the test when a file the shim wrote in the home holds a fixture secret.
pub fn assert_home_clean(qwen_home: &Path) {
    if let Some(finding) = home_leaks(qwen_home).first() {
        panic!("{finding}");
    }
}
