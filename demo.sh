#!/usr/bin/env bash
# Replay the real EEGLAB recording into the acquisition worker (60 s of it).
set -euo pipefail
cd "$(dirname "$0")"
data=../shared/data/real/eeglab-sample/test_raw.set
out=${1:-sessions/demo}
rm -rf "$out"
.venv/bin/eegs replay "$data" --name EEGS-EEG --duration 60 --wait 20 &
replay=$!
trap 'kill $replay 2>/dev/null || true' EXIT
.venv/bin/eegs acquire --session "$out" --eeg EEGS-EEG --markers EEGS-EEG-markers \
  --event square --tmin -0.2 --tmax 0.8 --duration 62
wait $replay
.venv/bin/eegs export-epochs "$out" "$out/epochs-epo.fif" --overwrite
