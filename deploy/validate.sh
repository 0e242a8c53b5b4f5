#!/usr/bin/env bash
# Validates deploy/ offline (see deploy/validate.py). The tools live in .venv-deploy, installed from
# deploy/requirements-deploy.lock on first use and again whenever the lock changes (a stamp file, like .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-deploy
LOCK=deploy/requirements-deploy.lock
STAMP=$VENV/.installed
UV_VERSION=0.13.8

install() {
    [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
    # The project's uv (make install puts it in .venv); otherwise one of our own, outside the synced packages.
    local uv=.venv/bin/uv
    if [ ! -x "$uv" ]; then
        uv=$VENV/.uv/bin/uv
        [ -x "$uv" ] || "$VENV/bin/python" -m pip install -q --disable-pip-version-check --target "$VENV/.uv" \
            "uv==$UV_VERSION"
    fi
    "$uv" pip sync -q --python "$VENV/bin/python" "$LOCK"
    touch "$STAMP"
}

mkdir -p "$VENV"
# Like `uv venv`: the environment ignores itself, so git and ruff never look inside.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
# One installer at a time (two test runs may start together); the others wait, then find it done.
exec 9>"$VENV/.install-lock"
flock 9
if [ ! -f "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ]; then
    echo "installing the validation tools into $VENV from $LOCK" >&2
    install
fi
flock -u 9

exec "$VENV/bin/python" deploy/validate.py "$@"
