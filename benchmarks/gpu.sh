#!/usr/bin/env bash
# Latency table on a lent GPU (issue #4): FasterSeg student/teacher and the torchvision peers at 1024x2048,
# batch 1, on every backend the machine has (fp32 eager, channels_last, fp16, bf16, torch.compile, ONNX
# Runtime CUDA/TensorRT providers, TensorRT), with argmax agreement of every non-eager backend with fp32.
# Unavailable backends are reported as such. Budget: under 8 minutes on an H100.
#
#   bash benchmarks/gpu.sh [OUT_JSON]        # default: $OUT/gpu_latency.json or outputs/gpu_latency.json
#
# Both tables go into one record, benchmarks/results/gpu/<hardware tag>-<date>.json (fasterseg_core.records),
# copied to $OUT/records/ as well when $OUT is set (a lent machine's checkout is a copy).
#
# Extra CLI arguments go in GPU_LAT_ARGS, e.g. GPU_LAT_ARGS="--timed-seconds 1.5" for a shorter run.
# Needs python3 with torch (+ torchvision, onnx, onnxruntime for the ORT rows); the package is used from
# this checkout without installing it (the GPU machines cannot fetch packages).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
out_json="${1:-${OUT:-outputs}/gpu_latency.json}"
mkdir -p "$(dirname "$out_json")"
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
tag="cuda-$(echo "${gpu%%,*}" | tr ' ' '-' | tr -cd '[:alnum:]-')"
echo "GPU: $gpu  (hardware tag $tag)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
time python3 -m fasterseg_core latency --device cuda --size 1024x2048 \
  --arch student --arch teacher --arch lraspp_mobilenet_v3_large --arch deeplabv3_mobilenet_v3_large \
  --backend eager --backend channels_last --backend fp16 --backend bf16 --backend compile \
  --backend cudagraph --backend cudagraph_fp16 \
  --backend ort --backend tensorrt --agreement 3 --hardware-tag "$tag" --json "$out_json" ${GPU_LAT_ARGS:-}
# The paper's protocol timed the nearest-interpolation deployment variant (spec §10).
time python3 -m fasterseg_core latency --device cuda --size 1024x2048 --deploy --arch student --arch teacher \
  --backend eager --backend fp16 --backend compile --backend cudagraph --backend cudagraph_fp16 --hardware-tag "$tag-deploy" --json "${out_json%.json}_deploy.json" ${GPU_LAT_ARGS:-}
python3 - "$out_json" "${out_json%.json}_deploy.json" "${GPU_LAT_ARGS:-}" <<'PY'
import json, shlex, sys
from fasterseg_core.records import write_record
rows, deploy = (json.load(open(path)) for path in sys.argv[1:3])
ok = [r for r in rows if r["name"] == "student" and r["status"] == "ok"]
best = min(ok, key=lambda r: r["median_ms"])
headline = (f"student best path: {best['backend']} {best['median_ms']:.2f} ms = {best['fps']:.0f} FPS "
            f"= x{best['fps'] / 163.9:.2f} the paper's 163.9 FPS (1080 Ti, TensorRT fp32)")
print(headline)
fp16 = [r for r in ok if r["backend"] == "fp16"]
if fp16:
    print(f"fp16 argmax agreement with fp32: {fp16[0].get('argmax_agreement')}")
command = " ".join(filter(None, [f"GPU_LAT_ARGS={shlex.quote(sys.argv[3])}" if sys.argv[3] else "", "bash benchmarks/gpu.sh"]))
path = write_record("gpu", {"rows": rows, "deploy_rows": deploy}, headline=headline, command=command, device="cuda")
print(f"record: {path}")
PY
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT/records" && cp -r benchmarks/results/gpu "$OUT/records/"; fi
