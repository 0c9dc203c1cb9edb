//! What a doctor check reports (`Finding`, at a `Level`) and what `--fix` may do about it
//! (`Repair`), gathered in `Findings` so that each repair keeps the index of its finding.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Ok,
    Info,
    Problem,
}

#[derive(Debug)]
pub(super) struct Finding {
    pub(super) check: &'static str,
    pub(super) level: Level,
    pub(super) message: String,
    pub(super) fix: Option<String>,
    pub(super) fixed: bool,
}

impl Finding {
    pub(super) fn new(check: &'static str, level: Level, message: impl Into<String>) -> Finding {
        Finding {
            check,
            level,
            message: message.into(),
            fix: None,
            fixed: false,
        }
    }
    pub(super) fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// A fix `--fix` can apply.
pub(super) enum Repair {
    Chmod(PathBuf, u32),
    Remove(PathBuf),
    RemoveDir(PathBuf),
    Vault,
}

/// The findings of one diagnosis, in check order, and the repairs `--fix` can apply (each
/// with the index of its finding).
#[derive(Default)]
pub(super) struct Findings {
    pub(super) list: Vec<Finding>,
    pub(super) repairs: Vec<(usize, Repair)>,
}

impl Findings {
    pub(super) fn push(&mut self, finding: Finding, repair: Option<Repair>) {
        if let Some(r) = repair {
            self.repairs.push((self.list.len(), r));
        }
        self.list.push(finding);
    }
}
