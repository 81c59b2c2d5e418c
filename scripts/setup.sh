#!/usr/bin/env bash
# Set up napari-unsamv2 on a fresh Debian/Ubuntu machine (CPU; CUDA torch works the same way).
# Idempotent: re-running reuses .venv. Order matters (see ../shared/docs/ENVIRONMENT.md):
#   1. torch first, so nothing later swaps in a CUDA build;
#   2. sam2 from its sdist without build isolation and without the CUDA extension;
#   3. torchvision pinned to the build matching torch (sam2 requires it; our engine never imports it);
#   4. this package with its extras: dev = all (engine, napari, pyqt6) + test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}
EXTRAS=${EXTRAS:-dev}

apt_packages=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0
              libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libgl1 libegl1 libdbus-1-3 libfontconfig1)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] apt: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "[setup] torch==$TORCH_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi
if ! .venv/bin/python -c "import sam2.build_sam" 2>/dev/null; then
  echo "[setup] sam2==1.1.0 (no build isolation, no CUDA extension), torchvision==$TORCHVISION_VERSION"
  "${PIP[@]}" setuptools wheel
  SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation sam2==1.1.0 "torchvision==$TORCHVISION_VERSION"
fi
echo "[setup] napari-unsamv2[$EXTRAS]"
"${PIP[@]}" -e ".[$EXTRAS]"
.venv/bin/python -c "import torch, sam2, unsamv2_engine; print('[setup] ok: torch', torch.__version__, '| unsamv2', unsamv2_engine.__version__)"
