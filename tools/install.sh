#!/usr/bin/env bash
# One-command set-up of eva_det into the active Python environment. Idempotent.
#
#   bash tools/install.sh
#
# 1. torch / torchvision, when absent (TORCH_SPEC / TORCHVISION_SPEC override the pins).
# 2. detectron2: kept when importable; else the official git install at a pinned commit when
#    GitHub answers quickly; else the PyPI wheel of detectron2's sources (sal-detectron2, built for
#    CPython 3.10; its pure-Python code runs on 3.11) plus detectron2's runtime dependencies.
# 3. eva_det itself with its runtime dependencies (pyproject.toml: shapely, OpenCV, ...):
#    pip install -e ".[dev]"; then lvis-api without its dependencies (see below).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
PIP=("$PY" -m pip --disable-pip-version-check)
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
D2_COMMIT="${D2_COMMIT:-fd27788985af0f4ca800bca563acdb700bb890e2}"
D2_RUNTIME_DEPS=(
  "fvcore<0.1.6" "iopath<0.1.10" "omegaconf>=2.1,<2.4" "hydra-core>=1.1" "pycocotools>=2.0.2"
  "termcolor>=1.1" "yacs>=0.1.8" "tabulate" "cloudpickle" "tqdm>4.29.0" "tensorboard"
  "matplotlib" "Pillow>=7.1" "black" "packaging" "setuptools<81"
)

log() { echo "[install] $*"; }

if "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
  log "installing $TORCH_SPEC $TORCHVISION_SPEC"
  "${PIP[@]}" install "$TORCH_SPEC" "$TORCHVISION_SPEC"
fi

d2_importable() { "$PY" -c "import detectron2.config, detectron2.modeling" 2>/dev/null; }

if d2_importable; then
  log "detectron2 already importable: keeping it"
else
  # setuptools<81 provides pkg_resources, which detectron2.model_zoo imports.
  "${PIP[@]}" install "${D2_RUNTIME_DEPS[@]}"
  if timeout 15 git ls-remote https://github.com/facebookresearch/detectron2.git HEAD >/dev/null 2>&1; then
    log "installing detectron2 from GitHub at $D2_COMMIT"
    "${PIP[@]}" install --no-build-isolation \
      "git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT" || true
  fi
  if ! d2_importable; then
    log "GitHub unreachable or build failed: installing the PyPI wheel sal-detectron2==0.7.2"
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    "${PIP[@]}" install --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
      --target "$TMP" sal-detectron2==0.7.2
    # Only the detectron2 package and its metadata: the wheel also ships a top-level `tools`
    # package (detectron2's own scripts) that would shadow nothing useful.
    rm -rf "$SITE/detectron2"
    cp -r "$TMP/detectron2" "$SITE/"
    cp -r "$TMP"/sal_detectron2-*.dist-info "$SITE/" 2>/dev/null || true
  fi
  d2_importable || { echo "[install] detectron2 still not importable; see README 'Troubleshooting'" >&2; exit 1; }
fi

log "installing eva_det (editable, with dev extras)"
"${PIP[@]}" install -e ".[dev]"
# lvis-api: detectron2's LVIS loader (every LVIS recipe) reads the json with it, and the tests
# use it as the reference for LVIS numbers. Its wheel asks for opencv-python, which would clash
# with the headless OpenCV above, so it is installed without dependencies (the ones it imports
# are eva_det's own: numpy, pycocotools, matplotlib, opencv).
"${PIP[@]}" install --no-deps "lvis==0.5.3"
"$PY" -c "import eva_det, detectron2, shapely, lvis; print('[install] eva_det ready; detectron2', detectron2.__version__)"
