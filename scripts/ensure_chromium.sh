#!/usr/bin/env bash
# The browser tests (tests/e2e/test_browser.py) drive Debian's Chromium through the Playwright
# Python package (`executable_path`); Playwright's own browser download is never used. Install
# the Debian package when it is missing, or stop with one line saying what to do.
set -euo pipefail

CHROMIUM="${RECSYS_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "ERROR: $CHROMIUM is missing and this user cannot run apt-get; install Debian's chromium first: sudo apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ERROR: $CHROMIUM is missing and there is no apt-get here; install Chromium and set RECSYS_CHROMIUM=/path/to/chromium" >&2
    exit 1
fi

echo "installing Debian's chromium for the browser tests (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation; } >&2; then
    echo "ERROR: apt-get could not install chromium; install it by hand (apt-get install chromium) and rerun" >&2
    exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "ERROR: apt-get installed chromium but $CHROMIUM is still missing" >&2
    exit 1
fi
