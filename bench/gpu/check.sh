#!/usr/bin/env bash
# One prepared GPU session (see docs/harness.md, "GPU checks"): DDB inpainting throughput on the
# real SD2 architectures (UNet speed variants, then the pipeline), invert/segment/prune throughput
# on their real architectures, training throughput per baseline through the engine on CUDA, and
# the CUDA paths of the engine and the DDB stages via their tests (device "auto" picks CUDA there).
# Usage on a CUDA machine, from the repo root: OUT=/some/dir bash bench/gpu/check.sh
#   PARTS=ddb,stages,bench,train,cuda (default: all five; their time limits add up to 1030 s, more
#   than one device call may run: pick) picks the parts; bench = the pytest-benchmark records of
#   the SD2 inpainting (bench/gpu/test_inpaint_throughput.py, SPURAUG_UNET_VARIANT picks the variant);
#   DDB_BATCHES (default 1,8,32), DDB_VARIANTS (UNet speed variants, default the script's) and
#   DDB_BUDGET (seconds, default 250) tune the inpainting part, STAGES_BUDGET (default 150) the
#   invert/segment/prune part. Within one 15-minute device budget, two short runs:
#   PARTS=ddb DDB_BATCHES=32,8 DDB_BUDGET=300 OUT=/some/dir bash bench/gpu/check.sh   # efficiency
#   PARTS=stages OUT=/some/dir bash bench/gpu/check.sh                                 # other stages
# Wheels missing on that machine (diffusers, captum) are carried in .whl/: `bash bench/gpu/wheels.sh`
# here writes them; the device call names .whl in carry.
set -u
OUT=${OUT:-results/gpu}
PARTS=${PARTS:-ddb,stages,bench,train,cuda}
DDB_BUDGET=${DDB_BUDGET:-250}
STAGES_BUDGET=${STAGES_BUDGET:-150}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv"
python3 -c "import torch, diffusers, transformers, captum; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"
if part ddb; then
  echo "== DDB inpainting throughput (SD2 architectures, 512 px; UNet speed variants)"
  timeout $((DDB_BUDGET + 60)) python3 -m bench.gpu.ddb_throughput --out "$OUT/gpu_ddb.json" --time-budget "$DDB_BUDGET" \
    --batch-sizes "${DDB_BATCHES:-1,8,32}" ${DDB_VARIANTS:+--variants "$DDB_VARIANTS"} 2>&1 | tee "$OUT/gpu_ddb.log"
fi
if part stages; then
  echo "== DDB invert / segment / prune throughput (real architectures, random weights)"
  timeout $((STAGES_BUDGET + 90)) python3 -m bench.gpu.stage_throughput --out "$OUT/gpu_stages.json" \
    --time-budget "$STAGES_BUDGET" 2>&1 | tee "$OUT/gpu_stages.log"
fi
if part bench; then
  echo "== pytest-benchmark: DDB inpainting on the SD2 architectures, batch 1/8/32"
  timeout 240 python3 -m pytest bench/gpu/test_inpaint_throughput.py -q -p no:cacheprovider --benchmark-enable \
    --benchmark-only --benchmark-json "$OUT/gpu_inpaint_bench.json" 2>&1 | tail -30 | tee "$OUT/gpu_inpaint_bench.log"
fi
if part train; then
  echo "== training throughput per baseline (toy CNN, ResNet-50 224 px) on CUDA"
  timeout 120 python3 -m pytest bench/test_train_throughput.py -q -p no:cacheprovider --benchmark-enable --benchmark-only \
    --benchmark-json "$OUT/train_gpu.json" 2>&1 | tail -30 | tee "$OUT/train_gpu.log"
fi
if part cuda; then
  echo "== CUDA paths: engine and DDB tests with device auto"
  timeout 120 python3 -m pytest tests/test_engine.py tests/test_ddb.py tests/test_ddb_pipeline.py -q -p no:cacheprovider -x 2>&1 | tail -30 | tee "$OUT/cuda_tests.log"
fi
echo "bench/gpu/check.sh done"
