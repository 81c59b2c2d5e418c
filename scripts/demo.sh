#!/usr/bin/env bash
# The main job on a fresh machine: set up, fetch UnSAMv2+ (needs network once), and segment a
# bundled immunohistochemistry image at three granularities (one click, parts -> whole).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=pyqt6 bash scripts/setup.sh
mkdir -p demo-out
.venv/bin/python -c "import skimage.data, skimage.io; skimage.io.imsave('demo-out/ihc.png', skimage.data.ihc())"
.venv/bin/unsamv2 models --download "${MODEL:-unsamv2-plus}"
.venv/bin/unsamv2 sweep demo-out/ihc.png --point 260,250,pos --granularities 0.2,0.5,1.0 \
    --model "${MODEL:-unsamv2-plus}" -o demo-out/ihc_sweep.tif --table demo-out/ihc_sweep.csv
echo "wrote demo-out/ihc_sweep.tif (one page per granularity) and demo-out/ihc_sweep.csv"
