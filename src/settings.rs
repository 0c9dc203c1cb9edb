//! Making qwen use the slot's kind of account for one run, without touching argv or the user's
//! settings.json.
//!
//! qwen picks its auth type from `security.auth.selectedType` in its settings, and that outranks
//! the environment (an API key in `OPENAI_API_KEY` does not move a `qwen-oauth` user to
//! `openai`). The least invasive lever is qwen's *system* settings layer: the file named by
//! `QWEN_CODE_SYSTEM_SETTINGS_PATH` is merged last (it wins over user and workspace settings),
//! deeply (the user's other keys stay), and qwen never writes to it. So for a slot whose kind
//! differs from what the user's settings select, the shim writes a private system file — the
//! existing system settings, with the auth type (and, for API-key slots with a model, the model
//! name: qwen 0.24 prefers `model.name` over `OPENAI_MODEL`) set — and points qwen at it. The
//! operator's system defaults keep their path through `QWEN_CODE_SYSTEM_DEFAULTS_PATH`, which
//! would otherwise be looked up beside the override.
//!
//! Invariant: when the user's settings already select the slot's kind, nothing is written and no
//! variable is set; an `enforcedType` that names another kind is never overridden.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::Paths;
use crate::vault::{Kind, Launch};

const SYSTEM_SETTINGS_VAR: &str = "QWEN_CODE_SYSTEM_SETTINGS_PATH";
const SYSTEM_DEFAULTS_VAR: &str = "QWEN_CODE_SYSTEM_DEFAULTS_PATH";
const SYSTEM_SETTINGS_DEFAULT: &str = "/etc/qwen-code/settings.json";
const SYSTEM_DEFAULTS_DEFAULT: &str = "/etc/qwen-code/system-defaults.json";

/// qwen's name for the slot's kind.
pub fn auth_type(kind: Kind) -> &'static str {
    match kind {
        Kind::OAuth => "qwen-oauth",
        Kind::ApiKey => "openai",
    }
}

/// What the user's own settings select (`security.auth.selectedType`, or the older top-level
/// `selectedAuthType`), and what they enforce.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selected {
    pub selected: Option<String>,
    pub enforced: Option<String>,
    pub model_name: Option<String>,
}

impl Selected {
    pub fn read(paths: &Paths) -> Selected {
        let user = read_json(&user_settings(paths));
        let system = read_json(&system_settings_path());
        let get = |v: &Value, path: &[&str]| -> Option<String> {
            let mut cur = v;
            for key in path {
                cur = cur.get(key)?;
            }
            cur.as_str().map(str::to_string)
        };
        // The system layer wins when it sets a value, as it does in qwen.
        let pick = |path: &[&str]| get(&system, path).or_else(|| get(&user, path));
        Selected {
            selected: pick(&["security", "auth", "selectedType"])
                .or_else(|| pick(&["selectedAuthType"])),
            enforced: pick(&["security", "auth", "enforcedType"]),
            model_name: pick(&["model", "name"]),
        }
    }
}

/// The user settings file qwen reads: `$QWEN_HOME/settings.json` (qwen 0.15+), which is
/// `$HOME/.qwen/settings.json` when QWEN_HOME is unset.
fn user_settings(paths: &Paths) -> PathBuf {
    paths.settings.clone()
}

fn system_settings_path() -> PathBuf {
    std::env::var_os(SYSTEM_SETTINGS_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_SETTINGS_DEFAULT))
}

/// A settings file as JSON (comments allowed, as qwen allows them). A workspace's file is
/// untrusted content: read without blocking (a FIFO there must not hang every run) and at most
/// `MAX_OWN_FILE` bytes; anything else reads as empty settings.
fn read_json(path: &Path) -> Value {
    crate::files::read_text(path, crate::files::MAX_OWN_FILE)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&strip_comments(&t)).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()))
}

/// qwen's settings files may carry `//` comments (they are read as JSONC).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Why a slot cannot run under the user's settings, if it cannot.
pub fn blocked(launch: &Launch, selected: &Selected) -> Option<String> {
    let want = auth_type(launch.kind);
    match &selected.enforced {
        Some(enforced) if enforced != want => Some(format!(
            "qwen's settings enforce the auth type `{enforced}`, so account {} ({want}) cannot be used",
            launch.slot
        )),
        _ => None,
    }
}

/// The variables that make qwen use `launch`'s kind, writing the private system file when the
/// user's settings select another kind. Empty when nothing needs to change.
pub fn override_env(
    paths: &Paths,
    launch: &Launch,
    selected: &Selected,
) -> std::io::Result<Vec<(OsString, OsString)>> {
    let want = auth_type(launch.kind);
    let model = launch.api.as_ref().and_then(|a| a.model.clone());
    let model_differs = launch.kind == Kind::ApiKey
        && model.is_some()
        && selected.model_name.is_some()
        && selected.model_name != model;
    if selected.selected.as_deref() == Some(want) && !model_differs {
        return Ok(Vec::new());
    }
    let mut system = read_json(&system_settings_path());
    set(
        &mut system,
        &["security", "auth", "selectedType"],
        Value::String(want.to_string()),
    );
    if let (Kind::ApiKey, Some(model)) = (launch.kind, model) {
        set(&mut system, &["model", "name"], Value::String(model));
    }
    let dir = paths.private.clone();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    crate::vault::keep_owner(None, &dir);
    let file = dir.join(format!("system-settings-{}.json", launch.slot));
    let text = serde_json::to_string_pretty(&system).unwrap_or_default();
    // Most runs find the file as they left it: write only when it changed.
    let current = crate::files::read_text(&file, crate::files::MAX_OWN_FILE).ok();
    if current.as_deref() != Some(text.as_str()) {
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
        crate::vault::keep_owner(Some(tmp.as_file()), &file);
        tmp.persist(&file).map_err(|e| e.error)?;
    }
    let defaults = std::env::var_os(SYSTEM_DEFAULTS_VAR)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from(SYSTEM_DEFAULTS_DEFAULT));
    Ok(vec![
        (OsString::from(SYSTEM_SETTINGS_VAR), file.into_os_string()),
        (OsString::from(SYSTEM_DEFAULTS_VAR), defaults),
    ])
}

fn set(root: &mut Value, path: &[&str], value: Value) {
    let mut cur = root;
    for key in &path[..path.len() - 1] {
        if !cur.get(*key).is_some_and(Value::is_object)
            && let Some(map) = cur.as_object_mut()
        {
            map.insert((*key).to_string(), Value::Object(Map::new()));
        }
        cur = match cur.get_mut(*key) {
            Some(next) => next,
            None => return,
        };
    }
    if let Some(map) = cur.as_object_mut() {
        map.insert(path[path.len() - 1].to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_stripped_but_strings_kept() {
        let text = "{\n // a comment\n \"url\": \"http://x//y\", \"q\": \"a\\\"//b\" // tail\n}";
        let v: Value = serde_json::from_str(&strip_comments(text)).unwrap();
        assert_eq!(v["url"], "http://x//y");
        assert_eq!(v["q"], "a\"//b");
    }

    #[test]
    fn set_creates_the_path_and_keeps_siblings() {
        let mut v = serde_json::json!({"security": {"auth": {"apiKey": "k"}, "other": 1}});
        set(
            &mut v,
            &["security", "auth", "selectedType"],
            Value::String("openai".into()),
        );
        assert_eq!(v["security"]["auth"]["selectedType"], "openai");
        assert_eq!(v["security"]["auth"]["apiKey"], "k");
        assert_eq!(v["security"]["other"], 1);
        let mut v = serde_json::json!({"model": "not an object"});
        set(&mut v, &["model", "name"], Value::String("m".into()));
        assert_eq!(v["model"]["name"], "m");
    }
}
