//! Whether the relay can stand in qwen's request path, and whether a slot's real key may go to
//! qwen at all: qwen's argv and every settings file it merges are read for a fixed base URL.
//! Invariant: a repository's settings file is read bounded and never gets a key by naming a model.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::Paths;
use crate::model::Kind;
use crate::vault::Launch;

use super::upstream::shown_url;

/// Err(reason) when the relay cannot be put in qwen's request path (qwen's settings fix the
/// provider's base URL): run.rs then falls back to output scanning.
pub fn relay_possible(paths: &Paths) -> Result<(), String> {
    relay_possible_for(paths, None, &[])
}

/// [`relay_possible`] knowing the model the slot injects as `OPENAI_MODEL` and qwen's argv.
///
/// - `--openai-base-url`/`--openaiBaseUrl` beats `OPENAI_BASE_URL`, and `--openai-api-key`
///   beats the key variable: qwen would go past the relay, or bring a key the relay refuses.
/// - qwen picks a `modelProviders` entry by the model it resolved (`--model`/`-m`, then
///   settings `model.name`, then `OPENAI_MODEL`/`QWEN_MODEL`; QWEN_FACTS_APIKEY.md §1), and such
///   an entry's `baseUrl` beats `OPENAI_BASE_URL`: requests for that model would go straight to
///   the provider with the relay's token as the key. Every settings file qwen merges is looked
///   at (system, workspace `.qwen/settings.json`, user); one matching entry is enough to say no.
pub fn relay_possible_for(
    paths: &Paths,
    model: Option<&str>,
    args: &[OsString],
) -> Result<(), String> {
    let from_args = model_from_args(paths, args)?;
    selection_possible(paths)?;
    if let Some(set) = settings_env(paths) {
        return Err(format!(
            "{} sets {} in `{}`, which {} prefers to the environment it is given, so {}",
            set.file.display(),
            set.var,
            set.key,
            paths.profile.name,
            if set.var == paths.profile.api.base_url_var {
                "its requests would go past the relay"
            } else if set.var == paths.profile.api.key_var {
                "it would use that key, not the pool's accounts"
            } else {
                "it would not send the relay's token"
            }
        ));
    }
    match fixed_base_url(paths, from_args, model) {
        Some(fixed) => Err(format!(
            "{} fixes the base URL of model `{}` ({}.{}), so {} would send its requests past \
             the relay",
            fixed.file.display(),
            fixed.model,
            fixed.providers,
            fixed.provider,
            paths.profile.name
        )),
        None => Ok(()),
    }
}

/// Err when the CLI would not use the relay's token: with the base URL set it needs its settings
/// to select the API-key auth type, and neither the user's settings nor a private override the
/// CLI would read (`settings::private_honored`) can select it.
fn selection_possible(paths: &Paths) -> Result<(), String> {
    let (profile, spec) = (paths.profile, &paths.profile.settings);
    if !profile.api.relay_needs_selected
        || crate::settings::private_honored(paths)
        || crate::settings::Selected::read(paths).selected.as_deref() == Some(spec.auth_api_key)
    {
        return Ok(());
    }
    Err(format!(
        "{name} reads its system settings only from files root owns, so the shim cannot select \
         `{api}` for it; set \"{key}\": \"{api}\" in {file} to let the relay carry the keys",
        name = profile.name,
        api = spec.auth_api_key,
        key = spec.selected.join("."),
        file = paths.settings.display(),
    ))
}

/// Why `launch`'s real key must stay out of qwen's environment when qwen talks to the provider
/// itself (no relay): qwen's settings send the model it will use to another endpoint than the
/// slot's own base URL, and qwen would send the key there. A workspace's `.qwen/settings.json`
/// is a repository's content, not the user's choice: it must not get a key by naming a model.
/// For a slot stored without a base URL (qwen's settings choose it), only an entry in the
/// workspace file is foreign.
pub fn key_withheld(paths: &Paths, launch: &Launch, args: &[OsString]) -> Option<String> {
    if launch.kind != Kind::ApiKey {
        return None;
    }
    let api = launch.api.as_ref();
    let model_var = paths.profile.api.model_vars.first();
    let slot_model = launch
        .env
        .iter()
        .find(|(k, _)| model_var.is_some_and(|v| k == v))
        .map(|(_, v)| v.expose().to_string());
    let from_args = model_from_args(paths, args).unwrap_or(None);
    if let Some(set) = settings_env(paths).filter(|s| s.var == paths.profile.api.base_url_var) {
        let same = api
            .is_some_and(|a| a.base_url.trim_end_matches('/') == set.value.trim_end_matches('/'));
        let name = paths.profile.name;
        return (!same && (api.is_some() || set.workspace)).then(|| {
            format!(
                "{} sends {name}'s requests to {} ({}.{}), not to the base URL of account {}: \
                 {name} runs without that key and without rotation; remove it{}",
                set.file.display(),
                shown_url(&set.value),
                set.key,
                set.var,
                launch.slot,
                if set.workspace {
                    format!(", or run {name} outside that directory")
                } else {
                    String::new()
                }
            )
        });
    }
    let fixed = fixed_base_url(paths, from_args, slot_model.as_deref())?;
    let same = |base: &str| base.trim_end_matches('/') == fixed.base_url.trim_end_matches('/');
    let foreign = match api {
        Some(api) => !same(&api.base_url),
        None => fixed.workspace,
    };
    foreign.then(|| {
        let name = paths.profile.name;
        format!(
            "{} sends model `{}` to {} ({}.{}), not to the base URL of account {}: \
             {name} runs without that key and without rotation; remove that entry, or run {name} \
             outside that directory",
            fixed.file.display(),
            fixed.model,
            shown_url(&fixed.base_url),
            fixed.providers,
            fixed.provider,
            launch.slot
        )
    })
}

/// The model named on the command line; Err when the command line itself points qwen at
/// another endpoint or key.
fn model_from_args(paths: &Paths, args: &[OsString]) -> Result<Option<String>, String> {
    let (profile, mut from_args) = (paths.profile, None);
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.to_string(), None),
        };
        let is = |options: &[&str]| options.contains(&name.as_str());
        if name == "--" {
            break;
        } else if is(profile.api.argv_base_url) {
            return Err(format!(
                "{name} on the command line sends {}'s requests past the relay",
                profile.name
            ));
        } else if is(profile.api.argv_key) {
            return Err(format!(
                "{name} on the command line gives {} a key of its own",
                profile.name
            ));
        } else if is(profile.argv.model) {
            from_args = inline.or_else(|| it.next().map(|v| v.to_string()));
        }
    }
    Ok(from_args)
}

/// A variable the CLI's settings set over its environment (claude's `env`): the relay's base
/// URL, its token's variable or the key's.
struct SettingsEnv {
    file: PathBuf,
    /// The settings key of the variables (`env`).
    key: &'static str,
    var: &'static str,
    value: String,
    /// The file is the workspace's.
    workspace: bool,
}

/// The first settings file (system, workspace, user) whose variables object sets the base URL,
/// the relay's token variable or the key variable: the CLI would use that value, not ours.
fn settings_env(paths: &Paths) -> Option<SettingsEnv> {
    let (spec, api) = (&paths.profile.settings, &paths.profile.api);
    let key = spec.env?;
    let cwd = std::env::current_dir().ok();
    let workspace = cwd.as_deref().map(|c| c.join(spec.workspace));
    let vars = [
        Some(api.base_url_var),
        api.relay_token_var,
        Some(api.key_var),
    ];
    crate::settings::layers(paths, cwd.as_deref())
        .into_iter()
        .find_map(|(file, doc)| {
            let env = doc.get(key)?.as_object()?;
            let (var, value) = vars.iter().flatten().find_map(|var| {
                env.get(*var)?
                    .as_str()
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (*var, v.trim().to_string()))
            })?;
            Some(SettingsEnv {
                workspace: workspace.as_ref() == Some(&file),
                file,
                key,
                var,
                value,
            })
        })
}

/// A `modelProviders` entry that fixes the base URL of the model qwen will use.
struct Fixed {
    file: PathBuf,
    /// The key of the providers table (`modelProviders`).
    providers: &'static str,
    /// The file is the workspace's `.qwen/settings.json`.
    workspace: bool,
    provider: String,
    model: String,
    base_url: String,
}

/// The first settings entry (in qwen's precedence) that fixes the base URL of the model qwen
/// resolves: `from_args`, else settings `model.name`, else `model` (the slot's), else the
/// environment's `OPENAI_MODEL`/`QWEN_MODEL`.
fn fixed_base_url(paths: &Paths, from_args: Option<String>, model: Option<&str>) -> Option<Fixed> {
    let spec = &paths.profile.settings;
    let providers_key = spec.providers?;
    let cwd = std::env::current_dir().ok();
    let workspace = cwd.as_deref().map(|c| c.join(spec.workspace));
    // A workspace's file is a repository's (untrusted) content: the reader never blocks on it
    // and never reads more than a settings file can hold.
    let docs = crate::settings::layers(paths, cwd.as_deref());
    let from_settings = docs.iter().find_map(|(_, d)| {
        spec.model
            .iter()
            .try_fold(d, |cur, key| cur.get(key))
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    });
    let from_env = || {
        paths
            .profile
            .api
            .model_vars
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    };
    let selected = from_args
        .or(from_settings)
        .or_else(|| model.map(str::to_string))
        .or_else(from_env)?;
    for (path, doc) in &docs {
        let Some(providers) = doc.get(providers_key).and_then(|v| v.as_object()) else {
            continue;
        };
        for (provider, entries) in providers {
            let Some(entries) = entries.as_array() else {
                continue;
            };
            let base_url = entries.iter().find_map(|e| {
                (e.get("id").and_then(|v| v.as_str()) == Some(selected.as_str()))
                    .then(|| e.get("baseUrl").and_then(|v| v.as_str()))
                    .flatten()
                    .filter(|u| !u.trim().is_empty())
            });
            if let Some(base_url) = base_url {
                return Some(Fixed {
                    file: path.clone(),
                    providers: providers_key,
                    workspace: workspace.as_ref() == Some(path),
                    provider: provider.clone(),
                    model: selected,
                    base_url: base_url.trim().to_string(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Secret;
    use crate::vault::ApiTarget;

    #[test]
    fn gemini_needs_its_api_key_type_selected_where_it_reads_the_selection() {
        // Under /tmp (writable by all) gemini would skip our private system settings: only the
        // user's own selection of `gemini-api-key` lets the relay in.
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let paths = Paths::of(&crate::profile::GEMINI, dir.path().join(".gemini"));
        let err = relay_possible(&paths).unwrap_err();
        assert!(
            err.contains("security.auth.selectedType") && err.contains("gemini-api-key"),
            "{err}"
        );
        std::fs::create_dir_all(&paths.home).unwrap();
        std::fs::write(
            &paths.settings,
            r#"{"security":{"auth":{"selectedType":"oauth-personal"}}}"#,
        )
        .unwrap();
        assert!(relay_possible(&paths).is_err());
        std::fs::write(
            &paths.settings,
            r#"{"security":{"auth":{"selectedType":"gemini-api-key"}}}"#,
        )
        .unwrap();
        assert_eq!(relay_possible(&paths), Ok(()));
        // qwen reads any system settings file: nothing to ask of the user.
        assert_eq!(relay_possible(&Paths::at(dir.path())), Ok(()));
    }

    #[test]
    fn argv_that_bypasses_the_relay_rules_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        for bad in [
            &["-p", "hi", "--openai-base-url", "https://x.test/v1"][..],
            &["--openaiBaseUrl=https://x.test/v1"],
            &["--openai-api-key", "k"],
            &["--openaiApiKey=k"],
        ] {
            let err = relay_possible_for(&paths, None, &args(bad)).unwrap_err();
            assert!(!err.contains("x.test") && !err.contains("=k"), "{err}");
        }
        assert!(relay_possible_for(&paths, None, &args(&["-p", "--", "--openai-api-key"])).is_ok());
        assert!(relay_possible_for(&paths, None, &args(&["-p", "hello"])).is_ok());
    }

    #[test]
    fn claudes_settings_env_that_beats_the_relays_variables_rules_the_relay_out() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::of(&crate::profile::CLAUDE, dir.path().join(".claude"));
        std::fs::create_dir_all(&paths.home).unwrap();
        assert_eq!(relay_possible(&paths), Ok(()));
        let settings = |env: &str| std::fs::write(&paths.settings, format!(r#"{{"env":{env}}}"#));
        settings(r#"{"ANTHROPIC_BASE_URL":"https://u:hunter2@gw.test/anthropic"}"#).unwrap();
        let err = relay_possible(&paths).unwrap_err();
        assert!(
            err.contains("ANTHROPIC_BASE_URL") && err.contains("past the relay"),
            "{err}"
        );
        settings(r#"{"ANTHROPIC_AUTH_TOKEN":"t"}"#).unwrap();
        let err = relay_possible(&paths).unwrap_err();
        assert!(err.contains("would not send the relay's token"), "{err}");
        settings(r#"{"ANTHROPIC_API_KEY":"k"}"#).unwrap();
        let err = relay_possible(&paths).unwrap_err();
        assert!(err.contains("not the pool's accounts"), "{err}");
        // Other variables, and empty ones, change nothing.
        settings(r#"{"ANTHROPIC_BASE_URL":" ","DISABLE_TELEMETRY":"1"}"#).unwrap();
        assert_eq!(relay_possible(&paths), Ok(()));

        // Without the relay, a key goes to claude only where its slot's base URL is.
        let launch = |base: &str| Launch {
            slot: 2,
            label: None,
            kind: Kind::ApiKey,
            env: Vec::new(),
            api: Some(ApiTarget {
                base_url: base.into(),
                key: Secret::new("sk-ant-x".to_string()),
                model: None,
                env_key: "ANTHROPIC_API_KEY".into(),
            }),
        };
        settings(r#"{"ANTHROPIC_BASE_URL":"https://u:hunter2@gw.test/anthropic/"}"#).unwrap();
        let why = key_withheld(&paths, &launch("https://api.anthropic.com"), &[]).unwrap();
        assert!(
            why.contains("https://gw.test/anthropic")
                && why.contains("account 2")
                && !why.contains("hunter2"),
            "{why}"
        );
        assert!(
            key_withheld(&paths, &launch("https://u:hunter2@gw.test/anthropic"), &[]).is_none()
        );
    }

    #[test]
    fn a_key_is_withheld_only_from_an_endpoint_other_than_its_slots() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        let launch = |base: Option<&str>| Launch {
            slot: 1,
            label: None,
            kind: Kind::ApiKey,
            env: vec![("OPENAI_MODEL".into(), Secret::new("m1".to_string()))],
            api: base.map(|b| ApiTarget {
                base_url: b.into(),
                key: Secret::new("sk-x".to_string()),
                model: Some("m1".into()),
                env_key: "OPENAI_API_KEY".into(),
            }),
        };
        let slot = launch(Some("https://good.test/v1"));
        assert!(key_withheld(&paths, &slot, &[]).is_none());
        let provider = |url: &str| {
            format!(r#"{{"modelProviders":{{"openai":[{{"id":"m1","baseUrl":"{url}"}}]}}}}"#)
        };
        std::fs::write(&paths.settings, provider("https://good.test/v1/")).unwrap();
        assert!(key_withheld(&paths, &slot, &[]).is_none());
        std::fs::write(
            &paths.settings,
            provider("https://u:hunter2@evil.test/v1?k=QUERYSECRET"),
        )
        .unwrap();
        let why = key_withheld(&paths, &slot, &[]).expect("withheld");
        assert!(
            why.contains("https://evil.test/v1")
                && !why.contains("hunter2")
                && !why.contains("QUERYSECRET"),
            "{why}"
        );
        // Another model on the command line is not routed there.
        let args = [OsString::from("--model"), OsString::from("m2")];
        assert!(key_withheld(&paths, &slot, &args).is_none());
        // A slot without a base URL follows the user's own settings.
        assert!(key_withheld(&paths, &launch(None), &[]).is_none());
    }

    #[test]
    fn the_profile_names_the_options_and_the_providers_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut profile = crate::profile::QWEN.clone();
        profile.name = "other";
        profile.api.argv_key = &["--key"];
        profile.argv.model = &["--llm"];
        profile.settings.providers = Some("providers");
        let paths = Paths::of(Box::leak(Box::new(profile)), dir.path());
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            relay_possible_for(&paths, None, &args(&["--key", "k"])).unwrap_err(),
            "--key on the command line gives other a key of its own"
        );
        assert!(relay_possible_for(&paths, None, &args(&["--openai-api-key", "k"])).is_ok());
        std::fs::write(
            &paths.settings,
            r#"{"modelProviders":{"openai":[{"id":"m1","baseUrl":"https://a.test/v1"}]},
                "providers":{"openai":[{"id":"m2","baseUrl":"https://b.test/v1"}]}}"#,
        )
        .unwrap();
        assert!(relay_possible_for(&paths, Some("m1"), &[]).is_ok());
        let err = relay_possible_for(&paths, None, &args(&["--llm", "m2"])).unwrap_err();
        assert!(
            err.ends_with("(providers.openai), so other would send its requests past the relay"),
            "{err}"
        );
    }

    #[test]
    fn a_model_provider_with_a_base_url_rules_the_relay_out() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        assert!(relay_possible_for(&paths, Some("m1"), &[]).is_ok());
        std::fs::write(
            &paths.settings,
            r#"{"modelProviders":{"openai":[{"id":"m1","baseUrl":"https://coding.dashscope.aliyuncs.com/v1","envKey":"K"}]}}"#,
        )
        .unwrap();
        let err = relay_possible_for(&paths, Some("m1"), &[]).unwrap_err();
        assert!(err.contains("settings.json") && err.contains("m1"), "{err}");
        assert!(relay_possible_for(&paths, Some("m2"), &[]).is_ok());
        // settings' model.name selects the provider entry whatever the slot says.
        std::fs::write(
            &paths.settings,
            r#"{"model":{"name":"m1"},"modelProviders":{"openai":[{"id":"m1","baseUrl":"https://x.test/v1"}]}}"#,
        )
        .unwrap();
        assert!(relay_possible_for(&paths, Some("m2"), &[]).is_err());
        // `--model` beats settings.
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(relay_possible_for(&paths, None, &args(&["-p", "x", "--model", "m2"])).is_ok());
        assert!(relay_possible_for(&paths, None, &args(&["--model=m1"])).is_err());
        // An entry without a base URL only names the key variable: the relay still works.
        std::fs::write(
            &paths.settings,
            r#"{"modelProviders":{"openai":[{"id":"m1","envKey":"K"}]}}"#,
        )
        .unwrap();
        assert!(relay_possible_for(&paths, Some("m1"), &[]).is_ok());
    }
}
