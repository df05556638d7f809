#!/usr/bin/env bash
# Closed-loop tracking (issue 8): SAD, NetVLAD and the spiking ensemble driven along the TEST split of GardensPoint
# (day_right -> night_right) and Nordland (summer -> winter) under constant and varying speed, with the diagonal
# and the velocity-search (seqslam) matchers, L = 10, and with the odometry-spaced matcher, fed odometry with
# 0.05 places of noise per step (5% of a nominal step; fixed before the first run, not tuned). The seqslam contrast window and
# number of phases per velocity come from the calibration splits (SAD, varying speed): GardensPoint window 0 (no
# enhancement) and 1 phase, Nordland window 10 and 5 phases (calibration: benchmarks/track_calibrate.sh). Rows with
# more than one phase are written to *-seqslam-pN-*, beside the single-phase rows of the earlier runs.
# Nordland episodes start at random places and stop after 500 steps (4 episodes = 2000 frames per row).
# Usage: SPIKEBOT_DATA=../shared/datasets bash benchmarks/track_benchmark.sh [OUT]   (then: python benchmarks/track_table.py OUT)
set -euo pipefail
OUT="${1:-runs/track-bench}"
SB=".venv/bin/spikebot"
# Every agent builds its map from the environment's reference frames (RGB at the camera size), so a map from
# `build-map` (fingerprinted on the dataset's own images) does not fit; the spiking ensemble is trained per row.
# A row whose results.json exists is skipped, so an interrupted run resumes.
mkdir -p "$OUT"

run() {  # name dataset-args method-args contrast-window velocity-phases extra-args...
  local name="$1" data="$2" method="$3" window="$4" phases="$5"; shift 5
  for profile in constant varying; do
    for mode in diagonal seqslam odometry; do
      local dir="$OUT/$name-$mode-$profile"
      [[ $mode == seqslam && $phases != 1 ]] && dir="$OUT/$name-$mode-p$phases-$profile"
      [[ -f "$dir/results.json" ]] && continue
      # shellcheck disable=SC2086
      $SB vpr track $data --split test $method --seq-len 10 --seq-mode "$mode" \
          $([[ $mode == seqslam ]] && echo "--contrast-window $window --velocity-phases $phases") \
          $([[ $mode == odometry ]] && echo "--env-option odometry_noise=0.05") --speed-profile "$profile" \
          --episodes 4 --seed 0 "$@" --out "$dir" | grep "accuracy" | head -1
    done
  done
}
GP="--dataset gardens_point --reference day_right --query night_right"
NL="--dataset nordland_trimmed --reference summer --query winter"
NL_EPISODES=(--max-steps 500 --env-option start=random)
run gp-sad "$GP" "--method sad" 0 1
run gp-netvlad "$GP" "--method netvlad --model runs/cnn/netvlad-off-the-shelf" 0 1
run gp-snn "$GP" "--method snn-ensemble --config configs/snn_gardens_point_night.json" 0 1
run nl-sad "$NL" "--method sad" 10 5 "${NL_EPISODES[@]}"
run nl-netvlad "$NL" "--method netvlad --model runs/cnn/netvlad-fine-tuned" 10 5 "${NL_EPISODES[@]}"
run nl-snn "$NL" "--method snn-ensemble --config configs/snn_nordland.json" 10 5 "${NL_EPISODES[@]}"
