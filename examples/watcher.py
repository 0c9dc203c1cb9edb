#!/usr/bin/env python3
"""A caller the original design had: it runs `qwen "<prompt>" --output-format text` and uses stdout.

It knows nothing about accounts. With the qwen-rotation shim first on PATH, a quota hit on one
account becomes a retry on the next, and this script sees only the answer (docs/DOCKER.md).

    python3 watcher.py            # ask every WATCHER_INTERVAL seconds until stopped
    python3 watcher.py --once     # ask once; exit with qwen's status

Environment: WATCHER_PROMPT, WATCHER_INTERVAL (seconds, default 300), WATCHER_TIMEOUT (seconds,
default 120).
"""

import os
import signal
import socket
import subprocess
import sys
import time

PROMPT = os.environ.get("WATCHER_PROMPT", "Say hello in five words.")
INTERVAL = float(os.environ.get("WATCHER_INTERVAL", "300"))
TIMEOUT = float(os.environ.get("WATCHER_TIMEOUT", "120"))
NAME = socket.gethostname()

# The shim's own exit code when every account is cooling down (README, "Exit codes").
EXHAUSTED = 75

running = None  # the qwen being waited for, if any


def log(message):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{NAME}] {message}", flush=True)


def ask(prompt):
    """Runs qwen once; returns (exit code or None on timeout, stdout, stderr)."""
    global running
    # Its own session, so a timeout stops the whole group: qwen's node parent starts a node child,
    # and subprocess.run(timeout=...) would SIGKILL only the process it started.
    child = subprocess.Popen(
        ["qwen", prompt, "--output-format", "text"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    running = child
    try:
        out, err = child.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)
        out, err = child.communicate()
        return None, out, err
    finally:
        running = None
    return child.returncode, out, err


def stop(*_):
    # `docker stop` sends SIGTERM: stop the qwen in flight (its own session does not get the
    # signal) and leave.
    if running is not None:
        try:
            os.killpg(running.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    sys.exit(0)


def once():
    code, out, err = ask(PROMPT)
    # The shim's notices ("qwen-rotation: account 1 quota exhausted; switched to account 2").
    for line in err.splitlines():
        if line.startswith("qwen-rotation:"):
            log(line)
    if code == 0:
        log(f"answer: {out.strip()}")
    elif code is None:
        log(f"qwen did not answer within {TIMEOUT:g} s")
    elif code == EXHAUSTED:
        log("every account is cooling down; `qwen --rotation-status` says until when")
    else:
        log(f"qwen exited {code}: {err.strip()[-500:]}")
    return 1 if code is None else code


def main():
    signal.signal(signal.SIGTERM, stop)
    if sys.argv[1:] == ["--once"]:
        return once()
    if sys.argv[1:]:
        print("usage: watcher.py [--once]", file=sys.stderr)
        return 2
    while True:
        once()
        time.sleep(INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
