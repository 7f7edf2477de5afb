#!/usr/bin/env bash
# bench/gpu_check.py on the GPU machine (or anywhere): installs the carried wheels when detectron2
# is not importable, then runs the check. Arguments go to gpu_check.py (--out DIR, --smoke, ...).
#
#   bash bench/gpu_wheels.sh                    # once, here: fills .whl/
#   bash bench/gpu_check.sh --out "$OUT"        # there, with .whl carried (bench/README.md)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"

if ! "$PY" -c "import detectron2.config" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1 || ! ls .whl/d2/*.whl >/dev/null 2>&1; then
    echo "gpu_check.sh: detectron2 is not importable and .whl/ has no wheels:" \
      "run bench/gpu_wheels.sh here and name .whl in the device call's carry" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 2
  rm -rf "$SITE/.d2" && "$PY" -m zipfile -e .whl/d2/sal_detectron2-*.whl "$SITE/.d2" || exit 2
  rm -rf "$SITE/detectron2" && mv "$SITE/.d2/detectron2" "$SITE/detectron2" && rm -rf "$SITE/.d2"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" -c "import detectron2.config, eva_det" || exit 2
exec "$PY" bench/gpu_check.py "$@"
