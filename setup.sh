#!/usr/bin/env bash
# Set up EEGS on a fresh machine: system packages (Xvfb and OpenGL for the PsychoPy
# window, needs root + apt), then .venv in the repository root with `eegs` installed.
set -euo pipefail
cd "$(dirname "$0")"

if command -v apt-get >/dev/null 2>&1; then
  pkgs=(xvfb xauth libgl1 libglu1-mesa libgl1-mesa-dri libegl1 libxtst6)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
      echo "setup.sh: please install: sudo apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
fi

py=""
for cand in python3.11 python3.12 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(not ((3,11) <= sys.version_info[:2] <= (3,12)))'; then
    py=$cand; break
  fi
done
[[ -n $py ]] || { echo "setup.sh: Python 3.11 or 3.12 is required" >&2; exit 1; }

[[ -x .venv/bin/python ]] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -m pip check
echo "EEGS is set up: .venv/bin/eegs --help"
