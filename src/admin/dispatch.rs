//! The entry of every management command: parse, load the config and the pool, open the vault,
//! run the one command, print a failure the one way. Thin: each command lives in its own file.

use std::io;

use crate::config::{Config, Paths};
use crate::error::{Error, exit};
use crate::vault::Vault;

use super::add::{add_api_key, add_live, add_login, setup};
use super::doctor::doctor;
use super::help::{help_text, version};
use super::history::{log, stats};
use super::parse::{Command, parse};
use super::status;
use super::ui::{Ui, out};

/// The management path of `main`: runs the command in `args` and exits with its code. A bug of
/// ours (a panic) is one line and exit 1, never a backtrace that could quote a secret.
pub fn main(args: &[String]) -> ! {
    // Management output goes to people and pipes: `| head` ends us quietly, as it would any
    // Unix tool (the run path keeps EPIPE instead; see run/pipes.rs).
    // SAFETY: SIG_DFL installs no Rust handler.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let code = crate::error::guarded(|| Ok(run(args, &Paths::from_env()))).unwrap_or_else(|bug| {
        crate::error::say(bug);
        exit::FAILURE
    });
    std::process::exit(code)
}

/// Runs one management command; returns the exit code.
pub fn run(args: &[String], paths: &Paths) -> i32 {
    let parsed = match parse(args) {
        Ok(p) => p,
        Err(usage) => {
            crate::error::say(usage);
            return exit::USAGE;
        }
    };
    // The demo reads nothing of the person's (not even rotation.yaml): it builds its own home.
    if parsed.command == Command::Demo {
        return crate::demo::run(paths.profile);
    }
    let (config, problem) = Config::load(&paths.config);
    let config = config.with_pool_env(&crate::config::PoolEnv::capture());
    if let Some(problem) = problem.filter(|_| {
        !matches!(
            parsed.command,
            Command::Doctor { .. } | Command::Help | Command::Version
        )
    }) {
        crate::error::warn(problem);
    }
    // A pool declared in the environment replaces the slot files; a malformed one is bad usage.
    let vault = if parsed.command == Command::Help {
        Vault::open(paths.clone(), config)
    } else {
        match Vault::from_env(paths.clone(), config) {
            Ok(vault) => vault,
            Err(problem) => {
                crate::error::say(problem);
                return exit::USAGE;
            }
        }
    };
    let ui = Ui::detect(parsed.json);
    match execute(&parsed.command, &vault, &ui) {
        Ok(code) => code,
        Err(e) => fail(&e, &vault.paths),
    }
}

/// Prints an error the way every command does, and picks its exit code.
fn fail(e: &Error, paths: &Paths) -> i32 {
    let hint = match e {
        Error::Io { source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            format!(
                "; make {} writable by you, or set {} to a writable directory ({} --rotation-doctor shows more)",
                paths.home.display(),
                paths.profile.home.var,
                paths.profile.name
            )
        }
        _ => String::new(),
    };
    crate::error::say(format_args!("{e}{hint}"));
    match e {
        Error::NoSuchSlot(_) => exit::USAGE,
        other => other.exit_code(),
    }
}

/// `--rotation-report FILE.html`: the dashboard's page with the pool inlined.
fn report(v: &Vault, file: &str) -> Result<i32, Error> {
    let snap = crate::dashboard::snapshot(v)?;
    crate::dashboard::write_report(std::path::Path::new(file), &snap)?;
    out(&format!(
        "Wrote {} (the pool as of now; open it in a browser, no server needed).\n",
        crate::text::printable(file)
    ));
    Ok(0)
}

fn execute(cmd: &Command, v: &Vault, ui: &Ui) -> Result<i32, Error> {
    match cmd {
        Command::Help => {
            out(&help_text(v.paths.profile));
            Ok(0)
        }
        Command::Version => version(v.paths.profile, ui),
        Command::Status { watch: false } => status::status(v, ui),
        Command::Status { watch: true } => status::watch(v, ui),
        Command::Stats => stats(v, ui),
        Command::Switch(spec) => status::switch(v, spec),
        Command::Next => status::next(v),
        Command::Add(_) | Command::Setup if v.env_pool().is_some() => {
            v.files_pool("add").map(|()| 0)
        }
        Command::Add(a) if a.api_key => add_api_key(v, a, ui),
        Command::Add(a) if a.login => add_login(v, a.label.as_deref(), ui).map(|_| 0),
        Command::Add(a) => add_live(v, a.label.as_deref()),
        Command::Setup => setup(v, ui),
        Command::Remove(spec) => status::remove(v, spec),
        Command::Enable(spec) => status::set_enabled(v, spec, true),
        Command::Disable(spec) => status::set_enabled(v, spec, false),
        Command::Reset(spec) => status::reset(v, spec),
        Command::Label(spec, label) => status::label(v, spec, label),
        Command::Log { tail } => log(v, *tail, ui),
        Command::Doctor { fix } => doctor(v, *fix, ui),
        Command::Demo => Ok(crate::demo::run(v.paths.profile)),
        Command::Dashboard { port } => crate::dashboard::serve(v, *port),
        Command::Report(file) => report(v, file),
    }
}
