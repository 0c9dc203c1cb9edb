//! `--rotation-help` and `--rotation-version` (with the version of the real qwen, read from its
//! npm package).

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use crate::error::Error;
use crate::files;

use super::ui::{Ui, out, print_json};

pub(super) fn help_text() -> String {
    format!(
        "qwen-rotation {version}: a drop-in `qwen` that moves to the next account when one runs out of quota.

Usage: qwen [qwen's own arguments]          runs the real qwen, rotating accounts on quota errors
       qwen --rotation-<command> [options]  manages the accounts (the real qwen does not run)

Per-run modifiers (removed before qwen sees argv):
  --rotation-account N|LABEL   use this account for this run         qwen --rotation-account 2 -p hi
  --rotation-no-retry          rotate on a quota hit but do not rerun    qwen --rotation-no-retry -p hi
  --rotation-hold              piped text output: hold it until qwen ends, so a quota hit after
                               the answer started is retried (rotation.yaml: hold_text_output)
                                                                         qwen --rotation-hold -p hi > out.txt

Commands (read commands take --json for machine output):
  --rotation-help              this text                                 qwen --rotation-help
  --rotation-version           versions of the shim and the real qwen   qwen --rotation-version --json
  --rotation-status            accounts, the live one, cooldowns         qwen --rotation-status
  --rotation-list              the same as --rotation-status             qwen --rotation-list --json
  --rotation-status --watch    redraws the status every 2s on a terminal qwen --rotation-status --watch
  --rotation-stats             runs, switches, hits, cooldowns, last reset and per-day history
                                                                         qwen --rotation-stats --json
  --rotation-switch N|LABEL    make an account live (clears its cooldown) qwen --rotation-switch work
  --rotation-next              move to the next usable account           qwen --rotation-next
                               (exit 0 switched, 1 none available)
  --rotation-add [LABEL]       store the current login (~/.qwen/oauth_creds.json) as an account
                                                                         qwen --rotation-add personal
  --rotation-add --login [LABEL]
                               log in to another account in a temporary home, then store it
                                                                         qwen --rotation-add --login work
  --rotation-add --api-key [LABEL] [--base-url URL] [--model M] [--env-key NAME]
                               store an API key, read from stdin or a hidden prompt (never argv)
                               printf %s \"$KEY\" | qwen --rotation-add --api-key cp --base-url https://coding-intl.dashscope.aliyuncs.com/v1 --model qwen3-coder-plus
  --rotation-setup             guided capture of several accounts (terminal)
                                                                         qwen --rotation-setup
  --rotation-remove N|LABEL    remove an account (its file moves to accounts/removed/)
                                                                         qwen --rotation-remove 3
  --rotation-enable N|LABEL    use an account again                      qwen --rotation-enable 3
  --rotation-disable N|LABEL   keep an account out of rotation           qwen --rotation-disable 3
  --rotation-reset [N|all]     clear cooldowns and needs-login marks     qwen --rotation-reset all
  --rotation-label N LABEL     name an account (\"\" removes the label)    qwen --rotation-label 2 work
  --rotation-log [--tail N]    the audit log (default: last 20; --tail 0: all)
                                                                         qwen --rotation-log --tail 50
  --rotation-doctor [--fix]    check the setup: real qwen, PATH, QWEN_HOME, permissions, locks,
                               files; --fix repairs what it can          qwen --rotation-doctor --fix

Files (in QWEN_HOME, default ~/.qwen): accounts/oauth_creds_N.json (OAuth accounts),
accounts/api_key_N.json (API keys), oauth_creds.json (the live login), state.yaml, rotation.log,
rotation.yaml (settings: strategy round-robin|fill-first, cooldowns, patterns), rotation.lock.

Exit codes: qwen's own status when it runs · 75 every account exhausted · 127 real qwen not found ·
126 real qwen not executable · 2 bad usage (including an account that does not exist) ·
1 a management command failed (--rotation-next: no other account; --rotation-doctor: problems).
Environment: QWEN_HOME, QWEN_ROTATION=off (run qwen untouched), QWEN_ROTATION_REAL=/path/to/qwen, NO_COLOR.
Accounts from the environment (CI secrets; slot files are then ignored, docs/CI.md):
  QWEN_ROTATION_KEYS=\"$K1,$K2\" or QWEN_ROTATION_KEY_1, QWEN_ROTATION_KEY_2, … one key each;
  QWEN_ROTATION_BASE_URL[_N], QWEN_ROTATION_MODEL[_N] (default: OPENAI_BASE_URL, OPENAI_MODEL);
  QWEN_ROTATION_STATE_DIR=DIR keeps state.yaml and rotation.log there (else QWEN_HOME if
  writable, else for the run only).            QWEN_ROTATION_KEYS=\"$KEY1 $KEY2\" qwen -p hi
",
        version = env!("CARGO_PKG_VERSION")
    )
}

pub(super) fn version(ui: &Ui) -> Result<i32, Error> {
    let real = crate::locate::real_qwen().ok();
    let real_version = real.as_ref().and_then(|r| real_qwen_version(&r.path));
    if ui.json {
        print_json(&json!({
            "name": "qwen-rotation",
            "version": env!("CARGO_PKG_VERSION"),
            "build_marker": crate::locate::SHIM_MARKER,
            "real_qwen": real.as_ref().map(|r| r.path.display().to_string()),
            "real_qwen_version": real_version,
        }));
    } else {
        let mut text = format!("qwen-rotation {}\n", env!("CARGO_PKG_VERSION"));
        if let Some(r) = &real {
            text.push_str(&format!(
                "real qwen: {}{}\n",
                r.path.display(),
                real_version.map(|v| format!(" ({v})")).unwrap_or_default()
            ));
        }
        out(&text);
    }
    Ok(0)
}

/// The version in the npm package the real qwen belongs to (its `package.json`), if found.
pub(super) fn real_qwen_version(path: &Path) -> Option<String> {
    let real = fs::canonicalize(path).ok()?;
    for dir in real.ancestors().skip(1).take(6) {
        let Ok(text) = files::read_text(&dir.join("package.json"), files::MAX_OWN_FILE) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("name").and_then(Value::as_str) == Some("@qwen-code/qwen-code") {
            return v.get("version").and_then(Value::as_str).map(str::to_string);
        }
    }
    None
}

/// (major, minor) of "0.12.0".
pub(super) fn version_pair(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli;

    #[test]
    fn help_mentions_every_command() {
        let h = help_text();
        for c in cli::COMMANDS.iter().chain(cli::MODIFIERS) {
            assert!(h.contains(c), "{c}");
        }
    }
}
