#!/usr/bin/env bash
# `make test` runs this first: Debian's Chromium for the staff console's browser tests (tests/browser), from apt
# when it is missing and we are root. Never downloads a browser from anywhere else. When it cannot install one,
# it says why here and the browser tests are skipped with that reason in pytest's summary; it never fails the run.
set -uo pipefail
cd "$(dirname "$0")/../.."
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
LOG=var/chromium-install.log

[[ -x $CHROMIUM ]] && exit 0

skip() {
    printf '\n*** browser tests: %s\n*** the staff console browser tests will be SKIPPED (see the pytest summary)\n\n' "$1" >&2
    exit 0
}

[[ $(id -u) -eq 0 ]] || skip "$CHROMIUM is missing and this is not root: install it with 'sudo apt-get install chromium'"
command -v apt-get >/dev/null || skip "$CHROMIUM is missing and there is no apt-get on this machine"
mkdir -p var
echo "installing Debian's chromium for the browser tests (apt-get; log in $LOG)" >&2
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get install -y -q --no-install-recommends chromium >>"$LOG" 2>&1; }
# A fresh machine may have no package lists yet: update only when the first attempt fails.
apt_install || { apt-get update -q >>"$LOG" 2>&1 && apt_install; }
[[ -x $CHROMIUM ]] || skip "apt-get could not install chromium: see $LOG"
echo "chromium installed: $("$CHROMIUM" --version 2>/dev/null)" >&2
