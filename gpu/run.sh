#!/usr/bin/env bash
# glioseg's GPU checks, on the lent GPU machine (gpu/README.md). Here first: make gpu-kit
# then one device call from the repository root, carrying carry/gpu:
#   bash gpu/run.sh            # results under $OUT: nvidia-smi.txt, pytest-cuda.txt, bench-gpu.json, seed-protocol.json
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${GLIOSEG_GPU_KIT:-carry/gpu}
OUT=${OUT:-/tmp/glioseg-gpu-out}
DATA=/tmp/glioseg-lgg/kaggle_3m
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1

# The packages the machine lacks, as the device README says to carry them; glioseg from the checkout.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$KIT"/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"

python3 -m gpu.unpack "$KIT/lgg.zip" "$DATA"
# Exit codes are kept, not fatal: each later check still runs and brings its figures back.
status=0
python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k cuda \
    > "$OUT/pytest-cuda.txt" 2>&1 || status=$?
tail -3 "$OUT/pytest-cuda.txt"
python3 -m benchmarks.run --profile gpu --data "$DATA" --max-slices 4000 --json "$OUT/bench-gpu.json" || status=$?
python3 -m gpu.seed_protocol --params profiles/seed-gpu.yaml --data "$DATA" --json "$OUT/seed-protocol.json" || status=$?
exit $status
