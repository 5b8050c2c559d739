#!/usr/bin/env bash
# Refresh requirements.lock from pyproject.toml's ranges (uv, universal: every platform
# and Python the project supports), then reinstall from it: bash scripts/refresh-lock.sh
# Every pin moves to the newest release its range allows; with --keep, the pins already in
# the lock stay and only what pyproject added or excluded changes (adding one dependency).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || { echo "refresh-lock: run bash setup.sh first" >&2; exit 1; }
upgrade=(--upgrade)
[[ ${1:-} == --keep ]] && upgrade=()
.venv/bin/python -m pip install -q --disable-pip-version-check "uv>=0.9,<1"
.venv/bin/uv pip compile pyproject.toml --extra test --constraint lock-constraints.txt \
  --universal --python-version 3.11 "${upgrade[@]}" --quiet --output-file requirements.lock
bash setup.sh
