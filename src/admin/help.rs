//! `--rotation-help` and `--rotation-version` (with the version of the real qwen, read from its
//! npm package).

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use crate::error::Error;
use crate::files;
use crate::profile::Profile;

use super::ui::{Ui, out, print_json};

/// The help, worded for `profile` (its name, home, files and variables).
pub(super) fn help_text(profile: &Profile) -> String {
    let mut text = commands_text(profile);
    if !profile.creds.file_swap {
        text.push_str(&format!(
            "OAuth logins ({}) are not rotated for {name} yet: --rotation-add without --api-key,\n\
             --rotation-add --login and --rotation-setup refuse (exit 2); add API keys instead.\n",
            profile.creds.file,
            name = profile.name
        ));
    } else if profile.api.relay_login_headers.is_some() {
        text.push_str(&format!(
            "Subscription logins ({file}) and API keys share one pool: {order}.\n\
             Each login's requests pass through the relay, which moves a request that hit a usage\n\
             limit to the next login (the file swapped; {name} uses it from its next request) or,\n\
             past the last login, to a key.\n",
            file = profile.creds.file,
            name = profile.name,
            order = match profile.order {
                crate::model::Order::LoginsFirst =>
                    "logins first, keys only while\nevery login cools down, back to a login at its reset",
                crate::model::Order::Slots => "in slot order",
            },
        ));
    } else if profile.creds.reread_after.is_none() {
        text.push_str(&format!(
            "OAuth logins ({file}) rotate by swapping the file; {name} reads it only when it starts,\n\
             so a swap takes effect at its next start (a headless run is re-run at once). Not with\n\
             encrypted credential storage{enc}: add API keys there.\n",
            file = profile.creds.file,
            name = profile.name,
            enc = profile
                .creds
                .encrypted
                .as_ref()
                .map(|e| format!(" ({}=true)", e.var))
                .unwrap_or_default(),
        ));
    }
    text
}

fn commands_text(profile: &Profile) -> String {
    let (pool, api, name) = (&profile.pool_vars, &profile.api, profile.name);
    // Text before a column that names the CLI, padded to where that column starts for qwen (a
    // longer name moves the column, both usage lines together).
    let usage = [
        format!("Usage: {name} [{name}'s own arguments]"),
        format!("       {name} --rotation-<command> [options]"),
    ];
    let usage_column = usage
        .iter()
        .map(|u| u.chars().count() + 2)
        .fold(44, usize::max);
    let [usage, usage_command] = usage.map(|u| to_column(&u, usage_column));
    // qwen's entry ends one column before the other examples; a longer name reaches them.
    let version_entry = to_column(
        &format!("  --rotation-version           versions of the shim and the real {name}"),
        72,
    );
    format!(
        "qwen-rotation {version}: a drop-in `{name}` that moves to the next account when one runs out of quota.

{usage}runs the real {name}, rotating accounts on quota errors
{usage_command}manages the accounts (the real {name} does not run)

Per-run modifiers (removed before {name} sees argv):
  --rotation-account N|LABEL   use this account for this run         {name} --rotation-account 2 -p hi
  --rotation-no-retry          rotate on a quota hit but do not rerun    {name} --rotation-no-retry -p hi
  --rotation-hold              piped text output: hold it until {name} ends, so a quota hit after
                               the answer started is retried (rotation.yaml: hold_text_output)
                                                                         {name} --rotation-hold -p hi > out.txt

Commands (read commands take --json for machine output):
  --rotation-help              this text                                 {name} --rotation-help
{version_entry}{name} --rotation-version --json
  --rotation-status            accounts, the live one, cooldowns         {name} --rotation-status
  --rotation-list              the same as --rotation-status             {name} --rotation-list --json
  --rotation-status --watch    redraws the status every 2s on a terminal {name} --rotation-status --watch
  --rotation-stats             runs, switches, hits, cooldowns, last reset and per-day history
                                                                         {name} --rotation-stats --json
  --rotation-switch N|LABEL    make an account live (clears its cooldown) {name} --rotation-switch work
  --rotation-next              move to the next usable account           {name} --rotation-next
                               (exit 0 switched, 1 none available)
  --rotation-add [LABEL]       store the current login (~/{dir}/{creds}) as an account
                                                                         {name} --rotation-add personal
  --rotation-add --login [LABEL]
                               log in to another account in a temporary home, then store it
                                                                         {name} --rotation-add --login work
  --rotation-add --api-key [LABEL] [--base-url URL] [--model M] [--env-key NAME]
                               store an API key, read from stdin or a hidden prompt (never argv)
                               printf %s \"$KEY\" | {name} --rotation-add --api-key cp --base-url {plan_url} --model {model}
  --rotation-setup             guided capture of several accounts (terminal)
                                                                         {name} --rotation-setup
  --rotation-remove N|LABEL    remove an account (its file moves to accounts/removed/)
                                                                         {name} --rotation-remove 3
  --rotation-enable N|LABEL    use an account again                      {name} --rotation-enable 3
  --rotation-disable N|LABEL   keep an account out of rotation           {name} --rotation-disable 3
  --rotation-reset [N|all]     clear cooldowns and needs-login marks     {name} --rotation-reset all
  --rotation-label N LABEL     name an account (\"\" removes the label)    {name} --rotation-label 2 work
  --rotation-log [--tail N]    the audit log (default: last 20; --tail 0: all)
                                                                         {name} --rotation-log --tail 50
  --rotation-dashboard [--port N]
                               a live page of the pool on 127.0.0.1 (URL with its token printed;
                               also /api/pool JSON and /metrics for Prometheus; Ctrl-C stops it)
                                                                         {name} --rotation-dashboard
  --rotation-report FILE.html  the same page as one offline file, the pool as of now
                                                                         {name} --rotation-report pool.html
  --rotation-doctor [--fix]    check the setup: real {name}, PATH, {home}, permissions, locks,
                               files; --fix repairs what it can          {name} --rotation-doctor --fix
  --rotation-demo              a quota rotation on the real {name}, offline, in a temporary home
                               (built-in provider on 127.0.0.1; nothing of yours is touched)
                               exit 0 it worked, 1 it did not (the line says why), 127 no real {name}
                                                                         {name} --rotation-demo

Files (in {home}, default ~/{dir}): accounts/oauth_creds_N.json (OAuth accounts),
accounts/api_key_N.json (API keys), {creds} (the live login), state.yaml, rotation.log,
rotation.yaml (settings: strategy round-robin|fill-first, order slots|logins-first, cooldowns,
patterns), rotation.lock.

Exit codes: {name}'s own status when it runs · 75 every account exhausted · 127 real {name} not found ·
126 real {name} not executable · 2 bad usage (including an account that does not exist) ·
1 a management command failed (--rotation-next: no other account; --rotation-doctor: problems).
Environment: {home}, {off}=off (run {name} untouched), {real}=/path/to/{name}, NO_COLOR.
Accounts from the environment (CI secrets; slot files are then ignored, docs/CI.md):
  {keys}=\"$K1,$K2\" or {key_prefix}1, {key_prefix}2, … one key each;
  {base_url_var}[_N], {model_var}[_N] (default: {cli_base_url}, {cli_model});
  {state_dir}=DIR keeps state.yaml and rotation.log there (else {home} if
  writable, else for the run only).            {keys}=\"$KEY1 $KEY2\" {name} -p hi
",
        version = env!("CARGO_PKG_VERSION"),
        home = profile.home.var,
        dir = profile.home.dir,
        creds = profile.creds.file,
        off = pool.off,
        real = pool.real,
        keys = pool.keys,
        key_prefix = pool.key_prefix,
        base_url_var = pool.base_url,
        model_var = pool.model,
        state_dir = pool.state_dir,
        cli_base_url = api.base_url_var,
        cli_model = api.model_vars[0],
        plan_url = api.example_plan_url,
        model = api.example_model,
    )
}

pub(super) fn version(profile: &Profile, ui: &Ui) -> Result<i32, Error> {
    let real = crate::locate::real_qwen().ok();
    let real_version = real
        .as_ref()
        .and_then(|r| real_qwen_version(&r.path, profile.npm_package));
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
                "real {}: {}{}\n",
                profile.name,
                r.path.display(),
                real_version.map(|v| format!(" ({v})")).unwrap_or_default()
            ));
        }
        out(&text);
    }
    Ok(0)
}

/// The version in the npm package `npm` the real CLI belongs to (its `package.json`), if found.
pub(super) fn real_qwen_version(path: &Path, npm: &str) -> Option<String> {
    let real = fs::canonicalize(path).ok()?;
    for dir in real.ancestors().skip(1).take(6) {
        let Ok(text) = files::read_text(&dir.join("package.json"), files::MAX_OWN_FILE) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("name").and_then(Value::as_str) == Some(npm) {
            return v.get("version").and_then(Value::as_str).map(str::to_string);
        }
    }
    None
}

/// `text` and spaces up to column `column` (at least two: a longer text still leaves a gap).
fn to_column(text: &str, column: usize) -> String {
    let width = text.chars().count();
    format!("{text}{}", " ".repeat(column.saturating_sub(width).max(2)))
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
        let h = help_text(&crate::profile::QWEN);
        for c in cli::COMMANDS.iter().chain(cli::MODIFIERS) {
            assert!(h.contains(c), "{c}");
        }
    }

    /// Where each column of a line starts: the text after every run of two or more spaces.
    fn columns(line: &str) -> Vec<usize> {
        let chars: Vec<char> = line.chars().collect();
        (2..chars.len())
            .filter(|&i| chars[i] != ' ' && chars[i - 1] == ' ' && chars[i - 2] == ' ')
            .collect()
    }

    #[test]
    fn the_columns_do_not_move_with_the_length_of_the_name() {
        let mut profile = crate::profile::QWEN.clone();
        profile.name = "gemini";
        let (qwen, other) = (help_text(&crate::profile::QWEN), help_text(&profile));
        let (qwen, other): (Vec<&str>, Vec<&str>) =
            (qwen.lines().collect(), other.lines().collect());
        assert_eq!(qwen.len(), other.len());
        // The usage lines' descriptions start in one column.
        assert!(other[2].starts_with("Usage: gemini "), "{}", other[2]);
        assert_eq!(
            columns(other[2])[0],
            columns(other[3])[1],
            "\n{}\n{}",
            other[2],
            other[3]
        );
        // Every other column is where qwen's is; the version example reaches the examples' column.
        let help_entry = other
            .iter()
            .find(|l| l.contains("--rotation-help "))
            .unwrap();
        let example = *columns(help_entry).last().unwrap();
        let mut compared = 0;
        for (q, o) in qwen.iter().zip(&other).skip(4) {
            let mut want = columns(q);
            if o.contains("gemini --rotation-version --json") {
                want = vec![2, 31, example];
            }
            assert_eq!(columns(o), want, "\n{q}\n{o}");
            compared += usize::from(!want.is_empty());
        }
        assert!(compared > 20, "{compared} lines with columns");
    }

    #[test]
    fn the_gemini_help_names_nothing_of_qwen() {
        let h = help_text(&crate::profile::GEMINI);
        for c in cli::COMMANDS.iter().chain(cli::MODIFIERS) {
            assert!(h.contains(c), "{c}");
        }
        // The shim's own name (`qwen-rotation`) is the product's, not qwen's.
        let rest = h.replace("qwen-rotation", "");
        for word in ["qwen", "QWEN", "OPENAI", "dashscope", ".qwen"] {
            assert!(!rest.contains(word), "{word} in:\n{h}");
        }
        assert!(h.contains("OAuth logins (oauth_creds.json) rotate by swapping the file; gemini reads it only when it starts"));
        assert!(h.contains("GEMINI_FORCE_ENCRYPTED_FILE_STORAGE=true"));
        let qwen = help_text(&crate::profile::QWEN);
        assert!(!qwen.contains("not rotated") && !qwen.contains("only when it starts"));
        for want in [
            "GEMINI_CLI_HOME",
            "~/.gemini",
            "GEMINI_ROTATION_KEYS",
            "GOOGLE_GEMINI_BASE_URL",
            "gemini --rotation-status",
        ] {
            assert!(h.contains(want), "{want}");
        }
    }
}
