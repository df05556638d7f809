#!/usr/bin/env bash
# Install the VPRTempo baseline into <repo>/.bench-envs/vprtempo, beside (not inside) spikebot's venv.
#
# Why a --target folder: VPRTempo is a baseline we compare against, not a spikebot dependency. Its own
# requirements pull torch/torchvision/numpy, which must stay the spikebot venv's exact builds, so everything is
# installed with --no-deps and the pure-Python extras it imports are listed here explicitly (pinned).
# Use it with:  PYTHONPATH=.bench-envs/vprtempo .venv/bin/python benchmarks/vprtempo_baseline.py ...
# Idempotent: a stamp records the pinned set; rerunning with the same set does nothing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
TARGET="$REPO/.bench-envs/vprtempo"
STAMP="$TARGET/.installed-stamp"
# A local copy of the wheel is used when present (offline machines); otherwise pip fetches it from PyPI.
VPRTEMPO_WHEEL="${VPRTEMPO_WHEEL:-/tmp/vprt/vprtempo-1.1.10-py3-none-any.whl}"

# VPRTempo 1.1.10 imports pandas (dataset CSVs), prettytable (results table), imageio (demo) and requests
# (demo download) at module import time. wcwidth and urllib3/idna/certifi/charset-normalizer are their own
# runtime requirements, pinned here because --no-deps will not resolve them; pandas' python-dateutil is already
# in the spikebot venv (via matplotlib).
PINS=(
  pandas==3.1.1
  prettytable==3.18.0 wcwidth==0.9.4
  imageio==2.38.1
  requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.3
)
PACKAGES=("${PINS[@]}")
if [[ -f "$VPRTEMPO_WHEEL" ]]; then
  PACKAGES+=("$VPRTEMPO_WHEEL")
else
  PACKAGES+=(vprtempo==1.1.10)
fi

WANT="$(printf '%s\n' vprtempo==1.1.10 "${PINS[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "vprtempo env up to date: $TARGET"
  exit 0
fi

rm -rf "$TARGET"
mkdir -p "$TARGET"
"$PYTHON" -m pip install --quiet --no-deps --no-compile --target "$TARGET" "${PACKAGES[@]}"
# Import check with the spikebot venv's torch/torchvision/numpy underneath.
PYTHONPATH="$TARGET" "$PYTHON" -c "import vprtempo.VPRTempo, vprtempo.VPRTempoTrain, pandas, torch, numpy; \
print('vprtempo env ready:', '$TARGET', '| pandas', pandas.__version__, '| torch', torch.__version__, '| numpy', numpy.__version__)"
echo "$WANT" > "$STAMP"
