#!/usr/bin/env bash
# The GPU check of issue 17, as one prepared script: `pytest -m cuda`, then bench/gpu.py, within
# 8 minutes on one GPU; everything it measures goes to the folder named as its argument.
#
#   bash bench/gpu_check.sh <output folder>
#
# Python: $PY (default: .venv/bin/python if present, else python3). The device machines of this
# workplace have PyTorch, torchvision, Lightning and pytest but not Hydra, albumentations,
# pycocotools or faster-coco-eval: carry them as wheels in .whl/ (bench/gpu_wheels.txt says which,
# and how to download them here); the script installs .whl/*.whl into /tmp/site when .whl/ exists.
set -uo pipefail
out="${1:?usage: bash bench/gpu_check.sh <output folder>}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
{ nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } > "$out/device.txt" 2>&1
timeout 200 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/cuda --junitxml="$out/cuda_tests.xml" > "$out/cuda_tests.log" 2>&1
echo "pytest -m cuda: exit $?" | tee -a "$out/cuda_tests.log"
timeout 260 "$PY" bench/gpu.py --out "$out" > "$out/gpu_bench.log" 2>&1
echo "bench/gpu.py: exit $?" | tee -a "$out/gpu_bench.log"
