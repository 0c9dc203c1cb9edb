#!/bin/sh
# Installs the qwen-rotation shim into a directory of its own that goes first on PATH, in front
# of the real qwen. It never writes into npm's bin directory and never replaces npm's `qwen`.
#
#   ./install.sh [--prefix DIR] [--binary FILE] [--with-qwen[=VERSION]] [--write-profile]
#                [--profiles qwen,gemini,claude] [--doctor] [--demo] [--uninstall]
#
# Idempotent; non-interactive (works in a Dockerfile RUN); as root or as a user.
# --write-profile appends the PATH line to /etc/profile.d/qwen-rotation.sh (root) or ~/.profile
# (and ~/.bashrc, ~/.zshrc when present); QWEN_ROTATION_PROFILE=FILE names another file.
# --uninstall removes the shim, its PATH line, and the real qwen only when --with-qwen installed
# it (recorded in PREFIX/installed-qwen); a qwen installed otherwise is kept.
# --profiles names the CLIs the shim stands in front of (default: qwen, plus gemini and claude
# when a real one is on PATH); `gemini` and `claude` are links to the same binary, in front of
# npm's gemini and claude.
# --demo runs the installed shim's `qwen --rotation-demo` (a quota rotation on the real qwen in a
# temporary home, nothing of yours touched), then `gemini --rotation-demo` and
# `claude --rotation-demo` for each of those profiles installed with its real CLI on PATH;
# install.sh fails when a demo does.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
marker="qwen-rotation-shim-marker"
profile_tag="# qwen-rotation: the shim goes first on PATH"

if [ "$(id -u)" = 0 ]; then
    prefix=/opt/qwen-rotation
else
    prefix="${XDG_DATA_HOME:-$HOME/.local/share}/qwen-rotation"
fi
binary=""
with_qwen=""
write_profile=0
doctor=0
demo=0
uninstall=0
profiles_opt=""

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift ;;
        --prefix=*) prefix=${1#--prefix=} ;;
        --binary) [ $# -ge 2 ] || die "--binary needs a file"; binary=$2; shift ;;
        --binary=*) binary=${1#--binary=} ;;
        --with-qwen) with_qwen=latest ;;
        --with-qwen=*) with_qwen=${1#--with-qwen=} ;;
        --write-profile) write_profile=1 ;;
        --doctor) doctor=1 ;;
        --demo) demo=1 ;;
        --uninstall) uninstall=1 ;;
        --profiles) [ $# -ge 2 ] || die "--profiles needs a list such as qwen,gemini,claude"; profiles_opt=$2; shift ;;
        --profiles=*) profiles_opt=${1#--profiles=} ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1; see ./install.sh --help" ;;
    esac
    shift
done

for name in $(printf '%s' "$profiles_opt" | tr ',' ' '); do
    case "$name" in
        qwen|gemini|claude) ;;
        *) die "--profiles: unknown CLI $name; use qwen, gemini, claude or a list such as qwen,gemini,claude" ;;
    esac
done

bindir="$prefix/bin"
target="$bindir/qwen"
# What --with-qwen installed, for --uninstall: the npm prefix it installed the real qwen into
# (`beside-the-shim`: PREFIX/npm, a directory of ours).
manifest="$prefix/installed-qwen"
qwen_package="@qwen-code/qwen-code"
path_line="export PATH=\"$bindir:\$PATH\"  $profile_tag"

profiles() {
    if [ -n "${QWEN_ROTATION_PROFILE:-}" ]; then
        echo "$QWEN_ROTATION_PROFILE"
    elif [ "$(id -u)" = 0 ] && [ -d /etc/profile.d ]; then
        echo /etc/profile.d/qwen-rotation.sh
    else
        echo "$HOME/.profile"
        [ -f "$HOME/.bashrc" ] && echo "$HOME/.bashrc"
        [ -f "$HOME/.zshrc" ] && echo "$HOME/.zshrc"
    fi
    return 0
}

is_shim() { [ -f "$1" ] && grep -q "$marker" "$1" 2>/dev/null; }

# The real qwen: first `qwen` on PATH that is not in our directory.
real_qwen() {
    old_ifs=$IFS
    IFS=:
    for d in $PATH; do
        [ "$d" = "$bindir" ] && continue
        if [ -x "$d/qwen" ] && ! is_shim "$d/qwen"; then
            IFS=$old_ifs
            echo "$d/qwen"
            return 0
        fi
    done
    IFS=$old_ifs
    return 1
}

# Removes the real qwen that --with-qwen installed, when the manifest records it; never another.
uninstall_real_qwen() {
    if [ ! -f "$manifest" ]; then
        if real=$(real_qwen); then
            say "kept the real qwen $real (install.sh did not install it)"
        fi
        return 0
    fi
    from=$(sed -n 's/^npm_prefix=//p' "$manifest" | tail -n 1)
    if [ "$from" = beside-the-shim ]; then
        # Beside the shim, in a directory of ours: nothing else lives there.
        rm -rf "$prefix/npm"
        say "removed the real qwen that --with-qwen installed in $prefix/npm"
    else
        case "$from" in
            /*) ;;
            *) die "$manifest names no npm prefix; remove it once the real qwen is dealt with" ;;
        esac
        if command -v npm >/dev/null 2>&1 \
            && npm uninstall -g --no-audit --no-fund --prefix "$from" "$qwen_package" >/dev/null; then
            say "removed the real qwen that --with-qwen installed: npm uninstall -g --prefix $from $qwen_package"
        else
            die "could not remove the real qwen that --with-qwen installed; run: npm uninstall -g --prefix $from $qwen_package, then ./install.sh --uninstall again"
        fi
    fi
    rm -f "$manifest"
}

if [ "$uninstall" = 1 ]; then
    # The other names: our links to the shim (or copies of it), never npm's gemini or claude.
    for cli in gemini claude; do
        if [ -L "$bindir/$cli" ] || is_shim "$bindir/$cli"; then
            rm -f "$bindir/$cli"
            say "removed $bindir/$cli"
        fi
    done
    if [ -e "$target" ]; then
        is_shim "$target" || die "$target is not the qwen-rotation shim; leaving it alone"
        rm -f "$target"
        say "removed $target"
    fi
    for f in $(profiles); do
        [ -f "$f" ] || continue
        if grep -qF "$profile_tag" "$f"; then
            # grep -v exits 1 when no line is left: that is success here.
            { grep -vF "$profile_tag" "$f" || true; } > "$f.qwen-rotation.tmp"
            cat "$f.qwen-rotation.tmp" > "$f"
            rm -f "$f.qwen-rotation.tmp"
            # Our own profile.d file goes entirely once it is empty.
            case "$f" in */qwen-rotation.sh) [ -s "$f" ] || rm -f "$f" ;; esac
            say "removed the PATH line from $f"
        fi
    done
    uninstall_real_qwen
    rmdir "$bindir" "$prefix" 2>/dev/null || true
    say "accounts and state under ~/.qwen are kept"
    exit 0
fi

# npm's global bin directory holds the real qwen: the shim must live somewhere else.
npm_bin=/usr/local/bin
if command -v npm >/dev/null 2>&1; then
    npm_bin="$(npm prefix -g 2>/dev/null)/bin"
fi
case "$(cd "$bindir" 2>/dev/null && pwd || echo "$bindir")" in
    "$npm_bin"|/usr/bin|/usr/local/bin|/bin|/usr/sbin|/sbin)
        die "$bindir is a shared bin directory (npm's qwen may live there); choose a dedicated --prefix" ;;
esac
if [ -e "$target" ] && ! is_shim "$target"; then
    die "$target exists and is not the qwen-rotation shim; choose another --prefix"
fi

# Builds the shim and prints the path of the executable cargo made. cargo names it in its JSON
# messages, wherever CARGO_TARGET_DIR, build.target-dir or a --target triple put it; its own
# progress and any compiler error go to stderr as usual.
build_shim() {
    artifacts=$(cd "$here" && cargo build --release --locked --message-format=json-render-diagnostics) \
        || die "cargo build failed (its messages are above); fix that, or pass --binary FILE"
    built=$(printf '%s\n' "$artifacts" | sed -n 's|.*"executable":"\([^"]*/qwen\)".*|\1|p' | tail -n 1)
    [ -n "$built" ] || die "cargo reported no qwen executable; pass --binary FILE (e.g. target/release/qwen)"
    echo "$built"
}

if [ -z "$binary" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) or pass --binary FILE"
    say "building the shim with cargo build --release (a first build takes a few minutes; cargo's progress follows)"
    binary=$(build_shim)
fi
[ -f "$binary" ] || die "$binary does not exist"
is_shim "$binary" || die "$binary is not a qwen-rotation shim build"

mkdir -p "$bindir"
chmod 755 "$bindir"
tmp="$bindir/.qwen.$$"
cp "$binary" "$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$target"
say "installed $target"

# The other CLIs, by name: a link to the same binary (it picks its profile from the name).
# Default: gemini and claude, each when a real one is on PATH.
real_cli() {
    old_ifs=$IFS
    IFS=:
    for d in $PATH; do
        [ "$d" = "$bindir" ] && continue
        if [ -x "$d/$1" ] && ! is_shim "$d/$1"; then
            IFS=$old_ifs
            echo "$d/$1"
            return 0
        fi
    done
    IFS=$old_ifs
    return 1
}
real_gemini() { real_cli gemini; }
if [ -z "$profiles_opt" ]; then
    profiles_opt=qwen
    real_gemini >/dev/null && profiles_opt=$profiles_opt,gemini
    real_cli claude >/dev/null && profiles_opt=$profiles_opt,claude
fi
for name in $(printf '%s' "$profiles_opt" | tr ',' ' '); do
    case "$name" in
        qwen) ;;
        gemini)
            if [ -e "$bindir/gemini" ] && [ ! -L "$bindir/gemini" ] && ! is_shim "$bindir/gemini"; then
                die "$bindir/gemini exists and is not the qwen-rotation shim; choose another --prefix"
            fi
            ln -sfn qwen "$bindir/gemini"
            say "installed $bindir/gemini (the same shim, in front of the real gemini)"
            real_gemini >/dev/null || say "no real gemini on PATH yet: npm install -g @google/gemini-cli" ;;
        claude)
            if [ -e "$bindir/claude" ] && [ ! -L "$bindir/claude" ] && ! is_shim "$bindir/claude"; then
                die "$bindir/claude exists and is not the qwen-rotation shim; choose another --prefix"
            fi
            ln -sfn qwen "$bindir/claude"
            say "installed $bindir/claude (the same shim, in front of the real claude: subscription logins first, then API keys)"
            real_cli claude >/dev/null || say "no real claude on PATH yet: npm install -g @anthropic-ai/claude-code" ;;
    esac
done

# Notes that install.sh installed the real qwen into npm prefix $1 (or `beside-the-shim`), so
# --uninstall removes it.
record_real_qwen() {
    printf '# install.sh --with-qwen installed the real qwen here; ./install.sh --uninstall removes it\nnpm_prefix=%s\n' "$1" > "$manifest"
}

if [ -n "$with_qwen" ] && ! real_qwen >/dev/null; then
    command -v npm >/dev/null 2>&1 || die "--with-qwen needs npm (install Node.js 20 or later)"
    spec="$qwen_package"
    node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$with_qwen" = latest ] && [ "$node_major" -lt 22 ]; then
        # qwen's latest releases declare engines.node >= 22 and do not run on older Node.js.
        with_qwen=0.12.0
        say "Node.js $node_major is older than 22, which qwen's latest release needs: installing qwen 0.12.0 (upgrade Node.js for the latest)"
    fi
    [ "$with_qwen" = latest ] || spec="$spec@$with_qwen"
    npm_prefix=$(npm prefix -g 2>/dev/null || echo /usr/local)
    if [ -w "$npm_prefix" ] || { [ ! -e "$npm_prefix" ] && [ "$(id -u)" = 0 ]; }; then
        say "installing the real qwen: npm install -g $spec"
        npm install -g --no-audit --no-fund "$spec" >/dev/null
        record_real_qwen "$npm_prefix"
    else
        # npm's global prefix is not ours to write: keep the real qwen beside the shim's
        # directory, and put it on PATH *after* everything else.
        say "installing the real qwen into $prefix/npm (npm's global prefix $npm_prefix is not writable)"
        npm install -g --no-audit --no-fund --prefix "$prefix/npm" "$spec" >/dev/null
        record_real_qwen beside-the-shim
        path_line="export PATH=\"$bindir:\$PATH:$prefix/npm/bin\"  $profile_tag"
        PATH="$PATH:$prefix/npm/bin"
    fi
fi
if real=$(real_qwen); then
    say "the real qwen: $real"
else
    say "no real qwen on PATH yet: npm install -g @qwen-code/qwen-code (or rerun with --with-qwen)"
fi

if [ "$write_profile" = 1 ]; then
    for f in $(profiles); do
        if [ -f "$f" ] && grep -qF "$profile_tag" "$f"; then
            say "$f already puts the shim first"
        else
            printf '%s\n' "$path_line" >> "$f"
            say "added the PATH line to $f"
        fi
    done
fi

case ":$PATH:" in
    *":$bindir:"*) first=$(command -v qwen || true)
        [ "$first" = "$target" ] && say "ready: qwen on PATH is the shim" \
            || say "warning: $first comes before the shim on PATH; put $bindir first" ;;
    *) say "to use it in this shell:  ${path_line%%  #*}"
       [ "$write_profile" = 1 ] || say "to make it permanent, rerun with --write-profile (or add that line to your profile)" ;;
esac

# --doctor: run the installed shim, first on PATH, and let it check the whole setup.
if [ "$doctor" = 1 ]; then
    say "running: qwen --rotation-doctor (with $bindir first on PATH)"
    PATH="$bindir:$PATH" "$target" --rotation-doctor || true
fi

# --demo: the installed shim, first on PATH, shows a rotation on the real qwen (and on the real
# gemini and claude when their profiles are installed and they are there); its status is ours.
if [ "$demo" = 1 ]; then
    say "running: qwen --rotation-demo (with $bindir first on PATH)"
    status=0
    PATH="$bindir:$PATH" "$target" --rotation-demo || status=$?
    [ "$status" = 0 ] || die "the demo failed (exit $status; its line above says why); the shim is installed in $bindir"
    for name in gemini claude; do
        case ",$profiles_opt," in
            *,"$name",*) ;;
            *) continue ;;
        esac
        case "$name" in
            gemini) package=@google/gemini-cli ;;
            *) package=@anthropic-ai/claude-code ;;
        esac
        if real_cli "$name" >/dev/null; then
            say "running: $name --rotation-demo (with $bindir first on PATH)"
            PATH="$bindir:$PATH" "$bindir/$name" --rotation-demo || status=$?
            [ "$status" = 0 ] || die "the $name demo failed (exit $status; its line above says why); the shim is installed in $bindir"
        else
            say "no $name demo: no real $name on PATH (npm install -g $package, then $name --rotation-demo)"
        fi
    done
fi
