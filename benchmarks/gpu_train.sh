#!/usr/bin/env bash
# Training cost of the paper's recipe on a lent GPU (issue #6): seconds per 100 iterations of batch 12 at
# 512x1024 (spec §9.1-§9.3) for teacher, distillation (student + frozen teacher) and student, in fp32 and bf16
# autocast, through the package's training engine; extrapolated to the paper's 600 epochs x 1000 iterations
# in GPU-hours next to the reproduction study's RTX 3080 Ti (662.5 s, 884 s, 590 s per 1000 iterations).
# Data: synthetic street scenes drawn at 512x1024 through the §9.1 transform (19 Cityscapes classes); the GPU
# machines have no Cityscapes. Budget: about 3-5 minutes on an H100 (6 x (10 warm-up + 100 timed) iterations).
#
#   bash benchmarks/gpu_train.sh [OUT_JSON]      # default: $OUT/gpu_train.json or outputs/gpu_train.json
#
# benchmarks/train.py writes its record to benchmarks/results/train/ (fasterseg_core.records); this script copies
# that folder to $OUT/records/ as well when $OUT is set (a lent machine's checkout is a copy).
#
# Needs python3 with torch, torchvision, numpy, pandas, pyyaml, pillow; the package is used from this checkout
# without installing it. The GPU image lacks cityscapesscripts (class tables): prepare its wheel here with
#   .venv/bin/pip download cityscapesscripts==2.3.0 --no-deps -d build/wheels
# and carry build/wheels; the script installs it into a temporary folder (no dependencies are needed to import
# its label table). Extra arguments for benchmarks/train.py can be passed in GPU_TRAIN_ARGS, e.g.
#   GPU_TRAIN_ARGS="--iters 40 --rounds 2 --warmup 5" bash benchmarks/gpu_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
out_json="${1:-${OUT:-outputs}/gpu_train.json}"
mkdir -p "$(dirname "$out_json")"
if ! python3 -c "import cityscapesscripts.helpers.labels" 2>/dev/null; then
  wheel=$(ls build/wheels/cityscapesscripts-*.whl 2>/dev/null | head -1 || true)
  if [[ -z "$wheel" ]]; then
    echo "cityscapesscripts is missing and build/wheels holds no wheel of it; see the header of $0" >&2
    exit 1
  fi
  site=$(mktemp -d)
  python3 -m pip install --quiet --no-deps --no-index --target "$site" "$wheel"
  export PYTHONPATH="$PYTHONPATH:$site"
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
echo "GPU: $gpu"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
# shellcheck disable=SC2086  # GPU_TRAIN_ARGS is a list of words
time python3 benchmarks/train.py --gpu-recipe --device cuda --batch 12 --hw 512 1024 --iters 100 --rounds 4 \
  --warmup 10 --amp none bf16 --json "$out_json" ${GPU_TRAIN_ARGS:-}
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT/records" && cp -r benchmarks/results/train "$OUT/records/"; fi
