#!/usr/bin/env bash
# Calibration of the velocity-search (seqslam) matcher for benchmarks/track_benchmark.sh: SAD driven at varying
# speed along the CALIBRATION split (never the test split), L = 10, 4 seeded episodes, with 1, 3 and 5 phases per
# velocity at each dataset's contrast window (GardensPoint 0, Nordland 10, themselves chosen on these splits).
# Usage: SPIKEBOT_DATA=../shared/datasets bash benchmarks/track_calibrate.sh [OUT]
set -euo pipefail
OUT="${1:-runs/track-cal}"
SB=".venv/bin/spikebot"
mkdir -p "$OUT"
for phases in 1 3 5; do
  $SB vpr track --dataset gardens_point --reference day_right --query night_right --split calibration --method sad \
      --seq-len 10 --seq-mode seqslam --contrast-window 0 --velocity-phases "$phases" --speed-profile varying \
      --episodes 4 --seed 0 --out "$OUT/gp-sad-seqslam-p$phases-varying" | grep accuracy | head -1
  $SB vpr track --dataset nordland_trimmed --reference summer --query winter --split calibration --method sad \
      --seq-len 10 --seq-mode seqslam --contrast-window 10 --velocity-phases "$phases" --speed-profile varying \
      --episodes 4 --seed 0 --max-steps 500 --env-option start=random --out "$OUT/nl-sad-seqslam-p$phases-varying" \
      | grep accuracy | head -1
done
