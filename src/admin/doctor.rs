//! `--rotation-doctor`: runs the checks in order (environment, then the home), applies the
//! repairs `--fix` may make, and prints the findings. Only `--fix` writes anything.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::error::{Error, exit};
use crate::text::printable;
use crate::vault::Vault;

use super::doctor_env;
use super::doctor_home;
use super::findings::{Finding, Findings, Level, Repair};
use super::ui::{Ui, out, print_json};

pub(super) fn doctor(v: &Vault, fix: bool, ui: &Ui) -> Result<i32, Error> {
    let (mut findings, repairs, real) = diagnose(v);
    if fix && !repairs.is_empty() {
        let mut vault_repair = false;
        for (i, repair) in &repairs {
            let ok = match repair {
                Repair::Chmod(p, mode) => {
                    fs::set_permissions(p, fs::Permissions::from_mode(*mode)).is_ok()
                }
                Repair::Remove(p) => fs::remove_file(p).is_ok(),
                Repair::RemoveDir(p) => fs::remove_dir_all(p).is_ok(),
                Repair::Vault => {
                    vault_repair = true;
                    continue;
                }
            };
            findings[*i].fixed = ok;
        }
        if vault_repair {
            match v.repair() {
                Ok(_) => {
                    for (i, r) in &repairs {
                        if matches!(r, Repair::Vault) {
                            findings[*i].fixed = true;
                        }
                    }
                }
                Err(e) => findings.push(Finding::new(
                    "repair",
                    Level::Problem,
                    format!("could not repair: {e}"),
                )),
            }
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.level == Level::Problem && !f.fixed)
        .count();
    let fixed = findings.iter().filter(|f| f.fixed).count();
    if ui.json {
        let checks: Vec<Value> = findings
            .iter()
            .map(|f| {
                json!({
                    "check": f.check,
                    "level": match f.level { Level::Ok => "ok", Level::Info => "info", Level::Problem => "problem" },
                    "message": f.message,
                    "fix": f.fix,
                    "fixed": f.fixed,
                })
            })
            .collect();
        print_json(&json!({
            "ok": problems == 0,
            "problems": problems,
            "fixed": fixed,
            "home": v.paths.home.display().to_string(),
            "real_qwen": real,
            "checks": checks,
        }));
    } else {
        let mut text = format!("qwen-rotation doctor ({})\n", v.paths.home.display());
        for f in &findings {
            let (tag, color) = match (f.level, f.fixed) {
                (_, true) => ("fixed", "32"),
                (Level::Ok, _) => ("ok", "32"),
                (Level::Info, _) => ("note", "36"),
                (Level::Problem, _) => ("PROBLEM", "31"),
            };
            // Findings quote file names, labels and reasons: shown escaped, one line each.
            text.push_str(&format!(
                "  {}  {}\n",
                ui.paint(&format!("{tag:<7}"), color),
                printable(&f.message)
            ));
            if let Some(fix) = f.fix.as_ref().filter(|_| !f.fixed) {
                text.push_str(&format!("           fix: {}\n", printable(fix)));
            }
        }
        text.push_str(&match (problems, fixed) {
            (0, 0) => "No problems found.\n".to_string(),
            (0, n) => format!("Fixed {n}; no problems left.\n"),
            (p, 0) if repairs.is_empty() || fix => format!("{p} problem(s) found.\n"),
            (p, 0) => {
                format!(
                    "{p} problem(s) found; {} --rotation-doctor --fix repairs what it can.\n",
                    v.paths.profile.name
                )
            }
            (p, n) => format!("Fixed {n}; {p} problem(s) left.\n"),
        });
        out(&text);
    }
    Ok(if problems == 0 { 0 } else { exit::FAILURE })
}

/// Runs every check; returns the findings, the repairs (by finding index) and the real-qwen
/// summary for `--json`.
fn diagnose(v: &Vault) -> (Vec<Finding>, Vec<(usize, Repair)>, Value) {
    let mut f = Findings::default();
    let paths = &v.paths;
    let profile = v.paths.profile;
    let (real_version, real_json) = doctor_env::check_real_qwen(profile, &mut f);
    doctor_env::check_path_first(profile, &mut f);
    doctor_env::check_qwen_home(profile, real_version.as_deref(), &mut f);
    doctor_env::check_pool(v, &mut f);
    doctor_env::check_encrypted(v, &mut f);
    doctor_env::check_login_precedence(v, &mut f);
    if !doctor_home::check_home(paths, &mut f) {
        return (f.list, f.repairs, real_json);
    }
    let (owner, slots) = doctor_home::check_permissions(v, &mut f);
    doctor_home::check_locks(v, &mut f);
    doctor_home::check_leftovers(paths, &mut f);
    let state = doctor_home::check_state(v, owner, &slots, &mut f);
    doctor_home::check_accounts(v, &mut f);
    doctor_home::check_log(v, state, &mut f);
    doctor_home::check_config(paths, &mut f);
    (f.list, f.repairs, real_json)
}
