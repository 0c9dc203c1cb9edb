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
//! This file is also the one reader of qwen's settings files ([`read`], [`layers`]): the run,
//! the relay gate, doctor and the login home all read them here, as qwen does.
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
use crate::model::Kind;
use crate::profile::SettingsSpec;
use crate::vault::Launch;

/// The CLI's name for the slot's kind (the profile's `auth_oauth` / `auth_api_key`).
pub fn auth_type(spec: &SettingsSpec, kind: Kind) -> &'static str {
    match kind {
        Kind::OAuth => spec.auth_oauth,
        Kind::ApiKey => spec.auth_api_key,
    }
}

/// What the user's own settings select (`security.auth.selectedType`, or the older top-level
/// `selectedAuthType`), and what they enforce: the key paths are the profile's `settings`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selected {
    pub selected: Option<String>,
    pub enforced: Option<String>,
    pub model_name: Option<String>,
}

impl Selected {
    pub fn read(paths: &Paths) -> Selected {
        // System first: the system layer wins when it sets a value, as it does in qwen.
        let layers = layers(paths, None);
        let pick = |path: &[&str]| {
            layers.iter().find_map(|(_, v)| {
                let mut cur = v;
                for key in path {
                    cur = cur.get(key)?;
                }
                cur.as_str().map(str::to_string)
            })
        };
        let spec = &paths.profile.settings;
        Selected {
            selected: pick(spec.selected).or_else(|| pick(&[spec.legacy_selected])),
            enforced: pick(spec.enforced),
            model_name: pick(spec.model),
        }
    }
}

/// The CLI will read a system settings file written in our private directory: always, unless
/// the profile's CLI reads one only when root owns it and every directory above it, none
/// writable by group or others (then: only when we run as root and those directories are so).
pub fn private_honored(paths: &Paths) -> bool {
    use std::os::unix::fs::MetadataExt;
    if !paths.profile.settings.system_root_only {
        return true;
    }
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    // `private` may not exist yet: it is created 0700 and owned by us (root) when written.
    paths
        .private
        .ancestors()
        .skip(1)
        .all(|dir| match fs::metadata(dir) {
            Ok(m) => m.uid() == 0 && m.mode() & 0o022 == 0,
            Err(_) => false,
        })
}

/// The system settings file: `QWEN_CODE_SYSTEM_SETTINGS_PATH`, else /etc/qwen-code/settings.json
/// (the profile's `system_var` and `system_default`).
pub fn system_path(spec: &SettingsSpec) -> PathBuf {
    Some(spec.system_var)
        .filter(|name| !name.is_empty())
        .and_then(std::env::var_os)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(spec.system_default))
}

/// One settings file as [`read`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    /// No file there.
    Missing,
    /// There, but not a regular UTF-8 file of at most `MAX_OWN_FILE` bytes (or not readable):
    /// why.
    Unreadable(String),
    /// Not JSON once its comments are stripped: serde_json's reason.
    Invalid(String),
    /// Valid JSON; qwen needs an object, which [`Doc::object`] checks.
    Json(Value),
}

impl Doc {
    /// The settings when the file holds a JSON object.
    pub fn object(self) -> Option<Value> {
        match self {
            Doc::Json(v) if v.is_object() => Some(v),
            _ => None,
        }
    }
}

/// THE reader of qwen's settings files, which may be a repository's (untrusted) content: read
/// without blocking (a FIFO must not hang a run) and at most `MAX_OWN_FILE` bytes; then, as
/// qwen does, a UTF-8 byte-order mark dropped, comments stripped ([`strip_comments`]) and the
/// rest parsed as JSON.
pub fn read(path: &Path) -> Doc {
    let text = match crate::files::read_text(path, crate::files::MAX_OWN_FILE) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Doc::Missing,
        Err(e) => return Doc::Unreadable(e.to_string()),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    match serde_json::from_str(&strip_comments(text)) {
        Ok(v) => Doc::Json(v),
        Err(e) => Doc::Invalid(e.to_string()),
    }
}

/// The settings files qwen merges that hold a JSON object, highest precedence first: system,
/// workspace (`<cwd>/.qwen/settings.json`, when `cwd` is given and that is not the user's file),
/// user. A file that is missing, unreadable or invalid is left out.
pub fn layers(paths: &Paths, cwd: Option<&Path>) -> Vec<(PathBuf, Value)> {
    let mut files = vec![system_path(&paths.profile.settings)];
    if let Some(cwd) = cwd {
        let workspace = cwd.join(paths.profile.settings.workspace);
        if workspace != paths.settings {
            files.push(workspace);
        }
    }
    files.push(paths.settings.clone());
    files
        .into_iter()
        .filter_map(|p| read(&p).object().map(|v| (p, v)))
        .collect()
}

/// The text with its comments blanked as qwen's strip-json-comments does them: `//` to the end
/// of the line and `/* … */` (an unterminated one to the end of the text), outside strings (a
/// `"` preceded by an odd number of backslashes does not end one). A comment's characters become
/// spaces (its line breaks stay), so a parse error still points at the right line and column.
pub fn strip_comments(text: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Code,
        Line,
        Block,
    }
    let b = text.as_bytes();
    let escaped = |at: usize| b[..at].iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 1;
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, part: &[u8]| {
        // One space per character (a UTF-8 continuation byte adds none).
        out.extend(
            part.iter()
                .filter(|&&c| !(0x80..0xc0).contains(&c))
                .map(|&c| if c.is_ascii_whitespace() { c } else { b' ' }),
        );
    };
    let (mut state, mut in_string, mut offset, mut i) = (In::Code, false, 0, 0);
    while i < b.len() {
        let (c, next) = (b[i], b.get(i + 1).copied());
        if state == In::Code && c == b'"' && !escaped(i) {
            in_string = !in_string;
        }
        if in_string {
            i += 1;
            continue;
        }
        match (state, c, next) {
            (In::Code, b'/', Some(b'/')) => {
                out.extend_from_slice(&b[offset..i]);
                (offset, state) = (i, In::Line);
                i += 1;
            }
            (In::Line, b'\r', Some(b'\n')) => {
                i += 1;
                blank(&mut out, &b[offset..i]);
                (offset, state) = (i, In::Code);
            }
            (In::Line, b'\n', _) => {
                blank(&mut out, &b[offset..i]);
                (offset, state) = (i, In::Code);
            }
            (In::Code, b'/', Some(b'*')) => {
                out.extend_from_slice(&b[offset..i]);
                (offset, state) = (i, In::Block);
                i += 1;
            }
            (In::Block, b'*', Some(b'/')) => {
                i += 1;
                blank(&mut out, &b[offset..=i]);
                (offset, state) = (i + 1, In::Code);
            }
            _ => {}
        }
        i += 1;
    }
    match state {
        In::Code => out.extend_from_slice(&b[offset..]),
        In::Line | In::Block => blank(&mut out, &b[offset..]),
    }
    // Only whole comments (which start and end at ASCII bytes) became ASCII spaces.
    String::from_utf8(out).unwrap_or_default()
}

/// Why a slot cannot run under the user's settings, if it cannot.
pub fn blocked(paths: &Paths, launch: &Launch, selected: &Selected) -> Option<String> {
    let want = auth_type(&paths.profile.settings, launch.kind);
    match &selected.enforced {
        Some(enforced) if enforced != want => Some(format!(
            "{}'s settings enforce the auth type `{enforced}`, so account {} ({want}) cannot be used",
            paths.profile.name, launch.slot
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
    let spec = &paths.profile.settings;
    // No variable points the CLI to another system settings file (claude): nothing to write.
    if spec.system_var.is_empty() {
        return Ok(Vec::new());
    }
    if !private_honored(paths) {
        // The CLI would skip the file (and say so on every run): the run goes without it.
        return Ok(Vec::new());
    }
    let want = auth_type(spec, launch.kind);
    let model = launch.api.as_ref().and_then(|a| a.model.clone());
    let model_differs = launch.kind == Kind::ApiKey
        && model.is_some()
        && selected.model_name.is_some()
        && selected.model_name != model;
    if selected.selected.as_deref() == Some(want) && !model_differs {
        return Ok(Vec::new());
    }
    let mut system = read(&system_path(spec))
        .object()
        .unwrap_or_else(|| Value::Object(Map::new()));
    set(&mut system, spec.selected, Value::String(want.to_string()));
    if let (Kind::ApiKey, Some(model)) = (launch.kind, model) {
        set(&mut system, spec.model, Value::String(model));
    }
    let dir = paths.private.clone();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    crate::files::keep_owner(None, &dir);
    let file = dir.join(format!("system-settings-{}.json", launch.slot));
    let text = serde_json::to_string_pretty(&system).unwrap_or_default();
    // Most runs find the file as they left it: write only when it changed.
    let current = crate::files::read_text(&file, crate::files::MAX_OWN_FILE).ok();
    if current.as_deref() != Some(text.as_str()) {
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
        crate::files::keep_owner(Some(tmp.as_file()), &file);
        tmp.persist(&file).map_err(|e| e.error)?;
    }
    let defaults = std::env::var_os(spec.defaults_var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from(spec.defaults_default));
    Ok(vec![
        (OsString::from(spec.system_var), file.into_os_string()),
        (OsString::from(spec.defaults_var), defaults),
    ])
}

/// Sets `value` at the key path `path`, making each key on the way an object (a value that is
/// not one is replaced).
pub fn set(root: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        // No key names the setting (claude selects nothing): nothing to set.
        return;
    };
    let mut cur = root;
    for key in parents {
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
        map.insert((*last).to_string(), value);
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
    fn settings_comments_are_stripped_outside_strings() {
        let text = "{\n // a comment\n \"a\": \"x//y\", /* block */ \"b\": \"/*z*/\"\n}";
        let doc: Value = serde_json::from_str(&strip_comments(text)).unwrap();
        assert_eq!(doc["a"], "x//y");
        assert_eq!(doc["b"], "/*z*/");
    }

    #[test]
    fn strings_with_comment_marks_and_escaped_quotes_are_kept() {
        let text = r#"{"u": "http://h/a", "g": "/* not */", "q": "a\"//b", "bs": "c:\\", /* gone */ "n": 1}"#;
        let doc: Value = serde_json::from_str(&strip_comments(text)).unwrap();
        assert_eq!(doc["u"], "http://h/a");
        assert_eq!(doc["g"], "/* not */");
        assert_eq!(doc["q"], "a\"//b");
        assert_eq!(doc["bs"], "c:\\");
        assert_eq!(doc["n"], 1);
        // The string ends at the quote after `\\`: the `//` behind it starts a comment.
        let text = "{\"bs\": \"c:\\\\\" // \"x\": 2\n}";
        let doc: Value = serde_json::from_str(&strip_comments(text)).unwrap();
        assert_eq!(doc, serde_json::json!({"bs": "c:\\"}));
    }

    #[test]
    fn comments_become_spaces_and_keep_their_line_breaks() {
        assert_eq!(strip_comments("a/* x\ny */b"), "a    \n    b");
        assert_eq!(strip_comments("a // x\r\nb // y"), "a     \r\nb     ");
        assert_eq!(strip_comments("\"é\" /* é */ 1"), "\"é\"         1");
        // `/*/` does not close the comment it opens; `*/` outside one is left to the parser.
        assert_eq!(strip_comments("1 /*/ 2 */ 3"), "1          3");
        assert_eq!(strip_comments("1 */"), "1 */");
    }

    #[test]
    fn an_unterminated_comment_runs_to_the_end() {
        assert_eq!(
            strip_comments("{\"a\": 1} /* open\n\"b\""),
            "{\"a\": 1}        \n   "
        );
        assert_eq!(strip_comments("{} // end"), "{}       ");
        // Cut inside a string: nothing after the quote is a comment.
        assert_eq!(strip_comments("{\"a\": \"/* x"), "{\"a\": \"/* x");
    }

    #[test]
    fn the_reader_tells_missing_unreadable_invalid_and_json_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("settings.json");
        assert_eq!(read(&p), Doc::Missing);
        fs::write(
            &p,
            "\u{feff}{\n  // mine\n  \"model\": {\"name\": \"m\"} /* b */\n}\n",
        )
        .unwrap();
        assert_eq!(
            read(&p).object(),
            Some(serde_json::json!({"model": {"name": "m"}}))
        );
        fs::write(&p, "[1] // a list").unwrap();
        assert_eq!(read(&p), Doc::Json(serde_json::json!([1])));
        assert_eq!(read(&p).object(), None);
        fs::write(&p, "{\"a\": 1,, }").unwrap();
        assert!(matches!(read(&p), Doc::Invalid(e) if e.contains("line 1")));
        fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(read(&p), Doc::Unreadable(e) if e.contains("UTF-8")));
        fs::remove_file(&p).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(read(&p), Doc::Unreadable(e) if e.contains("FIFO")));
    }

    #[test]
    fn layers_are_system_workspace_user_and_skip_what_is_not_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path().join("home"));
        fs::create_dir_all(paths.settings.parent().unwrap()).unwrap();
        let work = dir.path().join("work");
        fs::create_dir_all(work.join(".qwen")).unwrap();
        fs::write(&paths.settings, "{\"who\": \"user\"} // c").unwrap();
        fs::write(
            work.join(".qwen/settings.json"),
            "/* c */ {\"who\": \"workspace\"}",
        )
        .unwrap();
        let who = |l: Vec<(PathBuf, Value)>| -> Vec<String> {
            l.into_iter()
                .map(|(_, v)| v["who"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        // No system file in this test's environment unless one is installed there.
        let system = read(&system_path(&paths.profile.settings))
            .object()
            .is_some() as usize;
        assert_eq!(
            who(layers(&paths, Some(&work)))[system..],
            ["workspace", "user"]
        );
        assert_eq!(who(layers(&paths, None))[system..], ["user"]);
        fs::write(work.join(".qwen/settings.json"), "[]").unwrap();
        assert_eq!(who(layers(&paths, Some(&work)))[system..], ["user"]);
    }

    #[test]
    fn the_profile_names_the_keys_and_the_system_file_read() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.json");
        let mut profile = crate::profile::QWEN.clone();
        profile.settings.selected = &["auth", "kind"];
        profile.settings.legacy_selected = "authKind";
        profile.settings.enforced = &["auth", "must"];
        profile.settings.model = &["llm"];
        profile.settings.system_var = "QWEN_ROTATION_TEST_UNSET_SYSTEM_SETTINGS";
        profile.settings.system_default = system.to_str().unwrap().to_string().leak();
        let paths = Paths::of(Box::leak(Box::new(profile)), dir.path().join("home"));
        fs::create_dir_all(paths.settings.parent().unwrap()).unwrap();
        fs::write(
            &paths.settings,
            r#"{"auth": {"kind": "a", "must": "b"}, "llm": "m",
                "security": {"auth": {"selectedType": "x", "enforcedType": "y"}},
                "model": {"name": "z"}}"#,
        )
        .unwrap();
        let want = |s: &str, e: &str, m: &str| Selected {
            selected: Some(s.into()),
            enforced: Some(e.into()),
            model_name: Some(m.into()),
        };
        assert_eq!(Selected::read(&paths), want("a", "b", "m"));
        // The older top-level key, and the system layer (the profile's default path) first.
        fs::write(
            &paths.settings,
            r#"{"authKind": "c", "auth": {"must": "b"}, "llm": "m"}"#,
        )
        .unwrap();
        assert_eq!(Selected::read(&paths), want("c", "b", "m"));
        fs::write(&system, r#"{"auth": {"kind": "s"}, "llm": "n"}"#).unwrap();
        assert_eq!(Selected::read(&paths), want("s", "b", "n"));
    }

    #[test]
    fn a_private_override_counts_only_where_the_cli_reads_it() {
        use std::os::unix::fs::MetadataExt;
        // qwen reads any system file; gemini only one that root owns, under directories that
        // root owns and nobody else may write (a world-writable /tmp is not such a place).
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        assert!(private_honored(&Paths::of(
            &crate::profile::QWEN,
            dir.path()
        )));
        let gemini = Paths::of(&crate::profile::GEMINI, dir.path().join(".gemini"));
        assert!(!private_honored(&gemini));
        // Under the crate's directory (root's, 0755 up to `/` when the tests run as root).
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let secure = crate_dir
            .ancestors()
            .all(|d| fs::metadata(d).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0));
        let inside = Paths::of(&crate::profile::GEMINI, crate_dir);
        assert_eq!(
            private_honored(&inside),
            nix::unistd::geteuid().is_root() && secure
        );
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
