//! Signals and exit status, in one place: forwarding policy, stopping a child's whole tree, and
//! leaving with the child's status.
//!
//! Invariant: the child of an attempt stays in our process group, exactly as if the shell had
//! started qwen itself, so the terminal's Ctrl-C, ^Z and `fg` reach it without our help. What
//! the terminal does not deliver (a `kill` aimed at the shim), we forward to every descendant:
//! qwen re-launches itself (a node parent starts a node child) and a signal to the parent alone
//! leaves the child running and still sending requests (QWEN_FACTS_APIKEY.md, §5). The shim is
//! a child subreaper (prctl(2), PR_SET_CHILD_SUBREAPER), so a grandchild orphaned by the node
//! parent is re-parented to us: we still find it, stop it, and reap it.

use std::collections::HashSet;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

/// How a child ended. The shim leaves the same way (`exit_with`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
}

impl Outcome {
    pub fn from_status(status: ExitStatus) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(sig)) => Outcome::Signaled(sig),
            (None, None) => Outcome::Exited(1),
        }
    }

    pub fn success(self) -> bool {
        self == Outcome::Exited(0)
    }
}

/// Leaves the process with `outcome`: the same exit code, or death by the same signal so the
/// caller sees WIFSIGNALED (restore the default action, unblock, re-raise; 128+N as fallback).
pub fn exit_with(outcome: Outcome) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match outcome {
        Outcome::Exited(code) => std::process::exit(code),
        Outcome::Signaled(sig) => {
            if let Ok(s) = Signal::try_from(sig) {
                // SIGABRT, SIGSEGV, SIGQUIT… dump core by default, and our memory holds every
                // key of the pool: the re-raise must end us without a core file (the child is
                // gone, so its own limit was never lowered).
                no_core_dump();
                // SAFETY: resetting a disposition to SIG_DFL installs no Rust code as a handler.
                unsafe {
                    let _ = signal::signal(s, SigHandler::SigDfl);
                }
                let mut set = signal::SigSet::empty();
                set.add(s);
                let _ = set.thread_unblock();
                let _ = signal::raise(s);
            }
            std::process::exit(128 + sig)
        }
    }
}

/// Keeps this process's memory to itself: not dumpable (prctl(2), PR_SET_DUMPABLE 0).
///
/// The shim holds real keys (the pool's, a slot's) in its memory for the whole run. Non-dumpable,
/// its /proc/<pid>/{environ,mem,maps,fd} belong to root and ptrace(2) attach is refused to
/// processes of the same user without CAP_SYS_PTRACE: a tool qwen runs cannot read them. It
/// also means no core dump, whatever `core_pattern` says (a pipe handler included). execve(2)
/// resets the flag, so qwen itself stays dumpable as it would be without the shim.
pub fn keep_memory_private() {
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_dumpable(false);
    }
}

/// Makes sure this process dumps no core: non-dumpable and RLIMIT_CORE 0 (for a file
/// `core_pattern`, the limit alone already suffices; the flag covers a pipe handler, which
/// ignores the limit, core(5)). Call only once no child is left to start: children inherit it.
fn no_core_dump() {
    keep_memory_private();
    let zero = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit(2) only reads the struct we pass.
    unsafe {
        nix::libc::setrlimit(nix::libc::RLIMIT_CORE, &zero);
    }
}

/// Makes this process the reaper of orphaned descendants (Linux only; elsewhere a no-op).
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
}

/// Every live descendant of `root`, found through /proc (parents before children).
pub fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain spaces or ')': split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if let (Some(state), Some(ppid)) = (state, ppid)
            && state != "Z"
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root.as_raw()];
    let mut seen: HashSet<i32> = found.iter().copied().collect();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in &parent_of {
            if ppid == parent && seen.insert(pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

/// Sends `sig` to every descendant of this process.
pub fn signal_tree(sig: Signal) {
    for pid in descendants(Pid::this()) {
        let _ = signal::kill(pid, sig);
    }
}

/// Stops an attempt: TERM to the whole tree, KILL to whatever is left after `grace`. Returns
/// once every descendant is gone or a zombie; the caller's wait loop reaps them.
pub fn stop_tree(grace: Duration) {
    signal_tree(Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if descendants(Pid::this())
            .iter()
            .all(|p| is_zombie_or_gone(*p))
        {
            return;
        }
        // Grandchildren cannot be waited for by a parent that is not theirs; polling /proc is
        // the only way to see them go, and 10 ms keeps it cheap.
        std::thread::sleep(Duration::from_millis(10));
    }
    signal_tree(Signal::SIGKILL);
}

fn is_zombie_or_gone(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z')),
    }
}
