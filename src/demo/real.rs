//! The real CLI as the demo meets it: what the demo does differently per CLI, whether the real
//! CLI starts here (its version), and the Node.js a node-script CLI needs.

use std::path::Path;

use serde_json::Value;

use crate::profile::{Profile, Wire};
use crate::text::printable;

use super::child::{FAILED, Fail, STEP_DEADLINE, Step, ended, last_line, run_child};
use super::home::{Home, Stop, Waited};

pub(super) const PROMPT: &str = "Say hello in one line.";

/// What the demo does differently per CLI, beyond what its profile says.
pub(super) struct Cli {
    /// The model the accounts are added with.
    pub(super) model: &'static str,
    /// The option that runs one prompt headless; None: the prompt alone does (qwen).
    pub(super) one_shot: Option<&'static str>,
    /// An older release for a Node.js older than the latest release needs: (the release, the
    /// Node.js it runs on, the Node.js the latest needs).
    pub(super) older: Option<(&'static str, u64, u64)>,
}

impl Cli {
    pub(super) fn of(profile: &Profile) -> Cli {
        match profile.api.wire {
            Wire::OpenAi => Cli {
                model: "demo-model",
                one_shot: None,
                older: Some(("0.12.0", 20, 22)),
            },
            // A prompt alone starts gemini's interactive session; `-p` runs it headless.
            Wire::Gemini => Cli {
                model: "gemini-2.5-flash",
                one_shot: profile.argv.one_shot.first().copied(),
                older: None,
            },
            // `-p` runs one prompt headless; a prompt alone starts the terminal UI.
            Wire::Anthropic => Cli {
                model: profile.api.example_model,
                one_shot: profile.argv.one_shot.first().copied(),
                older: None,
            },
        }
    }

    /// The older release as a fix for a Node.js too old (`, or P@0.12.0 (it runs on Node.js
    /// 20)`), or nothing.
    pub(super) fn older_fix(&self, profile: &Profile) -> String {
        self.older
            .map(|(v, node, _)| {
                format!(
                    ", or {}@{v} (it runs on Node.js {node})",
                    profile.npm_package
                )
            })
            .unwrap_or_default()
    }

    /// The same for a CLI that does not start (`, or on Node.js older than 22 install P@0.12.0`).
    pub(super) fn older_install(&self, profile: &Profile) -> String {
        self.older
            .map(|(v, _, latest)| {
                format!(
                    ", or on Node.js older than {latest} install {}@{v}",
                    profile.npm_package
                )
            })
            .unwrap_or_default()
    }

    /// The headless run's arguments: `[-p] PROMPT --output-format text`.
    pub(super) fn run_args(&self) -> Vec<&'static str> {
        self.one_shot
            .into_iter()
            .chain([PROMPT, "--output-format", "text"])
            .collect()
    }
}

/// `--version` of the real CLI, run directly in the home: does it start here at all (a release
/// too new for this Node.js does not)? Its output, trimmed.
pub(super) fn real_version(
    home: &Home,
    real: &Path,
    profile: &Profile,
    stop: &Stop,
) -> Step<String> {
    let name = profile.name;
    if let Some(why) = node_too_old(home, real, profile, stop) {
        return Err(Fail(FAILED, why));
    }
    let done = run_child(home, real, &["--version"], None, STEP_DEADLINE, stop)?;
    match done.waited {
        Waited::Exited(s) if s.success() => {
            Ok(String::from_utf8_lossy(&done.stdout).trim().to_string())
        }
        _ => Err(Fail(
            FAILED,
            format!(
                "the real {name} ({}) does not start here: `{name} --version` {}{}; reinstall it (npm install -g {}){}",
                printable(&real.to_string_lossy()),
                ended(&done.waited),
                last_line(&done.stderr),
                profile.npm_package,
                Cli::of(profile).older_install(profile)
            ),
        )),
    }
}

/// The real CLI is a Node.js script whose package declares the Node.js it needs
/// (`engines.node: ">=22.0.0"`), and the `node` on PATH is older: the reason, in one line. None
/// when either is unknown, or when the CLI is no Node.js script (claude's npm package installs a
/// native binary and declares an `engines.node` it does not need to run).
fn node_too_old(home: &Home, real: &Path, profile: &Profile, stop: &Stop) -> Option<String> {
    let real_file = std::fs::canonicalize(real).ok()?;
    if !runs_on_node(&real_file) {
        return None;
    }
    let package = real_file.ancestors().skip(1).take(6).find_map(|dir| {
        let text = crate::files::read_text(&dir.join("package.json"), 1 << 20).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v.get("name")?.as_str()? == profile.npm_package).then_some(v)
    })?;
    let needs = package.pointer("/engines/node")?.as_str()?.to_string();
    let needed: u64 = needs
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split('.')
        .next()?
        .parse()
        .ok()?;
    let node = run_child(
        home,
        Path::new("node"),
        &["--version"],
        None,
        STEP_DEADLINE,
        stop,
    )
    .ok()?;
    let have = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let major: u64 = have
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()?;
    let version = package.get("version")?.as_str()?;
    (major < needed).then(|| {
        format!(
            "the real {} {version} needs Node.js {needs} and node on PATH is {}; install Node.js {needed} or later{}",
            profile.name,
            printable(&have),
            Cli::of(profile).older_fix(profile)
        )
    })
}

/// `path` starts with a `#!` line naming node (an npm CLI's JavaScript entry point).
fn runs_on_node(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 128];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let first = head[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    first.starts_with(b"#!") && first.windows(4).any(|w| w == b"node")
}
