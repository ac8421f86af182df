#!/usr/bin/env bash
# The browser tests (tests/e2e/test_browser.py) drive Debian's Chromium through the Playwright
# Python package (`executable_path`); Playwright's own browser download is never used. Install
# the Debian package when it is missing, or stop with one line saying what to do.
set -euo pipefail
source "$(dirname "$0")/apt_install.sh"

CHROMIUM="${RECSYS_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

status=0
apt_install "the browser tests" chromium fonts-liberation || status=$?
if [ "$status" = 2 ]; then
    echo "ERROR: $CHROMIUM is missing and this user cannot run apt-get; install Debian's chromium first (apt-get install chromium) or set RECSYS_CHROMIUM=/path/to/chromium" >&2
    exit 1
elif [ "$status" != 0 ]; then
    echo "ERROR: apt-get could not install chromium; install it by hand (apt-get install chromium) and rerun" >&2
    exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "ERROR: apt-get installed chromium but $CHROMIUM is still missing" >&2
    exit 1
fi
