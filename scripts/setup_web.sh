#!/usr/bin/env bash
# What the browser host's tests (tests/test_web.py) and scripts/bench_web.py need: Debian's Chromium, Node.js and
# examples/web's npm packages (onnxruntime-web, puppeteer-core; versions from its package-lock.json).
# Idempotent: installs only what is missing or stale. Where something cannot be had (no root, no registry), it
# says so and returns 0: the browser tests then skip with the reason, and the rest of the suite runs.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
web="$root/examples/web"
warn() { echo "setup_web: $*; the browser tests will skip" >&2; }

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        warn "cannot install $* (needs root and apt-get)"
        return 1
    fi
    if [ -z "${_apt_updated:-}" ]; then
        apt-get update -q >/dev/null || { warn "apt-get update failed"; return 1; }
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || { warn "apt-get install $* failed"; return 1; }
}

if [ -z "${STLPIPS_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    echo "setup_web: installing Debian's chromium" >&2
    apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup_web: installing Node.js and npm" >&2
    apt_install nodejs npm
fi

# npm ci when node_modules is missing or was installed from another lock file (a stamp holds the lock's hash).
if command -v npm >/dev/null; then
    want="$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)"
    stamp="$web/node_modules/.stlpips-lock-sha256"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "setup_web: npm ci in examples/web" >&2
        if (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
            echo "$want" > "$stamp"
        else
            warn "npm ci in examples/web failed"
        fi
    fi
fi
exit 0
