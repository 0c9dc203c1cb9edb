//! The account pool declared in the environment, for CI jobs that hold their keys in secrets.
//!
//! `QWEN_ROTATION_KEYS` lists keys separated by commas, spaces or newlines (account 1, 2, … in
//! that order) and/or `QWEN_ROTATION_KEY_N` holds the key of account N. Base URL and model come
//! from `QWEN_ROTATION_BASE_URL_N`/`QWEN_ROTATION_MODEL_N`, else `QWEN_ROTATION_BASE_URL`/
//! `QWEN_ROTATION_MODEL`, else the caller's `OPENAI_BASE_URL`/`OPENAI_MODEL`. When any key
//! variable is set, this is the pool: slot files in `accounts/` are ignored.
//!
//! Invariants:
//! - No message formats a value: problems name the variable (and the position in a list), and
//!   the fix. Keys live only in `Secret`s.
//! - A slot is identified in state.yaml by its variable and a 32-bit fingerprint of its key
//!   (`QWEN_ROTATION_KEY_2:1a2b3c4d`): far too short to recover a key from (every value has
//!   countless keys behind it), enough for a changed key to start with a clean slate. It does
//!   not hide whether a key someone already holds is the one in use; state.yaml stays 0600.
//! - State goes where it can: `QWEN_ROTATION_STATE_DIR` when set, else QWEN_HOME when writable,
//!   else a private directory for this run only (removed when the process exits normally).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::slots::{ApiKeySlot, valid_api_key};
use crate::files;
use crate::model::Secret;
use crate::profile::{Api, PoolVars};

/// The variable names of the active profile (`pool_vars`, `api`): this pool is read from a
/// process's environment, which holds no `Paths`.
fn vars() -> (&'static PoolVars, &'static Api) {
    let p = crate::profile::active();
    (&p.pool_vars, &p.api)
}

/// One account from the environment.
#[derive(Debug, Clone)]
pub struct EnvSlot {
    /// Where its key came from: `QWEN_ROTATION_KEY_2`, or `QWEN_ROTATION_KEYS[2]`.
    pub source: String,
    pub api: ApiKeySlot,
}

impl EnvSlot {
    /// `source:fingerprint`, what state.yaml keeps to tell a changed key.
    pub fn identity(&self) -> String {
        format!("{}:{}", self.source, fingerprint(self.api.key.expose()))
    }
}

/// Where state.yaml, rotation.log and rotation.lock live for an environment pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateHome {
    /// QWEN_HOME (writable).
    Home,
    /// `QWEN_ROTATION_STATE_DIR`.
    Dir(PathBuf),
    /// A private directory kept for this run only.
    Memory(PathBuf),
}

/// The pool as declared.
#[derive(Debug, Clone)]
pub struct Pool {
    pub slots: BTreeMap<usize, EnvSlot>,
    pub state: StateHome,
}

/// 32 bits of FNV-1a over a domain-separated key, as 8 hex digits.
pub(super) fn fingerprint(key: &str) -> String {
    let full = files::digest(format!("qwen-rotation-env-key\0{key}").as_bytes());
    full[..8].to_string()
}

/// The variables that hold keys, and the shared pool's (its URL and password): removed from
/// qwen's environment.
pub fn key_variables(vars: &[(OsString, OsString)]) -> Vec<OsString> {
    let pool_vars = self::vars().0;
    let (keys_var, key_prefix_var) = (pool_vars.keys, pool_vars.key_prefix);
    vars.iter()
        .filter(|(k, _)| {
            k.to_str().is_some_and(|k| {
                k == keys_var || k.starts_with(key_prefix_var) || k.starts_with(pool_vars.pool)
            })
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Reads the pool from `vars` (the process environment in production). `Ok(None)`: no key
/// variable is set. Err: one line naming the variable and the fix (never a value).
pub fn parse(vars: &[(OsString, OsString)]) -> Result<Option<BTreeMap<usize, EnvSlot>>, String> {
    let (pool_vars, api) = self::vars();
    let (keys_var, key_prefix_var, base_url_var, model_var) = (
        pool_vars.keys,
        pool_vars.key_prefix,
        pool_vars.base_url,
        pool_vars.model,
    );
    let text = |name: &str| -> Result<Option<String>, String> {
        match vars.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v
                .to_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| format!("{name} is not UTF-8 text; set it to plain ASCII")),
        }
    };
    let mut keys: BTreeMap<usize, (String, String)> = BTreeMap::new();
    if let Some(list) = text(keys_var)? {
        let items: Vec<&str> = list
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return Err(format!(
                "{keys_var} is set but holds no key; put one or more keys in it (separated by commas, spaces or newlines), or unset it"
            ));
        }
        for (i, item) in items.iter().enumerate() {
            let source = format!("{keys_var}[{}]", i + 1);
            check_key(&source, item)?;
            keys.insert(i + 1, (source, item.to_string()));
        }
    }
    let mut overrides: Vec<(String, usize)> = Vec::new();
    for (k, _) in vars {
        let Some(name) = k.to_str() else { continue };
        for prefix in [
            key_prefix_var,
            &format!("{base_url_var}_") as &str,
            &format!("{model_var}_"),
        ] {
            let Some(suffix) = name.strip_prefix(prefix) else {
                continue;
            };
            let n = slot_number(suffix).ok_or_else(|| {
                format!("{name} does not end in an account number; name it {prefix}1, {prefix}2, …")
            })?;
            if prefix == key_prefix_var {
                let value = text(name)?.unwrap_or_default();
                if let Some((other, _)) = keys.get(&n) {
                    return Err(format!(
                        "{name} and {other} both declare account {n}; keep one of them (or number the single variables after the list)"
                    ));
                }
                check_key(name, &value)?;
                keys.insert(n, (name.to_string(), value));
            } else {
                overrides.push((name.to_string(), n));
            }
        }
    }
    if keys.is_empty() {
        return Ok(None);
    }
    for (name, n) in &overrides {
        if !keys.contains_key(n) {
            return Err(format!(
                "{name} is set but no key declares account {n}; set {key_prefix_var}{n} or remove {name}"
            ));
        }
    }
    let caller = |name: &str| -> Result<Option<(String, String)>, String> {
        Ok(text(name)?
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (name.to_string(), v)))
    };
    let default_url = match caller(base_url_var)? {
        Some(found) => Some(found),
        None => caller(api.base_url_var)?,
    };
    let default_model = match caller(model_var)? {
        Some(found) => Some(found),
        None => caller(api.model_vars[0])?,
    };
    let mut slots = BTreeMap::new();
    for (n, (source, key)) in keys {
        let url = caller(&format!("{base_url_var}_{n}"))?.or_else(|| default_url.clone());
        if let Some((name, u)) = &url {
            check_url(name, u)?;
        }
        let model = caller(&format!("{model_var}_{n}"))?.or_else(|| default_model.clone());
        if let Some((name, m)) = &model
            && m.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "{name} contains spaces or control characters; set it to a model name such as {}",
                api.example_model
            ));
        }
        slots.insert(
            n,
            EnvSlot {
                source,
                api: ApiKeySlot {
                    key: Secret::new(key),
                    base_url: url.map(|(_, u)| u),
                    model: model.map(|(_, m)| m),
                    env_key: api.key_var.into(),
                },
            },
        );
    }
    Ok(Some(slots))
}

fn slot_number(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.starts_with('0') {
        return None;
    }
    text.parse().ok().filter(|n| *n <= 10_000)
}

fn check_key(source: &str, key: &str) -> Result<(), String> {
    let fix = "set it to the key alone, without quotes, spaces or line breaks";
    if key.trim().is_empty() {
        return Err(format!("{source} is empty; {fix}, or unset it"));
    }
    valid_api_key(key).map_err(|problem| {
        let problem = problem.strip_prefix("the key ").unwrap_or(problem);
        format!("{source} {problem}; {fix}")
    })
}

fn check_url(name: &str, url: &str) -> Result<(), String> {
    let fix = format!(
        "set it to the provider's base URL, e.g. {}",
        vars().1.example_base_url
    );
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit('@').next().unwrap_or("");
        !host.is_empty() && !host.starts_with(':')
    }) && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!("{name} is not an http(s) URL; {fix}"))
    }
}

/// The pool from this process's environment, with its state place chosen (and created).
/// `Ok(None)`: no key variable is set (the pool is the slot files).
pub fn from_env(home: &Path) -> Result<Option<Pool>, String> {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let Some(slots) = parse(&vars)? else {
        return Ok(None);
    };
    let state = choose_state(home);
    Ok(Some(Pool { slots, state }))
}

/// `QWEN_ROTATION_STATE_DIR` when set (and usable), else QWEN_HOME when writable, else memory.
fn choose_state(home: &Path) -> StateHome {
    let state_dir_var = vars().0.state_dir;
    let mut why_not = Vec::new();
    if let Some(dir) = std::env::var_os(state_dir_var).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if writable_dir(&dir) {
            return StateHome::Dir(dir);
        }
        why_not.push(format!("{state_dir_var} ({})", dir.display()));
    } else if writable_dir(home) {
        return StateHome::Home;
    } else {
        why_not.push(home.display().to_string());
    }
    match memory_dir() {
        Ok(dir) => {
            crate::error::say(format_args!(
                "note: {} is not writable; account state is kept for this run only (set {state_dir_var} to a writable directory to keep it)",
                why_not.join(", ")
            ));
            StateHome::Memory(dir)
        }
        // Not even a temporary directory: the run falls back to qwen without rotation.
        Err(_) => StateHome::Memory(PathBuf::from("/nonexistent/qwen-rotation-state")),
    }
}

/// Creates `dir` (0700) when missing; true when we can write into it. access(2) answers for
/// the permission bits and for a read-only mount (EROFS) without writing anything.
fn writable_dir(dir: &Path) -> bool {
    files::ensure_dir(dir).is_ok()
        && nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok()
}

static MEMORY_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_memory_dirs() {
    if let Ok(dirs) = MEMORY_DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A private (0700) directory in the temporary directory, removed at exit(3). A run that dies
/// by a signal leaves it behind; it holds no secret (state.yaml and the log never do).
fn memory_dir() -> std::io::Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("qwen-rotation-state-")
        .tempdir()?
        .keep();
    let mut dirs = MEMORY_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if dirs.is_empty() {
        // SAFETY: registers a plain function with no captured state; it only removes paths.
        unsafe {
            nix::libc::atexit(remove_memory_dirs);
        }
    }
    dirs.push(dir.clone());
    Ok(dir)
}

/// Removes every key variable from this process's environment, so no child inherits one, and
/// wipes them from the environment block the kernel shows as `/proc/<pid>/environ`.
///
/// unsetenv(3) only drops the pointer from `environ`: the `NAME=value` strings stay where
/// execve(2) put them, between `env_start` and `env_end` of our memory, and proc(5) shows that
/// range, not `environ`, to anyone allowed to read it (the same user without the non-dumpable
/// flag; root always). A tool qwen runs (`cat /proc/$PPID/environ` from a shell two levels
/// down) would read the real keys there for the whole run. So the entries are overwritten with
/// NUL bytes in place. Copies made by setenv(3) live on the heap, outside that range, and are
/// left to libc (glibc keeps them in a lookup tree that a wipe would corrupt); `parse` reads
/// through `std::env`, so none exists for these names before this runs.
///
/// # Safety
/// Call before any other thread starts (set_var/remove_var race with getenv in other threads).
pub unsafe fn scrub() {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let names = key_variables(&vars);
    for k in &names {
        // SAFETY: the caller guarantees no other thread reads the environment now.
        unsafe { std::env::remove_var(k) };
    }
    if !names.is_empty() {
        // SAFETY: as above; no other thread exists to hold a pointer into the block.
        unsafe { wipe_initial_environment(&names) };
    }
}

/// Overwrites every entry of the initial environment block named in `names` with NUL bytes.
///
/// # Safety
/// No other thread may read the environment meanwhile, and nothing may hold a pointer to an
/// entry named in `names` (they were just unset).
unsafe fn wipe_initial_environment(names: &[OsString]) {
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| environment_block(&stat))
    else {
        // No /proc: nobody can read an environment through it either.
        return;
    };
    let base = std::ptr::with_exposed_provenance_mut::<u8>(start);
    // SAFETY: [env_start, env_end) is the block execve(2) copied onto our initial stack; it stays
    // mapped and writable for the life of the process, and no reference into it exists (libc
    // keeps raw pointers, the entries we touch are no longer among them).
    let block = unsafe { std::slice::from_raw_parts(base, end - start) };
    for range in entries_named(block, names) {
        for i in range {
            // SAFETY: `i` lies inside the block (entries_named returns ranges within it).
            // Volatile: the kernel reads these bytes, not the program, so the compiler must not
            // treat the stores as dead.
            unsafe { std::ptr::write_volatile(base.add(i), 0) };
        }
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// `env_start` and `env_end` (fields 50 and 51 of /proc/self/stat, proc_pid_stat(5)).
fn environment_block(stat: &str) -> Option<(usize, usize)> {
    // The command name is in parentheses and may contain spaces or ')': fields follow the last
    // ')', starting with field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(50 - 3);
    let start: usize = fields.next()?.parse().ok()?;
    let end: usize = fields.next()?.parse().ok()?;
    (start != 0 && end > start).then_some((start, end))
}

/// The byte ranges of the `NAME=value` entries of `block` (NUL-separated) whose NAME is one of
/// `names`, NUL excluded. Every entry counts, a repeated name included.
fn entries_named(block: &[u8], names: &[OsString]) -> Vec<std::ops::Range<usize>> {
    use std::os::unix::ffi::OsStrExt;
    let mut found = Vec::new();
    let mut at = 0;
    for entry in block.split(|b| *b == 0) {
        let named = names.iter().any(|n| {
            let n = n.as_bytes();
            entry.len() > n.len() && entry.starts_with(n) && entry[n.len()] == b'='
        });
        if named {
            found.push(at..at + entry.len());
        }
        at += entry.len() + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn no_key_variable_means_no_pool() {
        assert!(
            parse(&env(&[("OPENAI_BASE_URL", "http://x/v1")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_list_and_numbered_keys_make_the_slots() {
        let slots = parse(&env(&[
            ("QWEN_ROTATION_KEYS", "sk-a1,sk-b2\n sk-c3\n"),
            ("QWEN_ROTATION_KEY_5", "sk-e5"),
            ("OPENAI_BASE_URL", "https://p.example/v1"),
            ("QWEN_ROTATION_BASE_URL_5", "http://127.0.0.1:9/v1"),
            ("QWEN_ROTATION_MODEL", "m-all"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(slots.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 5]);
        assert_eq!(slots[&2].api.key.expose(), "sk-b2");
        assert_eq!(slots[&2].source, "QWEN_ROTATION_KEYS[2]");
        assert_eq!(
            slots[&1].api.base_url.as_deref(),
            Some("https://p.example/v1")
        );
        assert_eq!(
            slots[&5].api.base_url.as_deref(),
            Some("http://127.0.0.1:9/v1")
        );
        assert_eq!(slots[&5].api.model.as_deref(), Some("m-all"));
        let id = slots[&5].identity();
        assert!(id.starts_with("QWEN_ROTATION_KEY_5:") && !id.contains("sk-e5"));
        assert_eq!(id.len(), "QWEN_ROTATION_KEY_5:".len() + 8);
    }

    #[test]
    fn bad_variables_are_named_and_never_quoted() {
        for (vars, must) in [
            (
                vec![("QWEN_ROTATION_KEYS", " , \n")],
                "QWEN_ROTATION_KEYS is set but holds no key",
            ),
            (
                vec![("QWEN_ROTATION_KEY_2", "")],
                "QWEN_ROTATION_KEY_2 is empty",
            ),
            (
                vec![("QWEN_ROTATION_KEY_1", "sk-se\u{7}cret")],
                "QWEN_ROTATION_KEY_1 contains spaces or non-printable",
            ),
            (
                vec![("QWEN_ROTATION_KEY_x", "sk-secret")],
                "QWEN_ROTATION_KEY_x does not end in an account number",
            ),
            (
                vec![
                    ("QWEN_ROTATION_KEYS", "sk-secret"),
                    ("QWEN_ROTATION_KEY_1", "sk-secret2"),
                ],
                "both declare account 1",
            ),
            (
                vec![
                    ("QWEN_ROTATION_KEY_1", "sk-secret"),
                    ("QWEN_ROTATION_BASE_URL_1", "ftp://secret"),
                ],
                "QWEN_ROTATION_BASE_URL_1 is not an http(s) URL",
            ),
            (
                vec![
                    ("QWEN_ROTATION_KEY_1", "sk-secret"),
                    ("OPENAI_BASE_URL", "http:// secret"),
                ],
                "OPENAI_BASE_URL is not an http(s) URL",
            ),
            (
                vec![
                    ("QWEN_ROTATION_KEY_1", "sk-secret"),
                    ("QWEN_ROTATION_MODEL_3", "m"),
                ],
                "no key declares account 3",
            ),
        ] {
            let err = parse(&env(&vars)).unwrap_err();
            assert!(err.contains(must), "{err}");
            assert!(!err.contains("secret"), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn entries_of_the_named_variables_are_found_in_the_block() {
        let block = b"A=1\0QWEN_ROTATION_KEYS=sk-a,sk-b\0QWEN_ROTATION_KEYSX=keep\0QWEN_ROTATION_KEY_2=sk-c\0QWEN_ROTATION_KEYS=again\0\0";
        let names = [
            OsString::from("QWEN_ROTATION_KEYS"),
            OsString::from("QWEN_ROTATION_KEY_2"),
        ];
        let found: Vec<&[u8]> = entries_named(block, &names)
            .into_iter()
            .map(|r| &block[r])
            .collect();
        assert_eq!(
            found,
            vec![
                &b"QWEN_ROTATION_KEYS=sk-a,sk-b"[..],
                b"QWEN_ROTATION_KEY_2=sk-c",
                b"QWEN_ROTATION_KEYS=again"
            ]
        );
    }

    #[test]
    fn the_environment_block_is_read_from_proc_stat() {
        // Field 3 is the state; field N holds N*10 after it. The name holds ") " itself.
        let fields: Vec<String> = (3..=52)
            .map(|n| {
                if n == 3 {
                    "S".into()
                } else {
                    (n * 10).to_string()
                }
            })
            .collect();
        let stat = format!("42 (a) b) {}", fields.join(" "));
        assert_eq!(environment_block(&stat), Some((500, 510)));
        assert_eq!(environment_block("1 (x) S 0"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (start, end) = environment_block(&own).expect("our own block");
        assert!(end > start);
    }

    #[test]
    fn key_variables_are_the_ones_to_scrub() {
        let vars = env(&[
            ("QWEN_ROTATION_KEYS", "a"),
            ("QWEN_ROTATION_KEY_3", "b"),
            ("QWEN_ROTATION_BASE_URL", "http://x"),
            ("OPENAI_API_KEY", "c"),
            ("QWEN_ROTATION_POOL", "redis://:pw@h:6379/0"),
            ("QWEN_ROTATION_POOL_PASSWORD", "pw"),
            ("QWEN_ROTATION_POOL_PASSWORD_FILE", "/run/pw"),
        ]);
        assert_eq!(
            key_variables(&vars),
            vec![
                OsString::from("QWEN_ROTATION_KEYS"),
                OsString::from("QWEN_ROTATION_KEY_3"),
                OsString::from("QWEN_ROTATION_POOL"),
                OsString::from("QWEN_ROTATION_POOL_PASSWORD"),
                OsString::from("QWEN_ROTATION_POOL_PASSWORD_FILE"),
            ]
        );
    }
}
