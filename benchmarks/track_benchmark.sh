#!/usr/bin/env bash
# Closed-loop tracking (issue 8): SAD, NetVLAD and the spiking ensemble driven along the TEST split of GardensPoint
# (day_right -> night_right) and Nordland (summer -> winter) under constant and varying speed, with the diagonal
# and the velocity-search (seqslam) matchers, L = 10, and with the odometry-spaced matcher, fed odometry with
# 0.05 places of noise per step (5% of a nominal step; fixed before the first run, not tuned). The seqslam contrast window per dataset comes from the
# calibration splits (SAD, varying speed): GardensPoint 0 (no enhancement), Nordland 10.
# Nordland episodes start at random places and stop after 500 steps (4 episodes = 2000 frames per row).
# Usage: SPIKEBOT_DATA=../shared/datasets bash benchmarks/track_benchmark.sh [OUT]   (then: python benchmarks/track_table.py OUT)
set -euo pipefail
OUT="${1:-runs/track-bench}"
SB=".venv/bin/spikebot"
# Every agent builds its map from the environment's reference frames (RGB at the camera size), so a map from
# `build-map` (fingerprinted on the dataset's own images) does not fit; the spiking ensemble is trained per row.
# A row whose results.json exists is skipped, so an interrupted run resumes.
mkdir -p "$OUT"

run() {  # name dataset-args method-args contrast-window extra-args...
  local name="$1" data="$2" method="$3" window="$4"; shift 4
  for profile in constant varying; do
    for mode in diagonal seqslam odometry; do
      [[ -f "$OUT/$name-$mode-$profile/results.json" ]] && continue
      # shellcheck disable=SC2086
      $SB vpr track $data --split test $method --seq-len 10 --seq-mode "$mode" \
          $([[ $mode == seqslam ]] && echo "--contrast-window $window") \
          $([[ $mode == odometry ]] && echo "--env-option odometry_noise=0.05") --speed-profile "$profile" \
          --episodes 4 --seed 0 "$@" --out "$OUT/$name-$mode-$profile" | grep "accuracy" | head -1
    done
  done
}
GP="--dataset gardens_point --reference day_right --query night_right"
NL="--dataset nordland_trimmed --reference summer --query winter"
NL_EPISODES=(--max-steps 500 --env-option start=random)
run gp-sad "$GP" "--method sad" 0
run gp-netvlad "$GP" "--method netvlad --model runs/cnn/netvlad-off-the-shelf" 0
run gp-snn "$GP" "--method snn-ensemble --config configs/snn_gardens_point_night.json" 0
run nl-sad "$NL" "--method sad" 10 "${NL_EPISODES[@]}"
run nl-netvlad "$NL" "--method netvlad --model runs/cnn/netvlad-fine-tuned" 10 "${NL_EPISODES[@]}"
run nl-snn "$NL" "--method snn-ensemble --config configs/snn_nordland.json" 10 "${NL_EPISODES[@]}"
