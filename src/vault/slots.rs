//! Slot files and their content: names, numbers, the OAuth and API-key checks, and reading a
//! slot (never through a symlink, never more than a credential file can be). Never formats a secret.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Paths;
use crate::files::{self, digest};
use crate::model::{Kind, Secret};
use crate::text::io_reason;

/// Credential files are a few hundred bytes; anything past this is not one.
pub(super) const MAX_CRED_BYTES: u64 = files::MAX_OWN_FILE;

/// `oauth_creds_3.json` → (3, OAuth); `api_key_2.json` → (2, ApiKey).
pub fn parse_slot_name(name: &str) -> Option<(usize, Kind)> {
    let (digits, kind) = if let Some(rest) = name.strip_prefix("oauth_creds_") {
        (rest.strip_suffix(".json")?, Kind::OAuth)
    } else if let Some(rest) = name.strip_prefix("api_key_") {
        (rest.strip_suffix(".json")?, Kind::ApiKey)
    } else {
        return None;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let n: usize = digits.parse().ok()?;
    Some((n, kind))
}

pub fn slot_path(paths: &Paths, n: usize, kind: Kind) -> PathBuf {
    match kind {
        Kind::OAuth => paths.oauth_slot(n),
        Kind::ApiKey => paths.api_key_slot(n),
    }
}

/// Which files exist for each slot number.
pub type Scan = BTreeMap<usize, Vec<Kind>>;

/// Lists `accounts/` (missing → empty). Only names of slot files count.
pub fn scan(accounts: &Path) -> io::Result<Scan> {
    let mut out: Scan = BTreeMap::new();
    let entries = match fs::read_dir(accounts) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
        Ok(entries) => entries,
    };
    for entry in entries.flatten() {
        if let Some((n, kind)) = entry.file_name().to_str().and_then(parse_slot_name) {
            out.entry(n).or_default().push(kind);
        }
    }
    for kinds in out.values_mut() {
        kinds.sort();
    }
    Ok(out)
}

/// Checks OAuth credentials (the shape of the active profile's live file, `creds.file`: the
/// tokens at `creds.refresh` and `creds.access`) and returns the refresh token. The problem
/// text never quotes the content.
pub fn check_oauth(bytes: &[u8]) -> std::result::Result<Secret, &'static str> {
    let creds = &crate::profile::active().creds;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty");
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "not valid JSON")?;
    value.as_object().ok_or("not a JSON object")?;
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
    };
    let [no_refresh, no_access] = missing_token_problems();
    let refresh = text(creds.refresh).ok_or(no_refresh)?;
    text(creds.access).ok_or(no_access)?;
    Ok(Secret::new(refresh))
}

/// "no refresh_token in it", "no access_token in it": the last key of each token pointer of
/// the process's profile, worded once.
fn missing_token_problems() -> [&'static str; 2] {
    static PROBLEMS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let [refresh, access] = PROBLEMS.get_or_init(|| {
        let creds = &crate::profile::active().creds;
        let key = |pointer: &str| pointer.rsplit('/').next().unwrap_or(pointer).to_string();
        [
            format!("no {} in it", key(creds.refresh)),
            format!("no {} in it", key(creds.access)),
        ]
    });
    [refresh.as_str(), access.as_str()]
}

/// An API-key slot file.
#[derive(Serialize, Deserialize)]
pub(super) struct ApiKeyFile {
    pub(super) api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) env_key: Option<String>,
}

/// The content of an API-key slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySlot {
    pub key: Secret,
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub env_key: String,
}

impl ApiKeySlot {
    pub fn to_json(&self) -> String {
        let file = ApiKeyFile {
            api_key: self.key.expose().to_string(),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            env_key: Some(self.env_key.clone()),
        };
        // Plain strings: serialising cannot fail.
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The environment for an attempt: the key, and base URL and model when set (in the
    /// active profile's variables).
    pub fn env(&self) -> Vec<(String, Secret)> {
        let api = &crate::profile::active().api;
        let mut env = vec![(self.env_key.clone(), self.key.clone())];
        if let Some(url) = &self.base_url {
            env.push((api.base_url_var.into(), Secret::new(url.clone())));
        }
        if let Some(model) = &self.model {
            env.push((api.model_vars[0].into(), Secret::new(model.clone())));
        }
        env
    }
}

/// A usable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An API key as qwen can use it: printable ASCII, no spaces, not absurdly long.
pub fn valid_api_key(key: &str) -> std::result::Result<(), &'static str> {
    if key.is_empty() {
        return Err("the key is empty");
    }
    if key.len() > 4096 {
        return Err("the key is longer than 4096 characters");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the key contains spaces or non-printable characters");
    }
    Ok(())
}

pub fn check_api_key(bytes: &[u8]) -> std::result::Result<ApiKeySlot, &'static str> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty");
    }
    let file: ApiKeyFile = serde_json::from_slice(bytes)
        .map_err(|_| "not a JSON object with an \"api_key\" string")?;
    valid_api_key(&file.api_key)?;
    let env_key = file
        .env_key
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| crate::profile::active().api.key_var.into());
    if !valid_env_name(&env_key) {
        return Err("env_key is not a valid environment variable name");
    }
    let clean = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(ApiKeySlot {
        key: Secret::new(file.api_key),
        base_url: clean(file.base_url),
        model: clean(file.model),
        env_key,
    })
}

/// What one slot's file holds, as read under the lock (or for a status view).
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub kind: Option<Kind>,
    pub path: PathBuf,
    /// Why the slot is unusable (`invalid`), phrased for a person; `None` when valid.
    pub problem: Option<String>,
    pub digest: Option<String>,
    pub refresh: Option<Secret>,
    pub api: Option<ApiKeySlot>,
    /// Permission bits of the file.
    pub mode: u32,
    /// Owned by another user.
    pub foreign_owner: bool,
}

pub(super) fn inspect_slot(paths: &Paths, n: usize, kinds: &[Kind]) -> SlotInfo {
    let kind = (kinds.len() == 1).then(|| kinds[0]);
    let path = slot_path(paths, n, kind.unwrap_or(Kind::OAuth));
    let mut info = SlotInfo {
        kind,
        path: path.clone(),
        problem: None,
        digest: None,
        refresh: None,
        api: None,
        mode: 0,
        foreign_owner: false,
    };
    let Some(kind) = kind else {
        info.problem = Some(format!(
            "both oauth_creds_{n}.json and api_key_{n}.json exist; remove the one you do not want"
        ));
        return info;
    };
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => {
            // Never read or written through: a sync-back would land in the link's target,
            // wherever that is. The fix puts a copy of the target in the link's place.
            let target = fs::read_link(&path).unwrap_or_default();
            let (target, path) = (
                crate::text::printable(&target.to_string_lossy()),
                crate::text::printable(&path.to_string_lossy()),
            );
            info.problem = Some(format!(
                "the slot file is a symlink to {target}; slots must be regular files: \
                 cp --remove-destination {target} {path}"
            ));
            return info;
        }
        Ok(m) => {
            info.mode = m.mode() & 0o7777;
            info.foreign_owner = m.uid() != nix::unistd::geteuid().as_raw();
        }
        Err(_) => {}
    }
    let bytes = match read_slot(&path) {
        Ok(b) => b,
        Err(e) => {
            info.problem = Some(format!("cannot read it: {}", io_reason(&e)));
            return info;
        }
    };
    info.digest = Some(digest(&bytes));
    match kind {
        Kind::OAuth => match check_oauth(&bytes) {
            Ok(rt) => info.refresh = Some(rt),
            Err(p) => info.problem = Some(p.to_string()),
        },
        Kind::ApiKey => match check_api_key(&bytes) {
            Ok(api) => info.api = Some(api),
            Err(p) => info.problem = Some(p.to_string()),
        },
    }
    info
}

/// The live file (or what its symlink points at): a regular file of at most 1 MiB, read
/// without blocking (see `files`).
pub(super) fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    files::read_regular(path, MAX_CRED_BYTES, false)
}

/// A slot file: as `read_bounded`, and a symlink in its place is refused, never read through
/// (a sync-back would land in the link's target).
pub fn read_slot(path: &Path) -> io::Result<Vec<u8>> {
    files::read_regular(path, MAX_CRED_BYTES, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::live::LiveFile;

    fn creds(tok: &str) -> String {
        format!(
            "{{\"access_token\":\"{tok}\",\"refresh_token\":\"refresh-{tok}\",\"token_type\":\"Bearer\",\"resource_url\":\"http://127.0.0.1:1\",\"expiry_date\":4102444800000}}"
        )
    }

    #[test]
    fn slot_names_parse_strictly() {
        assert_eq!(
            parse_slot_name("oauth_creds_3.json"),
            Some((3, Kind::OAuth))
        );
        assert_eq!(parse_slot_name("api_key_12.json"), Some((12, Kind::ApiKey)));
        for bad in [
            "oauth_creds_.json",
            "oauth_creds_0.json",
            "oauth_creds_03.json",
            "oauth_creds_1.json.bak",
            "oauth_creds_x.json",
            ".qwen-rotation-abc",
            "api_key_-1.json",
        ] {
            assert_eq!(parse_slot_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn oauth_content_is_validated_without_quoting_it() {
        assert!(check_oauth(creds("tokA").as_bytes()).is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("{", "JSON"),
            ("[1]", "object"),
            ("{\"access_token\":\"x\"}", "refresh_token"),
            (
                "{\"access_token\":\"x\",\"refresh_token\":\"\"}",
                "refresh_token",
            ),
            ("{\"refresh_token\":\"secret-xyz\"}", "access_token"),
        ] {
            let err = check_oauth(bad.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("secret-xyz"));
        }
    }

    #[test]
    fn api_key_slots_round_trip_and_give_env() {
        let slot = ApiKeySlot {
            key: Secret::new("sk-test-123"),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            model: None,
            env_key: "BAILIAN_CODING_PLAN_API_KEY".into(),
        };
        let back = check_api_key(slot.to_json().as_bytes()).unwrap();
        assert_eq!(back, slot);
        let env = back.env();
        assert_eq!(env[0].0, "BAILIAN_CODING_PLAN_API_KEY");
        assert_eq!(env[0].1.expose(), "sk-test-123");
        assert_eq!(env[1].0, "OPENAI_BASE_URL");
        assert_eq!(env.len(), 2);
        assert!(!format!("{back:?}").contains("sk-test-123"));
        let minimal = check_api_key(br#"{"api_key":"k1"}"#).unwrap();
        assert_eq!(minimal.env_key, crate::profile::QWEN.api.key_var);
        assert!(check_api_key(br#"{"api_key":"has space"}"#).is_err());
        assert!(check_api_key(br#"{"api_key":"k","env_key":"1BAD"}"#).is_err());
    }

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("tok_very_secret");
        assert_eq!(format!("{s}"), "<redacted>");
        assert!(!format!("{s:?}").contains("very"));
        let live = LiveFile::Regular {
            bytes: b"tok_very_secret".to_vec(),
            mode: 0o600,
        };
        assert!(!format!("{live:?}").contains("116"), "{live:?}");
        let info = SlotInfo {
            kind: Some(Kind::OAuth),
            path: PathBuf::from("x"),
            problem: None,
            digest: None,
            refresh: Some(s.clone()),
            api: Some(ApiKeySlot {
                key: s,
                base_url: None,
                model: None,
                env_key: "K".into(),
            }),
            mode: 0o600,
            foreign_owner: false,
        };
        assert!(!format!("{info:?}").contains("very"));
    }
}
