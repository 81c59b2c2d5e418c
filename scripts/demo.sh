#!/usr/bin/env bash
# The main job on a fresh machine: set up, then open napari with the UnSAMv2 widget docked on the
# synthetic cells sample, loading UnSAMv2+ (downloaded once; or CHECKPOINT=/path/to/file.pt).
# With --cli (no display needed): segment a bundled immunohistochemistry image at three
# granularities from one click, into a multi-page label TIFF.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=all bash scripts/setup.sh
if [ "${1:-}" != "--cli" ]; then
  if [ -n "${CHECKPOINT:-}" ]; then
    exec .venv/bin/unsamv2 napari --sample cells --checkpoint "$CHECKPOINT"
  fi
  exec .venv/bin/unsamv2 napari --sample cells --model "${MODEL:-unsamv2-plus}" --download
fi
mkdir -p demo-out
.venv/bin/python -c "import skimage.data, skimage.io; skimage.io.imsave('demo-out/ihc.png', skimage.data.immunohistochemistry())"
if [ -n "${CHECKPOINT:-}" ]; then
  model_args=(--checkpoint "$CHECKPOINT")
else
  .venv/bin/unsamv2 models --download "${MODEL:-unsamv2-plus}"
  model_args=(--model "${MODEL:-unsamv2-plus}")
fi
.venv/bin/unsamv2 sweep demo-out/ihc.png --point 260,250,pos --granularities 0.2,0.5,1.0 \
    "${model_args[@]}" -o demo-out/ihc_sweep.tif --table demo-out/ihc_sweep.csv
echo "wrote demo-out/ihc_sweep.tif (one page per granularity) and demo-out/ihc_sweep.csv"
