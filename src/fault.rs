//! Test-only crash points. With the `fault-injection` feature, `point("name")` kills the process
//! with SIGKILL when `QWEN_ROTATION_FAULT=name` (or `name@K` for the K-th time it is reached),
//! or panics there when the value ends in `:panic` (a bug, for the fail-open tests); without the
//! feature it compiles to nothing, so release builds carry no trace of it.

#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("QWEN_ROTATION_FAULT") else {
        return;
    };
    let (spec, panics) = match spec.strip_suffix(":panic") {
        Some(rest) => (rest.to_string(), true),
        None => (spec, false),
    };
    let (target, nth) = match spec.split_once('@') {
        Some((t, n)) => (t.to_string(), n.parse::<usize>().unwrap_or(1)),
        None => (spec, 1),
    };
    if target == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        if panics {
            panic!("injected fault at {name}");
        }
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}
