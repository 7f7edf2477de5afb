#!/usr/bin/env bash
# Download here (where PyPI answers) the wheels that bench/gpu_check.sh installs on the GPU
# machine, which reaches no registry. Its image has Python 3.12 with torch, numpy, scipy, pytest,
# opencv-python-headless, pyyaml, tqdm, tabulate, portalocker, matplotlib, Pillow,
# tensorboard, cloudpickle, packaging (the device tool's KINDS.md); missing are detectron2 and its
# runtime dependencies below. Output: .whl/ (ignored by git; about 10 MB), which every device call
# must name in `carry`.
#
#   bash bench/gpu_wheels.sh        # then: run(command="bash bench/gpu_check.sh --out $OUT",
#                                   #           carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
DEST=.whl
mkdir -p "$DEST/d2"

# Binary or pure-Python wheels for CPython 3.12 on x86-64 Linux (the device README's command).
BINARY=(
  "iopath==0.1.9" "yacs==0.1.8" "termcolor==3.3.0" "omegaconf==2.3.1" "hydra-core==1.3.8"
  "pycocotools==2.0.11" "faster-coco-eval==1.8.0"
  # detectron2's LazyConfig imports pkg_resources, gone from setuptools >= 81
  "setuptools==80.10.2"
)
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${BINARY[@]}"

# Published as source only, pure Python: built into py3-none-any wheels here.
"$PY" -m pip wheel --no-deps -w "$DEST" "fvcore==0.1.5.post20221221" "antlr4-python3-runtime==4.9.3"

# detectron2 from PyPI: sal-detectron2 is a wheel of detectron2's sources tagged for CPython 3.10
# (its compiled _C is not loaded on 3.12, which only affects rotated boxes, deformable conv and
# the C++ COCO evaluator). pip refuses to install it on 3.12, so it sits in .whl/d2/ (outside
# the .whl/*.whl glob) and gpu_check.sh unpacks its detectron2 package.
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
  -d "$DEST/d2" "sal-detectron2==0.7.2"

ls -l "$DEST" "$DEST/d2"
du -sh "$DEST"
