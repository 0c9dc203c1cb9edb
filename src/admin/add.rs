//! `--rotation-add` (the live login, `--login` in a temporary home, `--api-key` from stdin or a
//! hidden prompt) and the guided `--rotation-setup`. A key never comes from argv and never
//! reaches the output.

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, exit};
use crate::files;
use crate::model::Secret;
use crate::profile::SettingsSpec;
use crate::text::{printable, redact_url};
use crate::vault::{self, ApiKeySlot, LiveFile, Vault};

use super::parse::{AddArgs, label_arg};
use super::ui::{Ui, describe, out};

// -- add --------------------------------------------------------------------------------------

pub(super) fn add_live(v: &Vault, label: Option<&str>) -> Result<i32, Error> {
    oauth_supported(v)?;
    let live = &v.paths.live_creds;
    let file = LiveFile::read(live).map_err(|e| Error::io("read", live, e))?;
    let Some(bytes) = file.bytes() else {
        let name = v.paths.profile.name;
        return Err(Error::Other(format!(
            "there is no login to capture: {} does not exist; log in with the real {name} first, or run {name} --rotation-add --login",
            live.display()
        )));
    };
    let n = v.add_oauth(bytes, live, label)?;
    let o = v.overview()?;
    out(&format!(
        "Added {} from {}.\n{}",
        describe(&o.state, n),
        live.display(),
        if o.state.current_index == n {
            "It is the live account.\n".to_string()
        } else {
            String::new()
        }
    ));
    Ok(0)
}

/// Err(Usage) for a CLI whose logins cannot be rotated by swapping its credentials file, or
/// that keeps its login encrypted right now.
fn oauth_supported(v: &Vault) -> Result<(), Error> {
    let profile = v.paths.profile;
    let name = profile.name;
    if !profile.creds.file_swap {
        return Err(Error::Usage(format!(
            "subscription logins (OAuth, {}) are not rotated for {name} yet; add API keys instead: printf %s \"$KEY\" | {name} --rotation-add --api-key LABEL",
            profile.creds.file,
        )));
    }
    if let Some(why) = vault::encrypted_storage(&v.paths) {
        return Err(Error::Usage(format!(
            "{name} keeps its login in encrypted storage ({why}), where swapping {} cannot work; turn that off and log in again, or add API keys: printf %s \"$KEY\" | {name} --rotation-add --api-key LABEL",
            profile.creds.file,
        )));
    }
    Ok(())
}

/// Runs the real qwen in a fresh temporary home so the person logs in to another account;
/// then stores the login it wrote. The live login is never touched.
pub(super) fn add_login(v: &Vault, label: Option<&str>, ui: &Ui) -> Result<usize, Error> {
    oauth_supported(v)?;
    let profile = v.paths.profile;
    if !ui.tty_in || !ui.tty_out {
        return Err(Error::Usage(format!(
            "--rotation-add --login runs {}'s interactive login and needs a terminal; on a server, log in elsewhere and copy the {}, or use --api-key",
            profile.name, profile.creds.file
        )));
    }
    let real = crate::locate::real_qwen()?;
    files::ensure_dir(&v.paths.home)?;
    let tmp = tempfile::Builder::new()
        .prefix(".login-")
        .tempdir_in(&v.paths.home)
        .map_err(|e| Error::io("create a temporary home in", &v.paths.home, e))?;
    let qwen_home = tmp.path().join(profile.home.dir);
    files::ensure_dir(&qwen_home)?;
    let settings = qwen_home.join(profile.settings.file);
    fs::write(
        &settings,
        login_settings(&profile.settings, &v.paths.settings),
    )
    .map_err(|e| Error::io("write", &settings, e))?;
    crate::error::say(format_args!(
        "starting {name} in a temporary home: log in to the account to add, then quit {name} (/quit).\n\
         Your current login is not touched.",
        name = profile.name
    ));
    let mut cmd = std::process::Command::new(&real.path);
    let home_var = if profile.home.var_is_parent {
        tmp.path()
    } else {
        &qwen_home
    };
    cmd.env("HOME", tmp.path()).env(profile.home.var, home_var);
    // qwen picks API-key auth when these are set; the login needs OAuth.
    for var in profile.api.login_clears {
        cmd.env_remove(var);
    }
    for var in crate::config::pool_variables() {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().map_err(|e| Error::RealNotExecutable {
        path: real.path.clone(),
        source: e,
    })?;
    // The terminal sends Ctrl-C to qwen too; we wait for it instead of dying first.
    let _quiet = IgnoreInterrupts::new();
    let status = child
        .wait()
        .map_err(|e| Error::io("wait for", &real.path, e))?;
    let creds = qwen_home.join(profile.creds.file);
    let bytes = match files::read_regular(&creds, files::MAX_OWN_FILE, true) {
        Ok(b) => b,
        Err(_) => {
            return Err(Error::Other(format!(
                "{} exited ({status}) without a login (it wrote no {}); nothing was added",
                profile.name, profile.creds.file
            )));
        }
    };
    let n = v.add_oauth(&bytes, &creds, label)?;
    let o = v.overview()?;
    out(&format!(
        "Added {} (logged in through a temporary home).\n",
        describe(&o.state, n)
    ));
    Ok(n)
}

/// The settings for the login home: the person's own settings (so proxies and the like keep
/// working) without what could pick an API key (the profile's `login_strip`: for qwen
/// settings.env too), and with the OAuth login selected.
fn login_settings(spec: &SettingsSpec, user_settings: &Path) -> String {
    let mut v: Value = crate::settings::read(user_settings)
        .object()
        .unwrap_or_else(|| json!({}));
    for pointer in spec.login_strip {
        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
        let key = key.replace("~1", "/").replace("~0", "~");
        if let Some(o) = v.pointer_mut(parent).and_then(Value::as_object_mut) {
            o.remove(&key);
        }
    }
    crate::settings::set(&mut v, spec.selected, json!(spec.auth_oauth));
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
}

/// Ignores SIGINT/SIGQUIT while a child owns the terminal; restores on drop.
struct IgnoreInterrupts {
    saved: Vec<(nix::sys::signal::Signal, nix::sys::signal::SigHandler)>,
}

impl IgnoreInterrupts {
    fn new() -> IgnoreInterrupts {
        use nix::sys::signal::{SigHandler, Signal, signal};
        let mut saved = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGQUIT] {
            // SAFETY: SIG_IGN installs no Rust code as a handler; the previous handler is
            // restored in Drop. Called after the child was spawned, so it keeps the default.
            if let Ok(prev) = unsafe { signal(sig, SigHandler::SigIgn) } {
                saved.push((sig, prev));
            }
        }
        IgnoreInterrupts { saved }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, prev) in self.saved.drain(..) {
            // SAFETY: restores the handler that was installed before `new`.
            let _ = unsafe { nix::sys::signal::signal(sig, prev) };
        }
    }
}

pub(super) fn add_api_key(v: &Vault, a: &AddArgs, ui: &Ui) -> Result<i32, Error> {
    let key = if ui.tty_in {
        match prompt_secret("API key (input hidden): ")
            .map_err(|e| Error::io("read the key from", "the terminal", e))?
        {
            Some(k) => k,
            None => return Err(Error::Usage("cancelled; nothing was added".into())),
        }
    } else {
        read_key_from_stdin().map_err(|e| Error::io("read the key from", "stdin", e))?
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(Error::Usage(format!(
            "no key given; pipe it in (printf %s \"$KEY\" | {} --rotation-add --api-key LABEL) or type it at the prompt",
            v.paths.profile.name
        )));
    }
    vault::valid_api_key(&key).map_err(|p| {
        Error::Usage(format!(
            "{p}; give the key exactly as the provider shows it"
        ))
    })?;
    let slot = ApiKeySlot {
        key: Secret::new(key),
        base_url: a.base_url.clone(),
        model: a.model.clone(),
        env_key: a
            .env_key
            .clone()
            .unwrap_or_else(|| v.paths.profile.api.key_var.into()),
    };
    let n = v.add_api_key(&slot, a.label.as_deref())?;
    let o = v.overview()?;
    let mut text = format!(
        "Added {}: an API key{}{}, given to {} as {}.\n",
        describe(&o.state, n),
        slot.base_url
            .as_ref()
            .map(|u| format!(" for {}", redact_url(u)))
            .unwrap_or_default(),
        slot.model
            .as_ref()
            .map(|m| format!(" (model {})", printable(m)))
            .unwrap_or_default(),
        v.paths.profile.name,
        slot.env_key
    );
    if let (None, Some(default)) = (&slot.base_url, v.paths.profile.api.default_base_url) {
        text.push_str(&format!(
            "Requests with it go to {default}{}.\n",
            if slot.model.is_none() {
                format!("; the model is the one {} asks for", v.paths.profile.name)
            } else {
                String::new()
            }
        ));
    } else if v.paths.profile.api.default_base_url.is_some() && slot.model.is_none() {
        // A CLI that names its model in each request (gemini, claude): nothing to take from
        // settings.
        text.push_str(&format!(
            "The model is the one {} asks for.\n",
            v.paths.profile.name
        ));
    } else if slot.base_url.is_none() || slot.model.is_none() {
        let api = &v.paths.profile.api;
        text.push_str(&format!(
            "Note: without --base-url and --model, {} takes them from its settings (or {}/{}).\n",
            v.paths.profile.name,
            api.base_url_var,
            api.model_vars.first().copied().unwrap_or_default()
        ));
    }
    out(&text);
    Ok(0)
}

/// The first non-empty line of stdin (at most 64 KiB read).
fn read_key_from_stdin() -> io::Result<String> {
    let mut buf = Vec::new();
    io::stdin().lock().take(64 << 10).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string())
}

/// Reads a line from the terminal without echo. `None`: cancelled (Ctrl-C, Ctrl-D, Esc).
/// Non-canonical mode with ISIG off, so Ctrl-C arrives as a byte and the terminal is always
/// restored (by the guard) before we return; a signal can never leave echo off.
fn prompt_secret(prompt: &str) -> io::Result<Option<String>> {
    use nix::sys::termios::{LocalFlags, SetArg, SpecialCharacterIndices, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    let saved = tcgetattr(&stdin).map_err(io::Error::from)?;
    let mut raw = saved.clone();
    raw.local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG | LocalFlags::IEXTEN);
    raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    struct Restore<'a>(&'a io::Stdin, nix::sys::termios::Termios);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = tcsetattr(self.0, SetArg::TCSAFLUSH, &self.1);
        }
    }
    tcsetattr(&stdin, SetArg::TCSAFLUSH, &raw).map_err(io::Error::from)?;
    let _restore = Restore(&stdin, saved);
    eprint!("{prompt}");
    let _ = io::stderr().flush();
    let mut line = String::new();
    let mut lock = stdin.lock();
    let result = loop {
        let mut b = [0u8; 1];
        if lock.read(&mut b)? == 0 {
            break if line.is_empty() { None } else { Some(line) };
        }
        match b[0] {
            b'\r' | b'\n' => break Some(line),
            0x03 | 0x1b => break None,
            0x04 if line.is_empty() => break None,
            0x7f | 0x08 => {
                line.pop();
            }
            0x15 => line.clear(),
            c if c >= 0x20 && line.len() < 8192 => line.push(c as char),
            _ => {}
        }
    };
    crate::error::say_raw("");
    Ok(result)
}

// -- setup ------------------------------------------------------------------------------------

pub(super) fn setup(v: &Vault, ui: &Ui) -> Result<i32, Error> {
    oauth_supported(v)?;
    if !ui.tty_in || !ui.tty_out {
        crate::error::say(format_args!(
            "--rotation-setup is interactive and needs a terminal; from a script, add accounts one at a time:\n\
             \x20 {name} --rotation-add LABEL                       capture the login in {}\n\
             \x20 printf %s \"$KEY\" | {name} --rotation-add --api-key LABEL --base-url URL --model M\n\
             \x20 (on a terminal: {name} --rotation-add --login LABEL logs in to another account)",
            v.paths.live_creds.display(),
            name = v.paths.profile.name
        ));
        return Ok(exit::USAGE);
    }
    out(&format!(
        "Setting up account rotation in {}.\nEach account is added by logging in to it in a temporary {} session; your current login stays as it is.\n\n",
        v.paths.home.display(),
        v.paths.profile.name
    ));
    let before = v.overview()?;
    if let Some(bytes) = before.live.bytes()
        && vault::check_oauth(bytes).is_ok()
        && before.live_owner.is_none()
        && ask(&format!(
            "Your current login ({}) is not stored yet. Store it as an account? [Y/n] ",
            v.paths.live_creds.display()
        ))?
        .is_none_or(|a| !a.eq_ignore_ascii_case("n"))
    {
        let label = ask("Label for it (Enter for none): ")?.filter(|l| !l.is_empty());
        let label = label
            .map(|l| label_arg(&l))
            .transpose()
            .map_err(Error::Usage)?;
        add_live(v, label.as_deref())?;
    }
    let mut added = 0;
    loop {
        let count = v.overview()?.state.accounts.len();
        let reply = ask(&format!(
            "\n=== Account {} ===\nPress Enter to start {} and log in to another account (q + Enter to finish): ",
            count + 1,
            v.paths.profile.name
        ))?;
        match reply.as_deref() {
            None => break,
            Some(r) if r.eq_ignore_ascii_case("q") || r.eq_ignore_ascii_case("quit") => break,
            _ => {}
        }
        let label = ask("Label for it (Enter for none): ")?.filter(|l| !l.is_empty());
        let label = match label.map(|l| label_arg(&l)).transpose() {
            Ok(l) => l,
            Err(p) => {
                crate::error::say(p);
                continue;
            }
        };
        match add_login(v, label.as_deref(), ui) {
            Ok(_) => added += 1,
            Err(e) => crate::error::say(e),
        }
    }
    let o = v.overview()?;
    out(&format!(
        "\nDone: {added} added, {} accounts in total. {name} --rotation-status shows them; plain `{name}` now rotates.\n",
        o.state.accounts.len(),
        name = v.paths.profile.name
    ));
    Ok(0)
}

/// One line from the terminal; `None` at end of input.
fn ask(question: &str) -> Result<Option<String>, Error> {
    out(question);
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(line.trim().to_string())),
        Err(e) => Err(Error::io("read from", "the terminal", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_settings_select_oauth_and_drop_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("settings.json");
        fs::write(&p, r#"{"security":{"auth":{"selectedType":"openai","apiKey":"k"}},"env":{"X":"y"},"general":{"a":1}}"#).unwrap();
        let v: Value =
            serde_json::from_str(&login_settings(&crate::profile::QWEN.settings, &p)).unwrap();
        assert_eq!(
            v.pointer("/security/auth/selectedType"),
            Some(&json!("qwen-oauth"))
        );
        assert_eq!(v.pointer("/security/auth/apiKey"), None);
        assert_eq!(v.get("env"), None);
        assert_eq!(v.pointer("/general/a"), Some(&json!(1)));
        let v: Value = serde_json::from_str(&login_settings(
            &crate::profile::QWEN.settings,
            &dir.path().join("absent"),
        ))
        .unwrap();
        assert_eq!(
            v.pointer("/security/auth/selectedType"),
            Some(&json!("qwen-oauth"))
        );
    }

    #[test]
    fn a_login_home_for_a_cli_that_selects_nothing_keeps_the_settings_as_they_are() {
        // claude picks its credentials from the environment: no key names an auth type.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("settings.json");
        fs::write(
            &p,
            r#"{"env":{"HTTPS_PROXY":"http://proxy:3128"},"model":"opus"}"#,
        )
        .unwrap();
        let v: Value =
            serde_json::from_str(&login_settings(&crate::profile::CLAUDE.settings, &p)).unwrap();
        assert_eq!(
            v,
            json!({"env":{"HTTPS_PROXY":"http://proxy:3128"},"model":"opus"})
        );
    }
}
