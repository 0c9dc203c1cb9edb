# qwen-rotation in front of a pinned Qwen Code CLI (docs/DOCKER.md).
#
#   docker build -t qwen-rotation .                                  # qwen 0.24.4: API keys
#   docker build -t qwen-rotation:oauth --build-arg QWEN_VERSION=0.12.0 .   # OAuth accounts
#   docker run --rm -it -v "$HOME/.qwen:/home/node/.qwen" qwen-rotation qwen -p "hello"
#   docker build -t qwen-rotation:gemini --build-arg GEMINI_VERSION=0.61.0 .  # `gemini` as well
#   docker build -t qwen-rotation:claude --build-arg CLAUDE_VERSION=2.1.332 .  # `claude` as well
#
# Stage 1 builds the shim; stage 2 is Node.js with the real qwen from npm in npm's global bin
# (/usr/local/bin) and the shim in a directory of its own (/opt/qwen-rotation/bin) that comes
# first on PATH. The build fails unless `qwen` resolves to the shim and the shim finds the real
# qwen behind it. No credential is baked in: accounts live in the mounted ~/.qwen, API keys come
# from the environment at run time.

# Same Debian release as the runtime stage, so the binary links against the same glibc.
ARG RUST_IMAGE=rust:1-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Cargo.toml names the benches, so cargo wants their files even for `build --bin`.
COPY benches ./benches
COPY src ./src
RUN cargo build --release --locked --bin qwen

FROM ${NODE_IMAGE}
# The real qwen, pinned. 0.24.x (the default) needs Node.js 22 and runs API-key accounts;
# OAuth accounts need 0.12.0, the last release that runs headless OAuth (docs/DOCKER.md).
ARG QWEN_VERSION=0.24.4
# The user that owns the mounted ~/.qwen: match the host user's ids (`id -u`, `id -g`) so files
# written in the container stay readable and writable on the host.
ARG QWEN_UID=1000
ARG QWEN_GID=1000
# Google's Gemini CLI as well, pinned, with the shim in front of it as `gemini` (docs/GEMINI.md);
# empty: qwen only.
ARG GEMINI_VERSION=
# Anthropic's Claude Code as well, pinned, with the shim in front of it as `claude`
# (docs/CLAUDE.md); empty: no claude. Its npm package brings a native binary (about 400 MB).
ARG CLAUDE_VERSION=

# ca-certificates: the API-key relay checks the provider's TLS certificate against the system
# store. python3: only for examples/watcher.py; drop it if your image runs something else.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates python3 \
 && rm -rf /var/lib/apt/lists/*

# npm drops the exec bit of qwen's vendored ripgrep (0.24.x prints "Ripgrep not available"
# without it); .ci/install-qwen does the same.
RUN npm install -g --no-audit --no-fund --no-update-notifier "@qwen-code/qwen-code@${QWEN_VERSION}" \
 && npm cache clean --force \
 && { find "$(npm root -g)/@qwen-code/qwen-code/vendor" -path '*ripgrep*' -name rg -type f \
        -exec chmod 755 {} + 2>/dev/null || true; }

RUN if [ -n "$GEMINI_VERSION" ]; then \
        npm install -g --no-audit --no-fund --no-update-notifier "@google/gemini-cli@${GEMINI_VERSION}" \
        && npm cache clean --force; \
    fi

RUN if [ -n "$CLAUDE_VERSION" ]; then \
        npm install -g --no-audit --no-fund --no-update-notifier "@anthropic-ai/claude-code@${CLAUDE_VERSION}" \
        && npm cache clean --force; \
    fi

# The image's `node` user (uid 1000) runs qwen; its ids follow QWEN_UID/QWEN_GID.
RUN if [ "$QWEN_GID" != "$(id -g node)" ]; then groupmod -o -g "$QWEN_GID" node; fi \
 && if [ "$QWEN_UID" != "$(id -u node)" ]; then usermod -o -u "$QWEN_UID" -g "$QWEN_GID" node; fi \
 && install -d -m 0700 -o node -g node /home/node/.qwen \
 && if [ -n "$GEMINI_VERSION" ]; then install -d -m 0700 -o node -g node /home/node/.gemini; fi \
 && if [ -n "$CLAUDE_VERSION" ]; then install -d -m 0700 -o node -g node /home/node/.claude; fi \
 && chown node:node /home/node

# The shim, installed by install.sh into its own prefix: never into /usr/local/bin, where npm
# keeps the real qwen (install.sh refuses that directory).
COPY --from=build /src/target/release/qwen /tmp/qwen-rotation/qwen
COPY install.sh /tmp/qwen-rotation/install.sh
RUN sh /tmp/qwen-rotation/install.sh --binary /tmp/qwen-rotation/qwen --prefix /opt/qwen-rotation \
        --profiles "qwen${GEMINI_VERSION:+,gemini}${CLAUDE_VERSION:+,claude}" \
 && rm -rf /tmp/qwen-rotation
ENV PATH=/opt/qwen-rotation/bin:$PATH

COPY examples/watcher.py /usr/local/share/qwen-rotation/watcher.py

USER node
WORKDIR /home/node
# The PATH order, checked at build time as the user that runs qwen: `qwen` is the shim, the shim
# finds npm's qwen behind it, and a call passes through to the pinned release. In a throwaway
# HOME: qwen writes into ~/.qwen even for --version, and the image's ~/.qwen stays empty.
RUN set -e; \
    shim=$(command -v qwen); \
    [ "$shim" = /opt/qwen-rotation/bin/qwen ] || { echo "qwen on PATH is $shim, not the shim"; exit 1; }; \
    real="$(npm prefix -g)/bin/qwen"; \
    probe=$(mktemp -d); \
    doctor=$(HOME=$probe qwen --rotation-doctor 2>&1 || true); \
    echo "$doctor"; \
    echo "$doctor" | grep -qF "real qwen: $real" || { echo "the shim does not find the real qwen at $real"; exit 1; }; \
    version=$(HOME=$probe qwen --version </dev/null); \
    rm -rf "$probe"; \
    [ "$version" = "$QWEN_VERSION" ] || { echo "qwen --version through the shim says $version, not $QWEN_VERSION"; exit 1; }; \
    echo "ok: $shim in front of $real (qwen $version)"; \
    if [ -n "$GEMINI_VERSION" ]; then \
        shim=$(command -v gemini); \
        [ "$shim" = /opt/qwen-rotation/bin/gemini ] || { echo "gemini on PATH is $shim, not the shim"; exit 1; }; \
        real="$(npm prefix -g)/bin/gemini"; \
        probe=$(mktemp -d); \
        doctor=$(GEMINI_CLI_HOME=$probe gemini --rotation-doctor 2>&1 || true); \
        rm -rf "$probe"; \
        echo "$doctor" | grep -qF "real gemini: $real" || { echo "the shim does not find the real gemini at $real"; exit 1; }; \
        echo "ok: $shim in front of $real"; \
    fi; \
    if [ -n "$CLAUDE_VERSION" ]; then \
        shim=$(command -v claude); \
        [ "$shim" = /opt/qwen-rotation/bin/claude ] || { echo "claude on PATH is $shim, not the shim"; exit 1; }; \
        real="$(npm prefix -g)/bin/claude"; \
        probe=$(mktemp -d); \
        doctor=$(HOME=$probe CLAUDE_CONFIG_DIR=$probe/.claude claude --rotation-doctor 2>&1 || true); \
        version=$(HOME=$probe CLAUDE_CONFIG_DIR=$probe/.claude CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 claude --version </dev/null); \
        rm -rf "$probe"; \
        echo "$doctor" | grep -qF "real claude: $real" || { echo "the shim does not find the real claude at $real"; exit 1; }; \
        case "$version" in "$CLAUDE_VERSION"*) ;; *) echo "claude --version through the shim says $version, not $CLAUDE_VERSION"; exit 1 ;; esac; \
        echo "ok: $shim in front of $real (claude $version)"; \
    fi

CMD ["qwen"]
