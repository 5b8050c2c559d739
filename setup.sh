#!/usr/bin/env bash
# Set up EEGS on a fresh machine: system packages (Xvfb and OpenGL for the PsychoPy
# window, Chromium for the dashboard's browser test; needs root + apt), then .venv in the
# repository root with the exact versions of requirements.lock (refresh it with
# scripts/refresh-lock.sh) and `eegs` installed, then an import check of every heavy module,
# so that a broken install fails here, not at first use.
set -euo pipefail
cd "$(dirname "$0")"

if command -v apt-get >/dev/null 2>&1; then
  pkgs=(xvfb xauth libgl1 libglu1-mesa libgl1-mesa-dri libegl1 libxtst6 chromium)
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
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q -r requirements.lock
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
"${pip[@]}" check
if [[ -z ${DISPLAY:-} ]] && command -v xvfb-run >/dev/null 2>&1; then
  xvfb-run -a -s "-screen 0 1024x768x24" .venv/bin/python -m app.install_check
else
  .venv/bin/python -m app.install_check
fi
echo "EEGS is set up: .venv/bin/eegs --help"
